"""
CLIP's vision transformer and LLaVA's image preprocessing (train_clip.py trains a tiny one).

The tower is CLIP ViT exactly as in openai/clip-vit-large-patch14-336 (preset `clip-vit-l-14-336`):
- a convolution without bias cuts the image into patches: 336 / 14 = 24, 24x24 = 576 patches
- a learned class token goes in front (577 tokens) and learned position embeddings are added
- `pre_layrnorm`, a LayerNorm before the first block (the typo is OpenAI's and HF's name)
- 24 pre-LN blocks: LayerNorm -> 16-head attention (with biases) -> residual,
  LayerNorm -> MLP 1024 -> 4096 -> quick_gelu -> 1024 -> residual; LayerNorm eps 1e-5
- `post_layernorm` on the last block's class token: CLIP's image embedding (LLaVA ignores it)
LLaVA's image features are HF's hidden_states[-2], the output of the second-to-last block,
without the class token: (B, 576, 1024). Parameter names are HF's (`vision_model.encoder.
layers.3.self_attn.q_proj.weight`, ...), so `CLIPVisionTower.from_hf(dir)` loads a HF CLIP
directory and `tower.save_hf(dir)` writes one.

`ImageProcessor(336)` is LLaVA-1.5's preprocessing (image_aspect_ratio "pad"): pad to a square
with the mean colour, resize, centre crop, normalise, equal to transformers' CLIPImageProcessor.
`python vision.py` (which used to train the tiny CLIP) now runs train_clip.py, with a notice.
"""

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import shapes
from common import (InputNotFound, UserError, load_checked, load_hf_state_dict, read_json, run_moved, save_hf_dir,
                    tensor_dtype)
from model import attention

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# -----------------------------------------------------------------------------
# The vision tower


@dataclass
class VisionConfig:
    # field names are HF CLIPVisionConfig's, so config.json maps onto them one to one
    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    num_channels: int = 3

    @classmethod
    def preset(cls, name, **overrides):
        presets = {
            # openai/clip-vit-large-patch14-336's vision model: 303,507,456 parameters
            "clip-vit-l-14-336": dict(),
            # ~1.2M parameters: the shapes world's 64x64 scenes, resized to 96x96, as 3x3 patches of
            # 32 pixels, one per cell of the scenes' layout, so a visual token is an object or an empty
            # cell (on 8x8 patches, 16 XDP tokens cut across the cells: README, "The reading ladder")
            "tiny": dict(image_size=96, patch_size=32, hidden_size=128, intermediate_size=512,
                         num_hidden_layers=4, num_attention_heads=4),
        }
        if name not in presets:
            raise UserError(f"unknown vision preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def __post_init__(self):
        if self.image_size % self.patch_size or self.hidden_size % self.num_attention_heads:
            raise UserError(f"image_size ({self.image_size}) must be a multiple of patch_size "
                            f"({self.patch_size}) and hidden_size ({self.hidden_size}) of "
                            f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in ACTIVATIONS:
            raise UserError(f"hidden_act {self.hidden_act!r} is not supported; "
                            f"expected one of {sorted(ACTIVATIONS)}")


ACTIVATIONS = {"quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # OpenAI's CLIP
               "gelu": F.gelu}                                          # some later CLIPs


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.image_size = c.image_size
        self.patch_embedding = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size,
                                         stride=c.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(c.hidden_size))
        self.position_embedding = nn.Embedding((c.image_size // c.patch_size) ** 2 + 1, c.hidden_size)

    def forward(self, pixels):
        B, _, H, W = pixels.shape
        if H != self.image_size or W != self.image_size:
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {H}x{W}; "
                             f"preprocess them with ImageProcessor({self.image_size})")
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))  # (B, C, g, g)
        x = x.flatten(2).transpose(1, 2)                                         # (B, g*g, C), raster order
        x = torch.cat([self.class_embedding.expand(B, 1, -1), x], dim=1)         # (B, 1+g*g, C)
        return x + self.position_embedding.weight


class SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head = c.num_attention_heads
        self.q_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.k_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.v_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.out_proj = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)   # (B, nh, T, hs)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = attention(q, k, v, causal=False)            # every token sees every token
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.act = ACTIVATIONS[c.hidden_act]
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.self_attn = SelfAttention(c)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPVisionTower(nn.Module):
    """tower(pixels (B, 3, S, S)) -> features (B, num_patches, hidden_size), LLaVA's way."""

    def __init__(self, config, select_layer=-2):
        super().__init__()
        c = self.config = config
        self.grid = c.image_size // c.patch_size      # 24 for ViT-L/14-336
        self.num_patches = self.grid ** 2             # 576
        self.hidden_size = c.hidden_size              # 1024
        # ModuleDicts only to give the parameters HF's names (vision_model.encoder.layers.N...)
        self.vision_model = nn.ModuleDict(dict(
            embeddings=Embeddings(c),
            pre_layrnorm=nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
            encoder=nn.ModuleDict(dict(
                layers=nn.ModuleList(EncoderLayer(c) for _ in range(c.num_hidden_layers)))),
            post_layernorm=nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)))
        self.select_layer = select_layer
        self.blocks_for(select_layer)  # fail now, not at the first forward
        self.apply(self._init_weights)

    def _init_weights(self, m):
        """CLIP's initialisation (as HF's CLIPPreTrainedModel): projections into the residual
        stream shrink with depth. Matters only for training from scratch (tiny CLIP)."""
        d, L = self.config.hidden_size, self.config.num_hidden_layers
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
        if isinstance(m, Embeddings):
            nn.init.normal_(m.class_embedding, std=d ** -0.5)
            nn.init.normal_(m.patch_embedding.weight, std=0.02)
            # as large as a patch's content at init (HF's 0.02 would be 55x smaller than that on 32x32x3
            # pixels): the tiny tower's patch features then keep where they are (probe: cell 14% -> 100%)
            patch_scale = 0.02 * (3 * self.config.patch_size ** 2) ** 0.5
            nn.init.normal_(m.position_embedding.weight, std=patch_scale)
        elif isinstance(m, SelfAttention):
            for p in (m.q_proj, m.k_proj, m.v_proj):
                nn.init.normal_(p.weight, std=d ** -0.5 * (2 * L) ** -0.5)
            nn.init.normal_(m.out_proj.weight, std=d ** -0.5)
        elif isinstance(m, MLP):
            nn.init.normal_(m.fc1.weight, std=(2 * d) ** -0.5)
            nn.init.normal_(m.fc2.weight, std=d ** -0.5 * (2 * L) ** -0.5)

    def blocks_for(self, select_layer):
        """How many blocks to run for HF's hidden_states[select_layer]. HF lists L+1 states:
        [0] is the embeddings after pre_layrnorm, [i] the output of block i; so -1 is the last
        block, -2 (LLaVA's choice) block L-1, and blocks after it need not run at all."""
        L = self.config.num_hidden_layers
        if not -(L + 1) <= select_layer <= L:
            raise UserError(f"select_layer {select_layer} is out of range for {L} layers: "
                            f"hidden_states has {L + 1} entries, so use -{L + 1}..{L}")
        return select_layer % (L + 1)

    def hidden_state(self, pixels, blocks):
        """The embeddings after pre_layrnorm, then `blocks` blocks: (B, 1+num_patches, C)."""
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixels))
        for layer in vm.encoder.layers[:blocks]:
            x = layer(x)
        return x

    def forward(self, pixels, select_layer=None):
        select_layer = self.select_layer if select_layer is None else select_layer
        return self.hidden_state(pixels, self.blocks_for(select_layer))[:, 1:]  # drop CLS

    def image_embedding(self, pixels):
        """CLIP's pooled output: post_layernorm of the last block's class token, (B, C)."""
        x = self.hidden_state(pixels, self.config.num_hidden_layers)
        return self.vision_model.post_layernorm(x[:, 0])

    # -- Hugging Face format ---------------------------------------------------

    @classmethod
    def from_hf(cls, path, select_layer=-2, dtype=torch.float32, device="cpu"):
        """Load the vision tower of a local HF CLIP directory: a CLIPVisionModel, or a full
        CLIPModel (e.g. openai/clip-vit-large-patch14-336) whose text half is skipped."""
        if not os.path.isdir(path):
            raise InputNotFound(f"{path} is not a directory: expected a Hugging Face CLIP folder "
                                f"(config.json + model.safetensors), e.g. a local copy of "
                                f"openai/clip-vit-large-patch14-336")
        config = vision_config_from_hf(read_json(os.path.join(path, "config.json")), path)
        state = vision_state_dict(load_hf_state_dict(path))
        with torch.device("meta"):  # no memory, no init: the checkpoint's tensors are taken as they are
            tower = cls(config, select_layer)
        # names any missing, unexpected or mis-shaped key
        load_checked(tower, state, source=path)
        return tower.to(device=device, dtype=dtype)

    def save_hf(self, path):
        """Write config.json (a CLIPVisionConfig) and model.safetensors, as from_hf reads them
        and transformers' CLIPVisionModel.from_pretrained loads them."""
        state = self.state_dict()
        config = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
                  **dataclasses.asdict(self.config), "torch_dtype": tensor_dtype(state)}
        save_hf_dir(path, state, config)


