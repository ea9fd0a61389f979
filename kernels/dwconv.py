"""
3x3 depthwise convolution on token-major input in Triton, forward and backward. It must equal
`xdp.depthwise_conv()` (F.conv2d with groups=C between two transposes), the definition;
tests/test_kernels.py checks that.

    from kernels import depthwise_conv
    y = depthwise_conv(x, weight, bias, (H, W), stride, padding=1, residual=None)
    # x (B, H*W, C), weight (C, 1, 3, 3), bias (C,) or None -> y (B, H'*W', C), H' = (H+2p-3)//stride+1

Tested on CPU with Triton's interpreter: TRITON_INTERPRET=1 python -m pytest -q tests/test_kernels.py

Why a kernel: the projector holds tokens as (B, N, C), and cuDNN wants (B, C, H, W) (or runs a
slower channels_last path), so PyTorch pays a transpose in and a transpose out around a conv
that is itself cheap. Here the tokens are read where they lie: one program owns a tile of
BLOCK_P output positions x BLOCK_C channels of one image; channels are the contiguous dim, so
each of the 9 taps is a coalesced (BLOCK_P, BLOCK_C) load, and the residual add is fused.

Why it is memory-bound: each output element costs 9 multiply-adds (18 FLOPs) and, at stride 1
in bf16, moves ~4 bytes (read x once, neighbours come from L1/L2; write y), ~6 with a residual:
about 3-4.5 FLOPs per byte, while an H100 needs ~20 FLOPs per byte (67 TFLOP/s fp32 on CUDA
cores over 3.35 TB/s) before compute matters. So the goal is bandwidth: x + y (+ residual)
bytes over the time should reach ~80% of a plain tensor copy (kernels/bench.py measures both).
At stride 2 the output is 4x smaller and the read of x dominates.

Backward (dy = dL/dy, (B, H'*W', C)):
  dx       the transposed conv: input position i gathers dy from the (at most 9) outputs that
           read it, so each dx element is written once by one program (no atomics)
  dweight  sum over batch and positions of dy * x(shifted by the tap), and dbias = sum of dy:
           each program reduces a chunk of rows into a (10, BLOCK_C) partial sum, written to a
           (chunks, 10, C) buffer that torch sums: deterministic, unlike atomics
  dresidual = dy
"""

import os

import torch
import triton
import triton.language as tl

from kernels import conv_out

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DW_CHUNK = 32 if INTERPRET else 1024   # rows of (B*H'*W') that one dweight program reduces


def _configs(gpu, interpreted):
    """Autotune candidates on a GPU; one small config in the interpreter (tiles of 16 make the tests
    cross several position and channel tiles)."""
    if INTERPRET:
        return [triton.Config(interpreted)]
    return [triton.Config(dict(BLOCK_P=p, BLOCK_C=c), num_warps=w) for p, c, w in gpu]


CONFIGS = _configs([(32, 64, 4), (64, 64, 4), (16, 128, 4), (32, 128, 4), (64, 128, 8)],
                   dict(BLOCK_P=16, BLOCK_C=16))
KEY = ["C", "stride"]


