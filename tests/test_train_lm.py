"""train_lm.py: exact resume, DDP equivalence, and clear errors on bad input."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import shapes
import train_lm
from common import UserError, parse_config
from train_lm import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(folder, n_docs=400, seed=0):
    """A small English-like corpus, documents separated by blank lines."""
    rng = random.Random(seed)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "brown", "pink"]
    shapes = ["circle", "square", "star", "triangle", "hexagon", "diamond", "heart", "cross"]
    docs = []
    for _ in range(n_docs):
        relation = rng.choice(["left of", "right of", "above", "below", "next to", "far from"])
        sents = [f"The {rng.choice(colours)} {rng.choice(shapes)} is {relation} the "
                 f"{rng.choice(colours)} {rng.choice(shapes)}. There are {rng.randint(1, 9)} shapes."
                 for _ in range(rng.randint(1, 4))]
        docs.append(" ".join(sents))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "corpus.txt"), "w") as f:
        f.write("\n\n".join(docs) + "\n")
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A corpus and a tokenizer shared by the tests of this file (trained once)."""
    root = tmp_path_factory.mktemp("lm")
    corpus = write_corpus(str(root / "corpus"))
    from tokenizer import train_sentencepiece
    tok = train_sentencepiece([corpus], str(root / "tok.model"), vocab_size=320)
    return root, corpus, str(tok)


def tiny_config(root, corpus, tok, out, **kw):
    base = dict(preset="tiny", corpus=corpus, tokenizer=tok, seq_len=32, batch_size=8, micro_batch=4,
                max_steps=6, warmup_steps=2, lr=1e-3, min_lr=1e-4, out_dir=str(root / out),
                log_interval=1, eval_interval=3, eval_batches=2, ckpt_interval=100, sample_tokens=8)
    base.update(kw)
    return TrainConfig(**base)


def test_exact_resume(workdir):
    root, corpus, tok = workdir
    straight = train_lm.train(tiny_config(root, corpus, tok, "straight"))
    train_lm.train(tiny_config(root, corpus, tok, "halves"), stop_at=3)
    half = load_file(str(root / "halves" / "ckpt" / "model.safetensors"))
    resumed = train_lm.train(tiny_config(root, corpus, tok, "halves", resume=True))
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    # and the halfway checkpoint really was a different (earlier) model
    assert not torch.equal(half["lm_head.weight"], straight.state_dict()["lm_head.weight"])


def test_resume_with_another_config_is_a_clear_error(workdir, capsys):
    root, corpus, tok = workdir
    train_lm.train(tiny_config(root, corpus, tok, "cfg", max_steps=2))
    with pytest.raises(UserError, match="different model config"):
        train_lm.train(tiny_config(root, corpus, tok, "cfg", preset="small", resume=True))


def test_resume_without_checkpoint_is_a_clear_error(workdir):
    root, corpus, tok = workdir
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_lm.train(tiny_config(root, corpus, tok, "fresh", resume=True))


