"""
The GPU check: one command that measures, on one H100 or H200, everything a GPU can show in this
project, within 9 minutes, and writes results.md and results.json (plus log.txt) under --out.

    python bench_gpu.py --out=results/gpu                  # the whole check, ~8 minutes on one GPU
    python bench_gpu.py --out=results/gpu --parts=correctness,kernel_speed    # some parts only
    python bench_gpu.py --dry_run=true --out=/tmp/gpu_dry  # CPU: small shapes, the kernels in Triton's
                                                           # interpreter (automatic without CUDA); ~1 min
    python bench_gpu.py --help

The parts, in the order they run, and what each figure is compared with:
  1 ceilings      copy bandwidth (clone of 1 GiB, read + write), bf16 matmul TFLOP/s (8192^3): the roofs
  2 correctness   flash attention forward + backward in bf16 and fp16 against the fp32 definition
                  (model.attention on its PyTorch path): causal and not, GQA 8:1 and 1:1, head dim
                  64 and 128, T not a multiple of any tile; 8 cases that hold every pair of these
                  factors both ways, the LM's and the ViT's shapes first. The depthwise conv
                  (strides 1 and 2, bias, residual) against xdp.depthwise_conv in fp32. Error =
                  max|a - b| / max|b| for the output and every gradient; a case passes when each
                  error is at most twice PyTorch's own in the same precision (SDPA, F.conv2d) or
                  under a floor (bf16 1e-2, fp16 2e-3). Every case is printed; failures are marked
  3 kernel_speed  kernels/bench.py: attention fwd and bwd TFLOP/s against SDPA pinned to its flash and
                  cuDNN backends at the LM's shape (H 32/4, D 64, causal, T 1024-8192) and the ViT's
                  (T 577); depthwise conv GB/s against F.conv2d NCHW and channels_last (with transposes)
  4 train         xmodel-1.1b training steps (forward, backward, fused AdamW), sequence 4096, bf16
                  autocast, the planner's micro-batch (at most 8): tokens/s, MFU of the GPU's dense
                  bf16 peak (common.PEAK_TFLOPS), peak memory beside train_lm.plan_memory's total;
                  with the Triton kernels and with SDPA (XMODEL_KERNELS), eager, then compiled with
                  torch.compile while time allows
  5 decode        xmodel-1.1b in bf16, greedy, KV cache, prompt 32 + 128 new: tokens/s at batch 1, 8, 64
  6 vlm_ttft      time to first token of CLIP ViT-L/14-336 + xdp + xmodel-1.1b (random weights,
                  bf16) at 576, 144, 36 and 1 visual tokens: tower + projector, prefill, first token
  7 pipeline      the README's first command (speedrun.sh's six steps) on the GPU in a temporary
                  folder: each step's time (the CPU run: 830 s, BENCHMARKS.md) and the held-out scores

Goals, marked met or MISSED in results.md: attention causal D 64 T 4096 forward >= 300, backward >= 150
TFLOP/s, both >= 0.9x SDPA flash; dwconv >= 70% of the copy bandwidth and faster than PyTorch's best
layout; 1.1B training >= 40% MFU; decode at batch 1 >= 300 tokens/s; every correctness case passed.

Time: the parts share --budget_s (8/90/55/150/25/32/120 s of 480; time a part leaves passes on;
--caps=part=seconds sets a share). Each part runs in its own process (a crash or a broken CUDA context
stays there), skips and lists the cases that no longer fit its deadline, and is stopped 15 s past it;
a part that raises is recorded with its traceback and the rest go on. The results are rewritten after
every part; exit status 1 when a part crashed or died. No network or downloads; transformers unused.
"""

import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from unittest.mock import patch

import torch

import kernels
import kernels.bench as kbench
import xdp
from bench import median_time, train_step_figures
from common import UserError, parse_config, run_main
from data import IMAGE_TOKEN_INDEX
from model import LMConfig, XmodelLM, attention
from train_lm import largest_micro_batch, plan_memory
from vision import CLIPVisionTower, VisionConfig
from vlm import XmodelVLM

ROOT = os.path.dirname(os.path.abspath(__file__))
GRACE_S = 15  # a part's process is stopped this long after its deadline


@dataclass
class GPUCheckConfig:
    out: str = "results/gpu"        # folder for results.md, results.json, log.txt and the pipeline's logs
    budget_s: float = 480           # wall time for all the parts (the limit is 9 minutes: leave room)
    parts: str = "all"              # comma-separated subset of the parts (they always run in plan order)
    dry_run: bool = False           # CPU plumbing check: small shapes, interpreter; on when CUDA is absent
    caps: str = ""                  # seconds for some parts, e.g. "train=200,pipeline=60"; the rest share the remainder
    crash: str = ""                 # for the tests: this part raises after its measurements
    repeats: int = 10               # timings per kernel measurement (median); the dry run uses 1

    CHECKS = dict(budget_s="x > 0", repeats="x >= 1")   # parse_config refuses other values at once


