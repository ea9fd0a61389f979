"""
Flash attention in Triton: softmax(q k^T / sqrt(D)) v, forward and backward, without ever
writing the T x T attention matrix to memory. It must equal `model.attention()` (PyTorch's
scaled_dot_product_attention) for mask=None; tests/test_kernels.py checks that.

    from kernels import flash_attention
    y = flash_attention(q, k, v, causal=True)   # q (B, H, T, D); k, v (B, Hkv, T, D) -> (B, H, T, D)

Tested on CPU with Triton's interpreter: TRITON_INTERPRET=1 python -m pytest -q tests/test_kernels.py

The idea (FlashAttention-2, Dao 2023). Plain attention writes S = q k^T, (B, H, T, T), to GPU
memory, reads it back for the softmax, writes P, reads it again for P v: O(T^2) bytes for an
O(T^2 D) computation, so it is memory-bound. Here one program owns a BLOCK_M-row tile of
queries, keeps it in registers/shared memory, and streams over the keys BLOCK_N at a time,
keeping a running ("online") softmax: the row max m, the row sum l and the unnormalised
output acc, rescaled by exp(m_old - m_new) whenever the max grows. S and P only ever exist as
(BLOCK_M, BLOCK_N) tiles on chip.

Work and traffic (B batch, H query heads, T tokens, D head dim):
  forward FLOPs   4*B*H*T*T*D   (q k^T and P v, 2 FLOPs per multiply-add); half that when causal
  backward FLOPs  counted as 2.5x forward, FlashAttention's convention (5 matmuls against 2:
                  recompute S, then dV, dP, dQ, dK). This split runs 7: the dQ kernel recomputes
                  S and dP rather than have the dK/dV kernel add into dQ with atomics.
  bytes           q, k, v read and o written once: 8*B*H*T*D bytes in bf16 (less with GQA), so
                  ~T/2 FLOPs per byte (500 at T=1024): compute-bound, unlike plain attention.
                  Each query tile re-reads its head's k and v, but those re-reads hit L2.
GQA: query head h reads key/value head h // (H // Hkv) by pointer arithmetic; K and V are
never copied. In the backward pass the dK/dV program of kv head j loops over the H // Hkv
query heads that read it, so their gradients are summed in registers, without atomics.

Precision: q, k, v in fp16 or bf16 on the GPU, with fp32 accumulation and an fp32 softmax;
in the interpreter every tile is cast to fp32 on load (its bf16 arithmetic is wrong). The dots
say input_precision="ieee", which only matters for fp32 inputs: exact fp32 rather than TF32, so
the tests hold at 1e-4 on a GPU too. The log-sum-exp of each row is saved by the forward pass,
in base 2, so that the backward pass can recompute P = exp2(q k^T * log2(e)/sqrt(D) - lse) tile
by tile instead of storing it.
"""

import math
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
IN_INTERPRETER = tl.constexpr(INTERPRET)  # a global read inside @triton.jit must be a constexpr
LOG2E = 1.4426950408889634                # exp(x) = exp2(x * log2(e)); exp2 is the fast instruction


def _configs(gpu, interpreted):
    """Autotune candidates on a GPU; a single small config in the interpreter (tiles of 16 make the
    tests cross several blocks and ragged tails with tiny T, and nothing is timed there)."""
    if INTERPRET:
        return [triton.Config(interpreted)]
    return [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s) for m, n, w, s in gpu]


# autotune key: head dim, causality, GQA group and T rounded up to a power of two, so that a new
# prompt length at inference does not trigger a new search for every distinct T
KEY = ["T_BUCKET", "HEAD_DIM", "CAUSAL", "GROUP"]


# -----------------------------------------------------------------------------
# Forward: grid (T / BLOCK_M, B * H); program (i, b*H + h) computes rows i*BLOCK_M... of o[b, h]