# CLIPVisionConfig's defaults, for config.json files that leave a value out
HF_DEFAULTS = dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                   num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu",
                   layer_norm_eps=1e-5, num_channels=3)


def vision_config_from_hf(hf, source):
    """A CLIPVisionConfig dict, or a CLIPConfig dict with one inside, -> VisionConfig."""
    kind = hf.get("model_type")
    if kind == "clip" and isinstance(hf.get("vision_config"), dict):
        hf = hf["vision_config"]
    elif kind != "clip_vision_model":
        raise UserError(f"{source}/config.json has model_type {kind!r}: expected a CLIP model "
                        f"('clip' with a vision_config, or 'clip_vision_model'). Other towers "
                        f"(SigLIP, EVA-CLIP, ...) differ in architecture and are not supported")
    return VisionConfig(**{k: hf.get(k, d) for k, d in HF_DEFAULTS.items()})


def vision_state_dict(state):
    """The tower's weights out of any HF CLIP checkpoint, under `vision_model.` names.
    CLIPModel: keep vision_model.*, skip the text tower, the projections and logit_scale.
    CLIPVisionModel: transformers 4 saves vision_model.*, transformers 5 saves embeddings.*,
    encoder.*, ... without the prefix. Old files also hold the position_ids buffer."""
    text = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
    state = {k: v for k, v in state.items() if not k.startswith(text) and not k.endswith("position_ids")}
    if not any(k.startswith("vision_model.") for k in state):
        state = {"vision_model." + k: v for k, v in state.items()}
    return state


# -----------------------------------------------------------------------------
# The oracle tower: a diagnostic for the shapes world (train_vlm.py --oracle=true)

