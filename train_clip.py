"""
Pretrain a tiny CLIP on the shapes world: the VLM's frozen vision tower, without any download.

    python train_clip.py             # tiny CLIP on the shapes world, CPU, about 5 minutes on 2 cores
    python train_clip.py --help      # every setting, with its default and meaning

CLIP's contrastive objective on the shapes world's captions: vision.py's `tiny` ViT (the 64x64
scenes at 96x96, 3x3 patches of 32 pixels: one per cell of the scenes' layout) and a text tower
made of Xmodel-LM's own blocks (model.Body). Beside it, a per-object term (region_loss): the
patch features over each object's cell, pooled, must pick out the object's own phrase ("large
red star at the top left") among all the phrases, its shape's word among the five and its cell's
name among the nine. The captions alone can be told apart by colour and place, so CLIP alone
learns shape slowly (probe shape 70.7%); with the per-object term 84-87% at 400 steps, 98% at
1200 (small objects 74 -> 96%). The phrase's cell, the shape word and the cell's name are there for
the VLM: without them the cell held 2% of the features' spread and shape 9% (colour 52%), and
the VLM, which learns weak directions slowly, answered position questions at chance. The loop:
AdamW with CLIP's betas, linear warmup then cosine decay, gradient clipping, CLIP's cap on the
logit scale, held-out image -> caption retrieval every eval_interval steps, a checkpoint at the
end. Then a probe of what the tower's features hold about each object (probe_cells). Output,
under out_dir: the ViT in HF CLIPVisionModel format (train_vlm.py's --vision), and ckpt/.
"""

import dataclasses
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import shapes
from common import InputNotFound, UserError, format_time, lr_at, make_optimizer, parse_config, run_main, save_checkpoint
from data import check_turns, load_llava_json
from model import Body, LMConfig, rope_table
from vision import CLIPVisionTower, ImageProcessor, VisionConfig



