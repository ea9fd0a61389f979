"""
The projectors of Xmodel-VLM: they turn the vision tower's patch tokens into LM tokens.

Every projector maps (B, grid*grid, in_dim) -> (B, tokens, out_dim); in the paper that is the
24x24 = 576 CLIP ViT-L/14-336 patches of width 1024 -> `tokens` embeddings of the LM's width 2048.
Build one with `build_projector(kind, in_dim, out_dim, grid, tokens)`; `tokens=None` picks the
kind's default (144 on 24x24 for the downsampling kinds). Params at 1024 -> 2048 on 24x24:

  kind        tokens  params      origin
  xdp            144   6,305,792  the paper (default): dwconv 3x3 stride 2 -> Linear, Mish, Linear
  xdp-concat     144  12,587,008  released code `xdpnetv10_4`: join 4 neighbour tokens -> same MLP
  linear         576   2,099,200  LLaVA: one Linear
  mlp2x_gelu     576   6,295,552  LLaVA-1.5: Linear, GELU, Linear
  ldp            144  18,936,832  MobileVLM: MLP, then two MobileNetV3 blocks (2nd has stride 2)
  ldpv2          144   6,316,032  MobileVLM V2: MLP, avg pool to 12x12, x + dwconv(x)

Token counts: xdp's stride s gives ceil(grid/s)^2 tokens (576, 144, 64, 36, 25, 16, 9, 4, 1 on 24);
xdp-concat's factor f gives grid^2/f (any divisor of 576); ldpv2 pools to any k x k <= grid.

Every depthwise convolution goes through `depthwise_conv()`, the plain-PyTorch definition that the
Triton kernel in kernels/dwconv.py must equal. State-dict keys are LLaVA's for linear/mlp2x_gelu;
`load_mobilevlm_projector()` maps MobileVLM's ldp/ldpv2 checkpoint keys onto ours.
"""

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from common import UserError


# -----------------------------------------------------------------------------
# Depthwise convolution on a token grid: the one hot spot, and the kernel's reference

def depthwise_conv(x, weight, bias, grid_hw, stride, padding=1, residual=None):
    """3x3 depthwise conv on token-major input: (B, H*W, C) -> (B, H'*W', C), H' = (H+2p-3)//s + 1.

    weight is (C, 1, 3, 3) and bias (C,) or None, exactly as nn.Conv2d(C, C, 3, groups=C) stores
    them; `residual` (B, H'*W', C), if given, is added to the output (ldpv2's x + conv(x)).
    """
    if kernels.use_triton(x):  # on CUDA kernels/dwconv.py reads (B, H*W, C) as it is: no transposes
        return kernels.depthwise_conv(x, weight, bias, grid_hw, stride, padding, residual)
    B, N, C = x.shape
    H, W = grid_hw
    if N != H * W or weight.shape[0] != C:
        raise ValueError(f"depthwise_conv: x is {tuple(x.shape)} and weight {tuple(weight.shape)}, "
                         f"but a {H}x{W} grid needs x (B, {H * W}, C) and weight (C, 1, 3, 3)")
    x = x.reshape(B, H, W, C).permute(0, 3, 1, 2)                    # (B, H*W, C) -> (B, C, H, W)
    y = F.conv2d(x, weight, bias, stride=stride, padding=padding, groups=C)  # (B, C, H', W')
    y = y.flatten(2).transpose(1, 2)                                 # -> (B, H'*W', C)
    return y if residual is None else y + residual


class DepthwiseConv(nn.Module):
    """Holds a depthwise conv's parameters in nn.Conv2d's layout, so checkpoints are conv2d's."""

    def __init__(self, channels, stride=1, bias=True):
        super().__init__()
        self.stride = stride
        # nn.Conv2d's default init: uniform in +-1/sqrt(fan_in), and fan_in = 1*3*3 = 9
        self.weight = nn.Parameter(torch.empty(channels, 1, 3, 3).uniform_(-1 / 3, 1 / 3))
        self.register_parameter("bias", nn.Parameter(torch.empty(channels).uniform_(-1 / 3, 1 / 3))
                                if bias else None)

    def forward(self, x, grid_hw, residual=None):
        return depthwise_conv(x, self.weight, self.bias, grid_hw, self.stride, 1, residual)