# -----------------------------------------------------------------------------
# What a part records: rows, skipped cases, notes; saved after every change

def empty_record():
    return {"rows": [], "done": [], "skipped": [], "notes": [], "planned": []}


class Record:
    def __init__(self, path, part, deadline, dry):
        self.path, self.deadline, self.dry = path, deadline, dry
        self.data = {"part": part, "status": "running", **empty_record()}
        self.save()

    def left(self):
        return self.deadline - time.time()

    def plan(self, items):
        self.data["planned"] = list(items)
        self.save()

    def allows(self, item, need_s=0.0):
        """True if the case fits before the deadline (its estimate `need_s` counts on a GPU only);
        otherwise it is recorded as skipped by the cap."""
        need = 0.0 if self.dry else need_s
        if self.left() > need:
            return True
        self.skip(item, f"cap: {max(self.left(), 0):.0f} s left" + (f", needs ~{need:.0f} s" if need else ""), cap=True)
        return False

    def skip(self, item, why, cap=False):
        print(f"  skipped {item}: {why}", flush=True)
        self.data["skipped"].append({"item": item, "why": why, "cap": cap})
        self.save()

    def row(self, values, item=None):
        self.data["rows"].append(values)
        if item is not None and item not in self.data["done"]:
            self.data["done"].append(item)
        self.save()

    def note(self, text):
        print(f"  note: {text}", flush=True)
        self.data["notes"].append(text)
        self.save()

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)


def kernel_path(mode):
    """XMODEL_KERNELS=mode inside (kernels.use_triton reads it at every call): auto, torch or triton."""
    return patch.dict(os.environ, XMODEL_KERNELS=mode)


def where(dry):
    """(device, sync) of the run."""
    if dry:
        return "cpu", (lambda: None)
    return "cuda", torch.cuda.synchronize


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


# -----------------------------------------------------------------------------
# 1. ceilings

def part_ceilings(cfg, rec, dry):
    rec.plan(["copy and matmul"])
    if rec.allows("copy and matmul", 5):
        device, _ = where(dry)
        sizes = dict(copy_numel=2**20, n=128, dtype=torch.float32) if dry else {}
        rec.row(kbench.ceilings(1 if dry else cfg.repeats, device, **sizes), item="copy and matmul")


# -----------------------------------------------------------------------------
# 2. correctness on the device

FLOOR = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def attention_cases(dry):
    """(dtype, causal, H, Hkv, D, T): a half fraction of the 2^4 design (dtype = causal xor GQA xor
    D128), so each pair of factors appears in all four combinations; the LM's shape and the ViT's
    first. T is never a multiple of a tile (16 in the interpreter, 32-128 on a GPU)."""
    bf, fp = torch.bfloat16, torch.float16
    g8, g1 = ((8, 1), (2, 2)) if dry else ((16, 2), (8, 8))   # (H, Hkv): 8:1 and 1:1
    cases = [(bf, True, *g8, 64), (bf, False, *g1, 64), (bf, True, *g1, 128), (bf, False, *g8, 128),
             (fp, True, *g8, 128), (fp, False, *g1, 128), (fp, True, *g1, 64), (fp, False, *g8, 64)]
    return [(dt, c, h, hkv, d, (20 if d == 64 else 18) if dry else (1000 if d == 64 else 333))
            for dt, c, h, hkv, d in cases]


def dwconv_cases(dry):
    """(dtype, grid, C, stride, bias, residual)."""
    g, c = (5, 20) if dry else (24, 1024)
    bf = torch.bfloat16
    return [(bf, g, c, 1, True, True), (bf, g, c, 2, True, False), (bf, g, c, 2, False, True),
            (bf, 12 if not dry else 7, 2 * c, 1, True, False), (torch.float16, g, c, 1, True, True)]


def errors(run, dtype, names):
    """Relative errors of the kernel (`run(dtype, kernel=True)`) and of PyTorch in the same dtype,
    both against PyTorch in fp32: ({name: ours}, {name: pytorch's})."""
    with kernel_path("torch"):
        ref = run(torch.float32, False)
        base = run(dtype, False)
    ours = run(dtype, True)
    return ({n: rel_err(a, r) for n, a, r in zip(names, ours, ref)},
            {n: rel_err(a, r) for n, a, r in zip(names, base, ref)})


def grads_of(fn, inputs, dtype, dout):
    """fn's output and the gradients of every input (None inputs stay None), in dtype."""
    leaves = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    out.backward(dout.to(dtype))
    return [out] + [t.grad for t in leaves if t is not None]