@triton.autotune(configs=_configs([(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
                                  dict(BLOCK_M=16, BLOCK_N=16)), key=KEY)
@triton.jit
def _attn_fwd(Q, K, V, O, LSE,
              stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
              stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
              H, GROUP, T, T_BUCKET, qk_scale,
              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    dtype = tl.float32 if IN_INTERPRETER else Q.dtype.element_ty  # what goes into tl.dot
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)  # int64: b * stride can pass 2^31
    hk = h // GROUP                                        # the kv head this query head reads
    rows = start_m + tl.arange(0, BLOCK_M)                 # (M,) query positions
    cols0 = tl.arange(0, BLOCK_N)                          # (N,) key positions within a tile
    d = tl.arange(0, HEAD_DIM)                             # (D,)

    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qt + d[None, :],
                mask=rows[:, None] < T, other=0.0).to(dtype)             # (M, D), stays on chip
    k_ptrs = K + b * stride_kb + hk * stride_kh + cols0[:, None] * stride_kt + d[None, :]  # (N, D)
    v_ptrs = V + b * stride_vb + hk * stride_vh + cols0[:, None] * stride_vt + d[None, :]

    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)   # running row max of the logits (base 2)
    l = tl.zeros((BLOCK_M,), tl.float32)                  # running row sum of exp2(s - m)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)       # running sum of exp2(s - m) * v
    # causal: keys after the tile's last query are all masked, so stop there (half the work)
    hi = tl.minimum(start_m + BLOCK_M, T) if CAUSAL else T
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + cols0
        k = tl.load(k_ptrs + start_n * stride_kt, mask=cols[:, None] < T, other=0.0).to(dtype)
        v = tl.load(v_ptrs + start_n * stride_vt, mask=cols[:, None] < T, other=0.0).to(dtype)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale   # (M, N) logits * log2(e)
        keep = cols[None, :] < T                                        # ragged last tile
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None])
        s = tl.where(keep, s, float("-inf"))
        # every row sees key 0 in the first tile, so m is finite from then on (no inf - inf)
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp2(m - m_new)                   # rescales what was summed under the old max
        p = tl.exp2(s - m_new[:, None])              # (M, N)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(dtype), v, input_precision="ieee")
        m = m_new

    o = acc / l[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_ot + d[None, :],
             o.to(O.dtype.element_ty), mask=rows[:, None] < T)
    tl.store(LSE + bh.to(tl.int64) * T + rows, m + tl.log2(l), mask=rows < T)  # (B, H, T) fp32


# -----------------------------------------------------------------------------
# Backward. With P = softmax(S), S = q k^T / sqrt(D) and dO the incoming gradient:
#   dV = P^T dO      dP = dO V^T      dS = P * (dP - delta),  delta = rowsum(dO * O)
#   dQ = dS K / sqrt(D)              dK = dS^T Q / sqrt(D)
# (delta = rowsum(P * dP) = rowsum(dO * O), the softmax Jacobian's correction term.)
# P is recomputed tile by tile from q, k and the saved log-sum-exp.