# -----------------------------------------------------------------------------
# Checks shared by all kinds (errors that say what would work)

def _check_tokens(kind, grid, tokens, possible):
    if tokens not in possible:
        raise UserError(f"projector '{kind}' on a {grid}x{grid} grid cannot give {tokens} "
                        f"tokens; the counts it can give are {possible}. Pick one of those, or "
                        f"another kind (xdp-concat gives any divisor of {grid * grid}, ldpv2 "
                        f"any k*k with k <= {grid})")


def _check_input(x, grid, kind):
    if x.dim() != 3 or x.shape[1] != grid * grid:
        raise ValueError(f"projector '{kind}' was built for a {grid}x{grid} grid, so it takes "
                         f"(B, {grid * grid}, C) patch tokens, but got {tuple(x.shape)}; "
                         f"build it with grid = sqrt(number of patches), without the CLS token")


def _mlp(in_dim, out_dim, act):
    return nn.Sequential(nn.Linear(in_dim, out_dim), act, nn.Linear(out_dim, out_dim))


# -----------------------------------------------------------------------------
# The six kinds. Each has token_counts(grid): the counts it can produce, largest first.

class XDP(nn.Module):
    """The paper's XDP: depthwise 3x3 conv (stride s, with bias) -> Linear -> Mish -> Linear."""

    @staticmethod
    def token_counts(grid):
        return sorted({kernels.conv_out(grid, s) ** 2 for s in range(1, grid + 1)}, reverse=True)

    def __init__(self, in_dim, out_dim, grid, tokens):
        super().__init__()
        _check_tokens("xdp", grid, tokens, self.token_counts(grid))
        self.grid = grid
        # several strides can give one count (12..23 all give 2x2 on 24); take the smallest
        stride = next(s for s in range(1, grid + 1) if kernels.conv_out(grid, s) ** 2 == tokens)
        self.dw = DepthwiseConv(in_dim, stride, bias=True)
        self.mlp = _mlp(in_dim, out_dim, nn.Mish())

    def forward(self, x):
        _check_input(x, self.grid, "xdp")
        x = self.dw(x, (self.grid, self.grid))  # (B, 576, 1024) -> (B, 144, 1024) at stride 2
        return self.mlp(x)                      # (B, 144, 1024) -> (B, 144, 2048)