class WordTokenizer:
    """Lowercased words and punctuation: the shapes world's captions use about 40 distinct
    words, so a word vocabulary is exact and short (~29 tokens a caption). Id 0 pads, 1 ends
    every caption (CLIP's end-of-text: the text tower reads its features there), 2 is unknown."""

    def __init__(self, texts):
        words = {w for t in texts for w in self.split(t)}
        self.itos = ["<pad>", "<eot>", "<unk>"] + sorted(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @staticmethod
    def split(text):
        return re.findall(r"\w+|[^\w\s]", text.lower())

    def encode(self, texts):
        """-> ids (N, T) right-padded with 0, and lengths (N,) counting the <eot>."""
        rows = [[self.stoi.get(w, 2) for w in self.split(t)] + [1] for t in texts]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        return ids, torch.tensor([len(r) for r in rows])


class TextTower(nn.Module):
    """Xmodel-LM's own machinery (model.Body: embedding, RMSNorm, RoPE, causal GQA attention,
    SwiGLU), read out at each caption's <eot>, which has seen the whole caption."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.body = Body(config)
        self.cos, self.sin = rope_table(config.head_dim, config.max_seq_len, config.rope_theta)
        self.apply(lambda m: nn.init.normal_(m.weight, std=config.init_std)
                   if isinstance(m, (nn.Linear, nn.Embedding)) else None)

    def forward(self, ids, lengths):
        B, T = ids.shape
        x = self.body.embed_tokens(ids)                              # (B, T, C)
        cos, sin = self.cos[:T][None, None], self.sin[:T][None, None]  # (1, 1, T, hd)
        for block in self.body.layers:
            x = block(x, cos, sin, causal=True)  # causal: the right padding never reaches <eot>
        x = self.body.norm(x)
        return x[torch.arange(B), lengths - 1]                        # (B, C) at <eot>


class TinyCLIP(nn.Module):
    def __init__(self, vision_config, text_config, embed_dim):
        super().__init__()
        self.vision = CLIPVisionTower(vision_config)
        self.text = TextTower(text_config)
        self.visual_projection = nn.Linear(vision_config.hidden_size, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_config.n_embd, embed_dim, bias=False)
        nn.init.normal_(self.visual_projection.weight, std=vision_config.hidden_size ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=text_config.n_embd ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        # the per-object term's own projection and temperature (region_loss)
        self.region_projection = nn.Linear(vision_config.hidden_size, embed_dim, bias=False)
        nn.init.normal_(self.region_projection.weight, std=vision_config.hidden_size ** -0.5)
        self.region_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_images(self, pixels):
        return F.normalize(self.visual_projection(self.vision.image_embedding(pixels)), dim=-1)

    def embed_texts(self, ids, lengths):
        return F.normalize(self.text_projection(self.text(ids, lengths)), dim=-1)

    def forward(self, pixels, ids, lengths):
        """Symmetric InfoNCE: image i's caption is text i, and text i's image is image i."""
        img, txt = self.embed_images(pixels), self.embed_texts(ids, lengths)  # (B, E) each, unit length
        logits = self.logit_scale.exp() * img @ txt.T                         # (B, B) scaled cosines
        labels = torch.arange(len(logits))
        return logits, (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def region_loss(self, pixels, objects, pool, phrases, words, cells):
        """The per-object term: each object's cell, read from the patch features the VLM gets
        (the tower's select_layer), mean-pooled over the cell's patches (`pool`, (9, patches)),
        must match its own phrase ("large red star at the top left") among all the phrases, its
        shape's word among the shape words and its cell's name among the nine (three
        cross-entropies, added). objects: (image index in the batch, cell, phrase index, shape
        index), one row per object; phrases, words and cells: (ids, lengths) of the texts.
        -> (loss, accuracy on the phrases)."""
        features = self.vision(pixels)  # (B, patches, C): a second pass, simpler than sharing forward's (16% slower)
        image, cell, phrase, shape = objects.unbind(1)
        region = torch.einsum("np,npc->nc", pool[cell], features[image])     # (objects, C)
        region = F.normalize(self.region_projection(region), dim=-1)
        by_phrase = self.region_scale.exp() * region @ self.embed_texts(*phrases).T
        by_word = self.region_scale.exp() * region @ self.embed_texts(*words).T
        by_cell = self.region_scale.exp() * region @ self.embed_texts(*cells).T
        loss = F.cross_entropy(by_phrase, phrase) + F.cross_entropy(by_word, shape) + F.cross_entropy(by_cell, cell)
        return loss, (by_phrase.argmax(1) == phrase).float().mean().item()


def cell_pool(vcfg):
    """(9, patches): row k averages the patches whose centres lie in cell k of the 3x3 layout."""
    grid = vcfg.image_size // vcfg.patch_size
    cell = [int((j + 0.5) * 3 / grid) for j in range(grid)]  # the cell row (or column) of patch row j
    pool = torch.zeros(9, grid * grid)
    for r in range(grid):
        for c in range(grid):
            pool[3 * cell[r] + cell[c], r * grid + c] = 1.0
    return pool / pool.sum(1, keepdim=True)


def cell_windows(features, grid):
    """(N, grid*grid, C) patch features -> (N, 9, k*k*C): for each cell of the shapes world's
    3x3 layout, the k x k patches over it (k = ceil(grid/3); on 8x8 rows 0-2, 2-4 and 5-7)."""
    N, _, C = features.shape
    k = math.ceil(grid / 3)
    x = features.reshape(N, grid, grid, C)
    corners = [min(i * grid // 3, grid - k) for i in range(3)]
    return torch.stack([x[:, r:r + k, c:c + k].reshape(N, -1) for r in corners for c in corners], 1)


def variance_shares(x, labels):
    """How much of the features' spread each attribute accounts for: for features x (N, D) and
    integer labels (N,) per attribute, the between-class sum of squares over the total one
    (eta squared): sum over classes of n_k |mean_k - mean|^2, over sum |x_i - mean|^2. A direction
    the features hold weakly is one a linear projector after them, and the LM, learn from slowly:
    the VLM answered position questions at chance while the cell held 2% of the spread."""
    centred = x - x.mean(0)
    total = centred.pow(2).sum().clamp(min=1e-12)  # features all alike: every share 0, not nan
    shares = {}
    for a, y in labels.items():
        between = sum(centred[y == k].mean(0).pow(2).sum() * (y == k).sum() for k in y.unique())
        shares[a] = (between / total).item()
    return shares


def probe_cells(tower, root, n_train=4000, steps=600, seed=0):
    """What a frozen tower's features hold about each object of a scene: a small MLP probe
    reads the object's colour, shape, size and cell from the patches over its cell (the cell
    from the features alone: whether they keep where they are), trained on objects of `n_train`
    training scenes and scored on the held-out test scenes. A VLM cannot answer about what these
    features do not hold. Returns ({attribute: accuracy}, with shape also split by the object's
    size; {attribute: share of the held-out features' spread}, variance_shares)."""
    attributes = {"colour": list(shapes.COLOURS), "shape": shapes.SHAPES, "size": shapes.SIZES, "cell": shapes.CELLS}
    proc = ImageProcessor(tower.config.image_size)

    def objects(split, n):
        with open(os.path.join(root, f"scenes_{split}.jsonl"), encoding="utf-8") as f:
            scenes = [json.loads(line) for _, line in zip(range(n), f)]
        pixels = proc.normalize(torch.stack([proc.to_uint8(os.path.join(root, s["image"])) for s in scenes]))
        with torch.no_grad():
            cells = cell_windows(torch.cat([tower(p) for p in pixels.split(256)]), tower.grid)  # (N, 9, D)
        found = [(i, o) for i, s in enumerate(scenes) for o in s["objects"]]
        x = torch.stack([cells[i, 3 * o["row"] + o["col"]] for i, o in found])             # (objects, D)
        return x, {a: torch.tensor([v.index(o[a]) for _, o in found]) for a, v in attributes.items()}

    x, y = objects("train", n_train)
    x_test, y_test = objects("test", n_train)
    mean, std = x.mean(0), x.std(0) + 1e-5
    shares = variance_shares(x_test, y_test)
    x, x_test = (x - mean) / std, (x_test - mean) / std
    g = torch.Generator().manual_seed(seed)
    accuracy = {}
    for a, values in attributes.items():
        torch.manual_seed(seed)
        probe = nn.Sequential(nn.Linear(x.shape[1], 256), nn.GELU(), nn.Linear(256, len(values)))
        optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
        for _ in range(steps):
            b = torch.randint(len(x), (512,), generator=g)
            loss = F.cross_entropy(probe(x[b]), y[a][b])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            right = probe(x_test).argmax(1) == y_test[a]
        accuracy[a] = right.float().mean().item()
        if a == "shape":  # small objects span about 2x2 patches: their shape is the hardest to see
            for k, size in enumerate(shapes.SIZES):
                of_size = y_test["size"] == k
                if of_size.any():  # a tiny test world may hold no object of one size
                    accuracy[f"shape of {size} objects"] = right[of_size].float().mean().item()
    return accuracy, shares


@dataclass
class CLIPTrainConfig:
    # --- data ---
    data: str = "data/shapes"       # the shapes world (made if missing): pretrain.json, images/, scenes_test.jsonl
    max_pairs: int = 0              # use the first N (image, caption) pairs of pretrain.json; 0 = all
    # --- model ---
    preset: str = "tiny"            # VisionConfig preset of the image tower
    text_layers: int = 2            # the text tower: Xmodel-LM blocks...
    text_width: int = 128           # ...of this width (head dim 32, SwiGLU 4x)
    embed_dim: int = 128            # the shared image-text embedding space
    region_weight: float = 1.0      # weight of the per-object term (TinyCLIP.region_loss) beside CLIP's; 0 = CLIP alone
    # --- optimisation (AdamW, warmup + cosine, as train_lm.py) ---
    batch_size: int = 64            # pairs per step; each image's negatives are the other 63 captions
    max_steps: int = 800            # 2.6 epochs of the 20000 pairs: the 15-minute speedrun's share (--long: 1200,
                                    # 3.8 epochs); at 400 (1.3) small objects' shape was 74%, at 1200 97%
    lr: float = 1e-3                # 2e-3 collapses: every embedding equal, loss stuck at log(batch)
    min_lr: float = 5e-5
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98             # CLIP's AdamW betas and eps
    eps: float = 1e-6
    grad_clip: float = 1.0
    # --- evaluation, logging, output ---
    eval_group: int = 32            # held-out retrieval: the image's caption among this many...
    eval_groups: int = 50           # ...in this many random groups, averaged
    eval_interval: int = 100        # steps between held-out evaluations (and at the end)
    probe: bool = True              # at the end: what the features hold about each object (probe_cells)
    log_interval: int = 25
    seed: int = 1337
    out_dir: str = "out/clip_tiny"  # the vision tower (HF CLIPVisionModel format) + ckpt/

    CHECKS = dict(                  # the values each setting allows; parse_config refuses others at once
        max_pairs="x >= 0", preset=VisionConfig.preset, text_layers="x >= 1", text_width="x >= 64 and x % 64 == 0",
        embed_dim="x >= 1", region_weight="x >= 0", batch_size="x >= 2", max_steps="x >= 1", lr="x > 0", min_lr="x >= 0",
        warmup_steps="x >= 0", weight_decay="x >= 0", beta1="0 <= x < 1", beta2="0 <= x < 1", eps="x > 0",
        grad_clip="x > 0", eval_group="x >= 2", eval_groups="x >= 1", eval_interval="x >= 1", log_interval="x >= 1",
        seed="x >= 0", out_dir="x != ''")


def load_pairs(root, proc, limit=0):
    """Training pairs of the LLaVA pretrain JSON: uint8 images (N, 3, S, S), captions, image paths."""
    path = os.path.join(root, "pretrain.json")
    samples = load_llava_json(path)
    samples = samples[:limit] if limit else samples
    images, captions, paths = [], [], []
    for i, s in enumerate(samples):
        turns = check_turns(s, f"{path}: sample {i}")  # the LLaVA structure, or a SampleError saying what is wrong
        if "image" not in s:
            raise UserError(f"{path}: sample {i} (id {s['id']}) has no 'image': CLIP trains on image-caption pairs")
        captions.append(turns[1]["value"])
        images.append(proc.to_uint8(os.path.join(root, "images", s["image"])))
        paths.append(s["image"])
    return torch.stack(images), captions, paths


def load_objects(root, samples_images):
    """For the per-object term: each training image's objects as (cell, phrase, shape) index
    triples, from the shapes world's ground truth (scenes_train.jsonl, matched by image path),
    and the phrases; the shapes index shapes.SHAPES."""
    path = os.path.join(root, "scenes_train.jsonl")
    if not os.path.isfile(path):
        raise InputNotFound(f"{path} not found: the per-object term reads each image's objects from the shapes "
                            f"world's ground truth; use --region_weight=0 for captions alone")
    with open(path, encoding="utf-8") as f:
        scenes = {s["image"]: s for s in map(json.loads, f)}
    phrase = lambda o: f"{o['size']} {o['colour']} {o['shape']} at the {o['cell']}"
    rows = []
    for image in samples_images:
        if "images/" + image not in scenes:
            raise UserError(f"{path} has no scene for image {image!r} of {root}/pretrain.json: they are not the "
                            f"same shapes world; regenerate it (python shapes.py) or use --region_weight=0")
        objs = scenes["images/" + image]["objects"]
        unknown = sorted({o["shape"] for o in objs} - set(shapes.SHAPES))
        if unknown:
            raise UserError(f"{path}: the scene of image {image!r} has shape(s) {unknown}, not among "
                            f"{shapes.SHAPES}; regenerate the world (python shapes.py) or use --region_weight=0")
        rows.append([(3 * o["row"] + o["col"], phrase(o), shapes.SHAPES.index(o["shape"])) for o in objs])
    phrases = sorted({p for r in rows for _, p, _ in r})
    return [[(cell, phrases.index(p), shape) for cell, p, shape in r] for r in rows], phrases


def load_test_pairs(root, proc):
    """Held-out pairs: the test scenes (no training scene has the same objects), captioned by
    shapes.describe, the generator of the training captions. Also each scene's object key:
    a caption of another scene with the same objects is an equally right answer."""
    path = os.path.join(root, "scenes_test.jsonl")
    if not os.path.isfile(path):
        raise InputNotFound(f"{path} not found: the held-out scenes of a shapes world (python shapes.py --out {root})")
    with open(path, encoding="utf-8") as f:
        scenes = [json.loads(line) for line in f]
    captions = [shapes.describe(s, random.Random(f"clip-eval/{i}")) for i, s in enumerate(scenes)]
    images = torch.stack([proc.to_uint8(os.path.join(root, s["image"])) for s in scenes])
    return images, captions, [shapes.scene_key(s) for s in scenes]


@torch.no_grad()
def retrieval_accuracy(model, pixels, ids, lengths, keys, group, groups, seed=0):
    """Top-1 image -> caption retrieval among `group` held-out pairs, averaged over `groups`
    random groups (always the same ones, so evaluations are comparable)."""
    was_training = model.training
    model.eval()
    img = torch.cat([model.embed_images(p) for p in pixels.split(256)])   # (N, E)
    txt = model.embed_texts(ids, lengths)                                   # (N, E)
    g = torch.Generator().manual_seed(seed)
    hits = 0
    for _ in range(groups):
        pick = torch.randperm(len(img), generator=g)[:group]
        best = (img[pick] @ txt[pick].T).argmax(1)                          # (group,)
        hits += sum(keys[pick[i]] == keys[pick[j]] for i, j in enumerate(best.tolist()))
    model.train(was_training)
    return hits / (groups * min(group, len(img)))


def train(cfg):
    """Train tiny CLIP, save it, and return (model, [loss per step], final retrieval accuracy)."""
    torch.manual_seed(cfg.seed)
    t0, cpu0 = time.time(), time.process_time()
    if not os.path.exists(os.path.join(cfg.data, "pretrain.json")):
        if cfg.data != CLIPTrainConfig.data:
            raise InputNotFound(f"--data {cfg.data} has no pretrain.json: point it at a shapes world "
                                f"(python shapes.py --out {cfg.data})")
        print(f"{cfg.data} does not exist: generating the shapes world (python shapes.py)")
        shapes.generate_shapes_world(cfg.data)
    vcfg = VisionConfig.preset(cfg.preset)
    proc = ImageProcessor(vcfg.image_size)      # the same preprocessing as the real tower's
    images, captions, image_paths = load_pairs(cfg.data, proc, cfg.max_pairs)
    test_images, test_captions, test_keys = load_test_pairs(cfg.data, proc)
    tok = WordTokenizer(captions)
    ids, lengths = tok.encode(captions)
    if cfg.region_weight:
        objects, phrases = load_objects(cfg.data, image_paths)
        phrase_texts, shape_words, cell_names = tok.encode(phrases), tok.encode(shapes.SHAPES), tok.encode(shapes.CELLS)
        pool = cell_pool(vcfg)
    test_pixels = proc.normalize(test_images)
    test_ids, test_lengths = tok.encode(test_captions)
    tcfg = LMConfig(vocab_size=len(tok.itos), n_layer=cfg.text_layers, n_head=cfg.text_width // 32,
                    n_kv_head=cfg.text_width // 64 or 1, n_embd=cfg.text_width,
                    intermediate_size=4 * cfg.text_width, max_seq_len=ids.shape[1] + 16)
    model = TinyCLIP(vcfg, tcfg, cfg.embed_dim)
    optimizer = make_optimizer(model, cfg, "cpu")
    print(f"{len(captions)} training pairs and {len(test_captions)} held-out pairs in memory "
          f"({time.time() - t0:.1f} s) | vocab {len(tok.itos)} words | vision "
          f"{sum(p.numel() for p in model.vision.parameters()) / 1e6:.2f}M, text "
          f"{sum(p.numel() for p in model.text.parameters()) / 1e6:.2f}M parameters | "
          f"{torch.get_num_threads()} threads", flush=True)

    losses, order, t_start = [], torch.randperm(len(captions)), time.time()
    for step in range(cfg.max_steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # one micro-step: the whole batch at once, since each image's negatives are the batch's other captions
        first = step * cfg.batch_size % len(order)
        if first + cfg.batch_size > len(order):  # a new epoch, a new order
            order, first = torch.randperm(len(captions)), 0
        b = order[first:first + cfg.batch_size]
        T = int(lengths[b].max())
        pixels = proc.normalize(images[b])
        logits, loss = model(pixels, ids[b, :T], lengths[b])
        if cfg.region_weight:
            rows = torch.tensor([(k, *o) for k, i in enumerate(b.tolist()) for o in objects[i]])
            region, region_acc = model.region_loss(pixels, rows, pool, phrase_texts, shape_words, cell_names)
            loss = loss + cfg.region_weight * region
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # CLIP caps the logit scale (1/temperature) at 100
            model.logit_scale.clamp_(0, math.log(100))
            model.region_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        done = step + 1
        if done % cfg.log_interval == 0 or done == cfg.max_steps:
            rate = done / (time.time() - t_start)
            acc = (logits.argmax(1) == torch.arange(len(b))).float().mean().item()
            per_object = f" | objects: loss {region.item():.3f}, acc {region_acc:.0%}" if cfg.region_weight else ""
            print(f"step {done}/{cfg.max_steps} | loss {loss.item():.4f} | batch acc {acc:.0%} "
                  f"(of {len(b)}){per_object} | scale {model.logit_scale.exp().item():.1f} | lr {lr:.2e} | "
                  f"{rate:.2f} steps/s | ETA {format_time((cfg.max_steps - done) / rate)}", flush=True)
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            top1 = retrieval_accuracy(model, test_pixels, test_ids, test_lengths, test_keys,
                                      cfg.eval_group, cfg.eval_groups)
            print(f"step {done} | held-out top-1 image->caption retrieval among {cfg.eval_group}: "
                  f"{top1:.1%} ({cfg.eval_groups} groups)", flush=True)
        if done == cfg.max_steps:  # a few minutes of training: one checkpoint, at the end
            save_checkpoint(os.path.join(cfg.out_dir, "ckpt"), model, optimizer, done,
                            {"train": dataclasses.asdict(cfg), "vision": dataclasses.asdict(vcfg),
                             "text": dataclasses.asdict(tcfg)}, extra={"vocab": tok.itos})

    model.vision.save_hf(cfg.out_dir)
    if cfg.probe:
        model.eval()
        probe, shares = probe_cells(model.vision, cfg.data)
        print("what the tower's features hold (an MLP probe on the patches over each held-out object): " +
              ", ".join(f"{a} {v:.1%}" for a, v in probe.items()), flush=True)
        print("how strongly (the share of the features' spread each attribute accounts for): " +
              ", ".join(f"{a} {v:.1%}" for a, v in shares.items()), flush=True)
    wall = time.time() - t0
    print(f"done in {format_time(wall)} ({wall:.0f} s, {(time.process_time() - cpu0) / wall:.2f} "
          f"cores busy on average): held-out top-1 retrieval {top1:.1%} among {cfg.eval_group}; vision "
          f"tower saved to {cfg.out_dir} (CLIPVisionTower.from_hf), full checkpoint to {cfg.out_dir}/ckpt",
          flush=True)
    return model, losses, top1


if __name__ == "__main__":
    run_main(lambda argv: train(parse_config(CLIPTrainConfig, argv)))
