"""
Pretrain Xmodel-LM from raw tokens.

    python train_lm.py                          # tiny model on the shapes world, CPU, ~3 minutes
    python train_lm.py --preset=xmodel-1.1b --corpus=/data/mytext --tokenizer=xmodel_32000.model
    torchrun --nproc_per_node=8 train_lm.py --preset=xmodel-1.1b ...   # DDP over 8 GPUs
    torchrun --nproc_per_node=8 train_lm.py --preset=xmodel-1.1b --fsdp=true   # FSDP2: shards, less memory
    python train_lm.py --help                   # every setting, with its default and meaning

With no arguments it makes what it needs: the shapes world's text corpus (shapes.py), a
SentencePiece tokenizer trained on it (tokenizer.py), token shards (data.py), and then
trains the `tiny` preset. Output, under out_dir:
    tokenizer.model   the tokenizer (unless --tokenizer names one)
    tokens/           train_*.bin / val_*.bin token shards
    ckpt/             the latest checkpoint: model.safetensors + state.pt (resume with --resume)
    model/            the final model in Hugging Face Llama format + tokenizer (chat/VLM load it)
    metrics.jsonl     one JSON line per logged step and per evaluation

The loop: AdamW (weight decay on 2-D weights only), linear warmup then cosine decay,
gradient accumulation to reach the global batch, gradient clipping, bf16 autocast on CUDA and
on CPUs with native bf16 (common.mixed_precision), optional torch.compile, DDP or FSDP2 under
torchrun. Checkpoints are atomic and hold everything needed to continue exactly (model,
optimizer, step, RNG; the data depends only on the step), whole and keyed by parameter name, so
a run resumes under any number of processes, with or without FSDP.
"""

import dataclasses
import json
import math
import os
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

import data
import shapes
from common import (InputNotFound, UserError, check_device, distribute, format_time, full_weights, load_checked,
                    load_checkpoint, load_optimizer_state, lr_at, make_optimizer, mixed_precision, parse_config,
                    peak_flops, read_json, run_main, save_checkpoint, scalar, setup_distributed)
from model import LOSS_CHUNK, LMConfig, XmodelLM, config_from_hf
from tokenizer import find_tokenizer, load_tokenizer, save_tokenizer, tokenizer_digest, train_sentencepiece


@dataclass
class TrainConfig:
    # --- model ---
    preset: str = "tiny"            # LMConfig preset: tiny | small | xmodel-1.1b
    init_from: str = ""             # a HF Llama directory to start from instead of random weights
    # --- data ---
    corpus: str = "data/shapes/corpus"  # text files/folders (.txt, .jsonl), or a folder of token shards
    tokenizer: str = ""             # a .model/.tiktoken file; "" = train one on the corpus into out_dir
    vocab_size: int = 1024          # vocabulary of a tokenizer trained here
    sp_model: str = "bpe"           # its SentencePiece algorithm: unigram (Xmodel-LM's) | bpe. On the shapes
                                    # world's ~190 distinct words unigram stops at 433 pieces and spells
                                    # "USER:" letter by letter; bpe reaches 1000 pieces, 1.6x fewer tokens
    seq_len: int = 128              # tokens per training sequence
    align_docs: bool = True         # every sequence starts at a document's <s> (else at a random token);
                                    # the text of a document past its first sequence is then never read
    # --- optimisation (the paper: 6e-4 -> 6e-5 cosine, 2000 warmup, wd 0.1, clip 1.0) ---
    batch_size: int = 16            # global batch, in sequences (all processes, all micro-steps)
    micro_batch: int = 16           # sequences per forward/backward per process; auto (= 0): the largest
                                    # that fits the GPU and divides the batch (plan_memory)
    checkpointing: bool = False     # activation checkpointing: recompute each block in backward (less memory)
    fsdp: bool = False              # under torchrun: shard weights, gradients and AdamW state over the
                                    # processes (FSDP2) instead of a full copy in each (DDP)
    max_steps: int = 400
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    # --- system ---
    device: str = "auto"            # auto = cuda if available, else cpu
    compile: bool = False           # torch.compile the model (GPU: faster after a warm-up)
    seed: int = 1337
    out_dir: str = "out/lm"
    resume: bool = False            # continue from out_dir/ckpt exactly where it stopped
    # --- logging ---
    log_interval: int = 20          # steps between log lines
    eval_interval: int = 100        # steps between val loss + a generated sample (and at the end)
    eval_batches: int = 8           # val batches per evaluation
    ckpt_interval: int = 100        # steps between checkpoints (and at the end)
    sample_tokens: int = 48         # tokens generated per sample at each evaluation

    AUTO = ("micro_batch",)         # settings that accept --key=auto
    CHECKS = dict(                  # the values each setting allows; parse_config refuses others at once
        preset=LMConfig.preset, vocab_size="x >= 260", sp_model=("unigram", "bpe"), seq_len="x >= 1",
        batch_size="x >= 1", micro_batch="x >= 0", max_steps="x >= 1", lr="x > 0", min_lr="x >= 0",
        warmup_steps="x >= 0", weight_decay="x >= 0", beta1="0 <= x < 1", beta2="0 <= x < 1", eps="x > 0",
        grad_clip="x > 0", device=check_device, seed="x >= 0", out_dir="x != ''", log_interval="x >= 1",
        eval_interval="x >= 1", eval_batches="x >= 1", ckpt_interval="x >= 1", sample_tokens="x >= 1")