class XDPConcat(nn.Module):
    """The released code's XDP (`xdpnetv10_<f>`): f consecutive tokens joined -> Linear, Mish,
    Linear. The released checkpoint's config says `xdpnetv10_1`: f=1, all 576 tokens."""

    @staticmethod
    def token_counts(grid):
        n = grid * grid
        return [n // f for f in range(1, n + 1) if n % f == 0]

    def __init__(self, in_dim, out_dim, grid, tokens):
        super().__init__()
        _check_tokens("xdp-concat", grid, tokens, self.token_counts(grid))
        self.grid, self.f = grid, grid * grid // tokens
        self.mlp = _mlp(in_dim * self.f, out_dim, nn.Mish())  # keys mlp.0.*, mlp.2.*, as released

    def forward(self, x):
        _check_input(x, self.grid, "xdp-concat")
        B, N, C = x.shape
        # f neighbours in raster order become one token (a 1xf patch, wrapping rows if f > grid)
        x = x.reshape(B, N // self.f, C * self.f)  # (B, 576, 1024) -> (B, 144, 4096) at f=4
        return self.mlp(x)                         # -> (B, 144, 2048)


class LinearProjector(nn.Linear):
    """LLaVA's projector: one Linear, every patch kept. Keys `weight`, `bias`, as LLaVA's."""

    @staticmethod
    def token_counts(grid):
        return [grid * grid]

    def __init__(self, in_dim, out_dim, grid, tokens):
        _check_tokens("linear", grid, tokens, self.token_counts(grid))
        super().__init__(in_dim, out_dim)


class MLP2xGELU(nn.Sequential):
    """LLaVA-1.5's projector: Linear, GELU, Linear. Keys `0.*`, `2.*`, as LLaVA's `mm_projector`."""

    @staticmethod
    def token_counts(grid):
        return [grid * grid]

    def __init__(self, in_dim, out_dim, grid, tokens):
        _check_tokens("mlp2x_gelu", grid, tokens, self.token_counts(grid))
        super().__init__(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


def se_channels(dim):
    """Squeeze-excite width: dim/4 rounded to a multiple of 8 (torchvision's _make_divisible)."""
    v = dim // 4
    r = max(8, (v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r  # 2048 -> 512


class MobileBlock(nn.Module):
    """MobileNetV3 inverted residual without expansion, with LayerNorm for BatchNorm (MobileVLM's).

    dwconv 3x3 (no bias) -> LayerNorm -> Hardswish -> squeeze-excite -> pointwise (no bias) ->
    LayerNorm, plus the input when stride is 1. Convs without bias: the LayerNorm after adds one.
    """

    def __init__(self, dim, stride):
        super().__init__()
        self.stride = stride
        self.dw = DepthwiseConv(dim, stride, bias=False)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)         # timm's LayerNormAct2d: over channels
        self.se_down = nn.Linear(dim, se_channels(dim))  # SE's 1x1 convs are per-token Linears
        self.se_up = nn.Linear(se_channels(dim), dim)
        self.pw = nn.Linear(dim, dim, bias=False)        # the pointwise (1x1) conv
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x, grid):
        y = F.hardswish(self.norm1(self.dw(x, (grid, grid))))  # (B, g*g, C) -> (B, g'*g', C)
        # squeeze-excite: a gate in (0, 1) per channel, computed from the mean over all tokens
        gate = F.hardsigmoid(self.se_up(F.relu(self.se_down(y.mean(1, keepdim=True)))))  # (B, 1, C)
        y = self.norm2(self.pw(y * gate))
        return x + y if self.stride == 1 else y  # residual only where the grid is unchanged


class LDP(nn.Module):
    """MobileVLM's lightweight downsample projector: MLP (GELU), MobileBlock stride 1, stride 2."""

    # MobileVLM checkpoint key (after `model.mm_projector.`) -> ours; blocks are mb_block.1, .2
    MOBILEVLM_KEYS = [
        (r"^model\.mlp\.1\.", "mlp.0."), (r"^model\.mlp\.3\.", "mlp.2."),
        (r"^model\.mb_block\.(\d)\.block\.0\.0\.", r"block\1.dw."),
        (r"^model\.mb_block\.(\d)\.block\.0\.1\.", r"block\1.norm1."),
        (r"^model\.mb_block\.(\d)\.block\.1\.fc1\.", r"block\1.se_down."),
        (r"^model\.mb_block\.(\d)\.block\.1\.fc2\.", r"block\1.se_up."),
        (r"^model\.mb_block\.(\d)\.block\.2\.0\.", r"block\1.pw."),
        (r"^model\.mb_block\.(\d)\.block\.2\.1\.", r"block\1.norm2."),
    ]

    @staticmethod
    def token_counts(grid):
        return [kernels.conv_out(grid, 2) ** 2]  # fixed by the stride-2 block: 144 on 24x24

    def __init__(self, in_dim, out_dim, grid, tokens):
        super().__init__()
        _check_tokens("ldp", grid, tokens, self.token_counts(grid))
        self.grid = grid
        self.mlp = _mlp(in_dim, out_dim, nn.GELU())
        self.block1 = MobileBlock(out_dim, stride=1)
        self.block2 = MobileBlock(out_dim, stride=2)

    def forward(self, x):
        _check_input(x, self.grid, "ldp")
        x = self.mlp(x)                    # (B, 576, 1024) -> (B, 576, 2048)
        x = self.block1(x, self.grid)      # (B, 576, 2048), with residual
        return self.block2(x, self.grid)   # (B, 576, 2048) -> (B, 144, 2048)


class LDPv2(nn.Module):
    """MobileVLM V2's projector: MLP (GELU) -> average pool to k x k -> x + dwconv(x) (PEG)."""

    MOBILEVLM_KEYS = [(r"^mlp\.mlp\.", "mlp."), (r"^peg\.peg\.0\.", "peg.")]

    @staticmethod
    def token_counts(grid):
        return [k * k for k in range(grid, 0, -1)]

    def __init__(self, in_dim, out_dim, grid, tokens):
        super().__init__()
        _check_tokens("ldpv2", grid, tokens, self.token_counts(grid))
        self.grid, self.side = grid, math.isqrt(tokens)
        self.mlp = _mlp(in_dim, out_dim, nn.GELU())
        self.peg = DepthwiseConv(out_dim, stride=1, bias=True)

    def forward(self, x):
        _check_input(x, self.grid, "ldpv2")
        B = x.shape[0]
        x = self.mlp(x)                            # (B, 576, 1024) -> (B, 576, 2048)
        x = x.transpose(1, 2).reshape(B, -1, self.grid, self.grid)  # -> (B, 2048, 24, 24)
        x = F.adaptive_avg_pool2d(x, self.side)    # -> (B, 2048, 12, 12)
        x = x.flatten(2).transpose(1, 2)           # -> (B, 144, 2048)
        # positional injection (PEG, from Twins): the conv sees neighbours, the residual keeps x
        return self.peg(x, (self.side, self.side), residual=x)


PAPER_GRID = 24  # CLIP ViT-L/14-336's 24x24 patches: the grid the paper's token counts refer to


def grid_tokens(n, grid):
    """The paper's count n (on 24x24) on a grid x grid tower, keeping the downsampling stride:
    576, 144, 36, 4, 1 are strides 1, 2, 4, 12, 24, i.e. 64, 16, 4, 1, 1 on an 8x8 grid and 9, 4,
    1, 1, 1 on the tiny CLIP's 3x3."""
    side = math.isqrt(n)
    if side * side != n or PAPER_GRID % side:
        raise UserError(f"--tokens {n}: the paper's counts are squares whose side divides 24 "
                        f"(576, 144, 64, 36, 16, 9, 4, 1), as strides on its 24x24 grid")
    return math.ceil(grid / (PAPER_GRID // side)) ** 2


PROJECTORS = {"xdp": XDP, "xdp-concat": XDPConcat, "linear": LinearProjector,
              "mlp2x_gelu": MLP2xGELU, "ldp": LDP, "ldpv2": LDPv2}


def build_projector(kind="xdp", in_dim=1024, out_dim=2048, grid=24, tokens=None):
    """A projector (B, grid*grid, in_dim) -> (B, tokens, out_dim). tokens=None: the largest count
    the kind can give that keeps at most a quarter of the patches (144 on 24x24; 576 for linear
    and mlp2x_gelu, which keep every patch)."""
    if kind not in PROJECTORS:
        raise UserError(f"unknown projector kind '{kind}'; choose one of {list(PROJECTORS)}")
    cls = PROJECTORS[kind]
    if tokens is None:
        counts = cls.token_counts(grid)
        tokens = counts[0] if len(counts) == 1 else max(c for c in counts if c <= grid * grid // 4)
    projector = cls(in_dim, out_dim, grid, tokens)
    projector.kind, projector.tokens = kind, tokens  # what a saved VLM's config records
    return projector


def load_mobilevlm_projector(module, state_dict, prefix="model.mm_projector."):
    """Load a MobileVLM (or LLaVA) checkpoint's projector weights into `module`; returns it.

    Keeps the keys under `prefix` (all keys if none has it), renames them with the module's
    MOBILEVLM_KEYS, and flattens 1x1 conv weights (out, in, 1, 1) into our Linears' (out, in).
    """
    if any(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    ours = {}
    for key, value in state_dict.items():
        for pattern, replacement in getattr(module, "MOBILEVLM_KEYS", []):
            key, hits = re.subn(pattern, replacement, key)
            if hits:
                break
        if value.dim() == 4 and value.shape[2:] == (1, 1):
            value = value.flatten(1)
        ours[key] = value
    missing, unexpected = module.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise UserError(f"this checkpoint does not fit the {type(module).__name__} projector: "
                        f"missing {missing}, unexpected {unexpected}. Check that its "
                        f"mm_projector_type (ldpnet -> ldp, ldpnetv2 -> ldpv2) matches the kind")
    return module