def test_loss_decreases_and_metrics_are_logged(workdir):
    root, corpus, tok = workdir
    train_lm.train(tiny_config(root, corpus, tok, "learn", max_steps=30, lr=3e-3, eval_interval=30))
    rows = [json.loads(l) for l in open(root / "learn" / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 30 and losses[-1] < losses[0] - 1.0
    assert any("val_loss" in r for r in rows)
    assert os.path.exists(root / "learn" / "model" / "model.safetensors")


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_and_resume_across_world_sizes(workdir, mode, monkeypatch):
    """20 steps in one process against the same 20 steps split across world sizes, with the
    losses within 1e-5 at every step and the same final weights:
      ddp:  steps 1-10 in one process, 11-20 resumed under torchrun --nproc_per_node=2 (gloo);
      fsdp: steps 1-10 under torchrun with FSDP2, 11-20 resumed in one process.
    A step's global batch does not depend on the number of processes, and a checkpoint holds
    whole, name-keyed weights and optimizer state. The learning rate is constant so that a run
    told to stop at step 10 follows the 20-step run's schedule."""
    root, corpus, tok = workdir
    monkeypatch.setenv("XVLM_CPU_FP32", "1")  # bf16 autocast rounds a batch split over processes differently
    args = ["--preset=tiny", f"--corpus={corpus}", f"--tokenizer={tok}", "--seq_len=32",
            "--batch_size=8", "--micro_batch=2", "--max_steps=20", "--warmup_steps=1", "--lr=1e-3",
            "--min_lr=1e-3", "--log_interval=1", "--eval_interval=100", "--ckpt_interval=100", "--device=cpu"]
    one = train_lm.train(parse_config(TrainConfig, args + [f"--out_dir={root / ('one-' + mode)}"]))
    shards = f"--corpus={root / ('one-' + mode) / 'tokens'}"   # made by the first run: no two runs write them at once
    out = f"--out_dir={root / mode}"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                os.path.join(ROOT, "train_lm.py"), *args, out, shards]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if mode == "ddp":
        train_lm.train(parse_config(TrainConfig, args + [out, shards]), stop_at=10)
        run = subprocess.run(torchrun + ["--resume=true"], env=env, cwd=ROOT, timeout=300, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "resumed from" in run.stdout and "at step 10" in run.stdout, run.stdout[-2000:]
        assert "2 process(es) (DDP)" in run.stdout
    else:
        run = subprocess.run(torchrun + ["--fsdp=true", "--max_steps=10"], env=env, cwd=ROOT, timeout=300,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "2 process(es) (FSDP2)" in run.stdout, run.stdout[-2000:]
        train_lm.train(parse_config(TrainConfig, args + [out, shards, "--resume=true"]))
    losses = lambda d: [json.loads(l)["loss"] for l in open(root / d / "metrics.jsonl") if '"loss"' in l]
    one_losses, split_losses = losses("one-" + mode), losses(mode)
    assert len(one_losses) == len(split_losses) == 20
    assert max(abs(a - b) for a, b in zip(one_losses, split_losses)) < 1e-5
    split = load_file(str(root / mode / "model" / "model.safetensors"))
    for k, v in one.state_dict().items():
        assert torch.allclose(v, split[k], atol=1e-5), k


def test_missing_corpus_is_a_clear_error(tmp_path):
    cfg = TrainConfig(corpus=str(tmp_path / "nothing"), out_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="does not exist"):
        train_lm.train(cfg)


def test_empty_corpus_is_a_clear_error(workdir, tmp_path):
    _, _, tok = workdir
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("\n\n  \n")
    cfg = TrainConfig(corpus=str(tmp_path / "empty"), tokenizer=tok, out_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="no training text"):
        train_lm.train(cfg)


class Chars:
    """A character tokenizer: ids are code points; 1 and 2 are bos/eos, 0 pads."""
    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text, bos=False, eos=False):
        return [1] * bos + [ord(c) for c in text] + [2] * eos

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class Oracle:
    """Answers each reading question from a lookup of the true answers (or a wrong one),
    then runs on into the next turn, as the corpus's chats do."""
    def __init__(self, answers, wrong_types=()):
        self.answers, self.wrong_types = answers, wrong_types

    def eval(self):
        return self

    def generate(self, prompts, max_new_tokens, eos_id, pad_id):
        tok, rows = Chars(), []
        for p in prompts:
            answer, qtype = self.answers[tok.decode(p[1:])]
            reply = "wrong" if qtype in self.wrong_types else answer
            rows.append(tok.encode(f" {reply} USER: more", eos=True))
        width = max(map(len, rows))
        return torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])


def test_reading_check_scores_the_answer_before_the_next_turn(tmp_path):
    scenes = [{"objects": [{"shape": "star", "colour": "red", "size": "small", "cell": "top left", "row": 0, "col": 0}],
               "count": {"kind": "total", "value": "shape", "answer": 1}}] * 40
    path = tmp_path / "scenes_test.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in scenes))
    rows = shapes.reading_questions(scenes)
    answers = {p: (a, t) for p, a, t in rows}
    assert train_lm.reading_check(Oracle(answers), Chars(), str(path), "cpu")["overall"] == 100
    partial = train_lm.reading_check(Oracle(answers, wrong_types=("colour",)), Chars(), str(path), "cpu")
    assert partial["colour"] == 0 and partial["shape"] == 100
    n_colour = sum(t == "colour" for _, _, t in rows)
    assert partial["overall"] == pytest.approx(100 * (40 - n_colour) / 40)


def test_reading_check_splits_by_object_count(tmp_path):
    one = {"objects": [{"shape": "star", "colour": "red", "size": "small", "cell": "top left", "row": 0, "col": 0}],
           "count": {"kind": "total", "value": "shape", "answer": 1}}
    two = {"objects": one["objects"] + [{"shape": "circle", "colour": "blue", "size": "large", "cell": "center",
                                         "row": 1, "col": 1}], "count": {"kind": "total", "value": "shape", "answer": 2}}
    scenes = [one, two] * 20
    path = tmp_path / "scenes_test.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in scenes))
    rows = shapes.reading_questions(scenes)

    class WrongOnTwo(Oracle):  # answers the 1-object scenes right and the 2-object ones wrong
        def generate(self, prompts, max_new_tokens, eos_id, pad_id):
            out = super().generate(prompts, max_new_tokens, eos_id, pad_id)
            for r in range(1, len(prompts), 2):  # the scenes alternate one, two (all 40 in one chunk)
                out[r, 1:6] = torch.tensor(Chars().encode("wrong"))
            return out
    acc = train_lm.reading_check(WrongOnTwo({p: (a, t) for p, a, t in rows}), Chars(), str(path), "cpu")
    assert acc["by_objects"] == {1: 100, 2: 0}
    assert acc["overall"] == 50