def check(rec, name, run, dtype, names):
    ours, base = errors(run, dtype, names)
    tol = {n: max(2 * base[n], FLOOR[dtype]) for n in names}
    failed = [n for n in names if not ours[n] <= tol[n]]   # `not <=`: a NaN fails
    row = {"kind": name.split()[0], "case": name, **{f"err {n}": ours[n] for n in names},
           "pytorch worst": max(base.values()), "passed": not failed}
    print(f"  {name}: " + " ".join(f"{n} {ours[n]:.1e}" for n in names) +
          f" | PyTorch {str(dtype)[6:]} worst {max(base.values()):.1e} | " +
          ("ok" if not failed else "FAIL (" + ", ".join(f"{n} > {tol[n]:.1e}" for n in failed) + ")"), flush=True)
    rec.row(row, item=name)


def part_correctness(cfg, rec, dry):
    device, _ = where(dry)
    g = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g).to(device)
    attn = [(f"attention {str(dt)[6:]} {'causal' if c else 'full'} H={h}/{hkv} T={t} D={d}", dt, c, h, hkv, d, t)
            for dt, c, h, hkv, d, t in attention_cases(dry)]
    conv = [(f"dwconv {str(dt)[6:]} {gr}x{gr} C={ch} stride={s}{' bias' if b else ''}{' residual' if r else ''}",
             dt, gr, ch, s, b, r) for dt, gr, ch, s, b, r in dwconv_cases(dry)]
    order = attn[:2] + conv[:2] + attn[2:] + conv[2:]    # the model's shapes first, then the rest
    rec.plan([c[0] for c in order])
    for case in order:
        name = case[0]
        if not rec.allows(name, 10):
            continue
        if name.startswith("attention"):
            _, dtype, causal, H, Hkv, D, T = case
            B = 1 if dry else 2
            qkv = [randn(B, H, T, D), randn(B, Hkv, T, D), randn(B, Hkv, T, D)]
            qkv = [t.to(dtype).float() for t in qkv]              # the same values in every precision
            dout = randn(B, H, T, D).to(dtype)

            def run(dt, kernel):
                attend = kernels.flash_attention if kernel else attention
                return grads_of(lambda q, k, v: attend(q, k, v, causal), qkv, dt, dout)
            check(rec, name, run, dtype, ["out", "dq", "dk", "dv"])
        else:
            _, dtype, grid, C, stride, bias, residual = case
            B, n_out = 1 if dry else 4, kernels.conv_out(grid, stride) ** 2
            inputs = [randn(B, grid * grid, C), randn(C, 1, 3, 3), randn(C) if bias else None,
                      randn(B, n_out, C) if residual else None]
            inputs = [t.to(dtype).float() if t is not None else None for t in inputs]
            dout = randn(B, n_out, C).to(dtype)

            def run(dt, kernel):
                conv = kernels.depthwise_conv if kernel else xdp.depthwise_conv
                return grads_of(lambda x, w, b, r: conv(x, w, b, (grid, grid), stride, 1, r), inputs, dt, dout)
            names = ["out", "dx", "dweight"] + (["dbias"] if bias else []) + (["dresidual"] if residual else [])
            check(rec, name, run, dtype, names)
    failed = [r["case"] for r in rec.data["rows"] if not r["passed"]]
    if failed:
        rec.note(f"{len(failed)} case(s) FAILED: " + "; ".join(failed))


# -----------------------------------------------------------------------------
# 3. kernel speed (kernels/bench.py's functions, capped case by case)

def part_kernel_speed(cfg, rec, dry):
    device, _ = where(dry)
    if dry:
        shapes, cases, grid = [(1, 4, 2, 32, 32, True), (1, 2, 2, 24, 32, False)], [(1, 32, 1), (1, 32, 2)], 8
        kw = dict(reps=1, device=device, dtype=torch.float32, warmup=0)
    else:   # T 4096 first: it carries the goals
        shapes = [kbench.LM_SHAPES[i] for i in (3, 1, 2, 4)] + [kbench.VIT_SHAPE]
        cases, grid = kbench.DWCONV_CASES, 24
        kw = dict(reps=cfg.repeats, device=device, dtype=torch.bfloat16)
    rec.plan([f"attention B={B} H={H}/{Hkv} T={T} D={D}{' causal' if c else ''}" for B, H, Hkv, T, D, c in shapes] +
             [f"dwconv B={B} {grid}x{grid} C={C} stride={s}" for B, C, s in cases])
    current = {}

    def allow(item):
        current["item"] = item
        return rec.allows(item, 8 if item.startswith("attention") else 2)
    report = lambda row: rec.row({"kind": current["item"].split()[0], **row}, item=current["item"])
    kbench.bench_attention(shapes=shapes, allow=allow, report=report, **kw)
    kbench.bench_dwconv(cases=cases, grid=grid, allow=allow, report=report, **kw)


