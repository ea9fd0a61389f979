"""The projectors of xdp.py against plain-torch computations written out by hand, and
MobileVLM-format checkpoints (random tensors under their key names) through the key map."""

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize
from xdp import (PROJECTORS, build_projector, depthwise_conv, load_mobilevlm_projector,
                 se_channels)

IN, OUT, G, B = 32, 48, 24, 2  # small dims for everything but the parameter counts


def tokens_in(seed=1, n=G * G, c=IN):
    return torch.randn(B, n, c, generator=torch.Generator().manual_seed(seed))


# -----------------------------------------------------------------------------
# token arithmetic, errors, sizes

SHAPES = [("xdp", t) for t in (576, 144, 64, 36, 25, 16, 9, 4, 1)] + \
         [("xdp-concat", t) for t in (576, 288, 144, 72, 64, 36, 18, 8, 4, 2, 1)] + \
         [("linear", 576), ("mlp2x_gelu", 576), ("ldp", 144)] + \
         [("ldpv2", t) for t in (576, 144, 64, 36, 25, 1)]


@pytest.mark.parametrize("kind,tokens", SHAPES)
def test_output_shape(kind, tokens):
    y = build_projector(kind, IN, OUT, G, tokens)(tokens_in())
    assert y.shape == (B, tokens, OUT)


def test_xdp_strides_of_the_paper():
    for stride, tokens in [(1, 576), (2, 144), (3, 64), (4, 36), (6, 16), (8, 9), (12, 4), (24, 1)]:
        assert build_projector("xdp", IN, OUT, G, tokens).dw.stride == stride


def test_ldp_on_odd_grid():  # stride 2 with padding 1 on 7x7 gives ceil(7/2) = 4 per side
    y = build_projector("ldp", IN, OUT, 7, 16)(tokens_in(n=49))
    assert y.shape == (B, 16, OUT)


@pytest.mark.parametrize("kind,bad,listed", [
    ("xdp", 100, "[576, 144, 64, 36, 25, 16, 9, 4, 1]"), ("xdp-concat", 7, "576, 288, 192"),
    ("linear", 144, "[576]"), ("mlp2x_gelu", 144, "[576]"), ("ldp", 64, "[144]"),
    ("ldpv2", 50, "576, 529")])
def test_impossible_token_count_says_what_is_possible(kind, bad, listed):
    with pytest.raises(ValueError, match=f"'{kind}'.*cannot give {bad} tokens") as e:
        build_projector(kind, IN, OUT, G, bad)
    assert listed in str(e.value)


def test_bad_kind_and_bad_input_are_explained():
    with pytest.raises(ValueError, match="choose one of.*xdp-concat"):
        build_projector("xdp2")
    for kind in ("xdp", "xdp-concat", "ldp", "ldpv2"):
        with pytest.raises(ValueError, match="24x24 grid.*\\(B, 576, C\\).*got \\(2, 577, 32\\)"):
            build_projector(kind, IN, OUT, G)(tokens_in(n=577))  # CLS token left in


def test_default_tokens():
    with torch.device("meta"):
        got = {k: build_projector(k, IN, OUT, G)(torch.empty(1, 576, IN)).shape[1] for k in PROJECTORS}
    assert got == {"xdp": 144, "xdp-concat": 144, "linear": 576, "mlp2x_gelu": 576,
                   "ldp": 144, "ldpv2": 144}


def test_parameter_counts_at_paper_size():
    C, D = 1024, 2048
    mlp = C * D + D + D * D + D            # Linear C->D, Linear D->D
    block = 9 * D + 2 * D + (D * 512 + 512) + (512 * D + D) + D * D + 2 * D  # dw, LN, SE, pw, LN
    expected = {"xdp": 9 * C + C + mlp, "xdp-concat": 4 * C * D + D + D * D + D,
                "linear": C * D + D, "mlp2x_gelu": mlp, "ldp": mlp + 2 * block,
                "ldpv2": mlp + 9 * D + D}
    with torch.device("meta"):
        got = {k: sum(p.numel() for p in build_projector(k, C, D, 24).parameters()) for k in PROJECTORS}
    assert got == expected
    assert got["xdp-concat"] == 12_587_008
    assert se_channels(2048) == 512 and se_channels(2560) == 640 and se_channels(48) == 16


# -----------------------------------------------------------------------------
# the depthwise conv: the reference the Triton kernel will be held to

