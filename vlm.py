"""
Xmodel-VLM: a frozen CLIP vision tower, a projector, and Xmodel-LM, joined the LLaVA way.

    image (N, 3, S, S) -> tower -> patch features (N, 576, 1024) -> projector -> visual tokens
    (N, 144, 2048) -> spliced into the LM's input embeddings where the prompt has <image>

- XmodelVLM(tower, projector, lm): the forward pass for training (a right-padded batch, loss on
  the labelled positions), prompt embedding and KV-cached generation for inference
- XmodelVLM.save / .load: the released Xmodel_VLM directory layout (LLaVA's config keys)
- load(dir): a saved VLM or LM directory and its tokenizer, as chat.py and eval_vlm.py use it

The parts live in their own files: vision.py (the tower), xdp.py (the projectors), model.py
(the LM), data.py (the templates that place the <image> placeholder, IMAGE_TOKEN_INDEX).
"""

import os

import torch
import torch.nn as nn

from common import UserError, load_checked, load_hf_state_dict, read_json, save_hf_dir
from data import IMAGE_TOKEN_INDEX, VICUNA_SYSTEM
from model import IGNORE_INDEX, XmodelLM, config_from_hf, config_to_hf
from tokenizer import find_tokenizer, load_tokenizer
from vision import CLIPVisionTower
from xdp import build_projector


class XmodelVLM(nn.Module):
    """Image -> CLIP patch features -> projector -> visual tokens, spliced into the LM's input
    where the prompt has its <image> placeholder (IMAGE_TOKEN_INDEX).

    vision_tower: vision.CLIPVisionTower (frozen: no gradients, always in eval mode)
    projector:    any xdp.build_projector module, (N, patches, vision width) -> (N, tokens, C)
    lm:           XmodelLM
    system:       the system prompt its chats start with (data.build_sample's; "" for none): Vicuna's
                  for the paper's recipe, none for the tiny scale's. Saved in config.json."""

    def __init__(self, vision_tower, projector, lm, system=VICUNA_SYSTEM):
        super().__init__()
        self.vision_tower = vision_tower.requires_grad_(False).eval()
        self.mm_projector = projector
        self.lm = lm
        self.system = system

    def train(self, mode=True):
        super().train(mode)
        self.vision_tower.eval()  # frozen in both stages: never in training mode
        return self

    def encode_images(self, pixels):
        """(N, 3, S, S) -> (N, tokens, C) visual tokens in the LM's embedding space."""
        with torch.no_grad():
            features = self.vision_tower(pixels)                     # (N, patches, vision width)
        return self.mm_projector(features)                           # (N, tokens, C)

    def splice(self, input_ids, lengths, has_image, image_tokens, labels=None):
        """Per sample: embed its tokens and put its visual tokens where its placeholder is.
        Returns lists of (T_b, C) embeddings and (T_b,) labels (image positions ignored)."""
        embeds, spliced_labels, n_used = [], [], 0
        for b in range(len(input_ids)):
            ids = input_ids[b, :lengths[b]]
            where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            if len(where) != int(has_image[b]):
                raise ValueError(f"sample {b} of the batch has {len(where)} <image> placeholders but "
                                 f"{'an image' if has_image[b] else 'no image'}: a sample takes at most "
                                 f"one image, and its placeholder must be in the prompt")
            x = self.lm.model.embed_tokens(ids.clamp(min=0))          # (T_b, C); the placeholder row is replaced
            y = None if labels is None else labels[b, :lengths[b]]
            if where:
                p, feats = where[0], image_tokens[n_used].to(x.dtype)  # feats (tokens, C)
                n_used += 1
                x = torch.cat([x[:p], feats, x[p + 1:]])
                if y is not None:
                    y = torch.cat([y[:p], y.new_full((len(feats),), IGNORE_INDEX), y[p + 1:]])
            embeds.append(x)
            spliced_labels.append(y)
        return embeds, spliced_labels

    def forward(self, input_ids, lengths, has_image, pixels=None, labels=None, features=None):
        """A right-padded batch (data.collate's): input_ids, labels (B, T) unshifted, LLaVA
        style; the images as pixels, or as the tower's features computed beforehand (the tower
        is frozen: train_vlm.cache_features). Returns (logits (B, T', vocab), None), or with
        labels (None, the loss on the labelled positions), as XmodelLM.forward."""
        image_tokens = (self.mm_projector(features) if features is not None else
                        self.encode_images(pixels) if pixels is not None else None)
        embeds, spliced = self.splice(input_ids, lengths, has_image, image_tokens, labels)
        x = nn.utils.rnn.pad_sequence(embeds, batch_first=True)      # (B, T', C), zeros at the end
        targets = None
        if labels is not None:  # shift: position t predicts the label of t+1
            y = nn.utils.rnn.pad_sequence(spliced, batch_first=True, padding_value=IGNORE_INDEX)
            targets = torch.cat([y[:, 1:], y.new_full((len(y), 1), IGNORE_INDEX)], dim=1)
        # right padding needs no mask: causal attention never lets a real token see a later pad
        return self.lm(embeds=x, targets=targets)

    def prompt_embeds(self, prompts, pixels=None):
        """Token lists (with at most one placeholder each) and the images of those that have
        one -> left-padded embeddings (B, T, C) and the mask of real positions (B, T)."""
        device = self.lm.lm_head.weight.device
        lengths = torch.tensor([len(p) for p in prompts])
        ids = nn.utils.rnn.pad_sequence([torch.tensor(p) for p in prompts], batch_first=True).to(device)
        has_image = [IMAGE_TOKEN_INDEX in p for p in prompts]
        image_tokens = self.encode_images(pixels.to(device)) if pixels is not None else None
        embeds, _ = self.splice(ids, lengths, has_image, image_tokens)
        T = max(len(e) for e in embeds)
        x = embeds[0].new_zeros(len(embeds), T, embeds[0].shape[-1])
        valid = torch.zeros(len(embeds), T, dtype=torch.bool, device=device)
        for b, e in enumerate(embeds):  # left padding: every prompt ends in the last column
            x[b, T - len(e):] = e
            valid[b, T - len(e):] = True
        return x, valid

    @torch.no_grad()
    def generate(self, prompts, pixels=None, max_new_tokens=64, **sampling):
        """Answers for a batch of prompts (see XmodelLM.generate for the sampling options)."""
        x, valid = self.prompt_embeds(prompts, pixels)
        return self.lm.generate(None, max_new_tokens, embeds=x, key_valid=valid, **sampling)

    @torch.no_grad()
    def generate_stream(self, prompts, pixels=None, max_new_tokens=64, **sampling):
        x, valid = self.prompt_embeds(prompts, pixels)
        yield from self.lm.generate_stream(None, max_new_tokens, embeds=x, key_valid=valid, **sampling)

    # -- saving and loading: the released Xmodel_VLM layout ----------------------
    #
    # config.json is the LM's (HF Llama keys) plus LLaVA's mm_* keys; model.safetensors holds the
    # LM (model.*, lm_head.*) and the projector (model.mm_projector.*). The CLIP tower is a
    # separate HF directory: `vision/` inside our saved models, any local path for official ones.

    def save(self, path):
        self.vision_tower.save_hf(os.path.join(path, "vision"))
        state = dict(self.lm.state_dict())
        state.update({f"model.mm_projector.{k}": v for k, v in self.mm_projector.state_dict().items()})
        kind, n_tokens = self.mm_projector.kind, self.mm_projector.tokens
        ptype = f"xdpnetv10_{self.vision_tower.num_patches // n_tokens}" if kind == "xdp-concat" else kind
        config = {**config_to_hf(self.lm.config), "architectures": ["XmodelLMForCausalLM"],
                  "model_type": "xmodelvlm", "mm_projector_type": ptype, "mm_image_tokens": n_tokens,
                  "mm_hidden_size": self.vision_tower.hidden_size,
                  "mm_vision_select_layer": self.vision_tower.select_layer,
                  "mm_vision_tower": "vision", "image_aspect_ratio": "pad", "system_prompt": self.system}
        save_hf_dir(path, state, config)

    @classmethod
    def load(cls, path, vision_path=None, device="cpu", dtype=torch.float32):
        """A saved VLM directory, or the authors' released one (e.g. `xdpnetv10_1`) with
        `vision_path` naming the CLIP tower's directory."""
        cfg = read_json(os.path.join(path, "config.json"))
        if "mm_projector_type" not in cfg:
            raise UserError(f"{path}/config.json has no mm_projector_type: this is not an Xmodel-VLM "
                            f"(LLaVA-layout) checkpoint. A language model loads with XmodelLM.from_hf")
        vision_path = vision_path or os.path.join(path, cfg.get("mm_vision_tower", "vision"))
        tower = CLIPVisionTower.from_hf(vision_path, select_layer=cfg.get("mm_vision_select_layer", -2))
        kind, tokens = projector_from_config(cfg["mm_projector_type"], cfg.get("mm_image_tokens"),
                                             tower.num_patches)
        lm_config = config_from_hf(cfg, path)
        projector = build_projector(kind, tower.hidden_size, lm_config.n_embd, tower.grid, tokens)
        state = load_hf_state_dict(path)
        prefix = "model.mm_projector."
        proj_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        lm_state = {k: v for k, v in state.items()
                    if not k.startswith(prefix) and not k.startswith("model.vision_tower.")}
        with torch.device("meta"):
            lm = XmodelLM(lm_config)
        load_checked(lm, lm_state, source=path)
        load_checked(projector, proj_state, source=f"{path} ({prefix}*)")
        # not a LLaVA key: a release without it was trained with Vicuna's system prompt
        return cls(tower, projector, lm, cfg.get("system_prompt", VICUNA_SYSTEM)).to(device=device, dtype=dtype)