# -----------------------------------------------------------------------------
# 4. training steps

def part_train(cfg, rec, dry):
    device, sync = where(dry)
    config = LMConfig.preset("tiny" if dry else "xmodel-1.1b")
    seq = 64 if dry else 4096
    if dry:
        batch = 2
    else:
        gpu = torch.cuda.get_device_properties(0).total_memory
        batch = max(1, min(8, largest_micro_batch(config, seq, gpu)))
        rec.note(f"micro-batch {batch} x {seq}: the planner's largest for {gpu / 2**30:.0f} GiB, at most 8")
    variants = [("triton kernels, eager", "auto", False), ("SDPA, eager", "torch", False),
                ("triton kernels, torch.compile", "auto", True), ("SDPA, torch.compile", "torch", True)]
    rec.plan([v[0] for v in variants])
    with torch.device(device):
        model = XmodelLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    for name, mode, compiled in variants:
        if dry and compiled:   # dynamo alone takes 5-15 s on a CPU; the GPU run compiles for real
            rec.skip(name, "dry run: torch.compile is left to the GPU run")
            continue
        if not rec.allows(name, 60 if compiled else 20):
            continue
        while True:
            x = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)
            try:
                with kernel_path(mode):
                    row = train_step_figures(model, optimizer, x, 2 if dry else 5, device, sync, compiled)
            except torch.cuda.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                planned = sum(plan_memory(config, seq, batch).values()) / 2**30
                rec.note(f"{name}: out of memory at micro-batch {batch} (planner: {planned:.1f} GiB)")
                if batch == 1 or rec.left() <= 0:
                    break
                batch //= 2
                continue
            except Exception as e:   # e.g. torch.compile failing on the model: noted, the other variants go on
                traceback.print_exc(file=sys.stdout)   # into log.txt
                rec.row({"variant": name, "error": f"{type(e).__name__}: {str(e)[:200]}"}, item=name)
                rec.note(f"{name} failed (traceback in log.txt): {type(e).__name__}: {str(e)[:200]}")
                break
            rec.row({"variant": name, **row}, item=name)
            print(f"  {name}: {row['step_ms']:.0f} ms/step, {row['tokens_per_s']:,.0f} tokens/s, MFU "
                  f"{row['mfu_pct'] or 0:.1f}%, peak {row.get('peak_gib', 0):.1f} GiB (plan {row['plan_gib']:.1f})",
                  flush=True)
            break
        if compiled:
            torch._dynamo.reset()


# -----------------------------------------------------------------------------
# 5. decoding

def part_decode(cfg, rec, dry):
    device, sync = where(dry)
    dtype = torch.float32 if dry else torch.bfloat16
    prompt_len, new = (8, 8) if dry else (32, 128)
    batches = (1, 2) if dry else (1, 8, 64)
    rec.plan([f"batch {b}" for b in batches])
    with torch.device(device):
        model = XmodelLM(LMConfig.preset("tiny" if dry else "xmodel-1.1b")).to(dtype).eval()
    for b in batches:
        if not rec.allows(f"batch {b}", 10):
            continue
        prompt = torch.randint(3, model.config.vocab_size, (b, prompt_len), device=device)
        with torch.no_grad():
            t = median_time(lambda: model.generate(prompt, new), 1 if dry else 3, sync)
        row = {"batch": b, "prompt": prompt_len, "new_tokens": new, "ms": t * 1e3, "ms_per_step": t / new * 1e3,
               "tokens_per_s": b * new / t}
        print(f"  batch {b:>3}: {t * 1e3:8.1f} ms | {row['tokens_per_s']:8.0f} tokens/s", flush=True)
        rec.row(row, item=f"batch {b}")


# -----------------------------------------------------------------------------
# 6. VLM time to first token

def part_vlm_ttft(cfg, rec, dry):
    device, sync = where(dry)
    dtype = torch.float32 if dry else torch.bfloat16
    counts = (576, 144, 36, 1)
    rec.plan([f"{n} visual tokens" for n in counts])
    with torch.device(device):
        tower = CLIPVisionTower(VisionConfig.preset("tiny" if dry else "clip-vit-l-14-336"))
        lm = XmodelLM(LMConfig.preset("tiny" if dry else "xmodel-1.1b"))
    side = tower.config.image_size
    pixels = torch.randn(1, 3, side, side, device=device, dtype=dtype)
    prompt = [[5] * 20 + [IMAGE_TOKEN_INDEX] + [6] * 20]     # system prompt + question: 40 text tokens
    for paper_count in counts:
        item = f"{paper_count} visual tokens"
        if not rec.allows(item, 6):
            continue
        n = xdp.grid_tokens(paper_count, tower.grid)
        with torch.device(device):
            projector = xdp.build_projector("xdp", tower.hidden_size, lm.config.n_embd, tower.grid, n)
        vlm = XmodelVLM(tower, projector, lm).to(device=device, dtype=dtype).eval()
        with torch.no_grad():
            x, _ = vlm.prompt_embeds(prompt, pixels)
            times = [median_time(f, 1 if dry else 5, sync) for f in
                     (lambda: vlm.encode_images(pixels), lambda: vlm.lm(embeds=x),
                      lambda: vlm.generate(prompt, pixels, max_new_tokens=1))]
        row = {"visual_tokens": n, "paper_count": paper_count, "sequence": x.shape[1],
               "tower_projector_ms": times[0] * 1e3, "prefill_ms": times[1] * 1e3, "ttft_ms": times[2] * 1e3}
        print(f"  {n} ({paper_count}) visual tokens: tower+projector {times[0] * 1e3:.1f} ms, prefill "
              f"{times[1] * 1e3:.1f} ms, first token {times[2] * 1e3:.1f} ms", flush=True)
        rec.row(row, item=item)