@pytest.mark.parametrize("hw", [(24, 24), (6, 4)])
def test_depthwise_conv_equals_conv2d_with_grads(hw):
    H, W = hw
    C = 8
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(B, H * W, C, generator=g)
    w0, b0 = torch.randn(C, 1, 3, 3, generator=g), torch.randn(C, generator=g)
    for stride in range(1, max(H, W) + 1):
        Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
        r0 = torch.randn(B, Ho * Wo, C, generator=g)
        upstream = torch.randn(B, Ho * Wo, C, generator=g)
        for use_res in (False, True):
            grads = []
            for ours in (True, False):
                x, w, b, r = (t.clone().requires_grad_() for t in (x0, w0, b0, r0))
                if ours:
                    y = depthwise_conv(x, w, b, (H, W), stride, residual=r if use_res else None)
                else:  # NCHW the other way round: channels-first transpose, then split rows
                    y = F.conv2d(x.transpose(1, 2).reshape(B, C, H, W), w, b, stride=stride,
                                 padding=1, groups=C)
                    assert y.shape == (B, C, Ho, Wo)
                    y = y.reshape(B, C, Ho * Wo).transpose(1, 2) + (r if use_res else 0)
                (y * upstream).sum().backward()
                grads.append((y.detach(), x.grad, w.grad, b.grad, r.grad if use_res else None))
            for a, e in zip(*grads):
                if e is not None:
                    torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_depthwise_conv_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match="5x5 grid needs x \\(B, 25, C\\)"):
        depthwise_conv(torch.randn(1, 24, 4), torch.randn(4, 1, 3, 3), None, (5, 5), 1)


# -----------------------------------------------------------------------------
# each kind against its maths written out with plain torch ops

def grid_nchw(x, h):  # (B, h*h, C) -> (B, C, h, h)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, h)


