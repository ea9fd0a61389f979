"""
Speed and memory measurements, side by side in one run (ratios, never absolute asserts).

    python bench.py lm                    # our XmodelLM vs transformers' LlamaForCausalLM
    python bench.py kernels               # Triton kernels vs PyTorch's best (CUDA GPU only)
    python bench.py vlm --preset=xmodel-1.1b --vision=clip-vit-l-14-336   # XDP's speed claim
    python bench.py memory --preset=xmodel-1.1b --gpu_gib=80 --seq_len=4096  # what fits (no GPU needed)
    python bench.py train --preset=xmodel-1.1b --batch=4 --seq_len=4096       # tokens/s, MFU, peak memory
    python bench.py decode --preset=xmodel-1.1b                               # KV-cached tokens/s
    python bench.py cpu                                                       # CPU: bf16 autocast, denormals, width
    python bench.py lm --preset=small --batch=4 --seq_len=512
    python bench.py --help

`lm`: the same config and the same weights in both implementations; times a training step
(forward, backward, AdamW) and KV-cached greedy decoding at batch 1 and batched. Reports the
median of `repeats` timings, ours and theirs interleaved so that machine noise hits both alike,
and the ratio ours/theirs (below 1.0 = we are faster). Results belong in BENCHMARKS.md.

`vlm`: time to first token of one image + question with 576, 144, 36 and 1 visual tokens (xdp
at strides 1, 2, 4, 24 on CLIP-L's 24x24 grid; on a smaller tower the same strides), split into
the tower + projector and the LM's prefill (logits at every position: a little more than
generate's prefill, which keeps the last only): the paper's case for downsampling the image tokens.
Random weights (speed does not depend on them); bf16 on CUDA, fp32 on CPU.

`train`: our training step alone (forward, backward, AdamW; bf16 autocast where the trainers
use it, the Triton kernels on CUDA): tokens/s, MFU against the GPU's dense bf16 peak, and peak memory next to the
planner's estimate. `decode`: greedy KV-cached decoding, tokens/s at batch 1 and `decode_batch`.

`memory`: train_lm.py's memory planner, no GPU needed: the budget of one training process
(weights, bf16 copies, gradients, AdamW, DDP buckets, activations, the loss chunk) and the
largest micro-batch that fits `gpu_gib`, without and with activation checkpointing.

`cpu`: the levers of a CPU training step, each timed against fp32 in the same run: the tiny
LM's step (forward, backward, AdamW; `batch` x `seq_len`) under bf16 autocast (fp32 master
weights), and a step whose inputs are embeddings of large norm (as visual tokens are) with
denormal flushing off and on (`torch.set_flush_denormal`). Whether bf16 pays depends on the CPU:
it prints whether the CPU has native bf16 (AVX512-BF16 or AMX), which is what the trainers check.
The attention row times PyTorch's fused attention alone (forward and backward at the LM's head
shape) in bf16 against fp32: where bf16 is the slower, as on the 2-core machine, `model.attention`
computes it in fp32 under autocast too. The last row is the preset's fp32 step against the same
model twice as wide (twice the heads and the MLP): the `tiny` preset's width was halved because
a CPU step costs what its matrices cost. The VLM row: stage 2's step (an image and `seq_len` - 1
text tokens a sample, the `vision` tower, a linear projector) on tower features computed once
before training, as train_vlm.py does when they fit in memory, against running the frozen tower
at every step.

`kernels`: see kernels/bench.py (the device's copy bandwidth and matmul ceilings first, then
flash attention TFLOP/s vs SDPA's flash and cuDNN backends and depthwise-conv GB/s vs F.conv2d).
"""

import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from common import cpu_native_bf16, mixed_precision, parse_config, peak_flops, run_main
from data import IMAGE_TOKEN_INDEX
from kernels.bench import bench_kernels
from model import IGNORE_INDEX, LMConfig, XmodelLM
from train_lm import largest_micro_batch, plan_memory, print_plan
from vision import CLIPVisionTower, VisionConfig
from vlm import XmodelVLM
from xdp import build_projector, grid_tokens


@dataclass
class BenchConfig:
    preset: str = "tiny"        # LMConfig preset of both models
    batch: int = 8              # training batch (sequences)
    seq_len: int = 256          # training sequence length
    prompt_len: int = 32        # decoding: prompt tokens
    new_tokens: int = 128       # decoding: generated tokens
    decode_batch: int = 8       # decoding: the batched case
    repeats: int = 7            # timings per measurement (median reported)
    vision: str = "tiny"        # vlm: VisionConfig preset of the tower (clip-vit-l-14-336 = the paper's)
    question_len: int = 40      # vlm: text tokens around the image (system prompt + question)
    gpu_gib: float = 80.0       # memory: the GPU's memory
    world: int = 1              # memory: processes (DDP adds its gradient buckets)
    fsdp: bool = False          # memory: the processes shard weights, gradients and AdamW state (FSDP2)
    threads: int = 0            # torch threads; 0 = torch's default

    CHECKS = dict(              # the values each setting allows; parse_config refuses others at once
        preset=LMConfig.preset, batch="x >= 1", seq_len="x >= 1", prompt_len="x >= 1", new_tokens="x >= 1",
        decode_batch="x >= 1", repeats="x >= 1", vision=VisionConfig.preset, question_len="x >= 0",
        gpu_gib="x > 0", world="x >= 1", threads="x >= 0")


def timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def median_time(fn, repeats, sync):
    fn()  # warm-up
    return statistics.median(timed(fn, sync) for _ in range(repeats))


def compare(name, ours, theirs, repeats, sync, unit_count=None, unit=""):
    """Warm both up, then time them alternately; print one row of the table."""
    ours(), theirs()
    t_ours, t_theirs = [], []
    for _ in range(repeats):
        t_ours.append(timed(ours, sync))
        t_theirs.append(timed(theirs, sync))
    a, b = statistics.median(t_ours), statistics.median(t_theirs)
    rate = (f"{unit_count / a:10.0f} {unit:<6} {unit_count / b:10.0f} {unit:<6}"
            if unit_count else " " * 36)
    print(f"{name:<34} {a * 1e3:9.1f} ms {b * 1e3:9.1f} ms  {rate} {a / b:6.2f}", flush=True)
    return a / b


def bench_lm(cfg):
    import transformers  # only this measurement needs it (requirements-test.txt)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    ours = XmodelLM(LMConfig.preset(cfg.preset)).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_hf(tmp)
        theirs = transformers.LlamaForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").to(device)
    c = ours.config
    print(f"device {device} | torch {torch.__version__} | transformers {transformers.__version__} | "
          f"threads {torch.get_num_threads()}")
    print(f"preset {cfg.preset}: {ours.num_params() / 1e6:.1f}M parameters, {c.n_layer} layers, "
          f"hidden {c.n_embd}, heads {c.n_head}/{c.n_kv_head}\n")
    print(f"{'measurement':<34} {'ours':>12} {'transformers':>12}  {'ours rate':>17} {'their rate':>17} "
          f"{'ratio':>6}")

    # decoding with the KV cache, greedy, exactly new_tokens tokens (first, while the weights
    # are still identical: the training steps below update the two models slightly differently)
    ours.eval(), theirs.eval()
    for b in (1, cfg.decode_batch):
        prompt = torch.randint(3, c.vocab_size, (b, cfg.prompt_len), device=device)
        gen_ours = lambda: ours.generate(prompt, cfg.new_tokens)
        gen_theirs = lambda: theirs.generate(prompt, max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens,
                                             do_sample=False, eos_token_id=None, pad_token_id=0)
        with torch.no_grad():
            assert torch.equal(gen_ours(), gen_theirs()[:, cfg.prompt_len:]), "greedy outputs differ"
            compare(f"decode B={b} prompt={cfg.prompt_len} new={cfg.new_tokens}", gen_ours, gen_theirs,
                    cfg.repeats, sync, b * cfg.new_tokens, "tok/s")

    # training step: forward + backward + AdamW; both read the same seq_len input tokens
    x = torch.randint(0, c.vocab_size, (cfg.batch, cfg.seq_len + 1), device=device)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)

    def step_ours():
        _, loss = ours(x[:, :-1], x[:, 1:])
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_theirs():
        loss = theirs(x[:, :-1], labels=x[:, :-1]).loss   # HF shifts the labels itself
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    ours.train(), theirs.train()
    tokens = cfg.batch * cfg.seq_len
    compare(f"train step B={cfg.batch} T={cfg.seq_len}", step_ours, step_theirs, cfg.repeats, sync,
            tokens, "tok/s")