# -----------------------------------------------------------------------------
# 7. the shapes-world pipeline (speedrun.sh's steps, in a temporary folder)

def pipeline_steps(tmp, dry):
    """(name, argv, the output line that says how it went) of speedrun.sh's commands; the dry run
    shrinks the world and the step counts to seconds."""
    data, out = f"{tmp}/data/shapes", f"{tmp}/out"
    tiny = dry and {
        "shapes.py": ["--n_train", "32", "--n_test", "4", "--n_comp", "4", "--corpus_mb", "0.02", "--workers", "1"],
        "train_lm.py": ["--max_steps=2", "--batch_size=4", "--micro_batch=4", "--vocab_size=400", "--warmup_steps=1",
                        "--eval_interval=2", "--eval_batches=1", "--sample_tokens=4", "--log_interval=1"],
        "train_clip.py": ["--max_steps=2", "--batch_size=8", "--eval_group=4", "--eval_groups=2", "--warmup_steps=1",
                          "--probe=false", "--eval_interval=2", "--log_interval=1"],
        "train_vlm.py": ["--steps1=1", "--steps2=1", "--batch1=4", "--batch2=4", "--micro_batch=4",
                         "--image_check=4", "--log_interval=1"],
        "chat.py": ["--max_new_tokens", "8"]}
    steps = [("data", ["shapes.py", "--out", data], "wrote the shapes world"),
             ("LM", ["train_lm.py", f"--corpus={data}/corpus", f"--out_dir={out}/lm"], "reading check"),
             ("tiny CLIP", ["train_clip.py", f"--data={data}", f"--out_dir={out}/clip_tiny"], "retrieval"),
             ("VLM", ["train_vlm.py", f"--data={data}", f"--lm={out}/lm/model", f"--vision={out}/clip_tiny",
                      f"--out_dir={out}/vlm"], "stage 2 image use"),
             ("score", ["eval_vlm.py", "score", "shapes_pope", "--answers", f"{out}/vlm/eval/shapes_pope.jsonl",
                        "--data", data], '"score"'),
             ("chat", ["chat.py", "--ckpt", f"{out}/vlm/model", "--image", f"{data}/eval/images/test_000000.png",
                       "How many shapes are in the image?\nAnswer the question using a single word or phrase."], "")]
    return [(name, argv + (tiny.get(argv[0], []) if tiny else []), key) for name, argv, key in steps]


def run_step(argv, log_path, timeout):
    """Runs `python argv...` in its own process group; (return code or None if stopped, seconds)."""
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable] + argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, time.time() - t0