@triton.jit
def _attn_bwd_delta(O, DO, DELTA, stride_ob, stride_oh, stride_ot, stride_db, stride_dh, stride_dt,
                    H, T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[b, h, t] = sum_d dO * O: grid (T / BLOCK_M, B * H), one row tile per program."""
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    mask = rows[:, None] < T
    o = tl.load(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_ot + d[None, :],
                mask=mask, other=0.0)                                                # (M, D)
    do = tl.load(DO + b * stride_db + h * stride_dh + rows[:, None] * stride_dt + d[None, :],
                 mask=mask, other=0.0)                                               # (M, D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * T + rows, delta, mask=rows < T)


@triton.autotune(configs=_configs([(32, 128, 8, 2), (32, 64, 4, 2), (64, 64, 4, 2), (64, 128, 8, 2)],
                                  dict(BLOCK_M=16, BLOCK_N=16)), key=KEY)
@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                   stride_vb, stride_vh, stride_vt, stride_db, stride_dh, stride_dt,
                   stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
                   H, GROUP, T, T_BUCKET, qk_scale, sm_scale,
                   HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV of one key tile: grid (T / BLOCK_N, B * Hkv). The program keeps its k, v tile and
    the dk, dv accumulators on chip and streams over the queries of every head in its group.
    Works on transposed tiles (N rows of keys x M query columns) so no accumulator is transposed."""
    dtype = tl.float32 if IN_INTERPRETER else Q.dtype.element_ty
    Hkv = H // GROUP
    start_n = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1)
    b, hk = (bhk // Hkv).to(tl.int64), (bhk % Hkv).to(tl.int64)
    cols = start_n + tl.arange(0, BLOCK_N)   # (N,) this program's key positions
    rows0 = tl.arange(0, BLOCK_M)            # (M,) query positions within a tile
    d = tl.arange(0, HEAD_DIM)

    kv_mask = cols[:, None] < T
    k = tl.load(K + b * stride_kb + hk * stride_kh + cols[:, None] * stride_kt + d[None, :],
                mask=kv_mask, other=0.0).to(dtype)                                  # (N, D)
    v = tl.load(V + b * stride_vb + hk * stride_vh + cols[:, None] * stride_vt + d[None, :],
                mask=kv_mask, other=0.0).to(dtype)                                  # (N, D)
    dk = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
    # causal: queries before this key tile cannot see it; start at the query tile holding start_n
    lo = (start_n // BLOCK_M) * BLOCK_M if CAUSAL else 0
    for g in range(GROUP):                   # the query heads that share kv head hk
        h = hk * GROUP + g
        q_ptrs = Q + b * stride_qb + h * stride_qh + rows0[:, None] * stride_qt + d[None, :]
        do_ptrs = DO + b * stride_db + h * stride_dh + rows0[:, None] * stride_dt + d[None, :]
        stats = (b * H + h) * T              # row offset into the (B, H, T) lse and delta
        for start_m in range(lo, T, BLOCK_M):
            rows = start_m + rows0
            q = tl.load(q_ptrs + start_m * stride_qt, mask=rows[:, None] < T, other=0.0).to(dtype)    # (M, D)
            do = tl.load(do_ptrs + start_m * stride_dt, mask=rows[:, None] < T, other=0.0).to(dtype)  # (M, D)
            lse = tl.load(LSE + stats + rows, mask=rows < T, other=0.0)       # (M,)
            delta = tl.load(DELTA + stats + rows, mask=rows < T, other=0.0)   # (M,)
            sT = tl.dot(k, tl.trans(q), input_precision="ieee") * qk_scale   # (N, M)
            keep = (rows[None, :] < T) & (cols[:, None] < T)
            if CAUSAL:
                keep = keep & (cols[:, None] <= rows[None, :])
            pT = tl.where(keep, tl.exp2(sT - lse[None, :]), 0.0)            # P^T, (N, M)
            dv += tl.dot(pT.to(dtype), do, input_precision="ieee")          # P^T dO
            dpT = tl.dot(v, tl.trans(do), input_precision="ieee")           # (dO V^T)^T, (N, M)
            dsT = pT * (dpT - delta[None, :])
            dk += tl.dot(dsT.to(dtype), q, input_precision="ieee")          # dS^T Q
    dk *= sm_scale
    tl.store(DK + b * stride_dkb + hk * stride_dkh + cols[:, None] * stride_dkt + d[None, :],
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * stride_dvb + hk * stride_dvh + cols[:, None] * stride_dvt + d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=_configs([(128, 32, 8, 2), (64, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2)],
                                  dict(BLOCK_M=16, BLOCK_N=16)), key=KEY)
@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA,
                 stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                 stride_vb, stride_vh, stride_vt, stride_db, stride_dh, stride_dt,
                 stride_dqb, stride_dqh, stride_dqt,
                 H, GROUP, T, T_BUCKET, qk_scale, sm_scale,
                 HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of one query tile: grid (T / BLOCK_M, B * H), the forward's loop with dS instead of P."""
    dtype = tl.float32 if IN_INTERPRETER else Q.dtype.element_ty
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    hk = h // GROUP
    rows = start_m + tl.arange(0, BLOCK_M)
    cols0 = tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)

    row_mask = rows[:, None] < T
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qt + d[None, :],
                mask=row_mask, other=0.0).to(dtype)                                  # (M, D)
    do = tl.load(DO + b * stride_db + h * stride_dh + rows[:, None] * stride_dt + d[None, :],
                 mask=row_mask, other=0.0).to(dtype)                                 # (M, D)
    lse = tl.load(LSE + bh.to(tl.int64) * T + rows, mask=rows < T, other=0.0)        # (M,)
    delta = tl.load(DELTA + bh.to(tl.int64) * T + rows, mask=rows < T, other=0.0)    # (M,)
    k_ptrs = K + b * stride_kb + hk * stride_kh + cols0[:, None] * stride_kt + d[None, :]
    v_ptrs = V + b * stride_vb + hk * stride_vh + cols0[:, None] * stride_vt + d[None, :]
    dq = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    hi = tl.minimum(start_m + BLOCK_M, T) if CAUSAL else T
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + cols0
        k = tl.load(k_ptrs + start_n * stride_kt, mask=cols[:, None] < T, other=0.0).to(dtype)  # (N, D)
        v = tl.load(v_ptrs + start_n * stride_vt, mask=cols[:, None] < T, other=0.0).to(dtype)  # (N, D)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale        # (M, N)
        keep = (cols[None, :] < T) & row_mask
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None])
        p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)                   # P, (M, N)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")                 # dO V^T, (M, N)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(dtype), k, input_precision="ieee")                # dS K
    dq *= sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqt + d[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_mask)


