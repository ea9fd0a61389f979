"""
Speed and memory measurements, side by side in one run (ratios, never absolute asserts).

    python bench.py lm                    # our XmodelLM vs transformers' LlamaForCausalLM
    python bench.py kernels               # Triton kernels vs PyTorch's best (CUDA GPU only)
    python bench.py lm --preset=small --batch=4 --seq_len=512
    python bench.py --help

`lm`: the same config and the same weights in both implementations; times a training step
(forward, backward, AdamW) and KV-cached greedy decoding at batch 1 and batched. Reports the
median of `repeats` timings, ours and theirs interleaved so that machine noise hits both alike,
and the ratio ours/theirs (below 1.0 = we are faster). Results belong in BENCHMARKS.md.

`kernels`: see kernels/bench.py (the device's copy bandwidth and matmul ceilings first, then
flash attention TFLOP/s vs SDPA's flash and cuDNN backends and depthwise-conv GB/s vs F.conv2d).
"""

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from model import LMConfig, XmodelLM
from train_lm import parse_config


@dataclass
class BenchConfig:
    preset: str = "tiny"        # LMConfig preset of both models
    batch: int = 8              # training batch (sequences)
    seq_len: int = 256          # training sequence length
    prompt_len: int = 32        # decoding: prompt tokens
    new_tokens: int = 128       # decoding: generated tokens
    decode_batch: int = 8       # decoding: the batched case
    repeats: int = 7            # timings per measurement (median reported)
    threads: int = 0            # torch threads; 0 = torch's default


def timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


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
    import transformers
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


if __name__ == "__main__":
    from kernels.bench import bench_kernels
    modes = {"lm": bench_lm, "kernels": bench_kernels}
    if len(sys.argv) < 2 or sys.argv[1] not in modes:
        if len(sys.argv) < 2 or sys.argv[1] not in ("-h", "--help"):
            print(f"usage: python bench.py {{{'|'.join(modes)}}} [--key=value ...]")
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    cfg = parse_config(BenchConfig, sys.argv[2:])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    modes[sys.argv[1]](cfg)
