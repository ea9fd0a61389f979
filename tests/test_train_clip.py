"""Tests for train_clip.py: a few steps of tiny-CLIP training save a tower that loads, and the
probe of what a tower's features hold reads colour from patch means and nothing from noise.
Run: python -m pytest -q tests/test_train_clip.py
"""

import json
import math
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import shapes
import train_clip
from vision import CLIPVisionTower, ImageProcessor

def test_tiny_clip_trains_and_saves_a_loadable_tower(tmp_path):
    world = str(tmp_path / "shapes")
    shapes.generate_shapes_world(world, size=64, n_train=256, n_test=40, n_comp=5, corpus_mb=0.01, workers=1)
    cfg = train_clip.CLIPTrainConfig(data=world, out_dir=str(tmp_path / "clip"), batch_size=32, max_steps=30,
                                 warmup_steps=10, lr=5e-4, eval_group=32, eval_groups=2,
                                 eval_interval=30, log_interval=10)
    model, losses, top1 = train_clip.train(cfg)
    assert len(losses) == 30 and 0.0 <= top1 <= 1.0
    # chance is log(32) for CLIP's term plus log(phrases) for the per-object one; a collapsed model
    # (all embeddings equal) stays exactly there
    images, captions, paths = train_clip.load_pairs(world, ImageProcessor(64))
    objects, phrases = train_clip.load_objects(world, paths)
    assert sum(losses[-5:]) / 5 < min(sum(losses[:5]) / 5, math.log(32) + math.log(len(phrases))) - 0.3
    tower = CLIPVisionTower.from_hf(cfg.out_dir)
    x = ImageProcessor(tower.config.image_size)(os.path.join(world, "eval/images/test_000000.png"))[None]
    model.eval()
    with torch.no_grad():
        assert (tower(x) - model.vision(x)).abs().max() < 1e-6
        assert tower(x).shape == (1, 9, model.vision.hidden_size)  # 3x3 patches: one per cell
    assert os.path.exists(os.path.join(cfg.out_dir, "ckpt", "state.pt"))
    # the per-object term's objects are the captions' objects: each phrase is in its image's caption
    # (which says "in the" or "at the" before the cell), and its shape is the phrase's
    for caption, objs in zip(captions, objects):
        assert objs and all(phrases[p] in caption or phrases[p].replace(" at the ", " in the ") in caption
                            for _, p, _ in objs), (caption, objs)
        assert all(phrases[p].split()[2] == shapes.SHAPES[k] for _, p, k in objs)


