"""
Xmodel-LM: the language model of Xmodel-VLM, all of it in this single file.

Xmodel-LM 1.1B is a LLaMA-architecture decoder. Its choices, top to bottom:
- token embedding, untied from the output head (vocab 32000, hidden 2048)
- 24 pre-norm blocks: RMSNorm -> attention -> residual, RMSNorm -> SwiGLU MLP -> residual
- RMSNorm (eps 1e-5), computed in fp32 as Llama does
- rotary position embedding (RoPE, base 10000, the "rotate half" convention of HF Llama)
- grouped-query attention: 32 query heads share 4 key/value heads (head dim 64), so the
  KV cache is 8x smaller than with full multi-head attention
- SwiGLU MLP: down(silu(gate(x)) * up(x)), intermediate 5632
- no biases anywhere, init std 0.02

Parameter names are Hugging Face Llama's (`model.layers.3.self_attn.q_proj.weight`, ...), so
our state_dict *is* a HF checkpoint: `XmodelLM.from_hf(dir)` loads a LlamaForCausalLM
directory (or the released XModelForCausalLM one) and `model.save_hf(dir)` writes one.

Conventions: `logits, _ = model(idx)` and `_, loss = model(idx, targets)`, where `targets[b, t]`
is the token that should follow `idx[b, t]` (already shifted, as in nanoGPT); -100 marks
positions without loss. The loss is computed in chunks, so training never holds all the logits.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import kernels  # Triton flash attention, used on CUDA (XMODEL_KERNELS=torch|triton forces a path)
from common import UserError, load_checked, load_hf_state_dict, read_json, save_hf_dir, tensor_dtype

IGNORE_INDEX = -100  # label value that the loss skips (PyTorch's and LLaVA's convention)


# -----------------------------------------------------------------------------
# Configuration

@dataclass
class LMConfig:
    vocab_size: int = 32000
    n_layer: int = 24
    n_head: int = 32          # query heads
    n_kv_head: int = 4        # key/value heads (GQA); n_head must be a multiple
    n_embd: int = 2048        # hidden size
    intermediate_size: int = 5632
    max_seq_len: int = 4096   # length of the RoPE table; training context
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name, **overrides):
        """Named sizes. `xmodel-1.1b` is the paper's; the others are for laptops and tests."""
        presets = {
            # the paper's Xmodel-LM 1.1B: 1,188,136,960 parameters
            "xmodel-1.1b": dict(),
            # ~1.0M parameters: a minute of CPU training learns the shapes world's English.
            # 128 wide, not 256: a CPU step costs what the matrices cost, and at half the width
            # the VLM trains 2.5x the steps a second; 2000 stage-2 steps then beat 1000 of the
            # 256-wide model, in less time (64.9% against 62.2% on one machine: README, "What
            # the default run reaches"). A key and value per head (no GQA): 62.1% against 57.9%.
            "tiny": dict(vocab_size=1024, n_layer=4, n_head=4, n_kv_head=4, n_embd=128,
                         intermediate_size=344, max_seq_len=512),
            # ~110M parameters: a GPU sanity run before the 1.1B
            "small": dict(n_layer=12, n_head=12, n_kv_head=4, n_embd=768,
                          intermediate_size=2048, max_seq_len=2048),
        }
        if name not in presets:
            raise UserError(f"unknown LM preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def __post_init__(self):
        if self.n_embd % self.n_head or self.n_head % self.n_kv_head:
            raise UserError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}) "
                            f"and n_head by n_kv_head ({self.n_kv_head})")


# -----------------------------------------------------------------------------
# Building blocks

