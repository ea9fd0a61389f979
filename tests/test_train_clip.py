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
    # chance is log(32) = 3.47; a collapsed model (all embeddings equal) stays exactly there
    assert sum(losses[-5:]) / 5 < min(sum(losses[:5]) / 5, math.log(32)) - 0.3
    tower = CLIPVisionTower.from_hf(cfg.out_dir)
    x = ImageProcessor(64)(os.path.join(world, "eval/images/test_000000.png"))[None]
    model.eval()
    with torch.no_grad():
        assert (tower(x) - model.vision(x)).abs().max() < 1e-6
        assert tower(x).shape == (1, 64, model.vision.hidden_size)
    assert os.path.exists(os.path.join(cfg.out_dir, "ckpt", "state.pt"))


class PatchMeanTower(torch.nn.Module):
    """A stand-in tower whose features are each 8x8 patch's mean colour (or noise): colour is
    in them, shape hardly."""
    config = SimpleNamespace(image_size=64)
    grid = 8

    def __init__(self, noise=False):
        super().__init__()
        self.noise = noise

    def forward(self, pixels):
        x = F.avg_pool2d(pixels, 8).flatten(2).transpose(1, 2)  # (N, 64, 3)
        return torch.randn_like(x) if self.noise else x


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
    colour_tower = train_clip.probe_cells(PatchMeanTower(), world, steps=300)
    noise = train_clip.probe_cells(PatchMeanTower(noise=True), world, steps=300)
    assert colour_tower["colour"] > 0.9                 # six distinct colours: the patch means tell them apart
    assert noise["colour"] < 0.45 and noise["shape"] < 0.45   # chance: 1/6 and 1/5
    # the shape accuracy split by size: the overall one is their mean weighted by the objects of each size
    with open(f"{world}/scenes_test.jsonl") as f:
        sizes = [o["size"] for line in f for o in json.loads(line)["objects"]]
    split = {s: colour_tower[f"shape of {s} objects"] for s in shapes.SIZES}
    weighted = sum(split[s] * sizes.count(s) for s in shapes.SIZES) / len(sizes)
    assert abs(weighted - colour_tower["shape"]) < 1e-6