def part_pipeline(cfg, rec, dry):
    tmp = tempfile.mkdtemp(prefix="xmodel_pipeline_")
    logs = os.path.join(cfg.out, "pipeline")
    os.makedirs(logs, exist_ok=True)
    steps = pipeline_steps(tmp, dry)
    rec.plan([s[0] for s in steps])
    total, failed = 0.0, None
    try:
        for name, argv, key in steps:
            if failed:
                rec.skip(name, f"needs the {failed} step, which did not finish")
                continue
            if not rec.allows(name):
                failed = name
                continue
            log = os.path.join(logs, f"{name.replace(' ', '_')}.log")
            rc, seconds = run_step(argv, log, rec.left())
            total += seconds
            lines = open(log, errors="replace").read().splitlines()
            said = next((l for l in reversed(lines) if key and key in l), lines[-1] if lines else "")
            status = "ok" if rc == 0 else ("stopped at the cap" if rc is None else f"exit {rc}")
            rec.row({"step": name, "command": "python " + " ".join(argv).replace(tmp, "$TMP"), "seconds": seconds,
                     "status": status, "says": said.strip().replace(tmp, "$TMP")[:160]}, item=name)
            print(f"  {name}: {status} in {seconds:.0f} s | {said.strip()[:120]}", flush=True)
            if rc != 0:
                failed = name
                if rc is None:
                    rec.skip(name, "cap: stopped before it finished", cap=True)
        report = os.path.join(tmp, "out", "vlm", "eval", "shapes_report.json")
        if os.path.exists(report):
            with open(report) as f:
                r = json.load(f)
            rec.data["scores"] = {"gqa_overall": r["shapes_gqa"]["score"],
                                  "compositional": r["shapes_gqa_compositional"]["score"],
                                  "pope_f1": r["shapes_pope"]["score"], "mme": r["shapes_mme"]["score"],
                                  "sqa_img": r["shapes_sqa"]["score"], **r["shapes_gqa"].get("per_detailed", {})}
        rec.row({"step": "all", "seconds": total, "status": "ok" if not failed else f"stopped at {failed}"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


PARTS = {  # name: (function, seconds of the default 480 s budget)
    "ceilings": (part_ceilings, 8),
    "correctness": (part_correctness, 90),
    "kernel_speed": (part_kernel_speed, 55),
    "train": (part_train, 150),
    "decode": (part_decode, 25),
    "vlm_ttft": (part_vlm_ttft, 32),
    "pipeline": (part_pipeline, 120),
}


# -----------------------------------------------------------------------------
# The plan: each part's deadline on one clock

def make_plan(cfg):
    """[(part, seconds)] of the parts asked for; --caps sets some, the rest share what is left in
    proportion to their default shares."""
    asked = list(PARTS) if cfg.parts == "all" else [p.strip() for p in cfg.parts.split(",") if p.strip()]
    if set(asked) - set(PARTS):
        raise UserError(f"--parts: unknown part(s) {sorted(set(asked) - set(PARTS))}; the parts are {', '.join(PARTS)}")
    names = [p for p in PARTS if p in asked]
    caps = {}
    for pair in filter(None, cfg.caps.split(",")):
        part, _, seconds = pair.partition("=")
        if part.strip() not in PARTS or not seconds.replace(".", "", 1).isdigit():
            raise UserError(f"--caps: expected part=seconds with a part among {', '.join(PARTS)}, got {pair!r}")
        caps[part.strip()] = float(seconds)
    free = max(cfg.budget_s - sum(s for p, s in caps.items() if p in names), 0)
    shared = sum(PARTS[p][1] for p in names if p not in caps) or 1
    return [(p, caps[p] if p in caps else free * PARTS[p][1] / shared) for p in names]


# -----------------------------------------------------------------------------
# A part in its own process

def child(spec_path):
    """The body of a part's process: run it, record a crash with its traceback, save."""
    with open(spec_path) as f:
        spec = json.load(f)
    cfg, part, dry = GPUCheckConfig(**spec["cfg"]), spec["part"], spec["dry"]
    rec = Record(spec["record"], part, spec["deadline"], dry)
    try:
        rec.data["environment"] = environment(dry)
        PARTS[part][0](cfg, rec, dry)
        if cfg.crash == part:
            raise RuntimeError(f"injected crash (--crash={part}), after the part's measurements")
        capped = any(s["cap"] for s in rec.data["skipped"])
        rec.data["status"] = "cap" if capped else "ok"
    except Exception as e:
        rec.data["status"] = "crashed"
        rec.data["error"] = f"{type(e).__name__}: {e}"
        rec.data["traceback"] = traceback.format_exc()[-3000:]
        print(f"  CRASHED: {rec.data['error']}\n{rec.data['traceback']}", flush=True)
    rec.save()


def environment(dry):
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "triton": getattr(sys.modules.get("triton"), "__version__", None)}
    if not dry:
        p = torch.cuda.get_device_properties(0)
        env.update(device=p.name, gpu_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        env["device"] = f"cpu ({os.cpu_count()} cores), dry run"
    return env


def run_part(cfg, part, deadline, dry, log):
    """Runs one part in a fresh process until its deadline (+ GRACE_S); returns its record."""
    work = os.path.join(cfg.out, ".parts")
    os.makedirs(work, exist_ok=True)
    spec_path, record = os.path.join(work, f"{part}.spec.json"), os.path.join(work, f"{part}.json")
    with open(spec_path, "w") as f:
        json.dump({"cfg": dataclasses.asdict(cfg), "part": part, "deadline": deadline, "dry": dry,
                   "record": record}, f)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dry:   # the kernels on the CPU; one thread: two OpenMP threads on a busy 2-core machine spin 50x slower
        env.update(TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", "import sys, bench_gpu; bench_gpu.child(sys.argv[1])", spec_path],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tail = []

    def pump():   # the part's output, live, to the console and log.txt
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            tail[:] = (tail + [line.rstrip()])[-20:]
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    killed = False
    try:
        proc.wait(timeout=max(deadline + GRACE_S - time.time(), 1))
    except BaseException as e:   # the cap, or Ctrl-C (which does not reach a process in its own session)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not isinstance(e, subprocess.TimeoutExpired):
            raise
        killed = True
    reader.join(timeout=5)
    try:
        with open(record) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        rec = {"part": part, **empty_record()}
    if killed or rec.get("status") == "running":
        rec["status"] = "killed at the cap" if killed else f"died (exit {proc.returncode})"
        rec["error"] = rec["status"] + "; its last output: " + " | ".join(tail[-6:])
        gone = {s["item"] for s in rec["skipped"]} | set(rec["done"])
        rec["skipped"] += [{"item": i, "why": "not reached: " + rec["status"], "cap": killed}
                           for i in rec["planned"] if i not in gone]
    return rec


# -----------------------------------------------------------------------------
# Goals, from the parts' rows

def find(results, part, **match):
    return [r for r in results["parts"].get(part, {}).get("rows", [])
            if all(r.get(k) == v for k, v in match.items())]


def goals(results):
    """[{goal, target, measured, met}]: met is None when the figure was not measured."""
    out = []

    def goal(name, target, value, ok, note=""):
        out.append({"goal": name, "target": target, "measured": value, "note": note,
                    "met": None if value is None else bool(ok(value))})
    att = {impl: next(iter(find(results, "kernel_speed", impl=impl, T=4096, D=64, causal=True)), {})
           for impl in ("triton", "sdpa flash")}
    ours, flash = att["triton"], att["sdpa flash"]
    for way, floor in (("fwd", 300), ("bwd", 150)):
        goal(f"attention causal D=64 T=4096 {way} TFLOP/s", f">= {floor}", ours.get(f"{way}_tflops"),
             lambda v, f=floor: v >= f)
        ratio = (ours[f"{way}_tflops"] / flash[f"{way}_tflops"]
                 if ours.get(f"{way}_tflops") and flash.get(f"{way}_tflops") else None)
        goal(f"attention {way} vs SDPA flash (same run)", ">= 0.9x", ratio, lambda v: v >= 0.9)
    copy = next(iter(find(results, "ceilings")), {}).get("copy_gbps")
    conv = [r for r in results["parts"].get("kernel_speed", {}).get("rows", []) if r.get("kind") == "dwconv"]
    shapes = {r["shape"] for r in conv}
    per_shape = [{r["impl"]: r["gbps"] for r in conv if r["shape"] == s} for s in sorted(shapes)]
    per_shape = [s for s in per_shape if "triton" in s and len(s) == 3]
    big = max((int(s.split()[0][2:]) for s in shapes), default=0)
    big_ours = [r["gbps"] for r in conv if r["impl"] == "triton" and r["shape"].startswith(f"B={big} ")]
    goal("dwconv GB/s / copy bandwidth % (worst case of the largest batch)", ">= 70",
         100 * min(big_ours) / copy if big_ours and copy else None, lambda v: v >= 70, f"B={big}" if big else "")
    goal("dwconv faster than PyTorch's best layout (cases)", "all",
         f"{sum(s['triton'] > max(s['conv2d NCHW'], s['conv2d NHWC']) for s in per_shape)}/{len(per_shape)}"
         if per_shape else None, lambda v: v.split("/")[0] == v.split("/")[1])
    train = [r for r in find(results, "train") if r["variant"].startswith("triton") and r.get("mfu_pct")]
    best = max(train, key=lambda r: r["mfu_pct"], default=None)
    goal("1.1B training MFU % (triton kernels, best variant)", ">= 40", best and best["mfu_pct"],
         lambda v: v >= 40, best["variant"] if best else "")
    decode = next(iter(find(results, "decode", batch=1)), {})
    goal("decode batch 1 tokens/s", ">= 300", decode.get("tokens_per_s"), lambda v: v >= 300)
    checks = find(results, "correctness")
    goal("correctness cases passed", "all", f"{sum(r['passed'] for r in checks)}/{len(checks)}" if checks else None,
         lambda v: v.split("/")[0] == v.split("/")[1])
    return out


# -----------------------------------------------------------------------------
# results.json and results.md

def fmt(v, col=""):
    if isinstance(v, bool):
        return "yes" if v else ("**FAIL**" if col == "passed" else "no")
    if isinstance(v, float):
        return "-" if math.isnan(v) else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) >= 0.01 or v == 0
                                          else f"{v:.1e}")
    return "-" if v is None else str(v).replace("|", "/")


def tables(rows):
    """One markdown table per kind of row (attention, dwconv, ...), columns in order of appearance."""
    out = []
    for kind in dict.fromkeys(r.get("kind") for r in rows):
        some = [r for r in rows if r.get("kind") == kind]
        cols = [c for c in dict.fromkeys(k for r in some for k in r) if c != "kind"]
        out += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(fmt(r.get(c), c) for c in cols) + " |" for r in some]
    return out


