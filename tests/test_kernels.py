"""The Triton kernels against their PyTorch definitions, forward and every gradient.

    TRITON_INTERPRET=1 python -m pytest -q tests/test_kernels.py    # CPU: Triton's interpreter
    python -m pytest -q tests/test_kernels.py                       # on a CUDA GPU

Shapes are tiny and the interpreter's tiles are 16 wide, so every case still crosses several
tiles and a ragged tail (T = 37, a 5x7 grid, 20 channels). Error = max|a - b| / max|b|.
"""

import math
import os

import pytest
import torch

pytest.importorskip("triton")

import kernels  # noqa: E402
from kernels import depthwise_conv, flash_attention, use_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the Triton kernels need a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def assert_close(a, b, tol, what):
    if b.abs().max() < 1e-12:   # a gradient that is exactly 0 in theory: relative error is undefined
        assert a.abs().max() < tol, f"{what}: expected 0, got max |.| {a.abs().max():.3g}"
    else:
        assert rel_err(a, b) < tol, f"{what}: relative error {rel_err(a, b):.3g} >= {tol}"


def randn(*shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=DEVICE, dtype=dtype)


# -----------------------------------------------------------------------------
# flash attention

def attention_reference(q, k, v, causal):
    """The attention math written out (in the caller's dtype; the tests use float64)."""
    T, D, group = q.shape[2], q.shape[3], q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)   # (B, H, T, D)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)                              # (B, H, T, T)
    if causal:
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return s.softmax(-1) @ v