# Training presets: the default above is the CPU shapes-world run; this is the paper's recipe.
TRAIN_PRESETS = {
    "xmodel-1.1b": dict(
        corpus="", tokenizer="", vocab_size=32000, sp_model="unigram", seq_len=4096,
        batch_size=864, micro_batch=4,        # 864 x 4096 = 3.5M tokens per step
        max_steps=200_000, lr=6e-4, min_lr=6e-5, warmup_steps=2000, compile=True,
        align_docs=False,                     # web documents and books run past a 4096-token window
        log_interval=10, eval_interval=1000, eval_batches=20, ckpt_interval=1000, sample_tokens=64),
    "small": dict(vocab_size=8000, seq_len=1024, batch_size=64, micro_batch=16, max_steps=5000,
                  lr=1e-3, min_lr=1e-4, warmup_steps=200),
}


# -----------------------------------------------------------------------------
# Preparing data: corpus -> tokenizer -> shards

def prepare_data(cfg, rank):
    """Returns (tokenizer, shard folder), making whatever is missing (on rank 0)."""
    corpus = cfg.corpus
    if not corpus:
        raise UserError("--corpus is required: a folder or files of raw text (.txt, .jsonl), "
                        "or a folder of token shards")
    if corpus == TrainConfig.corpus and not os.path.exists(corpus) and rank == 0:
        print(f"{corpus} does not exist: generating the shapes world (python shapes.py)")
        shapes.generate_shapes_world(os.path.dirname(corpus))
    if not os.path.exists(corpus):
        raise InputNotFound(f"--corpus {corpus} does not exist")
    # a model to continue from brings its own tokenizer: one trained here on another corpus would
    # give its ids other meanings
    tok_path = cfg.tokenizer or (find_tokenizer(cfg.init_from) if cfg.init_from else
                                 os.path.join(cfg.out_dir, "tokenizer.model"))
    is_shards = os.path.isdir(corpus) and any(f.endswith(".bin") for f in os.listdir(corpus))
    shard_dir = corpus if is_shards else os.path.join(cfg.out_dir, "tokens")
    if rank == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
        if not os.path.exists(tok_path):
            if cfg.tokenizer:
                raise InputNotFound(f"--tokenizer {cfg.tokenizer} does not exist")
            print(f"training a SentencePiece {cfg.sp_model} tokenizer (vocab {cfg.vocab_size}) on {corpus}")
            # hard_vocab_limit off: a small corpus may support fewer pieces than asked for
            train_sentencepiece([corpus], tok_path, vocab_size=cfg.vocab_size, hard_vocab_limit=False,
                                model_type=cfg.sp_model)
        summary = os.path.join(shard_dir, "summary.json")
        if not is_shards and not os.path.exists(summary):
            print(f"tokenizing {corpus} into {shard_dir}")
            data.tokenize_corpus([corpus], tok_path, shard_dir)
    if dist.is_initialized():
        dist.barrier()
    tok = load_tokenizer(tok_path)
    data.check_shards_match(shard_dir, tok_path, None if is_shards else [corpus])
    return tok, tok_path, shard_dir


