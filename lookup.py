"""
The reading ladder's fast inner loop: does the tiny LM learn to look something up in its
context? A synthetic task in token ids, a couple of minutes on one CPU core, that isolates the
skill the VLM needs from everything else (words, templates, the tower, the projector).

    python lookup.py                            # one position per object, answer after the question
    python lookup.py --fill=8                   # 8 fixed tokens between the question and its answer
    python lookup.py --fill=8 --gap=4           # ... and the question's words at varying places
    python lookup.py --fill=8 --gap=4 --curriculum=200   # the same, fixed places for 200 steps first
    python lookup.py --objects=words            # each object as 4 tokens, as text describes it
    python lookup.py --empty=true --min_objects=2   # empty cells, no one-object training scenes
    python lookup.py --empty=true --min_objects=2 --fill=3 --questions=1 --batch=192 --pairs=0.5
                                                # half the questions name their object by two words
    python lookup.py --min_objects=2 --fill=8 --gap=4 --n_embd=128 --n_head=4 --steps=1200
                                                # half the width, three times the steps, same minutes
    python lookup.py --help

A sequence is <s>, a scene of 1-4 objects (size, colour, shape, cell; no two with the same colour
and shape), SEP, then `questions` questions. A question is a type token (which attribute to
answer) and a key (the object's shape if no other object has it, else its colour if no other
object has that; objects with neither are not asked about), then `fill`
fixed tokens, then the answer: the asked attribute of that object. The loss and the accuracy are
on the answers only.

--objects=one: an object is one position, the sum of its four attribute embeddings, as a visual
  token holding a whole object is. --objects=words: four positions (size colour shape cell), as a
  description in text is; reading the token next to the matched one needs two attention layers
  composed. --empty=true (with one): the empty cells of the 3x3 grid are positions too, holding
  only their cell, as the VLM's 9 per-cell tokens are.
--gap=G: the type token and the key come in either order with 0-G other tokens around them, so
  the question's words sit at different distances from the answer, as in natural language.
--curriculum=N: the first N steps use gap 0. The held-out set always uses --gap.
--min_objects=M: training scenes hold M-4 objects. In a one-object scene any question is answered
  by copying the only object, a shortcut that delays the lookup. The held-out scenes keep 1-4.
--pairs=P: a share P of the questions name their object by its colour and shape together (two
  tokens, as "Where is the blue star?" does) and ask its size or cell; accuracy is then also
  printed for each kind of key.

--n_embd=W --n_head=H: the model's width and heads (head size W/H; the MLP scales with W), so
  depth and width can be weighed at the same cost: on a CPU a step costs what the matrices cost.

Accuracy on 256 held-out sequences every `eval_interval` steps. Model: model.py's `tiny` LM over
a 128-token vocabulary, by default at its width until 2026-12-07 (4 layers, 256 wide, 8 heads), at
which README's measurements of it were taken (those before 2026-12-03 with 2 key/value heads);
`--n_embd=128 --n_head=4` is the `tiny` preset of now. AdamW, warmup, cosine to a tenth; bf16
autocast where the CPU has native bf16, as in the trainers. Measurements: README, "The reading
ladder".
"""

import math
import random
import time
from dataclasses import dataclass

import torch

from common import UserError, mixed_precision, parse_config, run_main
from model import LMConfig, XmodelLM


@dataclass
class LookupConfig:
    objects: str = "one"            # one (a position per object) | words (4 tokens per object)
    empty: bool = False             # with objects=one: the empty cells of the 3x3 grid as positions too
    fill: int = 0                   # fixed tokens between a question and its answer
    gap: int = 0                    # up to this many other tokens around the question's two words
    curriculum: int = 0             # steps trained with gap 0 before --gap
    min_objects: int = 1            # fewest objects in a training scene (held-out scenes: 1-4)
    pairs: float = 0.0              # share of questions keyed by colour and shape together
    questions: int = 6              # questions per sequence
    n_embd: int = 256               # the model's width (the `tiny` preset's until 2026-12-07; 128 now)...
    n_head: int = 8                 # ...and its heads, each with its own key and value (4 now)
    steps: int = 400
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 30
    seed: int = 0
    eval_interval: int = 100
    CHECKS = dict(objects=("one", "words"), fill="0 <= x <= 40", gap="0 <= x <= 12", curriculum="x >= 0",
                  min_objects="1 <= x <= 4", pairs="0 <= x <= 1", n_embd="x >= 1", n_head="x >= 1",
                  questions="x >= 1", steps="x >= 1", batch="x >= 1", lr="x > 0", warmup="x >= 0", seed="x >= 0",
                  eval_interval="x >= 1")


# Token ids: each attribute value its own token, the question types, fillers, "other words"
ATTRS = {"size": 2, "colour": 6, "shape": 5, "cell": 9}
OFFSET = {"size": 10, "colour": 20, "shape": 30, "cell": 40}
ASK = {"size": 60, "colour": 61, "shape": 62, "cell": 63}
BOS, SEP, FILL, OTHER, VOCAB = 1, 3, 70, 100, 128  # FILL.. fixed fillers, OTHER.. random other words
IGNORE = -100