@pytest.mark.parametrize("tokens,stride", [(576, 1), (144, 2), (64, 3), (25, 5)])  # 5: 24 % 5 != 0
def test_xdp_by_hand(tokens, stride):
    m = randomize(build_projector("xdp", IN, OUT, G, tokens), scale=0.3)
    assert m.dw.stride == stride and m.dw.bias is not None
    x = tokens_in()
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    y = F.conv2d(grid_nchw(x, G), sd["dw.weight"], sd["dw.bias"], stride=stride, padding=1, groups=IN)
    y = y.flatten(2).transpose(1, 2)                                    # (B, tokens, IN)
    y = F.linear(F.mish(F.linear(y, sd["mlp.0.weight"], sd["mlp.0.bias"])),
                 sd["mlp.2.weight"], sd["mlp.2.bias"])
    torch.testing.assert_close(m(x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tokens", [576, 144, 64, 8])
def test_xdp_concat_by_hand(tokens):
    m = randomize(build_projector("xdp-concat", IN, OUT, G, tokens), scale=0.3)
    assert list(m.state_dict()) == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    f = G * G // tokens
    x = tokens_in()
    # token j of the output joins input tokens f*j, f*j+1, ..., f*j+f-1, channels side by side
    joined = torch.cat([x[:, k::f] for k in range(f)], dim=-1)          # (B, tokens, IN*f)
    w = {k: v.detach() for k, v in m.state_dict().items()}
    y = F.linear(F.mish(F.linear(joined, w["mlp.0.weight"], w["mlp.0.bias"])),
                 w["mlp.2.weight"], w["mlp.2.bias"])
    torch.testing.assert_close(m(x), y, atol=1e-5, rtol=1e-5)


def test_mlp2x_gelu_is_llavas():
    m = randomize(build_projector("mlp2x_gelu", IN, OUT, G), scale=0.3)
    sd = {f"model.mm_projector.{k}": torch.randn_like(v) for k, v in m.state_dict().items()}
    assert sorted(sd) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                          "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    load_mobilevlm_projector(m, sd)
    x = tokens_in()
    y = F.linear(F.gelu(F.linear(x, sd["model.mm_projector.0.weight"], sd["model.mm_projector.0.bias"])),
                 sd["model.mm_projector.2.weight"], sd["model.mm_projector.2.bias"])
    torch.testing.assert_close(m(x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tokens", [144, 64, 36])  # pools of 2x2, 3x3, 4x4
def test_ldpv2_by_hand(tokens):
    m = randomize(build_projector("ldpv2", IN, OUT, G, tokens), scale=0.3)
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    x = tokens_in()
    side = int(tokens ** 0.5)
    y = F.linear(F.gelu(F.linear(x, sd["mlp.0.weight"], sd["mlp.0.bias"])),
                 sd["mlp.2.weight"], sd["mlp.2.bias"])                  # (B, 576, OUT)
    y = F.avg_pool2d(grid_nchw(y, G), G // side)                        # (B, OUT, side, side)
    y = y + F.conv2d(y, sd["peg.weight"], sd["peg.bias"], padding=1, groups=OUT)
    torch.testing.assert_close(m(x), y.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


# -----------------------------------------------------------------------------
# MobileVLM checkpoints: random tensors under the key names their projector code produces

def mobilevlm_ldp_state_dict(C=OUT, seed=0):
    """LDPNetProjector's keys: model.mlp.{1,3} (index 0 is an Identity), then two torchvision
    InvertedResidual blocks at model.mb_block.{1,2}.block: 0 = dwconv+LayerNorm, 1 = SE, 2 = 1x1+LN."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    sq = se_channels(C)
    sd = {"model.mlp.1.weight": r(C, IN), "model.mlp.1.bias": r(C),
          "model.mlp.3.weight": r(C, C), "model.mlp.3.bias": r(C)}
    for i in (1, 2):
        p = f"model.mb_block.{i}.block."
        sd.update({p + "0.0.weight": r(C, 1, 3, 3), p + "0.1.weight": r(C), p + "0.1.bias": r(C),
                   p + "1.fc1.weight": r(sq, C, 1, 1), p + "1.fc1.bias": r(sq),
                   p + "1.fc2.weight": r(C, sq, 1, 1), p + "1.fc2.bias": r(C),
                   p + "2.0.weight": r(C, C, 1, 1), p + "2.1.weight": r(C), p + "2.1.bias": r(C)})
    return sd


def mobilevlm_ldp_reference(sd, x):
    """MobileVLM's LDP forward in NCHW, the way their torchvision/timm modules compute it."""
    x = F.linear(F.gelu(F.linear(x, sd["model.mlp.1.weight"], sd["model.mlp.1.bias"])),
                 sd["model.mlp.3.weight"], sd["model.mlp.3.bias"])
    x = grid_nchw(x, G)
    ln = lambda t, w, b: F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), w, b, 1e-5).permute(0, 3, 1, 2)
    for i, stride in ((1, 1), (2, 2)):
        w = {k[len(f"model.mb_block.{i}.block."):]: v for k, v in sd.items() if f"mb_block.{i}." in k}
        y = F.conv2d(x, w["0.0.weight"], None, stride=stride, padding=1, groups=x.shape[1])
        y = F.hardswish(ln(y, w["0.1.weight"], w["0.1.bias"]))
        s = F.adaptive_avg_pool2d(y, 1)
        s = F.hardsigmoid(F.conv2d(F.relu(F.conv2d(s, w["1.fc1.weight"], w["1.fc1.bias"])),
                                   w["1.fc2.weight"], w["1.fc2.bias"]))
        y = ln(F.conv2d(y * s, w["2.0.weight"]), w["2.1.weight"], w["2.1.bias"])
        x = x + y if stride == 1 else y
    return x.flatten(2).transpose(1, 2)


def test_mobilevlm_ldp_checkpoint_loads_and_matches():
    theirs = mobilevlm_ldp_state_dict()
    ckpt = {f"model.mm_projector.{k}": v for k, v in theirs.items()}
    ckpt["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)  # the rest of a VLM checkpoint
    m = load_mobilevlm_projector(build_projector("ldp", IN, OUT, G), ckpt)
    assert len(theirs) == len(m.state_dict()) == 24
    assert m.block1.norm1.eps == m.block2.norm2.eps == 1e-5  # timm's LayerNormAct2d default
    pw = theirs["model.mb_block.2.block.2.0.weight"]                    # (C, C, 1, 1) conv
    torch.testing.assert_close(m.block2.pw.weight.detach(), pw[:, :, 0, 0])
    x = tokens_in()
    torch.testing.assert_close(m(x), mobilevlm_ldp_reference(theirs, x), atol=1e-4, rtol=1e-4)


def test_mobilevlm_v2_checkpoint_loads_and_matches():
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    theirs = {"mlp.mlp.0.weight": r(OUT, IN), "mlp.mlp.0.bias": r(OUT), "mlp.mlp.2.weight": r(OUT, OUT),
              "mlp.mlp.2.bias": r(OUT), "peg.peg.0.weight": r(OUT, 1, 3, 3), "peg.peg.0.bias": r(OUT)}
    m = load_mobilevlm_projector(build_projector("ldpv2", IN, OUT, G),
                                 {f"model.mm_projector.{k}": v for k, v in theirs.items()})
    x = tokens_in()
    y = F.linear(F.gelu(F.linear(x, theirs["mlp.mlp.0.weight"], theirs["mlp.mlp.0.bias"])),
                 theirs["mlp.mlp.2.weight"], theirs["mlp.mlp.2.bias"])
    y = F.adaptive_avg_pool2d(grid_nchw(y, G), 12)
    y = y + F.conv2d(y, theirs["peg.peg.0.weight"], theirs["peg.peg.0.bias"], padding=1, groups=OUT)
    torch.testing.assert_close(m(x), y.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_wrong_checkpoint_kind_is_explained():
    with pytest.raises(ValueError, match="does not fit the LDP projector.*ldpnetv2 -> ldpv2"):
        load_mobilevlm_projector(build_projector("ldp", IN, OUT, G),
                                 {"mlp.mlp.0.weight": torch.zeros(OUT, IN)})
