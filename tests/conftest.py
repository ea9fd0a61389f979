"""Helpers shared by the tests."""

import torch


def randomize(module, seed=0, scale=0.2):
    """Random values for every parameter (LayerNorm's ones and zeros would hide a swapped weight)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module