@triton.autotune(configs=CONFIGS, key=KEY)
@triton.jit
def _dwconv_fwd(X, Wt, Bias, Res, Y, H, W, Ho, Wo, C, stride, pad,
                HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """y tile: grid (H'W' / BLOCK_P, C / BLOCK_C, B). x (B, H*W, C) and y (B, H'*W', C) contiguous."""
    b = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)   # (P,) output positions oh*W' + ow
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)   # (C,) channels
    oh, ow = p // Wo, p % Wo
    p_ok, c_ok = p < Ho * Wo, c < C
    x_img = X + b * H * W * C
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for kh in tl.static_range(3):
        ih = oh * stride - pad + kh
        for kw in tl.static_range(3):
            iw = ow * stride - pad + kw
            ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)   # zero padding at the border
            x = tl.load(x_img + (ih * W + iw)[:, None] * C + c[None, :],
                        mask=ok[:, None] & c_ok[None, :], other=0.0)   # (P, C) one tap, coalesced in C
            w = tl.load(Wt + c * 9 + kh * 3 + kw, mask=c_ok, other=0.0)  # weight (C, 1, 3, 3)
            acc += x.to(tl.float32) * w.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(Bias + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    out = b * Ho * Wo * C + p[:, None] * C + c[None, :]
    mask = p_ok[:, None] & c_ok[None, :]
    if HAS_RES:
        acc += tl.load(Res + out, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + out, acc.to(Y.dtype.element_ty), mask=mask)


@triton.autotune(configs=CONFIGS, key=KEY)
@triton.jit
def _dwconv_bwd_dx(DY, Wt, DX, H, W, Ho, Wo, C, stride, pad,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx tile: grid (HW / BLOCK_P, C / BLOCK_C, B). Input position (ih, iw) was read by tap
    (kh, kw) of output (oh, ow) when oh*stride - pad + kh = ih, i.e. oh = (ih + pad - kh) / stride
    when that divides exactly and lands inside the output grid."""
    b = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)   # (P,) input positions ih*W + iw
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ih, iw = p // W, p % W
    p_ok, c_ok = p < H * W, c < C
    dy_img = DY + b * Ho * Wo * C
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for kh in tl.static_range(3):
        nh = ih + pad - kh
        oh = nh // stride
        ok_h = (nh >= 0) & (nh % stride == 0) & (oh < Ho)   # nh >= 0 first: // of negatives truncates
        for kw in tl.static_range(3):
            nw = iw + pad - kw
            ow = nw // stride
            ok = p_ok & ok_h & (nw >= 0) & (nw % stride == 0) & (ow < Wo)
            dy = tl.load(dy_img + (oh * Wo + ow)[:, None] * C + c[None, :],
                         mask=ok[:, None] & c_ok[None, :], other=0.0)   # (P, C)
            w = tl.load(Wt + c * 9 + kh * 3 + kw, mask=c_ok, other=0.0)
            acc += dy.to(tl.float32) * w.to(tl.float32)[None, :]
    tl.store(DX + b * H * W * C + p[:, None] * C + c[None, :], acc.to(DX.dtype.element_ty),
             mask=p_ok[:, None] & c_ok[None, :])


@triton.autotune(configs=CONFIGS, key=KEY)
@triton.jit
def _dwconv_bwd_dw(X, DY, PART, H, W, Ho, Wo, C, stride, pad, ROWS, CHUNK,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Partial dweight and dbias: grid (C / BLOCK_C, chunks). Program (j, k) sums rows
    k*CHUNK ... of the flattened (B*H'*W', C) dy into PART[k, 0:10, channels of j]:
    rows 0..8 the taps kh*3 + kw (sum of dy * x at that tap), row 9 the bias (sum of dy)."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    chunk = tl.program_id(1)
    c_ok = c < C
    tap = tl.arange(0, 16)                       # 10 used rows, padded to a power of two
    acc = tl.zeros((16, BLOCK_C), tl.float32)
    start = chunk * CHUNK
    end = tl.minimum(start + CHUNK, ROWS)
    for r0 in range(start, end, BLOCK_P):
        r = (r0 + tl.arange(0, BLOCK_P)).to(tl.int64)   # (P,) rows b*H'W' + oh*W' + ow
        r_ok = r < end
        b, pos = r // (Ho * Wo), r % (Ho * Wo)
        oh, ow = pos // Wo, pos % Wo
        dy = tl.load(DY + r[:, None] * C + c[None, :], mask=r_ok[:, None] & c_ok[None, :],
                     other=0.0).to(tl.float32)           # (P, C)
        acc += tl.where(tap[:, None] == 9, tl.sum(dy, 0)[None, :], 0.0)
        for kh in tl.static_range(3):
            ih = oh * stride - pad + kh
            for kw in tl.static_range(3):
                iw = ow * stride - pad + kw
                ok = r_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x = tl.load(X + ((b * H + ih) * W + iw)[:, None] * C + c[None, :],
                            mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
                # add this tap's (C,) sum into row kh*3+kw of the accumulator
                acc += tl.where(tap[:, None] == kh * 3 + kw, tl.sum(dy * x, 0)[None, :], 0.0)
    tl.store(PART + chunk.to(tl.int64) * 10 * C + tap[:, None] * C + c[None, :], acc,
             mask=(tap[:, None] < 10) & c_ok[None, :])


class DepthwiseConvFunction(torch.autograd.Function):
    """Saves x and weight; the backward runs the dx kernel and the dweight/dbias partial sums."""

    @staticmethod
    def forward(ctx, x, weight, bias, grid_hw, stride, padding, residual):
        B, N, C = x.shape
        H, W = grid_hw
        Ho, Wo = conv_out(H, stride, padding), conv_out(W, stride, padding)
        x, weight = x.contiguous(), weight.contiguous()
        y = torch.empty((B, Ho * Wo, C), device=x.device, dtype=x.dtype)   # (B, H'W', C)
        res = residual.contiguous() if residual is not None else y   # y: a placeholder, never read
        grid = lambda meta: (triton.cdiv(Ho * Wo, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]), B)
        _dwconv_fwd[grid](x, weight, bias if bias is not None else weight, res, y,
                          H, W, Ho, Wo, C, stride, padding,
                          HAS_BIAS=bias is not None, HAS_RES=residual is not None)
        ctx.save_for_backward(x, weight)
        ctx.geometry = (H, W, Ho, Wo, stride, padding)
        ctx.bias_dtype, ctx.has_res = bias.dtype if bias is not None else None, residual is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        H, W, Ho, Wo, stride, padding = ctx.geometry
        B, N, C = x.shape
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        grid = lambda meta: (triton.cdiv(H * W, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]), B)
        _dwconv_bwd_dx[grid](dy, weight, dx, H, W, Ho, Wo, C, stride, padding)

        rows = B * Ho * Wo
        chunks = triton.cdiv(rows, DW_CHUNK)
        part = torch.empty((chunks, 10, C), device=x.device, dtype=torch.float32)  # 9 taps + bias
        grid = lambda meta: (triton.cdiv(C, meta["BLOCK_C"]), chunks)
        _dwconv_bwd_dw[grid](x, dy, part, H, W, Ho, Wo, C, stride, padding, rows, DW_CHUNK)
        part = part.sum(0)                                               # (10, C) fp32
        dweight = part[:9].t().reshape(C, 1, 3, 3).to(weight.dtype)
        dbias = part[9].to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
        return dx, dweight, dbias, None, None, None, dy if ctx.has_res else None


def depthwise_conv(x, weight, bias, grid_hw, stride, padding=1, residual=None):
    """3x3 depthwise conv on token-major input: (B, H*W, C) -> (B, H'*W', C), H' = (H+2p-3)//s + 1.

    Same arguments and result as xdp.depthwise_conv: weight (C, 1, 3, 3) and bias (C,) or None as
    nn.Conv2d(C, C, 3, groups=C) stores them; `residual` (B, H'*W', C), if given, is added to the
    output in the same pass. Accumulates in fp32; the output has x's dtype."""
    B, N, C = x.shape
    H, W = grid_hw
    if N != H * W or tuple(weight.shape) != (C, 1, 3, 3):
        raise ValueError(f"depthwise_conv: x is {tuple(x.shape)} and weight {tuple(weight.shape)}, "
                         f"but a {H}x{W} grid needs x (B, {H * W}, C) and weight ({C}, 1, 3, 3)")
    out_n = conv_out(H, stride, padding) * conv_out(W, stride, padding)
    if residual is not None and (tuple(residual.shape) != (B, out_n, C) or residual.dtype != x.dtype):
        raise ValueError(f"depthwise_conv: residual is {tuple(residual.shape)} {residual.dtype}, "
                         f"the output is {(B, out_n, C)} {x.dtype}; make them match")
    return DepthwiseConvFunction.apply(x, weight, bias, tuple(grid_hw), stride, padding, residual)