# -----------------------------------------------------------------------------
# Training

def train(cfg, stop_at=None):
    """Run the training loop; `stop_at` ends early after that step (tests use it to simulate an
    interrupted run). Returns the final model."""
    rank, world, device = setup_distributed(cfg.device)
    master = rank == 0
    torch.manual_seed(cfg.seed)
    tok, tok_path, shard_dir = prepare_data(cfg, rank)

    # the model's config first, so that a resumed run refuses a mismatched checkpoint at once
    ckpt_dir = os.path.join(cfg.out_dir, "ckpt")
    if cfg.init_from:
        hf = read_json(os.path.join(cfg.init_from, "config.json"))
        model_config = config_from_hf(hf, cfg.init_from)
        if hf.get("tokenizer_sha256", tokenizer_digest(tok_path)) != tokenizer_digest(tok_path):
            raise UserError(f"--tokenizer {tok_path} is not the tokenizer {cfg.init_from} was trained with "
                            f"({hf['tokenizer_file']}, says its config.json): leave --tokenizer out to use that one")
        if cfg.seq_len > model_config.max_seq_len:
            raise UserError(f"--seq_len={cfg.seq_len} is longer than {cfg.init_from}'s context "
                            f"(max_position_embeddings {model_config.max_seq_len}); use --seq_len <= that")
    else:
        preset_len = LMConfig.preset(cfg.preset).max_seq_len
        model_config = LMConfig.preset(cfg.preset, vocab_size=tok.vocab_size,
                                       max_seq_len=max(cfg.seq_len, preset_len))
    if model_config.vocab_size != tok.vocab_size:
        raise UserError(f"the model's vocabulary ({model_config.vocab_size}, {cfg.init_from}/config.json) and the "
                        f"tokenizer's ({tok.vocab_size}, {tok_path}) differ: that is not the tokenizer the model "
                        f"was trained with; give --tokenizer the model's own")
    if cfg.micro_batch == 0:  # --micro_batch=auto
        cfg = dataclasses.replace(cfg, micro_batch=auto_micro_batch(cfg, model_config, world, device, master))
    if cfg.batch_size % (cfg.micro_batch * world):
        raise UserError(f"--batch_size={cfg.batch_size} must be a multiple of micro_batch x processes "
                        f"= {cfg.micro_batch} x {world}")
    grad_accum = cfg.batch_size // (cfg.micro_batch * world)
    state = None
    if cfg.resume:
        weights, state = load_checkpoint(ckpt_dir, expect="model")
        if state["config"]["model"] != dataclasses.asdict(model_config):
            raise UserError(f"checkpoint {ckpt_dir} was saved from a different model config:\n"
                            f"  checkpoint: {state['config']['model']}\n  this run:   "
                            f"{dataclasses.asdict(model_config)}\nuse the same --preset/--tokenizer, "
                            f"or a new --out_dir")
        if state["config"].get("tokenizer_sha256", tokenizer_digest(tok_path)) != tokenizer_digest(tok_path):
            raise UserError(f"checkpoint {ckpt_dir} was trained with another tokenizer than {tok_path} (same "
                            f"vocabulary size, other pieces); resume with the run's own --tokenizer")
    model = XmodelLM.from_hf(cfg.init_from) if cfg.init_from else XmodelLM(model_config)
    if state:
        load_checked(model, weights, source=ckpt_dir)
    model.to(device)
    model.checkpointing = cfg.checkpointing
    raw_model = model
    model = distribute(model, model.model.layers, world, cfg.fsdp, device)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(raw_model, cfg, device)
    step = 0
    if state:
        load_optimizer_state(raw_model, optimizer, state["optimizer"])
        step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if master:
            print(f"resumed from {ckpt_dir} at step {step}")
        if master and step >= cfg.max_steps:
            print(f"note: the checkpoint is at step {step} and --max_steps={cfg.max_steps}: nothing is left to "
                  f"train; exporting the checkpoint's model (a larger --max_steps continues training)")
    fsdp = cfg.fsdp and world > 1
    autocast = mixed_precision(device)

    train_data = data_loader(shard_dir, "train", cfg, tok.bos_id, model_config.vocab_size)
    if master and train_data.coverage < 0.99:
        print(f"note: sequences start at documents (--align_docs), so they reach only "
              f"{train_data.coverage:.1%} of the training tokens; --align_docs=false reads all of long documents")
    val_data = data_loader(shard_dir, "val", cfg, tok.bos_id, model_config.vocab_size, missing_ok=True) or train_data
    tokens_per_step = cfg.batch_size * cfg.seq_len
    flops_per_step = raw_model.flops_per_token(cfg.seq_len) * tokens_per_step
    peak = peak_flops(device)
    if master:
        sharing = f" ({'FSDP2' if fsdp else 'DDP'})" if world > 1 else ""
        print(f"model: {raw_model.num_params() / 1e6:.1f}M parameters | {world} process(es){sharing} on {device} | "
              f"global batch {cfg.batch_size} x {cfg.seq_len} = {tokens_per_step} tokens | "
              f"grad accumulation {grad_accum}")
    metrics = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") if master else None
    run_config = {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(raw_model.config),
                  "tokenizer_sha256": tokenizer_digest(tok_path)}

    t_start, t_last, start_step, done = time.time(), time.time(), step, step
    for step in range(start_step, cfg.max_steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum = torch.zeros((), device=device)
        for micro in range(grad_accum):
            # this process's sequences of the global batch: the same set whatever the world size
            first = (micro * world + rank) * cfg.micro_batch
            x, y = train_data.batch(step, range(first, first + cfg.micro_batch))
            x, y = x.to(device), y.to(device)
            # DDP averages gradients on the last micro-step only; FSDP on every one (keeping
            # just the shards between micro-steps, which is the memory it is there to save)
            sync = micro == grad_accum - 1 or world == 1 or fsdp
            with autocast, (nullcontext() if sync else model.no_sync()):
                _, loss = model(x, y)
                (loss / grad_accum).backward()
            loss_sum += loss.detach()
        if world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        loss_value = loss_sum.item() / grad_accum
        if not math.isfinite(loss_value):
            raise UserError(f"loss is {loss_value} at step {step}: training diverged. The last good "
                            f"checkpoint is in {ckpt_dir}; try a lower --lr or a longer --warmup_steps, "
                            f"then --resume")
        grad_norm = scalar(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if master and (done % cfg.log_interval == 0 or done == cfg.max_steps):
            now = time.time()
            dt = (now - t_last) / min(cfg.log_interval, done - start_step)
            t_last = now
            mfu = flops_per_step / dt / (peak * world) if peak else None
            eta = (now - t_start) / (done - start_step) * (cfg.max_steps - done)
            print(f"step {done}/{cfg.max_steps} | loss {loss_value:.4f} | lr {lr:.2e} | "
                  f"grad norm {grad_norm:.2f} | {tokens_per_step / dt / 1e3:.1f}k tok/s | "
                  f"MFU {f'{100 * mfu:.1f}%' if mfu else '-'} | ETA {format_time(eta)}", flush=True)
            metrics.write(json.dumps({"step": done, "loss": loss_value, "lr": lr,
                                      "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_step / dt,
                                      "mfu": mfu, "time": now - t_start}) + "\n")
            metrics.flush()
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            val_loss = evaluate(model, val_data, cfg, rank, world, device, autocast)
            # under FSDP every process takes part (the weights are gathered block by block); the
            # sample's fixed seed makes them generate the same tokens in step
            sample = generate_sample(raw_model, tok, cfg, device) if master or fsdp else None
            if master:
                print(f"step {done} | val loss {val_loss:.4f} | sample: {sample!r}", flush=True)
                metrics.write(json.dumps({"step": done, "val_loss": val_loss, "sample": sample}) + "\n")
                metrics.flush()
        if done % cfg.ckpt_interval == 0 or done in (cfg.max_steps, stop_at):
            save_checkpoint(ckpt_dir, raw_model, optimizer, done, run_config, master)
        if done == stop_at:
            break

    if fsdp and done >= cfg.max_steps:  # rank 0 carries on with a whole copy
        weights = full_weights(raw_model)
        raw_model = XmodelLM(raw_model.config).to(device) if master else raw_model
        if master:
            raw_model.load_state_dict(weights)
    if master and done >= cfg.max_steps:  # (a resumed run may have had nothing left to do)
        export_dir = os.path.join(cfg.out_dir, "model")
        raw_model.save_hf(export_dir)
        save_tokenizer(tok_path, export_dir)
        print(f"done in {format_time(time.time() - t_start)}; model saved to {export_dir}")
        for text in generate_sample(raw_model, tok, cfg, device, n=4):
            print("  >", text)
        scenes = os.path.join(os.path.dirname(os.path.normpath(cfg.corpus)), "scenes_test.jsonl")
        if os.path.exists(scenes):  # the shapes world: can the LM read a described scene?
            reading_check(raw_model, tok, scenes, device)
    if metrics:
        metrics.close()
    if dist.is_initialized():  # leave together: a rank that tears down while another still
        dist.barrier()          # exports can abort at exit (seen once in CI under FSDP2 on gloo)
        dist.destroy_process_group()
    return raw_model


# -----------------------------------------------------------------------------
# Memory: what one training process holds, and the largest micro-batch that fits
#
# Per parameter: fp32 weights (4 bytes), autocast's bf16 copies kept for backward (2), fp32
# gradients (4), AdamW's two moments (8), and under DDP its gradient buckets (4): 18-22 bytes,
# 21-26 GB for the 1.1B model before a single activation. Activations are what the backward
# pass needs, per token and per layer; under bf16 autocast with flash attention (no T x T
# matrix) our Block keeps, as measured from a real forward (tests/test_train_lm.py re-measures):

ACT_BYTES = dict(hidden=30,  # per hidden unit: fp32 residual stream and RMSNorm inputs/outputs, bf16 q, o
                 mlp=8,      # per SwiGLU unit: bf16 gate, up, silu(gate) and their product
                 kv=4,       # per key/value unit: bf16 k and v as attention saves them
                 head=4,     # per query head: the fp32 log-sum-exp of flash attention
                 norm=8)     # per layer: the two RMSNorms' fp32 1/rms
# plus, once for all layers, RoPE's fp32 cos and sin (8 bytes per head-dim unit) and the token id (8).
# With activation checkpointing only each block's fp32 input stays (4 bytes per hidden unit per
# layer), and one block's activations are rebuilt at a time during the backward pass.


def count_params(config):
    with torch.device("meta"):  # shapes only, no memory
        return XmodelLM(config).num_params()


def plan_memory(config, seq_len, micro_batch, checkpointing=False, world=1, n_params=None, fsdp=False):
    """Bytes one process needs to train `config` (an LMConfig) on micro_batch x seq_len tokens.
    Under FSDP (world > 1) each process keeps 1/world of the weights, gradients and AdamW moments,
    and whole bf16 weights only for the outer group (embeddings, lm_head: gathered for the whole
    step) and two blocks (the one running and the next, prefetched)."""
    n = n_params or count_params(config)
    c, tokens = config, seq_len * micro_batch
    layer = (ACT_BYTES["hidden"] * c.n_embd + ACT_BYTES["mlp"] * c.intermediate_size +
             ACT_BYTES["kv"] * c.n_kv_head * c.head_dim + ACT_BYTES["head"] * c.n_head + ACT_BYTES["norm"])
    # once per token: RoPE's cos and sin, the token id, and after the blocks the final RMSNorm's
    # input, output and 1/rms plus the loss chunks' bf16 inputs (12 per hidden unit + 4)
    shared = 8 * c.head_dim + 8 + 12 * c.n_embd + 4
    saved = c.n_layer * (4 * c.n_embd if checkpointing else layer)
    if fsdp and world > 1:
        block = (n - 2 * c.vocab_size * c.n_embd - c.n_embd) // c.n_layer
        states = {"weights (fp32 shard)": 4 * n / world, "gradients (fp32 shard)": 4 * n / world,
                  "AdamW moments (fp32 shard)": 8 * n / world,
                  "gathered bf16 weights": 2 * (n - c.n_layer * block + 2 * block),
                  # a block's bf16 gradients and their fp32 copy for the reduce-scatter
                  "whole gradients of a block": 6 * block}
    else:
        states = {"weights (fp32)": 4 * n, "bf16 weight copies": 2 * n, "gradients (fp32)": 4 * n,
                  "AdamW moments (fp32)": 8 * n, "DDP gradient buckets": 4 * n if world > 1 else 0}
    return {**states, "activations": tokens * (saved + shared),
            "one block recomputed": tokens * layer if checkpointing else 0,
            # the chunked loss's backward: bf16 logits, fp32 copy, log-softmax and their gradients
            "logits (one loss chunk)": min(tokens, LOSS_CHUNK) * c.vocab_size * 18}


def reserved(gpu_bytes):
    """Left unplanned: the CUDA context, kernels' workspaces, allocator fragmentation and what
    the plan leaves out (a rule of thumb, not a measurement): 1 GiB + 8% of the GPU."""
    return 2**30 + 0.08 * gpu_bytes


def largest_micro_batch(config, seq_len, gpu_bytes, checkpointing=False, world=1, divides=None, fsdp=False):
    """The largest micro-batch whose plan fits in gpu_bytes - reserved() (and divides `divides`
    when given), or 0 if not even one sequence fits."""
    best, n = 0, count_params(config)
    for mb in range(1, 1025):
        plan = plan_memory(config, seq_len, mb, checkpointing, world, n, fsdp)
        if sum(plan.values()) > gpu_bytes - reserved(gpu_bytes):
            break
        if divides is None or divides % mb == 0:
            best = mb
    return best


def print_plan(config, seq_len, micro_batch, checkpointing, world, gpu_bytes=None, fsdp=False):
    plan = plan_memory(config, seq_len, micro_batch, checkpointing, world, fsdp=fsdp)
    total = sum(plan.values())
    print(f"memory plan: micro-batch {micro_batch} x {seq_len} tokens, activation checkpointing "
          f"{'on' if checkpointing else 'off'}, {world} process(es){' sharded by FSDP' if fsdp and world > 1 else ''}")
    for part, size in plan.items():
        print(f"  {part:<26} {size / 2**30:8.2f} GiB")
    room = f" of {gpu_bytes / 2**30:.1f} GiB (reserving {reserved(gpu_bytes) / 2**30:.1f})" if gpu_bytes else ""
    print(f"  {'total':<26} {total / 2**30:8.2f} GiB{room}")


def auto_micro_batch(cfg, config, world, device, master):
    """--micro_batch=auto: the planner's pick on a GPU; the whole per-process batch on a CPU."""
    per_process = cfg.batch_size // world
    if not device.startswith("cuda"):
        return per_process
    gpu = torch.cuda.get_device_properties(device).total_memory
    mb = largest_micro_batch(config, cfg.seq_len, gpu, cfg.checkpointing, world, per_process, cfg.fsdp)
    if mb == 0:
        raise UserError(f"not one sequence of {cfg.seq_len} tokens fits in {gpu / 2**30:.0f} GiB "
                        f"with preset {cfg.preset}" + ("" if cfg.checkpointing else "; try --checkpointing=true"))
    if master:
        print_plan(config, cfg.seq_len, mb, cfg.checkpointing, world, gpu, cfg.fsdp)
    return mb


def reading_check(model, tok, scenes_path, device, n=300):
    """Shapes world: held-out scenes described in words, one question each, answered greedily.
    The VLM has to do the same from image tokens, so this is the LM's part of that skill.
    Prints and returns the accuracy per question type and overall (%)."""
    with open(scenes_path) as f:
        scenes = [json.loads(line) for line in f][:n]
    rows = shapes.reading_questions(scenes)
    right, total = Counter(), Counter()
    by_count, count_total = Counter(), Counter()  # the same, by how many objects the scene holds
    model.eval()
    for i in range(0, len(rows), 50):
        chunk = rows[i:i + 50]
        out = model.generate([tok.encode(p, bos=True) for p, _, _ in chunk], 8, eos_id=tok.eos_id,
                             pad_id=tok.pad_id)
        for j, ((_, answer, qtype), ids) in enumerate(zip(chunk, out.tolist())):
            text = tok.decode([t for t in ids if t not in (tok.eos_id, tok.pad_id)])
            ok = text.split("USER")[0].strip() == answer  # the corpus runs on to the next turn
            k = len(scenes[i + j]["objects"])
            total[qtype] += 1
            right[qtype] += ok
            count_total[k] += 1
            by_count[k] += ok
    accuracy = {t: 100 * right[t] / total[t] for t in sorted(total)}
    accuracy["overall"] = 100 * sum(right.values()) / len(rows)
    accuracy["by_objects"] = {k: 100 * by_count[k] / count_total[k] for k in sorted(count_total)}
    print(f"reading check ({len(rows)} held-out scenes described in words, one question each): " +
          ", ".join(f"{t} {a:.0f}%" for t, a in accuracy.items() if t != "by_objects") +
          "; by objects in the scene: " + ", ".join(f"{k}: {a:.0f}%" for k, a in accuracy["by_objects"].items()))
    return accuracy


def data_loader(shard_dir, split, cfg, bos_id, vocab_size, missing_ok=False):
    try:
        return data.TokenLoader(shard_dir, split, cfg.seq_len, seed=cfg.seed if split == "train" else cfg.seed + 1,
                                doc_start=bos_id if cfg.align_docs else None, vocab_size=vocab_size)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise


@torch.no_grad()
def evaluate(model, val_data, cfg, rank, world, device, autocast):
    """Mean loss over the same eval_batches x micro_batch validation windows every time."""
    model.eval()
    total = torch.zeros((), device=device)
    for b in range(cfg.eval_batches):
        first = rank * cfg.micro_batch
        x, y = val_data.batch(b, range(first, first + cfg.micro_batch))
        with autocast:
            _, loss = model(x.to(device), y.to(device))
        total += loss
    if world > 1:
        dist.all_reduce(total, op=dist.ReduceOp.AVG)
    return total.item() / cfg.eval_batches


def generate_sample(model, tok, cfg, device, n=None, temperature=0.8, top_k=50):
    """One (or n) generated texts from a bare <s>, with a fixed seed so samples are comparable
    across evaluations and the training RNG is left untouched."""
    with torch.random.fork_rng(devices=[device] if str(device).startswith("cuda") else []):
        torch.manual_seed(0)
        prompts = [[tok.bos_id]] * (n or 1)
        out = model.generate(prompts, cfg.sample_tokens, temperature=temperature, top_k=top_k,
                             eos_id=tok.eos_id, pad_id=tok.pad_id)
    texts = [tok.decode([t for t in row.tolist() if t != tok.eos_id and t != tok.pad_id]) for row in out]
    return texts if n else texts[0]


if __name__ == "__main__":
    run_main(lambda argv: train(parse_config(TrainConfig, argv, presets=TRAIN_PRESETS)))