class RMSNorm(nn.Module):
    """x / rms(x) * weight. Computed in fp32 and cast back, exactly as HF Llama does."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_table(head_dim, max_len, theta, device=None):
    """cos and sin of position * frequency, (max_len, head_dim), in fp32.

    Frequencies theta^(-2i/d) for i < d/2; each is repeated twice ("rotate half": the first
    half of a head's channels pairs with the second half, not with its neighbour)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    t = torch.arange(max_len, device=device).float()
    freqs = torch.outer(t, inv_freq)            # (max_len, head_dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)     # (max_len, head_dim)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """Rotate x (B, nh, T, hd) by its positions' angles; cos/sin are (B, 1, T, hd)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)   # rotate_half(x)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def attention(q, k, v, causal, mask=None):
    """The one attention function of the project. q (B, H, Tq, D); k, v (B, Hkv, Tk, D).

    H is a multiple of Hkv (GQA): query head h reads key/value head h // (H / Hkv), without
    copying K and V. `mask` (bool, broadcastable to (B, H, Tq, Tk), True = may attend) is used
    for padded batches and cached decoding; otherwise `causal` picks the triangle.
    On a CUDA device kernels/attention.py's Triton kernel computes it (the whole-sequence case:
    no mask, as many keys as queries); everywhere else PyTorch's fused SDPA, the definition.
    On a CPU, SDPA runs in fp32 even under bf16 autocast: its CPU kernel is several times slower
    in bf16 than in fp32 at the tiny model's shapes, backward included (`python bench.py cpu`)."""
    if mask is None and q.shape[2] == k.shape[2] and q.shape[3] in (32, 64, 128) and kernels.use_triton(q):
        return kernels.flash_attention(q, k, v, causal)
    dtype, on_cpu = q.dtype, q.device.type == "cpu"
    if on_cpu:  # fp32, and autocast off around SDPA: it would cast the inputs back to bf16
        q, k, v = q.float(), k.float(), v.float()
    with torch.autocast("cpu", enabled=False) if on_cpu else nullcontext():
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                           enable_gqa=q.shape[1] != k.shape[1])
    return y.to(dtype)


LOSS_CHUNK = 4096  # rows of logits alive at once in the loss: 4096 x 32000 x 4 bytes = 0.5 GB


def chunked_cross_entropy(x, weight, targets, chunk=LOSS_CHUNK):
    """Mean cross-entropy of the logits x @ weight.T over targets != IGNORE_INDEX; x (B, T, C),
    weight (vocab, C), targets (B, T). Why chunks: the fp32 logits of a 1.1B micro-batch of
    8 x 4096 tokens over 32000 words are 4 GB, plus as much again for their gradient. Here
    `chunk` rows at a time become logits, are reduced to a loss sum and dropped; the backward
    pass recomputes each chunk's logits (activation checkpointing) instead of storing them."""
    x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)   # (N, C), (N,)
    total = x.new_zeros((), dtype=torch.float32)
    for i in range(0, len(x), chunk):
        total = total + checkpoint(_loss_sum, x[i:i + chunk], weight, targets[i:i + chunk],
                                   use_reentrant=False)
    return total / (targets != IGNORE_INDEX).sum()  # 0/0 = nan with no label, as F.cross_entropy


def _loss_sum(x, weight, targets):
    return F.cross_entropy(F.linear(x, weight).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


class KVCache:
    """Preallocated keys and values for every layer: (B, Hkv, max_len, D) each.

    `pos` counts how many positions are filled. `key_valid` (B, max_len) is False where a
    left-padded prompt has padding, so those keys are never attended to."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.key_valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.pos = 0
        self.max_len = max_len

    def update(self, layer, k, v):
        """Write this step's k, v (B, Hkv, T, D) and return all keys/values so far."""
        T = k.shape[2]
        self.k[layer][:, :, self.pos:self.pos + T] = k
        self.v[layer][:, :, self.pos:self.pos + T] = v
        return self.k[layer][:, :, :self.pos + T], self.v[layer][:, :, :self.pos + T]


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.layer_idx = layer_idx
        kv_dim = config.n_kv_head * config.head_dim
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.k_proj = nn.Linear(config.n_embd, kv_dim, bias=False)
        self.v_proj = nn.Linear(config.n_embd, kv_dim, bias=False)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin, causal, cache=None, mask=None):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)     # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)                                   # (B, Hkv, pos+T, hd)
        y = attention(q, k, v, causal, mask)                                 # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU: the gate decides, per channel, how much of `up` passes."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, causal, cache=None, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, causal, cache, mask)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Body(nn.Module):
    """Embedding, blocks and final norm: HF's `LlamaModel`, hence the attribute name `model`."""

    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.norm_eps)


# -----------------------------------------------------------------------------
# The language model