def saved_bytes(model, T):
    """Bytes of the distinct tensors a training forward (loss included) saves for backward,
    under CPU bf16 autocast."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    idx = torch.randint(0, model.config.vocab_size, (1, T + 1), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(idx[:, :-1], idx[:, 1:])
    return sum(storages.values())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_memory_plan_matches_the_tensors_a_forward_saves(monkeypatch, checkpointing):
    """The planner's activation bytes per token = what autograd really keeps, measured as the
    difference between two sequence lengths (weights and their bf16 copies do not grow with T).
    Attention runs the flash kernel (in Triton's interpreter), which keeps no T x T matrix."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the flash-attention kernel: run with TRITON_INTERPRET=1")
    monkeypatch.setenv("XMODEL_KERNELS", "triton")
    from model import LMConfig, XmodelLM
    for shape in [dict(n_embd=64, n_head=2, n_kv_head=1, intermediate_size=96),
                  dict(n_embd=128, n_head=4, n_kv_head=2, intermediate_size=352)]:
        config = LMConfig(vocab_size=64, n_layer=2, max_seq_len=128, **shape)
        model = XmodelLM(config)
        model.checkpointing = checkpointing
        measured = (saved_bytes(model, 96) - saved_bytes(model, 32)) / 64
        assert measured == train_lm.plan_memory(config, 1, 1, checkpointing)["activations"], shape


def test_fsdp_plan_shards_the_states_and_gathers_two_blocks():
    """Under FSDP a process keeps 1/world of the 16 bytes per parameter of weights, gradients and
    AdamW moments; whole bf16 weights only for the outer group and two blocks (counted here on
    the model itself, not the planner's formula); activations are not sharded."""
    from model import LMConfig, XmodelLM
    for preset in ("tiny", "xmodel-1.1b"):
        config = LMConfig.preset(preset)
        with torch.device("meta"):
            model = XmodelLM(config)
        n = model.num_params()
        block = sum(p.numel() for p in model.model.layers[0].parameters())
        outer = n - config.n_layer * block
        ddp = train_lm.plan_memory(config, 512, 2, world=8)
        fsdp = train_lm.plan_memory(config, 512, 2, world=8, fsdp=True)
        states = [v for k, v in fsdp.items() if "shard" in k]
        assert sum(states) == 16 * n / 8
        assert fsdp["gathered bf16 weights"] == 2 * (outer + 2 * block)
        assert fsdp["activations"] == ddp["activations"]
        assert train_lm.plan_memory(config, 512, 2, world=1, fsdp=True) == train_lm.plan_memory(config, 512, 2)


def test_largest_micro_batch_is_the_largest_that_fits():
    from model import LMConfig
    config = LMConfig.preset("xmodel-1.1b")
    gpu = 80 * 2**30
    total = lambda mb, ckpt=False: sum(train_lm.plan_memory(config, 4096, mb, ckpt).values())
    mb = train_lm.largest_micro_batch(config, 4096, gpu)
    assert mb >= 1 and total(mb) <= gpu - train_lm.reserved(gpu) < total(mb + 1)
    ckpt = train_lm.largest_micro_batch(config, 4096, gpu, checkpointing=True)
    assert ckpt > 2 * mb                                   # checkpointing buys a much larger batch
    assert train_lm.largest_micro_batch(config, 4096, gpu, checkpointing=True, divides=864) in (1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 27, 32, 36, 48, 54, 72, 96, 108, 144, 216, 288, 432, 864)
    assert train_lm.largest_micro_batch(config, 4096, 8 * 2**30) == 0   # 1.1B does not train in 8 GB


def test_checkpointing_gives_the_same_loss_and_gradients_and_saves_less():
    from model import LMConfig, XmodelLM
    torch.manual_seed(0)
    model = XmodelLM(LMConfig(vocab_size=64, n_layer=4, n_embd=64, n_head=2, n_kv_head=1, intermediate_size=96,
                              max_seq_len=64)).train()
    idx = torch.randint(0, 64, (2, 17))
    grads, saved = [], []
    for on in (False, True):
        model.checkpointing = on
        model.zero_grad()
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        saved.append(saved_bytes(model, 48) - saved_bytes(model, 16))   # activations only
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert saved[1] < saved[0] / 2