def bench_vlm(cfg):
    """Time to first token: tower + projector, then the LM's prefill of image + text, then one
    token; for each visual-token count. One row per count, the ratio against the full grid."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    tower = CLIPVisionTower(VisionConfig.preset(cfg.vision))
    lm = XmodelLM(LMConfig.preset(cfg.preset))
    pixels = torch.randn(1, 3, tower.config.image_size, tower.config.image_size, device=device, dtype=dtype)
    prompt = [[5] * (cfg.question_len // 2) + [IMAGE_TOKEN_INDEX] + [6] * (cfg.question_len // 2)]
    print(f"device {device} | torch {torch.__version__} | {dtype} | LM {cfg.preset} "
          f"({lm.num_params() / 1e6:.0f}M) | tower {cfg.vision} ({tower.grid}x{tower.grid} patches) | "
          f"{cfg.question_len} text tokens\n")
    print(f"{'visual tokens (paper: 24x24)':<30} {'tower+projector':>16} {'LM prefill':>12} {'first token':>12} {'ratio':>6}")
    first = None
    for paper_count in (576, 144, 36, 1):
        n = grid_tokens(paper_count, tower.grid)
        vlm = XmodelVLM(tower, build_projector("xdp", tower.hidden_size, lm.config.n_embd, tower.grid, n), lm)
        vlm = vlm.to(device=device, dtype=dtype).eval()
        with torch.no_grad():
            encode = lambda: vlm.encode_images(pixels)
            x, _ = vlm.prompt_embeds(prompt, pixels)
            prefill = lambda: vlm.lm(embeds=x)
            ttft = lambda: vlm.generate(prompt, pixels, max_new_tokens=1)
            t_enc, t_pre, t_all = (median_time(f, cfg.repeats, sync) for f in (encode, prefill, ttft))
        first = first or t_all
        print(f"{f'{n} ({paper_count})':<30} {t_enc * 1e3:13.1f} ms {t_pre * 1e3:9.1f} ms {t_all * 1e3:9.1f} ms "
              f"{t_all / first:6.2f}", flush=True)


def train_step_figures(model, optimizer, x, repeats, device, sync, compiled=False):
    """Times training steps (forward, backward, optimizer; bf16 where the trainers use it:
    common.mixed_precision) of `model` on x (B, T+1): one step first (compilation, autotuning;
    its seconds are `first_step_s`), then the median of `repeats` after one more. Returns step_ms, tokens_per_s, mfu_pct (None where the
    GPU's peak is unknown), plan_gib (train_lm.plan_memory) and, on CUDA, peak_gib."""
    B, T = x.shape[0], x.shape[1] - 1
    fn = torch.compile(model) if compiled else model
    autocast = mixed_precision(device)

    def step():
        with autocast:
            _, loss = fn(x[:, :-1], x[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    first = timed(step, sync)
    t = median_time(step, repeats, sync)
    peak = peak_flops(device)
    row = {"batch": B, "seq": T, "step_ms": t * 1e3, "tokens_per_s": B * T / t, "first_step_s": first,
           "mfu_pct": 100 * model.flops_per_token(T) * B * T / t / peak if peak else None,
           "plan_gib": sum(plan_memory(model.config, T, B).values()) / 2**30}
    if device == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def bench_train(cfg):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = XmodelLM(LMConfig.preset(cfg.preset, max_seq_len=max(cfg.seq_len, 512))).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    x = torch.randint(0, model.config.vocab_size, (cfg.batch, cfg.seq_len + 1), device=device)
    r = train_step_figures(model, optimizer, x, cfg.repeats, device, sync)
    print(f"device {device} | torch {torch.__version__} | preset {cfg.preset} ({model.num_params() / 1e6:.0f}M) | "
          f"batch {cfg.batch} x {cfg.seq_len}")
    mfu = f"{r['mfu_pct']:.1f}%" if r["mfu_pct"] else "-"
    print(f"train step {r['step_ms']:.1f} ms | {r['tokens_per_s']:,.0f} tokens/s | MFU {mfu}")
    if device == "cuda":
        print(f"peak memory {r['peak_gib']:.2f} GiB (planner: {r['plan_gib']:.2f} GiB)")


def bench_cpu(cfg):
    torch.manual_seed(0)
    model = XmodelLM(LMConfig.preset(cfg.preset, max_seq_len=max(cfg.seq_len, 512))).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (cfg.batch, cfg.seq_len + 1))
    big = torch.randn(cfg.batch, cfg.seq_len, model.config.n_embd) * 15  # visual tokens' norm per unit: ~15

    def step(autocast=nullcontext(), embeds=None, net=model, opt=optimizer):
        with autocast:
            _, loss = (net(x[:, :-1], x[:, 1:]) if embeds is None else net(embeds=embeds, targets=x[:, 1:]))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def flushed():
        torch.set_flush_denormal(True)
        step(embeds=big)
        torch.set_flush_denormal(False)
    native = cpu_native_bf16()
    print(f"cpu {torch.backends.cpu.get_cpu_capability()} | native bf16: {', '.join(native) or 'no'} | "
          f"torch {torch.__version__} | {torch.get_num_threads()} threads | preset {cfg.preset} | "
          f"batch {cfg.batch} x {cfg.seq_len}")
    tokens = cfg.batch * cfg.seq_len
    print(f"{'':<34} {'lever':>12} {'fp32':>12}  {'lever tok/s':>17} {'fp32 tok/s':>17} {'ratio':>6}")
    compare("train step, bf16 autocast", lambda: step(torch.autocast("cpu", dtype=torch.bfloat16)), step,
            cfg.repeats, lambda: None, tokens, "tok/s")
    compare("large-norm embeds, flush denormals", flushed, lambda: step(embeds=big), cfg.repeats, lambda: None,
            tokens, "tok/s")
    # why model.attention runs SDPA in fp32 on a CPU even under autocast: its CPU kernel in bf16
    qkv = [torch.randn(cfg.batch, model.config.n_head, cfg.seq_len, model.config.head_dim, requires_grad=True)
           for _ in range(3)]

    def sdpa(dtype):
        torch.nn.functional.scaled_dot_product_attention(*(t.to(dtype) for t in qkv), is_causal=True).sum().backward()
    compare("attention fwd+bwd in bf16 (SDPA)", lambda: sdpa(torch.bfloat16), lambda: sdpa(torch.float32),
            cfg.repeats, lambda: None, tokens, "tok/s")
    c = model.config
    wide = XmodelLM(LMConfig.preset(cfg.preset, max_seq_len=c.max_seq_len, n_embd=2 * c.n_embd, n_head=2 * c.n_head,
                                    n_kv_head=2 * c.n_kv_head, intermediate_size=2 * c.intermediate_size)).train()
    wide_optimizer = torch.optim.AdamW(wide.parameters(), lr=1e-4)
    compare(f"fp32 step, {c.n_embd} wide vs {2 * c.n_embd}", step, lambda: step(net=wide, opt=wide_optimizer),
            cfg.repeats, lambda: None, tokens, "tok/s")
    # stage 2's step on the frozen tower's features, computed once (train_vlm.cache_features), against
    # running the tower on the pixels at every step: an image and seq_len - 1 text tokens a sample
    tower = CLIPVisionTower(VisionConfig.preset(cfg.vision)).requires_grad_(False)
    vlm = XmodelVLM(tower, build_projector("linear", tower.hidden_size, c.n_embd, tower.grid), model).train()
    vlm_optimizer = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-4)
    ids = x[:, :cfg.seq_len].clone()
    ids[:, 0] = IMAGE_TOKEN_INDEX
    labels = torch.cat([torch.full_like(ids[:, :1], IGNORE_INDEX), ids[:, 1:]], 1)
    lengths = torch.full((cfg.batch,), cfg.seq_len)
    pixels = torch.randn(cfg.batch, 3, tower.config.image_size, tower.config.image_size)
    with torch.no_grad():
        features = tower(pixels)

    def vlm_step(**images):
        vlm(ids, lengths, [True] * cfg.batch, labels=labels, **images)[1].backward()
        vlm_optimizer.step()
        vlm_optimizer.zero_grad(set_to_none=True)
    compare(f"VLM step, cached {cfg.vision} tower features", lambda: vlm_step(features=features),
            lambda: vlm_step(pixels=pixels), cfg.repeats, lambda: None, tokens, "tok/s")


def bench_decode(cfg):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = XmodelLM(LMConfig.preset(cfg.preset)).to(device=device, dtype=dtype).eval()
    print(f"device {device} | torch {torch.__version__} | {dtype} | preset {cfg.preset} | "
          f"prompt {cfg.prompt_len}, {cfg.new_tokens} new tokens, greedy, KV cache")
    for b in (1, cfg.decode_batch):
        prompt = torch.randint(3, model.config.vocab_size, (b, cfg.prompt_len), device=device)
        with torch.no_grad():
            t = median_time(lambda: model.generate(prompt, cfg.new_tokens), cfg.repeats, sync)
        print(f"batch {b:>3}: {t * 1e3:8.1f} ms | {b * cfg.new_tokens / t:8.0f} tokens/s")


def bench_memory(cfg):
    config = LMConfig.preset(cfg.preset)
    gpu = cfg.gpu_gib * 2**30
    for checkpointing in (False, True):
        mb = largest_micro_batch(config, cfg.seq_len, gpu, checkpointing, cfg.world, fsdp=cfg.fsdp)
        if mb == 0:
            print(f"checkpointing {'on' if checkpointing else 'off'}: not one sequence of {cfg.seq_len} "
                  f"tokens fits in {cfg.gpu_gib:g} GiB\n")
            continue
        print_plan(config, cfg.seq_len, mb, checkpointing, cfg.world, gpu, cfg.fsdp)
        print(f"  -> largest micro-batch: {mb}\n")


def run_mode(mode, cfg):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    mode(cfg)


if __name__ == "__main__":
    modes = {"lm": bench_lm, "kernels": bench_kernels, "vlm": bench_vlm, "memory": bench_memory,
             "train": bench_train, "decode": bench_decode, "cpu": bench_cpu}
    if len(sys.argv) < 2 or sys.argv[1] not in modes:
        if len(sys.argv) < 2 or sys.argv[1] not in ("-h", "--help"):
            print(f"usage: python bench.py {{{'|'.join(modes)}}} [--key=value ...]")
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    run_main(lambda argv: run_mode(modes[sys.argv[1]], parse_config(BenchConfig, argv)), sys.argv[2:])