class XmodelLM(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = Body(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._rope = None  # (cos, sin) table, built on first use on the input's device
        self.checkpointing = False  # activation checkpointing while training (train_lm --checkpointing)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def rope(self, positions):
        """cos, sin (B, 1, T, hd) for positions (B, T). The table is a plain fp32 attribute,
        not a buffer, so model.to(bfloat16) cannot round it and checkpoints never hold it."""
        if self._rope is None or self._rope[0].device != positions.device:
            c = self.config
            self._rope = rope_table(c.head_dim, c.max_seq_len, c.rope_theta, positions.device)
        cos, sin = self._rope
        return cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward): 6 per weight that multiplies a
        token (all but the embedding table), plus attention's QK^T and AV (PaLM appendix B)."""
        c = self.config
        n = self.num_params() - self.model.embed_tokens.weight.numel()
        return 6 * n + 12 * c.n_layer * c.n_embd * seq_len

    # -- forward ---------------------------------------------------------------

    def forward(self, idx=None, targets=None, *, embeds=None, positions=None, cache=None,
                key_valid=None):
        """idx (B, T) token ids, or `embeds` (B, T, C) already embedded (the VLM splices
        image features in). Returns (logits (B, T, vocab) in fp32, None), or with targets
        (None, the mean loss over targets != -100): training never needs the logits.

        For generation: `cache` is a KVCache, `positions` (B, T) the RoPE positions, and
        `key_valid` (B, Tk) marks real (non-padding) keys; logits are then (B, 1, vocab), the
        last position's only."""
        x = self.model.embed_tokens(idx) if embeds is None else embeds
        B, T, _ = x.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise UserError(f"sequence of {start + T} tokens is longer than max_seq_len="
                            f"{self.config.max_seq_len}; shorten the input or raise max_seq_len")
        if positions is None:   # the usual case: one shared range, (1, T) broadcasts over B
            positions = torch.arange(start, start + T, device=x.device)[None]
        cos, sin = self.rope(positions)                # (B or 1, 1, T, hd)
        causal, mask = self._attention_mask(T, start, key_valid, x.device)
        for block in self.model.layers:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                # keep only the block's input; its insides are recomputed in the backward pass
                x = checkpoint(block, x, cos, sin, causal, cache, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, causal, cache, mask)
        if cache is not None:   # generating: only the last position's next-token logits are needed
            cache.pos += T
            x = x[:, -1:]
        x = self.model.norm(x)
        if targets is not None:  # training: the loss, without ever holding all the logits
            return None, chunked_cross_entropy(x, self.lm_head.weight, targets)
        return self.lm_head(x).float(), None

    @staticmethod
    def _attention_mask(T, start, key_valid, device):
        """Returns (causal, mask). Without padding, SDPA needs no mask: its causal triangle
        when there is no cached prefix, nothing at all for one new token (it sees every cached
        key). Otherwise a bool mask (B, 1, T, start+T): query i (at absolute position start+i)
        may see key j when j <= start+i and key j is not padding."""
        if key_valid is None and start == 0:
            return True, None
        if key_valid is None and T == 1:
            return False, None
        q_pos = torch.arange(start, start + T, device=device)[:, None]
        k_pos = torch.arange(start + T, device=device)[None, :]
        mask = (k_pos <= q_pos)[None, None]           # (1, 1, T, start+T)
        if key_valid is not None:
            mask = mask & key_valid[:, None, None, :start + T]
        return False, mask

    # -- generation ------------------------------------------------------------

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                 eos_id=None, pad_id=0, embeds=None, key_valid=None):
        """Continue each prompt by up to max_new_tokens tokens with a KV cache.

        idx: (B, T) tensor of equal-length prompts, or a list of token lists of any lengths
        (left-padded internally). temperature 0 is greedy. Sequences that emit eos_id stop
        and are filled with pad_id afterwards. Returns (B, n <= max_new_tokens) new tokens.
        Instead of idx, the VLM passes `embeds` (B, T, C), left-padded, with `key_valid` (B, T)."""
        out = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, eos_id,
                                        pad_id, embeds, key_valid))
        if not out:
            return torch.empty(len(idx) if embeds is None else len(embeds), 0, dtype=torch.long)
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                        eos_id=None, pad_id=0, embeds=None, key_valid=None):
        """Like generate, but yields each step's tokens (B,) as soon as they exist."""
        device = self.lm_head.weight.device
        if embeds is None:
            idx, key_valid = left_pad(idx, pad_id, device)
            B, T = idx.shape
        else:  # a prompt already embedded (the VLM splices image features in)
            B, T = embeds.shape[:2]
            if key_valid is None:
                key_valid = torch.ones(B, T, dtype=torch.bool, device=device)
        cache = KVCache(self.config, B, T + max_new_tokens, device, self.lm_head.weight.dtype)
        cache.key_valid[:, :T] = key_valid
        padded = not bool(key_valid.all())
        # position of each real token counts from its first real token (HF's convention)
        positions = (key_valid.long().cumsum(1) - 1).clamp(min=0)
        next_pos = positions[:, -1] + 1
        done = torch.zeros(B, dtype=torch.bool, device=device)
        logits, _ = self(idx if embeds is None else None, embeds=embeds, positions=positions,
                         cache=cache, key_valid=cache.key_valid if padded else None)
        for _ in range(max_new_tokens):
            tok = sample(logits[:, -1], temperature, top_k, top_p)
            if eos_id is not None:
                tok = torch.where(done, torch.full_like(tok, pad_id), tok)
                done = done | (tok == eos_id)
            yield tok
            if bool(done.all()) or cache.pos == cache.max_len:
                return
            logits, _ = self(tok[:, None], positions=next_pos[:, None], cache=cache,
                             key_valid=cache.key_valid if padded else None)
            next_pos = next_pos + 1

    # -- Hugging Face format ---------------------------------------------------

    @classmethod
    def from_hf(cls, path, dtype=torch.float32, device="cpu"):
        """Load a HF Llama-format directory: config.json and model.safetensors (or sharded
        safetensors, or pytorch_model*.bin read with weights_only=True). The released
        Xmodel_LM directory (XModelForCausalLM, same maths) loads too."""
        hf = read_json(os.path.join(path, "config.json"))
        if "mm_projector_type" in hf:
            raise UserError(f"{path} is an Xmodel-VLM (its config has mm_projector_type), not a language model "
                            f"alone: chat.py and eval_vlm.py load it as it is; as the LM of a new VLM give "
                            f"train_lm.py's model directory")
        config = config_from_hf(hf, path)
        state = load_hf_state_dict(path)
        if "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied checkpoint
        with torch.device("meta"):
            model = cls(config)
        load_checked(model, state, source=path)
        return model.to(device=device, dtype=dtype)

    def save_hf(self, path):
        """Write config.json and model.safetensors that transformers' LlamaForCausalLM loads."""
        state = self.state_dict()
        save_hf_dir(path, state, config_to_hf(self.config, tensor_dtype(state)))


