"""bench_gpu.py, the GPU check, without a GPU: its CPU dry run goes through every part (small shapes,
the kernels in Triton's interpreter, a tiny pipeline) with one part made to crash and one given no
time, and results.json / results.md must say so while the others run; the plan, the goals and the
pipeline's steps are checked on their own.

Run: TRITON_INTERPRET=1 python -m pytest -q tests/test_bench_gpu.py   (about a minute on 2 cores)
"""

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

import bench_gpu  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    run = subprocess.run([sys.executable, "bench_gpu.py", "--dry_run=true", f"--out={out}", "--crash=decode",
                          "--caps=ceilings=0"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    return run, results, out


def test_dry_run_has_every_part_the_crash_and_the_cap(dry_run):
    run, results, _ = dry_run
    assert results is not None, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 1, "a crashed part makes the exit status 1"
    assert results["dry_run"] and list(results["parts"]) == list(bench_gpu.PARTS)
    parts = results["parts"]
    # the injected crash: recorded with its traceback, after the part's own rows
    assert parts["decode"]["status"] == "crashed"
    assert "injected crash" in parts["decode"]["error"] and "Traceback" in parts["decode"]["traceback"]
    assert len(parts["decode"]["rows"]) == 2
    # no time for the ceilings: its one case is listed as skipped by the cap, and nothing measured
    assert parts["ceilings"]["status"] == "cap" and not parts["ceilings"]["rows"]
    assert [s["item"] for s in parts["ceilings"]["skipped"]] == ["copy and matmul"]
    assert "skipped copy and matmul: cap" in run.stdout
    # the others ran to the end, each with its rows
    for name in ("correctness", "kernel_speed", "train", "vlm_ttft", "pipeline"):
        assert parts[name]["status"] == "ok", (name, parts[name].get("error"))
        assert parts[name]["rows"], name
    assert len(parts["correctness"]["rows"]) == 13 and all(r["passed"] for r in parts["correctness"]["rows"])
    assert {r["impl"] for r in parts["kernel_speed"]["rows"]} == {"triton", "sdpa flash", "sdpa cudnn", "conv2d NCHW",
                                                                  "conv2d NHWC"}
    assert [r["variant"] for r in parts["train"]["rows"]] == ["triton kernels, eager", "SDPA, eager"]
    assert [s["item"] for s in parts["train"]["skipped"]] == ["triton kernels, torch.compile", "SDPA, torch.compile"]
    assert [r["paper_count"] for r in parts["vlm_ttft"]["rows"]] == [576, 144, 36, 1]
    steps = parts["pipeline"]["rows"]
    assert [r["step"] for r in steps] == ["data", "LM", "tiny CLIP", "VLM", "score", "chat", "all"]
    assert all(r["status"] == "ok" for r in steps), steps
    assert set(parts["pipeline"]["scores"]) >= {"gqa_overall", "pope_f1", "mme", "sqa_img", "compositional"}
    assert {g["goal"] for g in results["goals"]} == {g["goal"] for g in bench_gpu.goals({"parts": {}})}


def test_dry_run_writes_a_readable_results_md(dry_run):
    _, results, out = dry_run
    md = (out / "results.md").read_text()
    assert "Dry run on the CPU" in md and "## Goals" in md
    for i, name in enumerate(bench_gpu.PARTS, 1):
        assert f"## {i} {name}" in md
    assert "**crashed**: RuntimeError: injected crash" in md
    assert "- skipped copy and matmul: cap" in md
    assert "attention bfloat16 causal H=8/1" in (out / "log.txt").read_text()   # the parts' output, kept
    assert "held-out top-1" in (out / "pipeline" / "tiny_CLIP.log").read_text()
    assert not (out / ".parts").exists()


def test_help_explains_every_part():
    run = subprocess.run([sys.executable, "bench_gpu.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0
    for i, name in enumerate(bench_gpu.PARTS, 1):
        assert re.search(rf"^  {i} {name} ", run.stdout, re.M), name
    assert "budget_s" in run.stdout and "dry_run" in run.stdout


def test_plan_shares_the_budget_and_obeys_caps():
    cfg = bench_gpu.GPUCheckConfig(budget_s=480)
    plan = dict(bench_gpu.make_plan(cfg))
    assert list(plan) == list(bench_gpu.PARTS) and abs(sum(plan.values()) - 480) < 1e-6
    plan = bench_gpu.make_plan(bench_gpu.GPUCheckConfig(budget_s=100, parts="pipeline,train", caps="train=40"))
    assert plan == [("train", 40.0), ("pipeline", 60.0)]   # plan order, the cap, the rest of the budget
    for bad in (dict(parts="trian"), dict(caps="train=soon"), dict(caps="nothing=3")):
        with pytest.raises(bench_gpu.UserError):
            bench_gpu.make_plan(bench_gpu.GPUCheckConfig(**bad))


def test_goals_are_met_missed_or_not_measured():
    att = dict(kind="attention", T=4096, D=64, causal=True)
    conv = lambda impl, gbps: dict(kind="dwconv", shape="B=256 24x24 C=1024 stride=1", impl=impl, gbps=gbps)
    results = {"parts": {
        "ceilings": {"rows": [{"copy_gbps": 4000.0}]},
        "kernel_speed": {"rows": [dict(att, impl="triton", fwd_tflops=320.0, bwd_tflops=140.0),
                                  dict(att, impl="sdpa flash", fwd_tflops=400.0, bwd_tflops=150.0),
                                  conv("triton", 3000.0), conv("conv2d NCHW", 900.0), conv("conv2d NHWC", 1200.0)]},
        "correctness": {"rows": [{"passed": True}, {"passed": False}]}}}
    met = {g["goal"]: g["met"] for g in bench_gpu.goals(results)}
    assert met == {"attention causal D=64 T=4096 fwd TFLOP/s": True, "attention fwd vs SDPA flash (same run)": False,
                   "attention causal D=64 T=4096 bwd TFLOP/s": False, "attention bwd vs SDPA flash (same run)": True,
                   "dwconv GB/s / copy bandwidth % (worst case of the largest batch)": True,
                   "dwconv faster than PyTorch's best layout (cases)": True,
                   "1.1B training MFU % (triton kernels, best variant)": None, "decode batch 1 tokens/s": None,
                   "correctness cases passed": False}


def test_pipeline_runs_the_scripts_of_speedrun_sh():
    with open(os.path.join(ROOT, "speedrun.sh")) as f:
        speedrun = re.findall(r"^python (\S+\.py)", f.read(), re.M)
    assert [argv[0] for _, argv, _ in bench_gpu.pipeline_steps("/tmp/x", dry=False)] == speedrun
