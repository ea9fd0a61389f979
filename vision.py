"""
CLIP's vision transformer, LLaVA's image preprocessing, and a tiny CLIP trained from scratch.

    python vision.py                 # tiny CLIP on the shapes world, CPU, under 4 minutes
    python vision.py --help          # every setting, with its default and meaning

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

`python vision.py` trains CLIP's contrastive objective on the shapes world's captions: the
`tiny` ViT (64x64 images, 8x8 patches) and a text tower made of Xmodel-LM's own blocks. It
reports held-out image -> caption retrieval and saves the ViT to out/clip_tiny/ for the VLM.
"""

import dataclasses
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from model import (LMConfig, Body, attention, load_checked, rope_table, read_json, load_hf_state_dict,
                   atomic_write)
from train_lm import parse_config, save_checkpoint, lr_at, make_optimizer, format_time

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
            # ~0.8M parameters: the shapes world's 64x64 scenes as 8x8 = 64 patches
            "tiny": dict(image_size=64, patch_size=8, hidden_size=128, intermediate_size=512,
                         num_hidden_layers=4, num_attention_heads=4),
        }
        if name not in presets:
            raise ValueError(f"unknown vision preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def __post_init__(self):
        if self.image_size % self.patch_size or self.hidden_size % self.num_attention_heads:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size "
                             f"({self.patch_size}) and hidden_size ({self.hidden_size}) of "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; "
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
            nn.init.normal_(m.position_embedding.weight, std=0.02)
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
            raise ValueError(f"select_layer {select_layer} is out of range for {L} layers: "
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
            raise FileNotFoundError(f"{path} is not a directory: expected a Hugging Face CLIP folder "
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
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(os.path.join(path, "model.safetensors"),
                     lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
        config = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
                  **dataclasses.asdict(self.config), "torch_dtype": dtype}
        atomic_write(os.path.join(path, "config.json"),
                     lambda tmp: open(tmp, "w").write(json.dumps(config, indent=2)))


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
        raise ValueError(f"{source}/config.json has model_type {kind!r}: expected a CLIP model "
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
        raise FileNotFoundError(f"image {image} not found; check the image folder the dataset's "
                                f"paths are relative to")
    try:
        with Image.open(image) as img:
            return img.convert("RGB")  # decodes every pixel: a truncated file fails here
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {image}: {e}. The file is corrupt or not an image; "
                         f"re-create or re-download it, or remove the sample that uses it") from None


def expand2square(img, fill):
    """LLaVA's expand2square: the image centred on a square of colour `fill`."""
    w, h = img.size
    if w == h:
        return img
    square = Image.new(img.mode, (max(w, h), max(w, h)), fill)
    square.paste(img, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
    return square


# -----------------------------------------------------------------------------
# Tiny CLIP: contrastive image-text pretraining on the shapes world


class WordTokenizer:
    """Lowercased words and punctuation: the shapes world's captions use about 40 distinct
    words, so a word vocabulary is exact and short (~29 tokens a caption). Id 0 pads, 1 ends
    every caption (CLIP's end-of-text: the text tower reads its features there), 2 is unknown."""

    def __init__(self, texts):
        words = {w for t in texts for w in self.split(t)}
        self.itos = ["<pad>", "<eot>", "<unk>"] + sorted(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @staticmethod
    def split(text):
        return re.findall(r"\w+|[^\w\s]", text.lower())

    def encode(self, texts):
        """-> ids (N, T) right-padded with 0, and lengths (N,) counting the <eot>."""
        rows = [[self.stoi.get(w, 2) for w in self.split(t)] + [1] for t in texts]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        return ids, torch.tensor([len(r) for r in rows])


class TextTower(nn.Module):
    """Xmodel-LM's own machinery (model.Body: embedding, RMSNorm, RoPE, causal GQA attention,
    SwiGLU), read out at each caption's <eot>, which has seen the whole caption."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.body = Body(config)
        self.cos, self.sin = rope_table(config.head_dim, config.max_seq_len, config.rope_theta)
        self.apply(lambda m: nn.init.normal_(m.weight, std=config.init_std)
                   if isinstance(m, (nn.Linear, nn.Embedding)) else None)

    def forward(self, ids, lengths):
        B, T = ids.shape
        x = self.body.embed_tokens(ids)                              # (B, T, C)
        cos, sin = self.cos[:T][None, None], self.sin[:T][None, None]  # (1, 1, T, hd)
        for block in self.body.layers:
            x = block(x, cos, sin, causal=True)  # causal: the right padding never reaches <eot>
        x = self.body.norm(x)
        return x[torch.arange(B), lengths - 1]                        # (B, C) at <eot>


class TinyCLIP(nn.Module):
    def __init__(self, vision_config, text_config, embed_dim):
        super().__init__()
        self.vision = CLIPVisionTower(vision_config)
        self.text = TextTower(text_config)
        self.visual_projection = nn.Linear(vision_config.hidden_size, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_config.n_embd, embed_dim, bias=False)
        nn.init.normal_(self.visual_projection.weight, std=vision_config.hidden_size ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=text_config.n_embd ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def embed_images(self, pixels):
        return F.normalize(self.visual_projection(self.vision.image_embedding(pixels)), dim=-1)

    def embed_texts(self, ids, lengths):
        return F.normalize(self.text_projection(self.text(ids, lengths)), dim=-1)

    def forward(self, pixels, ids, lengths):
        """Symmetric InfoNCE: image i's caption is text i, and text i's image is image i."""
        img, txt = self.embed_images(pixels), self.embed_texts(ids, lengths)  # (B, E) each, unit length
        logits = self.logit_scale.exp() * img @ txt.T                         # (B, B) scaled cosines
        labels = torch.arange(len(logits))
        return logits, (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def cell_windows(features, grid):
    """(N, grid*grid, C) patch features -> (N, 9, k*k*C): for each cell of the shapes world's
    3x3 layout, the k x k patches over it (k = ceil(grid/3); on 8x8 rows 0-2, 2-4 and 5-7)."""
    N, _, C = features.shape
    k = math.ceil(grid / 3)
    x = features.reshape(N, grid, grid, C)
    corners = [min(i * grid // 3, grid - k) for i in range(3)]
    return torch.stack([x[:, r:r + k, c:c + k].reshape(N, -1) for r in corners for c in corners], 1)


def probe_cells(tower, root, n_train=4000, steps=600, seed=0):
    """What a frozen tower's features hold about each object of a scene: a small MLP probe
    reads the object's colour, shape and size from the patches over its cell, trained on
    objects of `n_train` training scenes and scored on the held-out test scenes. A VLM cannot
    answer about what these features do not hold. Returns {attribute: accuracy}."""
    import data
    attributes = {"colour": list(data.COLOURS), "shape": data.SHAPES, "size": data.SIZES}
    proc = ImageProcessor(tower.config.image_size)

    def objects(split, n):
        with open(os.path.join(root, f"scenes_{split}.jsonl"), encoding="utf-8") as f:
            scenes = [json.loads(line) for _, line in zip(range(n), f)]
        pixels = proc.normalize(torch.stack([proc.to_uint8(os.path.join(root, s["image"])) for s in scenes]))
        with torch.no_grad():
            cells = cell_windows(torch.cat([tower(p) for p in pixels.split(256)]), tower.grid)  # (N, 9, D)
        found = [(i, o) for i, s in enumerate(scenes) for o in s["objects"]]
        x = torch.stack([cells[i, 3 * o["row"] + o["col"]] for i, o in found])             # (objects, D)
        return x, {a: torch.tensor([v.index(o[a]) for _, o in found]) for a, v in attributes.items()}

    x, y = objects("train", n_train)
    x_test, y_test = objects("test", n_train)
    mean, std = x.mean(0), x.std(0) + 1e-5
    x, x_test = (x - mean) / std, (x_test - mean) / std
    g = torch.Generator().manual_seed(seed)
    accuracy = {}
    for a, values in attributes.items():
        torch.manual_seed(seed)
        probe = nn.Sequential(nn.Linear(x.shape[1], 256), nn.GELU(), nn.Linear(256, len(values)))
        optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
        for _ in range(steps):
            b = torch.randint(len(x), (512,), generator=g)
            loss = F.cross_entropy(probe(x[b]), y[a][b])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy[a] = (probe(x_test).argmax(1) == y_test[a]).float().mean().item()
    return accuracy


@dataclass
class CLIPTrainConfig:
    # --- data ---
    data: str = "data/shapes"       # the shapes world (made if missing): pretrain.json, images/, scenes_test.jsonl
    max_pairs: int = 0              # use the first N (image, caption) pairs of pretrain.json; 0 = all
    # --- model ---
    preset: str = "tiny"            # VisionConfig preset of the image tower
    text_layers: int = 2            # the text tower: Xmodel-LM blocks...
    text_width: int = 128           # ...of this width (head dim 32, SwiGLU 4x)
    embed_dim: int = 128            # the shared image-text embedding space
    # --- optimisation (AdamW, warmup + cosine, as train_lm.py) ---
    batch_size: int = 64            # pairs per step; each image's negatives are the other 63 captions
    max_steps: int = 400            # 1.3 epochs of the 20000 pairs
    lr: float = 1e-3                # 2e-3 collapses: every embedding equal, loss stuck at log(batch)
    min_lr: float = 5e-5
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98             # CLIP's AdamW betas and eps
    eps: float = 1e-6
    grad_clip: float = 1.0
    # --- evaluation, logging, output ---
    eval_group: int = 32            # held-out retrieval: the image's caption among this many...
    eval_groups: int = 50           # ...in this many random groups, averaged
    eval_interval: int = 100        # steps between held-out evaluations (and at the end)
    probe: bool = True              # at the end: what the features hold about each object (probe_cells)
    log_interval: int = 25
    seed: int = 1337
    out_dir: str = "out/clip_tiny"  # the vision tower (HF CLIPVisionModel format) + ckpt/


def load_pairs(root, proc, limit=0):
    """Training pairs of the LLaVA pretrain JSON: uint8 images (N, 3, S, S) and captions."""
    path = os.path.join(root, "pretrain.json")
    with open(path, encoding="utf-8") as f:
        samples = json.load(f)
    samples = samples[:limit] if limit else samples
    images, captions = [], []
    for s in samples:
        caption = [t["value"] for t in s.get("conversations", []) if t.get("from") == "gpt"]
        if "image" not in s or not caption:
            raise ValueError(f"{path}: sample {s.get('id')} needs an 'image' and a gpt turn (the caption)")
        captions.append(caption[0])
        images.append(proc.to_uint8(os.path.join(root, "images", s["image"])))
    return torch.stack(images), captions


def load_test_pairs(root, proc):
    """Held-out pairs: the test scenes (no training scene has the same objects), captioned by
    data.describe, the generator of the training captions. Also each scene's object key:
    a caption of another scene with the same objects is an equally right answer."""
    import data
    with open(os.path.join(root, "scenes_test.jsonl"), encoding="utf-8") as f:
        scenes = [json.loads(line) for line in f]
    captions = [data.describe(s, random.Random(f"clip-eval/{i}")) for i, s in enumerate(scenes)]
    images = torch.stack([proc.to_uint8(os.path.join(root, s["image"])) for s in scenes])
    return images, captions, [data.scene_key(s) for s in scenes]


@torch.no_grad()
def retrieval_accuracy(model, pixels, ids, lengths, keys, group, groups, seed=0):
    """Top-1 image -> caption retrieval among `group` held-out pairs, averaged over `groups`
    random groups (always the same ones, so evaluations are comparable)."""
    was_training = model.training
    model.eval()
    img = torch.cat([model.embed_images(p) for p in pixels.split(256)])   # (N, E)
    txt = model.embed_texts(ids, lengths)                                   # (N, E)
    g = torch.Generator().manual_seed(seed)
    hits = 0
    for _ in range(groups):
        pick = torch.randperm(len(img), generator=g)[:group]
        best = (img[pick] @ txt[pick].T).argmax(1)                          # (group,)
        hits += sum(keys[pick[i]] == keys[pick[j]] for i, j in enumerate(best.tolist()))
    model.train(was_training)
    return hits / (groups * min(group, len(img)))


def train(cfg):
    """Train tiny CLIP, save it, and return (model, [loss per step], final retrieval accuracy)."""
    torch.manual_seed(cfg.seed)
    t0, cpu0, load0 = time.time(), time.process_time(), os.getloadavg()[0]
    if not os.path.exists(os.path.join(cfg.data, "pretrain.json")):
        if cfg.data != CLIPTrainConfig.data:
            raise SystemExit(f"--data {cfg.data} has no pretrain.json: point it at a shapes world "
                             f"(python data.py shapes --out {cfg.data})")
        import data
        print(f"{cfg.data} does not exist: generating the shapes world (python data.py shapes)")
        data.generate_shapes_world(cfg.data)
    vcfg = VisionConfig.preset(cfg.preset)
    proc = ImageProcessor(vcfg.image_size)      # the same preprocessing as the real tower's
    images, captions = load_pairs(cfg.data, proc, cfg.max_pairs)
    test_images, test_captions, test_keys = load_test_pairs(cfg.data, proc)
    tok = WordTokenizer(captions)
    ids, lengths = tok.encode(captions)
    test_pixels = proc.normalize(test_images)
    test_ids, test_lengths = tok.encode(test_captions)
    tcfg = LMConfig(vocab_size=len(tok.itos), n_layer=cfg.text_layers, n_head=cfg.text_width // 32,
                    n_kv_head=cfg.text_width // 64 or 1, n_embd=cfg.text_width,
                    intermediate_size=4 * cfg.text_width, max_seq_len=ids.shape[1] + 16)
    model = TinyCLIP(vcfg, tcfg, cfg.embed_dim)
    optimizer = make_optimizer(model, cfg, "cpu")
    print(f"{len(captions)} training pairs and {len(test_captions)} held-out pairs in memory "
          f"({time.time() - t0:.1f} s) | vocab {len(tok.itos)} words | vision "
          f"{sum(p.numel() for p in model.vision.parameters()) / 1e6:.2f}M, text "
          f"{sum(p.numel() for p in model.text.parameters()) / 1e6:.2f}M parameters | "
          f"{torch.get_num_threads()} threads, load average {load0:.2f} at start", flush=True)

    losses, order, t_start = [], torch.randperm(len(captions)), time.time()
    for step in range(cfg.max_steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        first = step * cfg.batch_size % len(order)
        if first + cfg.batch_size > len(order):  # a new epoch, a new order
            order, first = torch.randperm(len(captions)), 0
        b = order[first:first + cfg.batch_size]
        T = int(lengths[b].max())
        logits, loss = model(proc.normalize(images[b]), ids[b, :T], lengths[b])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # CLIP caps the logit scale (1/temperature) at 100
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        done = step + 1
        if done % cfg.log_interval == 0 or done == cfg.max_steps:
            rate = done / (time.time() - t_start)
            acc = (logits.argmax(1) == torch.arange(len(b))).float().mean().item()
            print(f"step {done}/{cfg.max_steps} | loss {loss.item():.4f} | batch acc {acc:.0%} "
                  f"(of {len(b)}) | scale {model.logit_scale.exp().item():.1f} | lr {lr:.2e} | "
                  f"{rate:.2f} steps/s | ETA {format_time((cfg.max_steps - done) / rate)}", flush=True)
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            top1 = retrieval_accuracy(model, test_pixels, test_ids, test_lengths, test_keys,
                                      cfg.eval_group, cfg.eval_groups)
            print(f"step {done} | held-out top-1 image->caption retrieval among {cfg.eval_group}: "
                  f"{top1:.1%} ({cfg.eval_groups} groups)", flush=True)

    save_checkpoint(os.path.join(cfg.out_dir, "ckpt"), model, optimizer, cfg.max_steps,
                    {"train": dataclasses.asdict(cfg), "vision": dataclasses.asdict(vcfg),
                     "text": dataclasses.asdict(tcfg)}, extra={"vocab": tok.itos})
    model.vision.save_hf(cfg.out_dir)
    if cfg.probe:
        model.eval()
        probe = probe_cells(model.vision, cfg.data)
        print("what the tower's features hold (an MLP probe on the patches over each held-out object): " +
              ", ".join(f"{a} {v:.1%}" for a, v in probe.items()), flush=True)
    wall = time.time() - t0
    print(f"done in {format_time(wall)} ({wall:.0f} s, {(time.process_time() - cpu0) / wall:.2f} "
          f"cores busy on average, load average {os.getloadavg()[0]:.2f} at the end): held-out "
          f"top-1 retrieval {top1:.1%} among {cfg.eval_group}; vision tower saved to {cfg.out_dir} "
          f"(CLIPVisionTower.from_hf), full checkpoint to {cfg.out_dir}/ckpt", flush=True)
    return model, losses, top1


if __name__ == "__main__":
    train(parse_config(CLIPTrainConfig))