def example(rng, cfg, gap, fewest=1):
    """(positions, labels, paired) of a scene of `fewest`-4 objects: a position is a tuple of up to
    4 token ids whose embeddings are summed (0 = none); labels hold the answer at the position
    that predicts it, IGNORE elsewhere; paired: the positions whose question named its object by
    colour and shape."""
    keyed = []
    while not keyed:  # a scene with at least one object a question can name
        n = rng.randint(fewest, 4)
        cells = rng.sample(range(ATTRS["cell"]), n)
        pairs = rng.sample([(c, s) for c in range(ATTRS["colour"]) for s in range(ATTRS["shape"])], n)
        objs = [{"size": rng.randrange(2), "colour": c, "shape": s, "cell": cell} for (c, s), cell in zip(pairs, cells)]
        unique = lambda o, k: sum(p[k] == o[k] for p in objs) == 1
        keyed = [(o, "shape" if unique(o, "shape") else "colour") for o in objs
                 if unique(o, "shape") or unique(o, "colour")]
    ids = lambda o, keys: tuple(OFFSET[k] + o[k] for k in keys)
    pos = [(BOS,)]
    if cfg.objects == "words":
        pos += [(t,) for o in objs for t in ids(o, ("size", "colour", "shape", "cell"))]
    elif cfg.empty:
        by_cell = {o["cell"]: o for o in objs}
        pos += [ids(by_cell[c], ATTRS) if c in by_cell else (OFFSET["cell"] + c,) for c in range(ATTRS["cell"])]
    else:
        pos += [ids(o, ATTRS) for o in objs]
    pos.append((SEP,))
    labels, paired = [IGNORE] * len(pos), []
    for _ in range(cfg.questions):
        o, key = rng.choice(keyed)
        asked = rng.choice([k for k in ATTRS if k != key])
        named = [OFFSET[key] + o[key]]
        pair = cfg.pairs > 0 and rng.random() < cfg.pairs
        if pair:  # any object: no two share both colour and shape
            o, asked = rng.choice(objs), rng.choice(["size", "cell"])
            named = [OFFSET["colour"] + o["colour"], OFFSET["shape"] + o["shape"]]
        first, second = [ASK[asked]], named
        if gap:
            others = [OTHER + rng.randrange(16) for _ in range(rng.randint(0, gap))]
            first, second = (first, second) if rng.random() < 0.5 else (second, first)
            cut = rng.randint(0, len(others))
            words = others[:cut] + first + others[cut:cut + 1] + second + others[cut + 1:]
        else:
            words = first + second
        words += [FILL + i for i in range(cfg.fill)]
        pos += [(t,) for t in words]
        labels += [IGNORE] * (len(words) - 1) + [OFFSET[asked] + o[asked]]  # the last one predicts the answer
        if pair:
            paired.append(len(labels) - 1)
        pos.append((OFFSET[asked] + o[asked],))
        labels.append(IGNORE)
    return pos, labels, paired


def batch(rng, cfg, n, gap, fewest=1):
    """n examples as (x (n, T, 4) token ids, y (n, T) labels, paired (n, T) bool)."""
    rows = [example(rng, cfg, gap, fewest) for _ in range(n)]
    T = max(len(p) for p, _, _ in rows)
    x = torch.zeros(n, T, 4, dtype=torch.long)
    y = torch.full((n, T), IGNORE)
    paired = torch.zeros(n, T, dtype=torch.bool)
    for i, (p, labels, at) in enumerate(rows):
        x[i, :len(p)] = torch.tensor([list(t) + [0] * (4 - len(t)) for t in p])
        y[i, :len(labels)] = torch.tensor(labels)
        paired[i, at] = True
    return x, y, paired


def embed(model, x):
    """(B, T, 4) token ids, 0 = none -> (B, T, n_embd): each position the sum of its tokens' embeddings."""
    return (model.model.embed_tokens(x) * (x != 0).unsqueeze(-1)).sum(2)


def accuracy(model, x, y, paired):
    """Held-out accuracy (%) over all answers, and over those keyed by one word and by a colour and
    shape pair (None where there are none)."""
    model.eval()
    with torch.no_grad(), mixed_precision("cpu"):
        logits, _ = model(embeds=embed(model, x))
    model.train()
    right, m = logits.argmax(-1) == y, y != IGNORE
    share = lambda mask: 100 * right[mask].float().mean().item() if mask.any() else None
    return share(m), share(m & ~paired), share(m & paired)


def build_model(cfg):
    """The `tiny` LM at --n_embd/--n_head, its MLP scaled with the width (688 at 256)."""
    return XmodelLM(LMConfig.preset("tiny", vocab_size=VOCAB, max_seq_len=512, n_embd=cfg.n_embd, n_head=cfg.n_head,
                                    n_kv_head=cfg.n_head, intermediate_size=round(cfg.n_embd * 688 / 256)))


def train(cfg):
    """Train on fresh sequences; returns [(step, held-out accuracy %)]."""
    if cfg.empty and cfg.objects != "one":
        raise UserError("--empty=true adds the empty cells as positions of their own: it needs --objects=one")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95))
    rng, held_out = random.Random(cfg.seed), batch(random.Random(999), cfg, 256, cfg.gap)
    curve, t0 = [], time.time()
    for step in range(cfg.steps + 1):
        if step % cfg.eval_interval == 0 or step == cfg.steps:
            overall, one, two = accuracy(model, *held_out)
            curve.append((step, overall))
            kinds = f" (one-word keys {one:.1f}%, colour+shape keys {two:.1f}%)" if cfg.pairs else ""
            print(f"step {step}/{cfg.steps} | held-out accuracy {overall:.1f}%{kinds} | {time.time() - t0:.0f} s",
                  flush=True)
        if step == cfg.steps:
            return curve
        scale = min(1.0, (step + 1) / max(1, cfg.warmup)) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / cfg.steps)))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * scale
        x, y, _ = batch(rng, cfg, cfg.batch, 0 if step < cfg.curriculum else cfg.gap, cfg.min_objects)
        with mixed_precision("cpu"):
            _, loss = model(embeds=embed(model, x), targets=y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    run_main(lambda argv: train(parse_config(LookupConfig, argv)))