def left_pad(prompts, pad_id, device):
    """A list of token lists -> (B, T) tensor, left-padded, and a (B, T) bool mask of real tokens.
    Left padding keeps every prompt's last token in the last column, where generation starts."""
    if torch.is_tensor(prompts):
        return prompts.to(device), torch.ones(prompts.shape, dtype=torch.bool, device=device)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    T = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), T, dtype=torch.bool)
    for i, p in enumerate(prompts):
        idx[i, T - len(p):] = torch.as_tensor(p, dtype=torch.long)
        valid[i, T - len(p):] = True
    return idx.to(device), valid.to(device)


def sample(logits, temperature=0.0, top_k=None, top_p=None):
    """Pick one token per row of logits (B, V): argmax at temperature 0, else sample from the
    softmax after keeping the top_k tokens and/or the smallest set with probability >= top_p."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p   # keep tokens until mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


# -----------------------------------------------------------------------------
# Hugging Face config (the weight files: common.py)

def config_from_hf(hf, source="the model directory"):
    """Map a HF LlamaConfig (or XModelConfig) dict onto LMConfig, refusing what we don't model.
    `source` (the directory) names it in the errors."""
    if hf.get("model_type") in ("clip", "clip_vision_model"):
        raise UserError(f"{source} holds a CLIP vision tower (model_type {hf['model_type']!r}), not a language "
                        f"model: give it as the vision tower (train_vlm.py --vision), and an LM directory "
                        f"from train_lm.py (or a HF Llama one) as the LM")
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (Llama uses silu)")
    if hf.get("rope_scaling") or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise UserError(f"{source}: rope_scaling, attention_bias and mlp_bias are not supported by XmodelLM")
    missing = [k for k in ("vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size",
                           "intermediate_size") if k not in hf]
    if missing:
        raise UserError(f"{source}/config.json lacks {', '.join(missing)}: expected a HF Llama config "
                        f"(LlamaForCausalLM), as train_lm.py writes")
    return LMConfig(
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        n_embd=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 4096),
        rope_theta=hf.get("rope_theta", 10000.0), norm_eps=hf.get("rms_norm_eps", 1e-6),
        init_std=hf.get("initializer_range", 0.02))


def config_to_hf(c, dtype="float32"):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.n_embd,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_dim, "hidden_act": "silu", "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "initializer_range": c.init_std,
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype,
    }
