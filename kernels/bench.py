"""
Timings of the Triton kernels against what PyTorch offers for the same job (CUDA GPU only).

    python bench.py kernels          # or: python -m kernels.bench

First the device's ceilings, measured: copy bandwidth (clone of a 1 GiB tensor, read + write)
and bf16 matmul TFLOP/s (8192^3). Then:
- attention, forward and backward TFLOP/s: flash_attention vs F.scaled_dot_product_attention
  pinned to its FLASH_ATTENTION and CUDNN_ATTENTION backends, at the LM's shape (H=32, Hkv=4,
  D=64, causal, B*T = 16384 tokens) for T = 512 ... 8192, and the ViT's (B=32, H=16, T=577,
  D=64, not causal). FLOPs counted: 4*B*H*T*T*D forward (halved when causal), 2.5x that backward.
- depthwise conv GB/s at the projector's shapes, token-major (B, 576, C) in and out: our kernel
  vs F.conv2d in NCHW (a transpose in and out) and in channels_last (zero-copy views of the
  token-major tensor). Bytes counted: x + y + weight + bias, the least any kernel must move.
Each number is the median of `repeats` CUDA-event timings after warmup (autotuning included).
"""

import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels import HAVE_TRITON, depthwise_conv, flash_attention


def cuda_time(fn, reps):
    """Median seconds of fn() over reps runs, timed with CUDA events after 3 warmup calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def ceilings(reps):
    x = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")           # 1 GiB
    gbps = 2 * x.numel() * 2 / cuda_time(x.clone, reps) / 1e9             # read + write
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    tflops = 2 * 8192**3 / cuda_time(lambda: a @ a, reps) / 1e12
    print(f"ceilings: copy {gbps:.0f} GB/s, bf16 matmul {tflops:.0f} TFLOP/s\n")


def sdpa_backend(backend):
    def attend(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                  enable_gqa=q.shape[1] != k.shape[1])
    return attend


def time_attention(attend, B, H, Hkv, T, D, causal, reps):
    """(forward seconds, backward seconds) of attend on random bf16 inputs."""
    q = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, Hkv, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))
    fwd = cuda_time(lambda: attend(q, k, v, causal), reps)
    o = attend(q, k, v, causal)
    do = torch.randn_like(o)
    bwd = cuda_time(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), reps)
    return fwd, bwd


def bench_attention(reps):
    impls = {"triton": flash_attention, "sdpa flash": sdpa_backend(SDPBackend.FLASH_ATTENTION),
             "sdpa cudnn": sdpa_backend(SDPBackend.CUDNN_ATTENTION)}
    shapes = [(16384 // T, 32, 4, T, 64, True) for T in (512, 1024, 2048, 4096, 8192)]
    shapes.append((32, 16, 16, 577, 64, False))   # the ViT
    print(f"{'attention (bf16)':<34} {'impl':<11} {'fwd ms':>8} {'TFLOP/s':>8} {'bwd ms':>8} {'TFLOP/s':>8}")
    for B, H, Hkv, T, D, causal in shapes:
        flops = 4 * B * H * T * T * D / (2 if causal else 1)
        name = f"B={B} H={H}/{Hkv} T={T} D={D}{' causal' if causal else ''}"
        for impl, attend in impls.items():
            try:
                fwd, bwd = time_attention(attend, B, H, Hkv, T, D, causal, reps)
            except RuntimeError as e:   # e.g. a backend that does not take this shape or GQA
                print(f"{name:<34} {impl:<11} unavailable: {str(e).splitlines()[0][:60]}")
                continue
            print(f"{name:<34} {impl:<11} {fwd * 1e3:8.2f} {flops / fwd / 1e12:8.1f} "
                  f"{bwd * 1e3:8.2f} {2.5 * flops / bwd / 1e12:8.1f}")
    print()


def conv_nchw(x, weight, bias, grid_hw, stride):
    B, N, C = x.shape
    x = x.reshape(B, *grid_hw, C).permute(0, 3, 1, 2).contiguous()        # (B, C, H, W): a copy
    y = F.conv2d(x, weight, bias, stride=stride, padding=1, groups=C)
    return y.flatten(2).transpose(1, 2).contiguous()                       # (B, N', C): a copy


def conv_channels_last(x, weight, bias, grid_hw, stride):
    B, N, C = x.shape
    x = x.reshape(B, *grid_hw, C).permute(0, 3, 1, 2)                      # a channels_last view
    y = F.conv2d(x, weight, bias, stride=stride, padding=1, groups=C)     # channels_last out
    return y.flatten(2).transpose(1, 2).contiguous()                       # a view: no copy


def bench_dwconv(reps):
    impls = {"triton": depthwise_conv, "conv2d NCHW": conv_nchw, "conv2d NHWC": conv_channels_last}
    print(f"{'depthwise conv 3x3 (bf16)':<34} {'impl':<11} {'ms':>8} {'GB/s':>8}")
    for B in (32, 256):
        for C in (1024, 2048):
            for stride in (1, 2):
                x = torch.randn(B, 576, C, device="cuda", dtype=torch.bfloat16)
                w = torch.randn(C, 1, 3, 3, device="cuda", dtype=torch.bfloat16)
                b = torch.randn(C, device="cuda", dtype=torch.bfloat16)
                n_out = ((24 - 1) // stride + 1) ** 2
                nbytes = (x.numel() + B * n_out * C + w.numel() + b.numel()) * 2
                for impl, conv in impls.items():
                    t = cuda_time(lambda: conv(x, w, b, (24, 24), stride), reps)
                    print(f"{f'B={B} 24x24 C={C} stride={stride}':<34} {impl:<11} {t * 1e3:8.3f} "
                          f"{nbytes / t / 1e9:8.0f}")
    print()


def bench_kernels(args=None):
    """`args` may carry `repeats` (timings per measurement; default 10)."""
    if not torch.cuda.is_available():
        print("bench kernels: needs a CUDA GPU (the Triton kernels run on CPU only in the "
              "interpreter, which is for tests, not timings); nothing to measure here.")
        return
    if not HAVE_TRITON:
        print("bench kernels: triton is not installed (pip install triton); nothing to measure.")
        return
    reps = getattr(args, "repeats", 10)
    import triton  # installed: HAVE_TRITON says so
    print(f"device {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    ceilings(reps)
    bench_attention(reps)
    bench_dwconv(reps)


if __name__ == "__main__":
    bench_kernels()
