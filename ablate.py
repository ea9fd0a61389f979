"""
The paper's ablations on the shapes world: projectors (Table 7) and visual tokens (Table 8).

    python ablate.py                                        # 6 settings on the tiny CLIP, about 20-30 minutes on 2 CPU cores
    python ablate.py --projector=xdp,ldp --tokens=144,36 --steps1=150 --steps2=150
    python ablate.py --help

Every projector of --projector at its default token count, then the first one at each count of
--tokens; each setting trains VLM stages 1 and 2 (train_vlm.py) from the same LM and CLIP, then
answers the held-out GQA-, POPE- and MME-style sets (eval_vlm.py run, scorers.py). Token counts
are the paper's, on CLIP-L's 24x24 grid; on a smaller grid the same stride is used
(xdp.grid_tokens: 576, 144, 36, 4, 1 become 9, 4, 1, 1, 1 on the tiny CLIP's 3x3). Writes
out/ablation/ablation.md and ablation.png. Resumable: a setting whose result.json has the same
recipe (LM, CLIP, steps) is not trained again.
"""

import argparse
import dataclasses
import json
import os
import time

import torch

import train_vlm
from common import UserError, checked, pyplot, read_json, run_main
from eval_vlm import run
from model import config_from_hf
from scorers import load_json, rounded, score
from vision import CLIPVisionTower
from xdp import build_projector, grid_tokens

ABLATION_BENCHES = ("shapes_gqa", "shapes_pope", "shapes_mme")


def ablation_settings(projectors, tokens, grid, vision_width, lm_width):
    """(projector, visual tokens) pairs: every projector at its default count, then the first
    projector at each of `tokens`; duplicates (e.g. 36, 4 and 1 all giving 1 on 3x3) run once.
    Every setting is built once on the meta device, so an impossible one fails before training."""
    with torch.device("meta"):
        settings = [(p, build_projector(p, vision_width, lm_width, grid).tokens) for p in projectors]
        settings += [(projectors[0], grid_tokens(n, grid)) for n in tokens]
        for p, n in settings:
            build_projector(p, vision_width, lm_width, grid, n)
    return list(dict.fromkeys(settings))


def ablate(projectors, tokens, world, out_dir, **vlm_options):
    """Train and score every setting (resumable: a finished setting's result.json is reused);
    write ablation.md and ablation.png to out_dir and return the rows."""
    base = train_vlm.VLMConfig(data=world, evaluate=False, **vlm_options)
    tower = CLIPVisionTower.from_hf(base.vision)
    lm_width = config_from_hf(read_json(os.path.join(base.lm, "config.json")), base.lm).n_embd
    settings = ablation_settings(projectors, tokens, tower.grid, tower.hidden_size, lm_width)
    print(f"ablation: {len(settings)} settings on {world} ({tower.grid}x{tower.grid} patches): " +
          ", ".join(f"{p} x {n}" for p, n in settings))
    rows = []
    for i, (projector, n) in enumerate(settings):
        run_dir = os.path.join(out_dir, f"{projector}_{n}")
        result_path = os.path.join(run_dir, "result.json")
        recipe = {"lm": base.lm, "vision": base.vision, "steps1": base.steps1, "steps2": base.steps2}
        if os.path.exists(result_path) and load_json(result_path).get("recipe") == recipe:
            rows.append(load_json(result_path))
            print(f"[{i + 1}/{len(settings)}] {projector} x {n}: done before, reusing {result_path}")
            continue
        print(f"[{i + 1}/{len(settings)}] {projector} x {n} visual tokens: training both stages", flush=True)
        cfg = dataclasses.replace(base, projector=projector, tokens=n, out_dir=run_dir, resume=False)
        t0 = time.time()
        train_vlm.main(cfg)
        row = {"projector": projector, "tokens": n, "train_s": round(time.time() - t0, 1), "recipe": recipe}
        for bench in ABLATION_BENCHES:
            answers = os.path.join(run_dir, "eval", f"{bench}.jsonl")
            os.makedirs(os.path.dirname(answers), exist_ok=True)
            if os.path.exists(answers):
                os.remove(answers)  # answers of an earlier, interrupted model
            run(bench, os.path.join(run_dir, "model"), world, answers)
            row[bench] = score(bench, answers, world)["score"]
        row = rounded(row)
        with open(result_path, "w") as f:
            json.dump(row, f, indent=2)
        rows.append(row)
    write_ablation(rows, out_dir, projectors[0] if tokens else None)
    return rows


def ablation_table(rows):
    """Markdown, one row per setting, the paper's columns as the shapes world has them."""
    lines = ["| projector | visual tokens | GQA-style acc (%) | POPE-style F1 (%) | MME-style perception (/800) | train (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['projector']} | {r['tokens']} | {r['shapes_gqa']:.1f} | {100 * r['shapes_pope']:.1f} "
                     f"| {r['shapes_mme']:.1f} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def write_ablation(rows, out_dir, swept):
    table = ablation_table(rows)
    print("\n" + table)
    with open(os.path.join(out_dir, "ablation.md"), "w") as f:
        f.write(table)
    plt = pyplot(without="no ablation.png")  # without matplotlib there is the table alone
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    projectors = list(dict.fromkeys(r["projector"] for r in rows))
    firsts = [next(r for r in rows if r["projector"] == p) for p in projectors]
    left.bar(projectors, [r["shapes_gqa"] for r in firsts])
    left.set(title="projectors (Table 7)", ylabel="GQA-style accuracy (%)", ylim=(0, 100))
    if swept:
        sweep = sorted((r for r in rows if r["projector"] == swept), key=lambda r: r["tokens"])
        for key, label, k in (("shapes_gqa", "GQA-style acc", 1), ("shapes_pope", "POPE-style F1 x100", 100)):
            right.plot([r["tokens"] for r in sweep], [k * r[key] for r in sweep], "o-", label=label)
        right.set(title=f"visual tokens, {swept} (Table 8)", xlabel="visual tokens", xscale="log", ylim=(0, 100))
        right.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "ablation.png"), dpi=100)
    print(f"wrote {out_dir}/ablation.md and ablation.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projector", default="xdp,ldpv2,mlp2x_gelu,linear",
                        help="comma-separated projector kinds, each at its default token count (Table 7)")
    parser.add_argument("--tokens", default="576,144,36,4,1",
                        help="visual token counts for the first projector, as in the paper (Table 8)")
    parser.add_argument("--data", default="data/shapes", help="the shapes world (python shapes.py)")
    parser.add_argument("--lm", default="out/lm/model", help="the LM every setting starts from")
    parser.add_argument("--vision", default="out/clip_tiny", help="the CLIP tower")
    parser.add_argument("--steps1", type=checked(int, "x >= 1"), default=30, help="stage-1 steps per setting")
    parser.add_argument("--steps2", type=checked(int, "x >= 1"), default=900,
                        help="stage-2 steps per setting (of train_vlm.py's batch2, 32 samples)")
    parser.add_argument("--out", default="out/ablation", help="one folder per setting, ablation.md and .png")
    args = parser.parse_args(argv)
    try:
        projectors = [p for p in args.projector.split(",") if p]
        tokens = [int(t) for t in args.tokens.split(",") if t]
    except ValueError:
        raise UserError(f"--tokens takes comma-separated integers, got {args.tokens!r}") from None
    if not projectors:
        raise UserError("--projector needs at least one projector kind")
    os.makedirs(args.out, exist_ok=True)
    ablate(projectors, tokens, args.data, args.out, lm=args.lm, vision=args.vision,
           steps1=args.steps1, steps2=args.steps2)


if __name__ == "__main__":
    run_main(main)