def write_results(cfg, results):
    with open(os.path.join(cfg.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    env = results["environment"]
    md = [f"# GPU check: {env.get('device', '?')}", ""]
    if results["dry_run"]:
        md += ["**Dry run on the CPU**: small shapes, kernels in Triton's interpreter. It checks the plumbing; "
               "no figure here is a GPU measurement, and the goals below are not judged by it.", ""]
    md += [f"{results['started']} | torch {env.get('torch')} | triton {env.get('triton')} | CUDA {env.get('cuda')} | "
           f"Python {env.get('python')} | transformers {results['transformers']} | commit {results['commit']}", "",
           f"`{results['command']}`: budget {cfg.budget_s:.0f} s, wall {results.get('wall_s', 0):.0f} s", "",
           "## Goals", "", "| goal | target | measured | |", "|---|---|---|---|"]
    for g in results.get("goals", []):
        mark = ("dry run" if results["dry_run"] else "not measured" if g["met"] is None
                else "met" if g["met"] else "**MISSED**")
        md.append(f"| {g['goal']} | {g['target']} | {fmt(g['measured'])} | {mark} {g['note']} |")
    md += ["", "## Parts", "", "| part | cap (s) | wall (s) | status | skipped |", "|---|---|---|---|---|"]
    for name, p in results["parts"].items():
        md.append(f"| {name} | {p['cap_s']:.0f} | {p['wall_s']:.0f} | {p['status']} | {len(p['skipped'])} |")
    for i, (name, p) in enumerate(results["parts"].items(), 1):
        md += ["", f"## {i} {name}", *(tables(p["rows"]) if p["rows"] else ["", "(no rows)"])]
        if p.get("scores"):
            md += ["", "Held-out scores: " + ", ".join(f"{k} {fmt(v)}" for k, v in p["scores"].items())]
        md += [""] + [f"- note: {n}" for n in p["notes"]] + [f"- skipped {s['item']}: {s['why']}" for s in p["skipped"]]
        if p.get("error"):
            md += ["", f"**{p['status']}**: {p['error']}", "", "```", p.get("traceback", "").strip()[-1500:], "```"]
    with open(os.path.join(cfg.out, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")


def versions():
    """transformers' version (optional: recorded, never needed) and the git commit, or None."""
    try:
        import transformers
        tv = transformers.__version__
    except ImportError:
        tv = None
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        git = None
    return tv, (git.stdout.strip() or None) if git else None


def main(cfg):
    dry = cfg.dry_run or not torch.cuda.is_available()
    plan = make_plan(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    tv, commit = versions()
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": dry, "budget_s": cfg.budget_s,
               "command": "python " + " ".join(["bench_gpu.py"] + sys.argv[1:]), "transformers": tv,
               "commit": commit, "environment": {}, "plan": [{"part": p, "cap_s": s} for p, s in plan], "parts": {}}
    print(f"GPU check{' (DRY RUN on the CPU)' if dry else ''}: budget {cfg.budget_s:.0f} s, results in {cfg.out}")
    t0, clock = time.time(), 0.0
    for i, (part, seconds) in enumerate(plan, 1):
        clock += seconds
        print(f"  {i} {part:<13} {seconds:5.0f} s   (done by {clock:4.0f} s)")
    with open(os.path.join(cfg.out, "log.txt"), "w") as log:
        clock = t0
        for i, (part, seconds) in enumerate(plan, 1):
            clock += seconds
            start = time.time()
            print(f"\n== {i} {part}: until {clock - t0:.0f} s, {clock - start:.0f} s from now", flush=True)
            rec = run_part(cfg, part, clock, dry, log)
            rec.update(cap_s=seconds, wall_s=time.time() - start)
            results["environment"] = results["environment"] or rec.get("environment", {})
            results["parts"][part] = rec
            results["wall_s"] = time.time() - t0
            results["goals"] = goals(results)
            write_results(cfg, results)
    shutil.rmtree(os.path.join(cfg.out, ".parts"), ignore_errors=True)
    print(f"\n{'part':<14} {'status':<18} skipped")
    for part, p in results["parts"].items():
        print(f"{part:<14} {p['status']:<18} " + "; ".join(s["item"] for s in p["skipped"]))
    for g in results["goals"]:
        print(f"goal {g['goal']}: {fmt(g['measured'])} (target {g['target']}): "
              f"{'not measured' if g['met'] is None else 'met' if g['met'] else 'MISSED'}")
    print(f"\nwall {results['wall_s']:.0f} s; results in {cfg.out}/results.md and results.json")
    broken = [p for p, r in results["parts"].items() if r["status"] == "crashed" or r["status"].startswith("died")]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(parse_config(GPUCheckConfig, argv))))
