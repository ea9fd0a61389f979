"""
Timings of the Triton kernels against what PyTorch offers for the same job (CUDA GPU only).

    python bench.py kernels          # or: python -m kernels.bench
    python bench_gpu.py              # these timings as part 3 of the whole GPU check

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

Each measurement function prints its table and returns its rows (dicts); `shapes`/`cases`,
`device` and `dtype` default to the GPU benchmark's and are made small by bench_gpu.py's CPU
dry run; `allow(name)` (False = skip that shape) and `report(row)` let a caller cap and record.
"""

import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels import HAVE_TRITON, depthwise_conv, flash_attention

LM_SHAPES = [(16384 // T, 32, 4, T, 64, True) for T in (512, 1024, 2048, 4096, 8192)]
VIT_SHAPE = (32, 16, 16, 577, 64, False)
DWCONV_CASES = [(B, C, stride) for B in (32, 256) for C in (1024, 2048) for stride in (1, 2)]


def device_time(fn, reps, device="cuda", warmup=3):
    """Median seconds of fn() over reps runs after `warmup` calls: CUDA events on a GPU, the
    wall clock on a CPU (bench_gpu.py's dry run, where only the plumbing counts)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if str(device).startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ceilings(reps, device="cuda", copy_numel=2**29, n=8192, dtype=torch.bfloat16):
    """{copy_gbps, matmul_tflops}: clone of copy_numel elements (1 GiB in bf16), n^3 matmul."""
    x = torch.empty(copy_numel, dtype=dtype, device=device)
    gbps = 2 * x.numel() * x.element_size() / device_time(x.clone, reps, device) / 1e9   # read + write
    a = torch.randn(n, n, dtype=dtype, device=device)
    tflops = 2 * n**3 / device_time(lambda: a @ a, reps, device) / 1e12
    print(f"ceilings: copy {gbps:.0f} GB/s, {str(dtype)[6:]} matmul {tflops:.1f} TFLOP/s\n", flush=True)
    return {"copy_gbps": gbps, "matmul_tflops": tflops}


def sdpa_backend(backend):
    def attend(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                  enable_gqa=q.shape[1] != k.shape[1])
    return attend


def time_attention(attend, B, H, Hkv, T, D, causal, reps, device="cuda", dtype=torch.bfloat16, warmup=3):
    """(forward seconds, backward seconds) of attend on random inputs."""
    q = torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, Hkv, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    fwd = device_time(lambda: attend(q, k, v, causal), reps, device, warmup)
    o = attend(q, k, v, causal)
    do = torch.randn_like(o)
    bwd = device_time(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), reps, device, warmup)
    return fwd, bwd


def bench_attention(reps, shapes=None, device="cuda", dtype=torch.bfloat16, allow=None, report=None, warmup=3):
    impls = {"triton": flash_attention, "sdpa flash": sdpa_backend(SDPBackend.FLASH_ATTENTION),
             "sdpa cudnn": sdpa_backend(SDPBackend.CUDNN_ATTENTION)}
    rows = []
    print(f"{'attention (' + str(dtype)[6:] + ')':<34} {'impl':<11} {'fwd ms':>8} {'TFLOP/s':>8} {'bwd ms':>8} "
          f"{'TFLOP/s':>8}")
    for B, H, Hkv, T, D, causal in shapes or LM_SHAPES + [VIT_SHAPE]:
        flops = 4 * B * H * T * T * D / (2 if causal else 1)
        name = f"B={B} H={H}/{Hkv} T={T} D={D}{' causal' if causal else ''}"
        if allow and not allow(f"attention {name}"):
            continue
        for impl, attend in impls.items():
            row = {"shape": name, "impl": impl, "T": T, "D": D, "causal": causal}
            try:
                fwd, bwd = time_attention(attend, B, H, Hkv, T, D, causal, reps, device, dtype, warmup)
            except RuntimeError as e:   # e.g. a backend that does not take this shape or GQA
                row["error"] = str(e).splitlines()[0][:80]
                print(f"{name:<34} {impl:<11} unavailable: {row['error'][:60]}")
            else:
                row.update(fwd_ms=fwd * 1e3, fwd_tflops=flops / fwd / 1e12,
                           bwd_ms=bwd * 1e3, bwd_tflops=2.5 * flops / bwd / 1e12)
                print(f"{name:<34} {impl:<11} {fwd * 1e3:8.2f} {row['fwd_tflops']:8.1f} "
                      f"{bwd * 1e3:8.2f} {row['bwd_tflops']:8.1f}", flush=True)
            rows.append(row)
            if report:
                report(row)
    print()
    return rows


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


def bench_dwconv(reps, cases=None, grid=24, device="cuda", dtype=torch.bfloat16, allow=None, report=None,
                 warmup=3):
    impls = {"triton": depthwise_conv, "conv2d NCHW": conv_nchw, "conv2d NHWC": conv_channels_last}
    rows = []
    print(f"{f'depthwise conv 3x3 ({str(dtype)[6:]})':<34} {'impl':<11} {'ms':>8} {'GB/s':>8}")
    for B, C, stride in cases or DWCONV_CASES:
        name = f"B={B} {grid}x{grid} C={C} stride={stride}"
        if allow and not allow(f"dwconv {name}"):
            continue
        x = torch.randn(B, grid * grid, C, device=device, dtype=dtype)
        w = torch.randn(C, 1, 3, 3, device=device, dtype=dtype)
        b = torch.randn(C, device=device, dtype=dtype)
        n_out = ((grid - 1) // stride + 1) ** 2
        nbytes = (x.numel() + B * n_out * C + w.numel() + b.numel()) * x.element_size()
        for impl, conv in impls.items():
            t = device_time(lambda: conv(x, w, b, (grid, grid), stride), reps, device, warmup)
            row = {"shape": name, "impl": impl, "stride": stride, "ms": t * 1e3, "gbps": nbytes / t / 1e9}
            print(f"{name:<34} {impl:<11} {t * 1e3:8.3f} {row['gbps']:8.0f}", flush=True)
            rows.append(row)
            if report:
                report(row)
    print()
    return rows


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