def projector_from_config(ptype, tokens, num_patches):
    """LLaVA-style mm_projector_type -> (our projector kind, token count or None for its default).
    The released code's `xdpnetv10_<f>` joins f neighbouring patches: xdp-concat, num_patches/f tokens."""
    if ptype.startswith("xdpnetv10_"):
        return "xdp-concat", num_patches // int(ptype.removeprefix("xdpnetv10_"))
    return {"ldpnet": "ldp", "ldpnetv2": "ldpv2"}.get(ptype, ptype), tokens


def load(ckpt, device="cpu"):
    """A VLM directory (its config has mm_projector_type) or an LM one, and its tokenizer:
    (model in eval mode, tokenizer, is_vlm)."""
    config = read_json(os.path.join(ckpt, "config.json"))
    is_vlm = "mm_projector_type" in config
    model = XmodelVLM.load(ckpt, device=device) if is_vlm else XmodelLM.from_hf(ckpt, device=device)
    tok = load_tokenizer(find_tokenizer(ckpt))
    if tok.vocab_size > config["vocab_size"]:  # its ids would run past the embedding table
        raise UserError(f"{tok.path} has {tok.vocab_size} tokens, more than the model's vocabulary in {ckpt} "
                        f"({config['vocab_size']}): it is not the tokenizer this model was trained with")
    return model.eval(), tok, is_vlm