# -----------------------------------------------------------------------------
# Launchers and the autograd Function

def _strides(t):
    """(batch, head, time) strides of a (B, H, T, D) tensor whose last dim is contiguous."""
    return t.stride(0), t.stride(1), t.stride(2)


def _last_dim_contiguous(t):
    # the kernels assume stride 1 along D (coalesced loads); any other layout of B, H, T is fine,
    # e.g. the model's q, which is (B, T, H, D) memory seen through a transpose
    return t if t.stride(-1) == 1 else t.contiguous()


def _forward(q, k, v, causal):
    B, H, T, D = q.shape
    group = H // k.shape[1]
    o = torch.empty_like(q)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)
    _attn_fwd[grid](q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
                    H, group, T, triton.next_power_of_2(T), LOG2E / math.sqrt(D),
                    HEAD_DIM=D, CAUSAL=causal)
    return o, lse


def _backward(q, k, v, o, lse, do, causal):
    B, H, T, D = q.shape
    Hkv, group = k.shape[1], H // k.shape[1]
    delta = torch.empty_like(lse)                                     # (B, H, T) fp32
    block = 16 if INTERPRET else 64
    _attn_bwd_delta[(triton.cdiv(T, block), B * H)](o, do, delta, *_strides(o), *_strides(do),
                                                     H, T, HEAD_DIM=D, BLOCK_M=block)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    scales = (T, triton.next_power_of_2(T), LOG2E / math.sqrt(D), 1 / math.sqrt(D))
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_N"]), B * Hkv)
    _attn_bwd_dkdv[grid](q, k, v, do, dk, dv, lse, delta, *_strides(q), *_strides(k), *_strides(v),
                         *_strides(do), *_strides(dk), *_strides(dv), H, group, *scales,
                         HEAD_DIM=D, CAUSAL=causal)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)
    _attn_bwd_dq[grid](q, k, v, do, dq, lse, delta, *_strides(q), *_strides(k), *_strides(v),
                       *_strides(do), *_strides(dq), H, group, *scales, HEAD_DIM=D, CAUSAL=causal)
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Saves q, k, v, o and the (B, H, T) log-sum-exp: O(T) extra memory instead of O(T^2)."""

    @staticmethod
    def forward(ctx, q, k, v, causal):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        o, lse = _forward(q, k, v, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, _last_dim_contiguous(do), ctx.causal)
        return dq, dk, dv, None


def flash_attention(q, k, v, causal):
    """softmax(q k^T / sqrt(D) [+ causal mask]) v. q (B, H, T, D); k, v (B, Hkv, T, D) -> (B, H, T, D).

    H must be a multiple of Hkv (query head h reads kv head h // (H // Hkv)); D is 32, 64 or 128;
    q, k, v share one dtype (fp16/bf16 on a GPU, fp32 too, e.g. in the interpreter)."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"flash_attention: expected q (B, H, T, D) and k, v (B, Hkv, T, D), "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    (B, H, T, D), (Bk, Hkv, Tk, Dk) = q.shape, k.shape
    if (B, T, D) != (Bk, Tk, Dk) or H % Hkv:
        raise ValueError(f"flash_attention: q {tuple(q.shape)} and k/v {tuple(k.shape)} must share B, T "
                         f"and D, and H={H} must be a multiple of Hkv={Hkv} (for Tq != Tk or a mask, "
                         f"use F.scaled_dot_product_attention)")
    if D not in (32, 64, 128):
        raise ValueError(f"flash_attention: head dim {D} is not supported; use 32, 64 or 128")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"flash_attention: q, k, v must share one of fp16/bf16/fp32, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    return FlashAttention.apply(q, k, v, causal)