def check_attention(B, H, Hkv, T, D, causal, layout="BHTD"):
    """Kernel in fp32 vs the reference in float64 on the same values: output, dq, dk, dv."""
    shapes = [(B, H, T, D), (B, Hkv, T, D), (B, Hkv, T, D)]
    ref = [randn(*s, seed=i).requires_grad_() for i, s in enumerate(shapes)]
    if layout == "BTHD":   # the model's layout: (B, T, H, D) memory seen as (B, H, T, D)
        ours = [t.detach().float().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in ref]
    else:
        ours = [t.detach().float().requires_grad_() for t in ref]
    dout = randn(B, H, T, D, seed=9)
    out = flash_attention(*ours, causal)
    out.backward(dout.float())
    expected = attention_reference(*ref, causal)
    expected.backward(dout)
    assert_close(out, expected, 1e-4, "output")
    for name, a, b in zip("qkv", ours, ref):
        assert_close(a.grad, b.grad, 1e-4, f"d{name}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("group", [1, 2, 8])
@pytest.mark.parametrize("T", [1, 37, 32])
def test_attention_matches_reference(causal, group, T):
    # group 8 with one kv head: B=1 keeps the interpreter quick (B > 1 is covered by the others)
    check_attention(B=2 if group < 8 else 1, H=2 * group if group < 8 else 8, Hkv=2 if group < 8 else 1,
                    T=T, D=32, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_head_dim_64_and_model_layout(causal):
    check_attention(B=1, H=4, Hkv=2, T=37, D=64, causal=causal, layout="BTHD")


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_attention_half_forward(dtype, tol):
    """Half-precision inputs, fp32 math inside, output rounded to the input's dtype."""
    q, k, v = (randn(2, 4, 37, 32, seed=i, dtype=dtype) for i in range(3))
    out = flash_attention(q, k, v, True)
    assert out.dtype == dtype
    assert_close(out, attention_reference(q.double(), k.double(), v.double(), True), tol, "output")


def test_attention_rejects_bad_shapes():
    q, k = torch.zeros(1, 3, 8, 32), torch.zeros(1, 2, 8, 32)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        flash_attention(q, k, k, True)
    with pytest.raises(ValueError, match="head dim 48"):
        flash_attention(torch.zeros(1, 2, 8, 48), torch.zeros(1, 2, 8, 48), torch.zeros(1, 2, 8, 48), True)


# -----------------------------------------------------------------------------
# depthwise convolution

def check_dwconv(B, H, W, C, stride, bias, residual, padding=1):
    """Kernel vs xdp.depthwise_conv (the definition, forced onto its PyTorch path): y and all grads."""
    import xdp
    Ho, Wo = (H + 2 * padding - 3) // stride + 1, (W + 2 * padding - 3) // stride + 1
    inputs = [randn(B, H * W, C, seed=0), randn(C, 1, 3, 3, seed=1),
              randn(C, seed=2) if bias else None, randn(B, Ho * Wo, C, seed=3) if residual else None]
    ours = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    ref = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    dout = randn(B, Ho * Wo, C, seed=9)
    y = depthwise_conv(ours[0], ours[1], ours[2], (H, W), stride, padding, ours[3])
    y.backward(dout)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XMODEL_KERNELS", "torch")
        y_ref = xdp.depthwise_conv(ref[0], ref[1], ref[2], (H, W), stride, padding, ref[3])
    y_ref.backward(dout)
    assert y.shape == y_ref.shape == (B, Ho * Wo, C)
    assert_close(y, y_ref, 1e-4, "output")
    for name, a, b in zip(["dx", "dweight", "dbias", "dresidual"], ours, ref):
        if a is not None:
            assert_close(a.grad, b.grad, 1e-4, name)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("grid", [(5, 5), (5, 7)])
@pytest.mark.parametrize("bias,residual", [(True, False), (False, True)])
def test_dwconv_matches_xdp(stride, grid, bias, residual):
    check_dwconv(2, *grid, C=20, stride=stride, bias=bias, residual=residual)


def test_dwconv_big_stride_and_no_padding():
    check_dwconv(1, 24, 24, 8, stride=24, bias=True, residual=True)   # one output token
    check_dwconv(1, 6, 5, 8, stride=2, bias=True, residual=False, padding=0)


def test_dwconv_half_forward():
    x, w, b = randn(2, 35, 20, seed=0, dtype=torch.float16), randn(20, 1, 3, 3, seed=1), randn(20, seed=2)
    y = depthwise_conv(x, w.half(), b.half(), (5, 7), 2)
    assert y.dtype == torch.float16
    import xdp
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XMODEL_KERNELS", "torch")
        expected = xdp.depthwise_conv(x.double(), w.double(), b.double(), (5, 7), 2)
    assert_close(y, expected, 2e-3, "output")


# -----------------------------------------------------------------------------
# dispatch

def test_use_triton_follows_the_environment(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.setenv("XMODEL_KERNELS", "torch")
    assert not use_triton(cpu)
    monkeypatch.setenv("XMODEL_KERNELS", "auto")
    assert not use_triton(cpu)
    monkeypatch.setenv("XMODEL_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton(cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        use_triton(cpu)
    monkeypatch.setattr(kernels, "HAVE_TRITON", False)
    with pytest.raises(RuntimeError, match="not installed"):
        use_triton(cpu)
    monkeypatch.setenv("XMODEL_KERNELS", "cuda")
    with pytest.raises(ValueError, match="auto, torch or triton"):
        use_triton(cpu)


# -----------------------------------------------------------------------------
# the whole models: kernels on (XMODEL_KERNELS=triton) equals the PyTorch path

def run_both(monkeypatch, build, loss_of, kernel_names):
    """Loss and every parameter's gradient with the kernels forced on, then forced off; the
    kernels named must really have run in the first pass (the dispatch is what is tested)."""
    calls = {name: 0 for name in kernel_names}
    for name in kernel_names:
        def counted(*args, _name=name, _kernel=getattr(kernels, name)):
            calls[_name] += 1
            return _kernel(*args)
        monkeypatch.setattr(kernels, name, counted)
    results = []
    for mode in ("triton", "torch"):
        if mode == "torch":
            assert all(calls.values()), f"a kernel never ran with XMODEL_KERNELS=triton: {calls}"
        monkeypatch.setenv("XMODEL_KERNELS", mode)
        module = build()
        loss = loss_of(module)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}))
    (loss_k, grads_k), (loss_t, grads_t) = results
    assert_close(loss_k, loss_t, 1e-4, "loss")
    assert grads_k.keys() == grads_t.keys() and grads_k
    for name in grads_t:  # (a few are 0 in theory, ~1e-13 in practice: the key bias can't move a softmax)
        a, b = grads_k[name], grads_t[name]
        assert (a - b).abs().max() <= 1e-4 * max(b.abs().max(), 1e-6), f"{name}: {rel_err(a, b):.3g}"


def test_language_model_with_kernels_equals_pytorch(monkeypatch):
    from conftest import randomize
    from model import LMConfig, XmodelLM
    config = LMConfig(vocab_size=64, n_layer=2, n_embd=64, n_head=2, n_kv_head=1, intermediate_size=96,
                      max_seq_len=64)                                   # head dim 32, GQA 2:1
    idx = torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(0))
    run_both(monkeypatch, lambda: randomize(XmodelLM(config), scale=0.1).to(DEVICE),
             lambda m: m(idx[:, :-1].to(DEVICE), targets=idx[:, 1:].to(DEVICE))[1], ["flash_attention"])


def test_vision_tower_and_xdp_with_kernels_equal_pytorch(monkeypatch):
    """The ViT's non-causal attention and the projector's depthwise conv, through the tower."""
    from conftest import randomize
    from vision import CLIPVisionTower, VisionConfig
    from xdp import build_projector
    config = VisionConfig(image_size=20, patch_size=4, hidden_size=64, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=2)   # 26 tokens, head dim 32
    pixels = randn(2, 3, 20, 20, seed=5)

    def build():
        torch.manual_seed(0)
        tower = randomize(CLIPVisionTower(config, select_layer=-1), scale=0.1)
        return torch.nn.ModuleDict(dict(tower=tower, proj=build_projector("xdp", 64, 32, 5, 9))).to(DEVICE)
    run_both(monkeypatch, build, lambda m: m["proj"](m["tower"](pixels)).square().mean(),
             ["flash_attention", "depthwise_conv"])
