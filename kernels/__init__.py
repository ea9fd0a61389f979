"""
Triton kernels for the two hot spots, each equal to a plain-PyTorch definition elsewhere:

    flash_attention(q, k, v, causal)      == model.attention(q, k, v, causal)       (mask=None)
    depthwise_conv(x, weight, bias, grid_hw, stride, padding=1, residual=None)
                                          == xdp.depthwise_conv(...)

The model files call `use_triton(t)` to pick a path:

    XMODEL_KERNELS=auto    (default) Triton on CUDA tensors when triton is installed, else PyTorch
    XMODEL_KERNELS=torch   always the PyTorch definitions
    XMODEL_KERNELS=triton  always the kernels; on CPU this needs TRITON_INTERPRET=1 (Triton's
                           interpreter, slow, for tests)

Importing this package works without triton; the kernels then raise a clear error if called.
Tests: TRITON_INTERPRET=1 python -m pytest -q tests/test_kernels.py. Timings: kernels/bench.py.
"""

import os


def conv_out(size, stride, padding=1):
    """Side of a 3x3 convolution's output: (size + 2*padding - 3) // stride + 1, which at padding 1
    is ceil(size / stride). The one formula for the projectors (xdp.py) and the kernel (dwconv.py);
    defined before the kernels are imported below, since dwconv.py imports it from here."""
    return (size + 2 * padding - 3) // stride + 1


try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

NO_TRITON = ("triton is not installed (pip install triton, Linux only); "
             "unset XMODEL_KERNELS or set it to torch")

if HAVE_TRITON:
    from kernels.dwconv import depthwise_conv
    from kernels.attention import flash_attention
else:
    def flash_attention(q, k, v, causal):
        raise RuntimeError(f"flash_attention: {NO_TRITON}")

    def depthwise_conv(x, weight, bias, grid_hw, stride, padding=1, residual=None):
        raise RuntimeError(f"depthwise_conv: {NO_TRITON}")


def use_triton(t):
    """True when the Triton kernels should handle tensor t, per XMODEL_KERNELS (read at each call,
    so a test or a script can switch paths with os.environ)."""
    mode = os.environ.get("XMODEL_KERNELS", "auto")
    if mode == "torch":
        return False
    if mode == "auto":
        return t.is_cuda and HAVE_TRITON
    if mode != "triton":
        raise ValueError(f"XMODEL_KERNELS={mode!r}: expected auto, torch or triton")
    if not HAVE_TRITON:
        raise RuntimeError(f"XMODEL_KERNELS=triton, but {NO_TRITON}")
    if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("XMODEL_KERNELS=triton on a CPU tensor: Triton runs on CPU only in its "
                           "interpreter; set TRITON_INTERPRET=1 too (slow; meant for tests)")
    return True