def test_per_object_term_pools_each_objects_cell_by_hand():
    """region_loss against a loop written from the pixels: on an 8x8 grid of 8-pixel patches a
    patch belongs to the cell (of side 64/3 pixels) that holds its centre; the object's region
    must pick its phrase, its shape's word and its cell's name."""
    torch.manual_seed(0)
    vcfg = train_clip.VisionConfig.preset("tiny", image_size=64, patch_size=8, hidden_size=32,
                                          intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    tcfg = train_clip.LMConfig(vocab_size=20, n_layer=1, n_head=1, n_kv_head=1, n_embd=64, intermediate_size=64,
                               max_seq_len=16)
    model = train_clip.TinyCLIP(vcfg, tcfg, 16).eval()
    pixels, phrase_ids, phrase_lengths = torch.randn(3, 3, 64, 64), torch.randint(3, 20, (5, 4)), torch.tensor([4, 3, 4, 2, 4])
    word_ids, word_lengths = torch.randint(3, 20, (3, 2)), torch.tensor([2, 2, 2])
    cell_ids, cell_lengths = torch.randint(3, 20, (9, 2)), torch.randint(1, 3, (9,))
    objects = torch.tensor([[0, 0, 1, 2], [0, 4, 3, 0], [1, 8, 0, 1], [2, 5, 4, 1], [2, 1, 1, 2]])  # (image, cell, phrase, shape)
    loss, _ = model.region_loss(pixels, objects, train_clip.cell_pool(vcfg), (phrase_ids, phrase_lengths),
                                (word_ids, word_lengths), (cell_ids, cell_lengths))
    with torch.no_grad():
        features, texts = model.vision(pixels), model.embed_texts(phrase_ids, phrase_lengths)
        words, cells = model.embed_texts(word_ids, word_lengths), model.embed_texts(cell_ids, cell_lengths)
        want = 0.0
        for image, cell, phrase, shape in objects.tolist():
            mine = [r * 8 + c for r in range(8) for c in range(8)
                    if 3 * int((r * 8 + 4) / (64 / 3)) + int((c * 8 + 4) / (64 / 3)) == cell]
            assert len(mine) in (4, 6, 9)  # the cells are 3, 2 and 3 patches wide
            region = F.normalize(model.region_projection(features[image, mine].mean(0)), dim=-1)
            logits = model.region_scale.exp() * texts @ region
            want += F.cross_entropy(logits[None], torch.tensor([phrase])).item() / len(objects)
            logits = model.region_scale.exp() * words @ region
            want += F.cross_entropy(logits[None], torch.tensor([shape])).item() / len(objects)
            logits = model.region_scale.exp() * cells @ region
            want += F.cross_entropy(logits[None], torch.tensor([cell])).item() / len(objects)
    assert abs(loss.item() - want) < 1e-5


class PatchMeanTower(torch.nn.Module):
    """A stand-in tower whose features are each 8x8 patch's mean colour (or noise, or the patch's
    place alone): colour is in them, shape hardly, place not."""
    config = SimpleNamespace(image_size=64)
    grid = 8

    def __init__(self, noise=False, where=False):
        super().__init__()
        self.noise, self.where = noise, where

    def forward(self, pixels):
        x = F.avg_pool2d(pixels, 8).flatten(2).transpose(1, 2)  # (N, 64, 3)
        if self.where:  # each patch's own index, one-hot, and nothing of the image
            return torch.eye(64).expand(len(x), 64, 64)
        return torch.randn_like(x) if self.noise else x


def test_variance_shares_by_hand():
    # x = 0, 2, 4, 6 (mean 3, total sum of squares 9 + 1 + 1 + 9 = 20). Labels 0 0 1 1: class means
    # 1 and 5, between = 2 * 2^2 + 2 * 2^2 = 16, share 0.8. Labels 0 1 0 1: means 2 and 4, 4 / 20 = 0.2
    x = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    shares = train_clip.variance_shares(x, {"a": torch.tensor([0, 0, 1, 1]), "b": torch.tensor([0, 1, 0, 1])})
    assert abs(shares["a"] - 0.8) < 1e-6 and abs(shares["b"] - 0.2) < 1e-6
    # in two dimensions the squares add: a second column equal to the first keeps the shares
    shares2 = train_clip.variance_shares(x.repeat(1, 2), {"a": torch.tensor([0, 0, 1, 1])})
    assert abs(shares2["a"] - 0.8) < 1e-6
    # constant features account for nothing (and do not divide by zero)
    assert train_clip.variance_shares(torch.ones(4, 3), {"a": torch.tensor([0, 0, 1, 1])})["a"] == 0.0


def test_load_objects_names_an_unknown_shape(tmp_path):
    (tmp_path / "scenes_train.jsonl").write_text(json.dumps(
        {"image": "images/a.png", "objects": [{"row": 0, "col": 0, "size": "large", "colour": "red",
                                                "shape": "blob", "cell": "top left"}]}) + "\n")
    try:
        train_clip.load_objects(str(tmp_path), ["a.png"])
    except train_clip.UserError as e:
        assert "blob" in str(e) and "a.png" in str(e)
    else:
        raise AssertionError("an unknown shape was accepted")


def test_cell_windows_take_the_patches_over_each_cell():
    f = torch.arange(64.0).view(1, 64, 1)  # patch index as its feature, 8x8 grid
    w = train_clip.cell_windows(f, 8)
    assert w.shape == (1, 9, 9)
    assert w[0, 0].tolist() == [0, 1, 2, 8, 9, 10, 16, 17, 18]          # top left: rows 0-2, cols 0-2
    assert w[0, 4].tolist() == [18, 19, 20, 26, 27, 28, 34, 35, 36]     # center: rows 2-4, cols 2-4
    assert w[0, 8].tolist() == [45, 46, 47, 53, 54, 55, 61, 62, 63]     # bottom right: rows 5-7


def test_probe_reads_what_the_features_hold(tmp_path):
    world = str(tmp_path / "shapes")
    shapes.generate_shapes_world(world, size=64, n_train=300, n_test=60, n_comp=5, corpus_mb=0.01, workers=1)
    colour_tower, colour_shares = train_clip.probe_cells(PatchMeanTower(), world, steps=300)
    noise, noise_shares = train_clip.probe_cells(PatchMeanTower(noise=True), world, steps=300)
    assert colour_tower["colour"] > 0.9                 # six distinct colours: the patch means tell them apart
    assert noise["colour"] < 0.45 and noise["shape"] < 0.45   # chance: 1/6 and 1/5
    assert colour_tower["cell"] < 0.45 and noise["cell"] < 0.45  # mean colours do not say where they are...
    where, where_shares = train_clip.probe_cells(PatchMeanTower(where=True), world, steps=300)
    assert where["cell"] > 0.95                          # ...features that hold their patch's place do
    # the spread (measured: 29% colour, 3% shape, 16% cell for the colour means; at most 4% for
    # noise, which is chance over 60 scenes; 100% cell for the patch's place)
    assert colour_shares["colour"] > 0.2 and colour_shares["colour"] > 3 * colour_shares["shape"]
    assert max(noise_shares.values()) < 0.1
    assert where_shares["cell"] > 0.99 and where_shares["colour"] < 0.1
    # the shape accuracy split by size: the overall one is their mean weighted by the objects of each size
    with open(f"{world}/scenes_test.jsonl") as f:
        sizes = [o["size"] for line in f for o in json.loads(line)["objects"]]
    split = {s: colour_tower[f"shape of {s} objects"] for s in shapes.SIZES}
    weighted = sum(split[s] * sizes.count(s) for s in shapes.SIZES) / len(sizes)
    assert abs(weighted - colour_tower["shape"]) < 1e-6