def cell_features(scene, grid=3):
    """Perfect visual features of a scene, from its ground truth: for each patch of a grid x grid
    tower (row-major), one-hot colour (6), shape (5) and size (2) of the object whose cell holds
    the patch, whether there is one (1), and one-hot patch row and column (grid + grid). The
    oracle tower (OracleTower) feeds these to the VLM instead of CLIP's features, to
    measure what the LM makes of visual tokens that hold every answer. A list of lists."""
    colours, width = list(shapes.COLOURS), 6 + 5 + 2 + 1 + 2 * grid
    rows = []
    for p in range(grid * grid):
        r, c = divmod(p, grid)
        f = [0.0] * width
        f[14 + r] = f[14 + grid + c] = 1.0
        for o in scene["objects"]:
            if (r * 3 // grid, c * 3 // grid) == (o["row"], o["col"]):  # the 3x3 cell this patch lies in
                f[colours.index(o["colour"])] = f[6 + shapes.SHAPES.index(o["shape"])] = 1.0
                f[11 + shapes.SIZES.index(o["size"])] = f[13] = 1.0
        rows.append(f)
    return rows


class OracleTower(nn.Module):
    """Stands in for the CLIP tower with perfect features (cell_features): it recognises
    each preprocessed image of a shapes world by its exact pixels and returns that scene's
    ground truth, scaled to `norm` per patch (the tiny CLIP's features have a norm of about 15;
    at norm 1 the LM ignores them). With it the VLM's score measures the LM and the projector
    alone: what they make of visual tokens that hold every answer."""

    def __init__(self, world, image_size=64, grid=3, norm=15.0):
        super().__init__()
        self.config = SimpleNamespace(image_size=image_size)  # what ImageProcessor and the VLM read
        self.grid, self.num_patches, self.hidden_size = grid, grid * grid, 6 + 5 + 2 + 1 + 2 * grid
        processor, self.table = ImageProcessor(image_size), {}
        for name in ("train", "test", "compositional"):
            path = os.path.join(world, f"scenes_{name}.jsonl")
            if not os.path.exists(path):
                raise InputNotFound(f"{path} does not exist: the oracle tower needs a shapes world "
                                    f"(python shapes.py --out {world})")
            with open(path) as f:
                for line in f:
                    scene = json.loads(line)
                    features = torch.tensor(cell_features(scene, grid))
                    pixels = processor(os.path.join(world, scene["image"]))
                    self.table[self.key(pixels)] = features * norm / features.norm(dim=-1, keepdim=True)

    @staticmethod
    def key(pixels):
        return hashlib.sha1(pixels.float().cpu().numpy().tobytes()).hexdigest()

    def forward(self, pixels):
        """(B, 3, S, S) preprocessed images of the world -> (B, grid*grid, hidden_size)."""
        try:
            return torch.stack([self.table[self.key(p)] for p in pixels]).to(pixels.device)
        except KeyError:
            raise ValueError("the oracle tower was given an image that is not in its shapes world "
                             "(scenes_{train,test,compositional}.jsonl)") from None


# -----------------------------------------------------------------------------
# Image preprocessing, as LLaVA-1.5 does it (image_aspect_ratio "pad")


class ImageProcessor:
    """processor(PIL image or path) -> (3, size, size) float32, equal to LLaVA's pipeline:
    convert to RGB, pad to a square with the mean colour (expand2square), then
    CLIPImageProcessor: resize the shortest side to `size` (PIL bicubic on uint8), centre
    crop, scale by 1/255, normalise with CLIP's mean and std."""

    def __init__(self, size, pad_to_square=True, mean=CLIP_MEAN, std=CLIP_STD):
        self.size, self.pad_to_square = size, pad_to_square
        self.fill = tuple(int(x * 255) for x in mean)  # (122, 116, 104): LLaVA's padding colour
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image):
        return self.normalize(self.to_uint8(image))

    def to_uint8(self, image):
        """Every step before the arithmetic: (3, size, size) uint8. Split out so a training
        set can be cached in memory as bytes, 4x smaller than floats."""
        img = load_rgb(image)
        if self.pad_to_square:
            img = expand2square(img, self.fill)
        w, h = img.size
        long = int(self.size * max(w, h) / min(w, h))  # truncated, as transformers does
        img = img.resize((self.size, long) if w <= h else (long, self.size), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)

    def normalize(self, x):
        """uint8 (..., 3, S, S) -> float32, in transformers' arithmetic: x * (1/255) in float64,
        rounded to float32, then (x - mean) / std in float32."""
        return ((x.double() * (1 / 255)).float() - self.mean) / self.std


def load_rgb(image):
    """A PIL image or a path -> an RGB PIL image. PIL's convert, as LLaVA's loader does:
    RGBA loses its alpha, L and P get three channels."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not os.path.isfile(image):
        raise InputNotFound(f"image {image} not found; check the image folder the dataset's "
                            f"paths are relative to")
    try:
        with Image.open(image) as img:
            return img.convert("RGB")  # decodes every pixel: a truncated file fails here
    except Image.DecompressionBombError as e:  # a header claiming more pixels than PIL will decode
        raise UserError(f"image {image} is refused: {e} Resize it, or remove the sample that uses it") from None
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise UserError(f"cannot read image {image}: {e}. The file is corrupt or not an image; "
                        f"re-create or re-download it, or remove the sample that uses it") from None


def expand2square(img, fill):
    """LLaVA's expand2square: the image centred on a square of colour `fill`."""
    w, h = img.size
    if w == h:
        return img
    square = Image.new(img.mode, (max(w, h), max(w, h)), fill)
    square.paste(img, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
    return square


if __name__ == "__main__":  # `python vision.py` trained the tiny CLIP until this release
    run_moved("train_clip.py", sys.argv[1:])
