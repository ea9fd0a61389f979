"""Bad input, tried on every script as a user would type it: each case must end in a clear
`error: ...` that names the offending file, line, sample or setting (exit status 1, or 2 for
argparse's own refusals) and no traceback; the last table holds the inputs that are accepted
with a counted skip or an explanation instead.

Every case runs the script in this process exactly as `python SCRIPT ARGS` would (runpy with
run_name="__main__"), on tiny models and a tiny shapes world made once for the file.
"""

import json
import os
import re
import runpy
import shutil
import struct
import sys
import zlib

import numpy as np
import pytest
import torch

import data
import shapes
import train_lm
import train_vlm
from model import LMConfig, XmodelLM
from tokenizer import load_tokenizer, save_tokenizer, train_sentencepiece
from vision import CLIPVisionTower, VisionConfig
from vlm import XmodelVLM
from xdp import build_projector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -----------------------------------------------------------------------------
# Fixtures: a tiny world, two tokenizers of different corpora, an LM, a CLIP, a VLM, shards, checkpoints

class Payload:
    """A pickle that would create a folder when loaded: weights_only=True must refuse it unrun."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    world = root / "shapes"
    shapes.generate_shapes_world(str(world), n_train=24, n_test=8, n_comp=4, corpus_mb=0.02, workers=1)
    tok = train_sentencepiece([str(world / "corpus")], str(root / "tok" / "tok.model"), vocab_size=400,
                              hard_vocab_limit=False, model_type="bpe")
    other_text = root / "other" / "text.txt"
    other_text.parent.mkdir()
    other_text.write_text("\n".join(f"the quick brown fox number {i} jumps over {i % 7} lazy dogs today"
                                    for i in range(400)))
    other_tok = train_sentencepiece([str(other_text)], str(root / "other" / "other.model"), vocab_size=320,
                                    hard_vocab_limit=False)
    vocab = load_tokenizer(tok).vocab_size
    torch.manual_seed(0)
    lm = XmodelLM(LMConfig(vocab_size=vocab, n_layer=1, n_head=2, n_kv_head=1, n_embd=32, intermediate_size=64,
                           max_seq_len=256))
    lm.save_hf(str(root / "lm"))
    save_tokenizer(tok, str(root / "lm"))
    tower = CLIPVisionTower(VisionConfig.preset("tiny", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                num_attention_heads=2))
    tower.save_hf(str(root / "clip"))
    XmodelVLM(tower, build_projector("xdp", 16, 32, tower.grid), lm).save(str(root / "vlm"))
    save_tokenizer(tok, str(root / "vlm"))
    data.tokenize_corpus([str(world / "corpus")], tok, str(root / "shards"), workers=1)
    # a train_lm run of 2 steps (its checkpoint) and a train_vlm stage-1 checkpoint
    train_lm.train(train_lm.TrainConfig(**lm_settings(root / "shards", tok, root / "lm_run", max_steps=2)))
    train_vlm.main(train_vlm.VLMConfig(**vlm_settings(root, root / "vlm_run", stage="1")))
    return root


def lm_settings(corpus, tok, out, **kw):
    return {**dict(corpus=str(corpus), tokenizer=str(tok), out_dir=str(out), seq_len=16, batch_size=2,
                   micro_batch=2, max_steps=1, warmup_steps=0, log_interval=1, eval_batches=1, sample_tokens=1), **kw}


def vlm_settings(root, out, **kw):
    return {**dict(lm=str(root / "lm"), vision=str(root / "clip"), data=str(root / "shapes"), out_dir=str(out),
                   batch1=4, batch2=4, micro_batch=4, steps1=1, steps2=1, max_len=256, image_check=0, evaluate=False),
            **kw}


def flags(settings):
    return [f"--{k}={v}" for k, v in settings.items()]


def lm_args(f, t, **kw):
    """A train_lm.py command line that trains a step in a second (on the fixture's shards), with overrides."""
    return flags({**lm_settings(f / "shards", f / "tok" / "tok.model", t / "out"), **kw})


def vlm_args(f, t, **kw):
    return flags({**vlm_settings(f, t / "out"), **kw})


def write(path, content):
    """Write text or bytes (anything else as JSON) to path, making its folder; returns the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(content, bytes):
        open(path, "wb").write(content)
    else:
        open(path, "w", encoding="utf-8").write(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def png_bomb(path):
    """A PNG whose header claims 20000 x 20000 pixels (PIL refuses more than 2 x 89M)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) +
                 chunk(b"IEND", b""))


def samples(f, n=8, **override):
    """The first n samples of the tiny world's pretrain.json, each changed by `override`."""
    rows = json.load(open(f / "shapes" / "pretrain.json"))[:n]
    return [{**r, **override} for r in rows]


def payload_ckpt(run, t, marker):
    """A copy of a run's folder whose state.pt holds a code-running pickle."""
    out = copy(run, t / "out")
    torch.save({"step": Payload(str(marker))}, str(out / "ckpt" / "state.pt"))
    return out


def truncated(path, keep=100):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:keep])


def two_tokenizers(f, t):
    """An LM directory with an extra tokenizer and no record of which one is the model's."""
    lm = copy(f / "lm", t / "lm")
    shutil.copy(f / "other" / "other.model", lm)
    config = json.load(open(lm / "config.json"))
    config.pop("tokenizer_file"), config.pop("tokenizer_sha256")
    write(lm / "config.json", config)
    return lm


def swapped_tokenizer(f, t, name="lm"):
    """A model directory whose recorded tokenizer file was overwritten by another corpus's."""
    d = copy(f / name, t / name)
    shutil.copy(f / "other" / "other.model", d / "tok.model")
    return d


def unrecorded(d):
    config = json.load(open(d / "config.json"))
    config.pop("tokenizer_file", None), config.pop("tokenizer_sha256", None)
    write(d / "config.json", config)
    return d


def bigger_vocab_tokenizer(f, t):
    """An LM directory (no record) holding a tokenizer with more tokens than the model's vocabulary."""
    d = unrecorded(copy(f / "lm", t / "lm"))
    os.remove(d / "tok.model")
    train_sentencepiece([str(f / "shapes" / "corpus")], str(d / "big.model"), vocab_size=600, hard_vocab_limit=False,
                        model_type="bpe")
    return d


def world_with(f, t, image=None, pretrain=None, remove=()):
    """A copy of the tiny world with one image replaced, pretrain.json replaced, or files removed."""
    w = copy(f / "shapes", t / "shapes")
    first = json.load(open(w / "pretrain.json"))[0]["image"]
    if image == "corrupt":
        write(w / "images" / first, b"not a png at all")
    elif image == "bomb":
        png_bomb(w / "images" / first)
    if pretrain is not None:
        write(w / "pretrain.json", pretrain)
    for name in remove:
        os.remove(w / name)
    return w


# -----------------------------------------------------------------------------
# The table: (script, arguments made from the fixtures f and a fresh folder t, what the message must say)

BAD = {
    # --- settings: refused by parse_config before any work, with the allowed range ---
    "lm-negative-batch": ("train_lm.py", lambda f, t: ["--batch_size=-2"], r"--batch_size=-2 .*batch_size >= 1"),
    "lm-zero-steps": ("train_lm.py", lambda f, t: ["--max_steps=0"], r"--max_steps=0 .*max_steps >= 1"),
    "lm-nan-lr": ("train_lm.py", lambda f, t: ["--lr=nan"], r"--lr must be a finite number"),
    "lm-inf-lr": ("train_lm.py", lambda f, t: ["--lr=inf"], r"--lr must be a finite number"),
    "lm-negative-lr": ("train_lm.py", lambda f, t: ["--lr=-0.1"], r"--lr=-0.1 .*lr > 0"),
    "lm-unknown-preset": ("train_lm.py", lambda f, t: ["--preset=huge"], r"--preset=huge: unknown LM preset"),
    "lm-unknown-device": ("train_lm.py", lambda f, t: ["--device=tpu"], r"--device=tpu: unknown device"),
    "lm-cuda-without-cuda": ("train_lm.py", lambda f, t: ["--device=cuda"], r"--device=cuda: this machine has no CUDA"),
    "lm-typo": ("train_lm.py", lambda f, t: ["--max_step=3"], r"unknown setting --max_step \(did you mean --max_steps"),
    "lm-bad-bool": ("train_lm.py", lambda f, t: ["--compile=maybe"], r"--compile expects true or false"),
    "lm-bad-int": ("train_lm.py", lambda f, t: ["--seq_len=long"], r"--seq_len expects a value of type int"),
    "lm-positional": ("train_lm.py", lambda f, t: ["corpus.txt"], r"cannot parse argument 'corpus.txt'"),
    "lm-beta1": ("train_lm.py", lambda f, t: ["--beta1=1.5"], r"--beta1=1.5 .*0 <= beta1 < 1"),
    "lm-micro-batch": ("train_lm.py", lambda f, t: ["--micro_batch=-1"], r"--micro_batch=-1"),
    "lm-seq-len": ("train_lm.py", lambda f, t: ["--seq_len=0"], r"--seq_len=0"),
    "lm-sp-model": ("train_lm.py", lambda f, t: ["--sp_model=word"], r"--sp_model=word .*unigram, bpe"),
    "lm-warmup": ("train_lm.py", lambda f, t: ["--warmup_steps=-5"], r"--warmup_steps=-5"),
    "lm-seed": ("train_lm.py", lambda f, t: ["--seed=-1"], r"--seed=-1"),
    "lm-eval-interval": ("train_lm.py", lambda f, t: ["--eval_interval=0"], r"--eval_interval=0"),
    "lm-out-dir": ("train_lm.py", lambda f, t: ["--out_dir="], r"--out_dir= "),
    "lm-vocab": ("train_lm.py", lambda f, t: ["--vocab_size=10"], r"--vocab_size=10 .*vocab_size >= 260"),
    # --- train_lm.py: corpus, tokenizer, shards ---
    "lm-corpus-missing": ("train_lm.py", lambda f, t: lm_args(f, t, corpus=t / "nothing"), r"--corpus .*nothing does not exist"),
    "lm-corpus-no-text-files": ("train_lm.py", lambda f, t: lm_args(f, t, corpus=os.path.dirname(write(t / "c" / "a.csv", "x"))),
                                r"folder .*c holds no .txt or .jsonl"),
    "lm-corpus-empty": ("train_lm.py", lambda f, t: lm_args(f, t, corpus=write(t / "c" / "a.txt", "\n\n \n")),
                        r"no training text found in .*a.txt"),
    "lm-tokenizer-missing": ("train_lm.py", lambda f, t: lm_args(f, t, tokenizer=t / "no.model"), r"--tokenizer .*no.model does not exist"),
    "lm-tokenizer-garbage": ("train_lm.py", lambda f, t: lm_args(f, t, tokenizer=write(t / "bad.model", b"\x00garbage")),
                             r"could not read .*bad.model as a SentencePiece model"),
    "lm-tokenizer-suffix": ("train_lm.py", lambda f, t: lm_args(f, t, tokenizer=write(t / "tok.json", "{}")),
                            r"don't know how to load .*tok.json"),
    "lm-shard-truncated": ("train_lm.py", lambda f, t: lm_args(f, t, corpus=shards_with(f, t, "truncated")),
                           r"train_000000.bin is truncated or corrupt"),
    "lm-shard-bad-header": ("train_lm.py", lambda f, t: lm_args(f, t, corpus=shards_with(f, t, "header")),
                            r"train_000000.bin is not a token shard"),
    "lm-shards-other-tokenizer": ("train_lm.py", lambda f, t: lm_args(f, t, corpus=f / "shards", tokenizer=f / "other" / "other.model"),
                                  r"shards in .*shards were made with another tokenizer"),
    "lm-ids-beyond-vocab": ("train_lm.py", lambda f, t: lm_args(f, t, corpus=shards_with(f, t, "ids")),
                            r"train_000000.bin holds token id 5000 .*beyond the model's vocabulary of 400"),
    "lm-stale-shards": ("train_lm.py", lambda f, t: stale_shards(f, t), r"shards in .*tokens hold .*corpus .*not .*other"),
    "lm-batch-multiple": ("train_lm.py", lambda f, t: lm_args(f, t, batch_size=8, micro_batch=3), r"--batch_size=8 must be a multiple"),
    "lm-seq-too-short-text": ("train_lm.py", lambda f, t: lm_args(f, t, corpus=f / "shards", seq_len=100000),
                              r"shards in .*shards hold fewer than seq_len\+1"),
    # --- train_lm.py: checkpoints and models to start from ---
    "lm-resume-nothing": ("train_lm.py", lambda f, t: lm_args(f, t, resume="true"), r"--resume: no checkpoint in .*ckpt"),
    "lm-resume-vlm-ckpt": ("train_lm.py", lambda f, t: lm_args(f, t, resume="true", out_dir=copy(f / "vlm_run", t / "o")),
                           r"ckpt is a checkpoint of train_vlm.py, not of train_lm.py"),
    "lm-resume-empty-state": ("train_lm.py", lambda f, t: lm_args(f, t, resume="true", out_dir=emptied(f / "lm_run", t, "state.pt")),
                              r"cannot read .*state.pt .*empty"),
    "lm-resume-truncated-weights": ("train_lm.py", lambda f, t: lm_args(f, t, resume="true", out_dir=cut(f / "lm_run", t, "model.safetensors")),
                                    r"cannot read .*model.safetensors .*truncated or corrupt"),
    "lm-resume-pickle-payload": ("train_lm.py", lambda f, t: lm_args(f, t, resume="true", out_dir=payload_ckpt(f / "lm_run", t, t / "ran")),
                                 r"state.pt was refused: .*Nothing in it was run"),
    "lm-resume-other-config": ("train_lm.py", lambda f, t: lm_args(f, t, resume="true", out_dir=copy(f / "lm_run", t / "o"), preset="small"),
                               r"checkpoint .*ckpt was saved from a different model config"),
    "lm-init-from-clip": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=f / "clip", tokenizer=f / "tok" / "tok.model"),
                          r"clip holds a CLIP vision tower"),
    "lm-init-from-vlm": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=f / "vlm", tokenizer=""), r"vlm is an Xmodel-VLM"),
    "lm-init-from-other-tokenizer": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=f / "lm", tokenizer=f / "other" / "other.model",
                                                                      corpus=f / "other" / "text.txt"),
                                     r"other.model is not the tokenizer .*lm was trained with"),
    "lm-init-from-swapped-tokenizer": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=swapped_tokenizer(f, t), tokenizer=""),
                                       r"tok.model is not the tokenizer this model was trained with"),
    "lm-init-from-two-tokenizers": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=two_tokenizers(f, t), tokenizer=""),
                                    r"lm holds 2 tokenizers \(other.model, tok.model\)"),
    "lm-init-from-vocab-differs": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=unrecorded(copy(f / "lm", t / "lm")),
                                                                    tokenizer=f / "other" / "other.model",
                                                                    corpus=f / "other" / "text.txt"),
                                   r"model's vocabulary \(400, .*lm/config.json\) and the tokenizer's \(\d+, .*other.model\) differ"),
    "lm-init-from-long-seq": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=f / "lm", tokenizer="", seq_len=300),
                              r"--seq_len=300 is longer than .*lm's context"),
    "lm-init-from-bad-json": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=config_is(f, t, "{not json"), tokenizer=f / "tok" / "tok.model"),
                              r"config.json is not valid JSON"),
    "lm-init-from-latin1": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=config_is(f, t, b'{"a": "caf\xe9"}'),
                                                             tokenizer=f / "tok" / "tok.model"),
                            r"config.json is not UTF-8 text \(byte 0xe9"),
    "lm-init-from-list": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=config_is(f, t, [1, 2]), tokenizer=f / "tok" / "tok.model"),
                          r"config.json: expected a JSON object"),
    "lm-init-from-no-keys": ("train_lm.py", lambda f, t: lm_args(f, t, init_from=config_is(f, t, {"model_type": "llama"}),
                                                              tokenizer=f / "tok" / "tok.model"),
                             r"config.json lacks vocab_size"),
    # --- data.py tokenize ---
    "data-shard-tokens-zero": ("data.py", lambda f, t: tokenize(f, t, "--shard_tokens", "0"), r"--shard_tokens: 0 is not allowed"),
    "data-shard-tokens-negative": ("data.py", lambda f, t: tokenize(f, t, "--shard_tokens", "-5"), r"--shard_tokens: -5 is not allowed"),
    "data-val-fraction": ("data.py", lambda f, t: tokenize(f, t, "--val_fraction", "1.5"), r"--val_fraction: 1.5 is not allowed"),
    "data-input-missing": ("data.py", lambda f, t: tokenize(f, t, input=t / "none.txt"), r"training input .*none.txt does not exist"),
    "data-tokenizer-missing": ("data.py", lambda f, t: tokenize(f, t, tokenizer=t / "none.model"), r"no tokenizer file at .*none.model"),
    "data-tiktoken-garbage": ("data.py", lambda f, t: tokenize(f, t, tokenizer=write(t / "t.tiktoken", "YQ== 0\nnot a line\n")),
                              r"t.tiktoken:2: expected `base64\(token bytes\) rank`"),
    "data-empty-text": ("data.py", lambda f, t: tokenize(f, t, input=write(t / "e.txt", "\n\n")), r"no training text found in .*e.txt"),
    "data-no-command": ("data.py", lambda f, t: [], r"required: command"),
    # --- tokenizer.py ---
    "tok-sp-vocab-small": ("tokenizer.py", lambda f, t: ["train", "--kind", "sp", "--input", str(f / "shapes" / "corpus"),
                                                         "--vocab_size", "100", "--out", str(t / "x.model")],
                           r"vocab_size=100 is too small"),
    "tok-bpe-vocab-small": ("tokenizer.py", lambda f, t: ["train", "--kind", "bpe", "--input", str(f / "shapes" / "corpus"),
                                                          "--vocab_size", "10", "--out", str(t / "x.tiktoken")],
                            r"vocab_size=10 is too small: BPE"),
    "tok-input-missing": ("tokenizer.py", lambda f, t: ["train", "--kind", "sp", "--input", str(t / "no.txt"),
                                                        "--vocab_size", "500", "--out", str(t / "x.model")],
                          r"training input .*no.txt does not exist"),
    "tok-out-unwritable": ("tokenizer.py", lambda f, t: ["train", "--kind", "bpe", "--input", str(f / "shapes" / "corpus"),
                                                         "--vocab_size", "300", "--out", write(t / "file", "") + "/x.tiktoken"],
                           r"file"),
    "tok-encode-missing": ("tokenizer.py", lambda f, t: ["encode", "--tokenizer", str(t / "no.model"), "hi"], r"no tokenizer file at .*no.model"),
    "tok-encode-binary-tiktoken": ("tokenizer.py", lambda f, t: ["encode", "--tokenizer", write(t / "b.tiktoken", b"\xff\xfe\x00"), "hi"],
                                   r"b.tiktoken is not a text file"),
    "tok-encode-bad-sidecar": ("tokenizer.py", lambda f, t: ["encode", "--tokenizer", bpe_with_sidecar(t, "{broken"), "hi"],
                               r"t.tiktoken.json is not valid JSON"),
    "tok-encode-sidecar-keys": ("tokenizer.py", lambda f, t: ["encode", "--tokenizer", bpe_with_sidecar(t, {"pattern": "gpt4"}), "hi"],
                                r"t.tiktoken.json lacks some of pat_str"),
    # --- train_clip.py ---
    "clip-data-missing": ("train_clip.py", lambda f, t: [f"--data={t / 'none'}"], r"--data .*none has no pretrain.json"),
    "clip-text-width": ("train_clip.py", lambda f, t: ["--text_width=100"], r"--text_width=100 .*text_width % 64 == 0"),
    "clip-preset": ("train_clip.py", lambda f, t: ["--preset=huge"], r"--preset=huge: unknown vision preset"),
    "clip-batch": ("train_clip.py", lambda f, t: ["--batch_size=1"], r"--batch_size=1 .*batch_size >= 2"),
    "clip-bad-json": ("train_clip.py", lambda f, t: clip_args(t, world_with(f, t, pretrain="[{")), r"pretrain.json is not valid JSON"),
    "clip-no-image": ("train_clip.py", lambda f, t: clip_args(t, world_with(f, t, pretrain=text_only(f))),
                      r"pretrain.json: sample 0 \(id train_000000\) has no 'image'"),
    "clip-bad-structure": ("train_clip.py", lambda f, t: clip_args(t, world_with(f, t, pretrain=[{"id": "a", "image": "x.png"}])),
                           r"pretrain.json: sample 0: expected an object with 'id' and a non-empty 'conversations'"),
    "clip-corrupt-image": ("train_clip.py", lambda f, t: clip_args(t, world_with(f, t, image="corrupt")),
                           r"cannot read image .*train_000000.png"),
    "clip-image-bomb": ("train_clip.py", lambda f, t: clip_args(t, world_with(f, t, image="bomb")),
                        r"image .*train_000000.png is refused: .*pixels"),
    "clip-no-test-scenes": ("train_clip.py", lambda f, t: clip_args(t, world_with(f, t, remove=["scenes_test.jsonl"])),
                            r"scenes_test.jsonl not found"),
    # the per-object term reads each training image's objects from the ground truth
    "clip-no-train-scenes": ("train_clip.py", lambda f, t: clip_args(t, world_with(f, t, remove=["scenes_train.jsonl"])),
                             r"scenes_train.jsonl not found.*--region_weight=0"),
    "clip-scenes-of-another-world": ("train_clip.py", lambda f, t: clip_args(t, write(
        world_with(f, t) / "scenes_train.jsonl", b"") and t / "shapes"), r"has no scene for image .*not the same shapes world"),
    # --- train_vlm.py: settings ---
    "vlm-stage": ("train_vlm.py", lambda f, t: ["--stage=3"], r"--stage=3 is not allowed: choose one of 1, 2, both"),
    "vlm-projector": ("train_vlm.py", lambda f, t: ["--projector=foo"], r"--projector=foo .*xdp, xdp-concat"),
    "vlm-image-check": ("train_vlm.py", lambda f, t: ["--image_check=-5"], r"--image_check=-5"),
    "vlm-warmup-ratio": ("train_vlm.py", lambda f, t: ["--warmup_ratio=2"], r"--warmup_ratio=2.0 .*0 <= warmup_ratio <= 1"),
    "vlm-preset": ("train_vlm.py", lambda f, t: ["--preset=paperz"], r"unknown --preset=paperz; choose one of paper"),
    "vlm-oracle-stage": ("train_vlm.py", lambda f, t: vlm_args(f, t, oracle="true", stage="1"), r"--oracle=true runs both stages"),
    # --- train_vlm.py: the LM, the tower, the tokenizer ---
    "vlm-lm-missing": ("train_vlm.py", lambda f, t: vlm_args(f, t, lm=t / "nolm"), r"nolm does not exist. .*python train_lm.py"),
    "vlm-vision-missing": ("train_vlm.py", lambda f, t: vlm_args(f, t, vision=t / "noclip"), r"noclip does not exist. .*python train_clip.py"),
    "vlm-lm-is-clip": ("train_vlm.py", lambda f, t: vlm_args(f, t, lm=clip_with_tokenizer(f, t)), r"clip holds a CLIP vision tower"),
    "vlm-vision-is-lm": ("train_vlm.py", lambda f, t: vlm_args(f, t, vision=f / "lm"), r"lm/config.json has model_type 'llama'"),
    "vlm-lm-is-vlm": ("train_vlm.py", lambda f, t: vlm_args(f, t, lm=f / "vlm"), r"vlm is an Xmodel-VLM"),
    "vlm-two-tokenizers": ("train_vlm.py", lambda f, t: vlm_args(f, t, lm=two_tokenizers(f, t)), r"lm holds 2 tokenizers"),
    "vlm-swapped-tokenizer": ("train_vlm.py", lambda f, t: vlm_args(f, t, lm=swapped_tokenizer(f, t)),
                              r"tok.model is not the tokenizer this model was trained with"),
    "vlm-bigger-tokenizer": ("train_vlm.py", lambda f, t: vlm_args(f, t, lm=bigger_vocab_tokenizer(f, t)),
                             r"big.model has \d+ tokens but the LM in .*lm only 400"),
    "vlm-tokens": ("train_vlm.py", lambda f, t: vlm_args(f, t, tokens=5), r"projector 'linear' on a 3x3 grid cannot give 5 tokens"),
    "vlm-max-len-small": ("train_vlm.py", lambda f, t: vlm_args(f, t, max_len=10), r"--max_len=10 leaves no room for text"),
    "vlm-max-len-context": ("train_vlm.py", lambda f, t: vlm_args(f, t, max_len=512), r"--max_len=512 is longer than the LM's context \(256"),
    "vlm-batch-multiple": ("train_vlm.py", lambda f, t: vlm_args(f, t, batch1=6), r"global batch 6 must be a multiple of micro_batch"),
    # --- train_vlm.py: LLaVA JSON and images ---
    "vlm-json-latin1": ("train_vlm.py", lambda f, t: vlm_args(f, t, pretrain_json=write(t / "p.json", '[{"id": "caf\xe9"}]'.encode("latin-1"))),
                        r"p.json is not UTF-8 text \(byte 0xe9"),
    "vlm-json-invalid": ("train_vlm.py", lambda f, t: vlm_args(f, t, pretrain_json=write(t / "p.json", "[{]")), r"p.json is not valid JSON"),
    "vlm-json-object": ("train_vlm.py", lambda f, t: vlm_args(f, t, pretrain_json=write(t / "p.json", {"a": 1})),
                        r"p.json: expected a JSON list \(a LLaVA JSON file: a list of samples\), found a dict"),
    "vlm-json-empty": ("train_vlm.py", lambda f, t: vlm_args(f, t, pretrain_json=write(t / "p.json", [])),
                       r"stage 1: none of the 0 samples in .*p.json can be used"),
    "vlm-stage1-no-images": ("train_vlm.py", lambda f, t: vlm_args(f, t, pretrain_json=write(t / "p.json", text_only(f))),
                             r"none of the 8 samples .*nothing to train on.*\(id train_000000\) has no image: stage 1"),
    "vlm-image-number": ("train_vlm.py", lambda f, t: vlm_args(f, t, pretrain_json=write(t / "p.json", samples(f, image=5))),
                         r"sample 0 \(id train_000000\): 'image' must be a file name .*found 5"),
    "vlm-image-null": ("train_vlm.py", lambda f, t: vlm_args(f, t, pretrain_json=write(t / "p.json", samples(f, image=None))),
                       r"'image' must be a file name .*found None"),
    "vlm-image-list": ("train_vlm.py", lambda f, t: vlm_args(f, t, pretrain_json=write(t / "p.json", samples(f, image=["a.png"]))),
                       r"'image' must be a file name .*found \['a.png'\]"),
    "vlm-image-missing": ("train_vlm.py", lambda f, t: vlm_args(f, t, pretrain_json=write(t / "p.json", samples(f, image="gone.png"))),
                          r"image 'gone.png' not found under .*images"),
    "vlm-roles": ("train_vlm.py", lambda f, t: vlm_args(f, t, pretrain_json=write(t / "p.json", samples(f, conversations=[
                      {"from": "gpt", "value": "<image>\nhi"}, {"from": "human", "value": "x"}]))),
                  r"sample 0 \(id train_000000\): expected turns alternating human, gpt"),
    "vlm-corrupt-images": ("train_vlm.py", lambda f, t: vlm_args(f, t, data=world_with(f, t, image="corrupt"),
                                                              pretrain_json=write(t / "p.json", samples(f, n=1) * 4)),
                           r"skipped 4 of 4 samples, e.g.\n  train_000000: cannot read image .*train_000000.png.*"
                           r"stage 1: more than 1% of the samples could not be used"),
    "vlm-image-bomb": ("train_vlm.py", lambda f, t: vlm_args(f, t, data=world_with(f, t, image="bomb"),
                                                          pretrain_json=write(t / "p.json", samples(f, n=1) * 4)),
                       r"stage 1: more than 1% of the samples could not be used"),
    # --- train_vlm.py: checkpoints and stages ---
    "vlm-resume-nothing": ("train_vlm.py", lambda f, t: vlm_args(f, t, resume="true"), r"--resume: no checkpoint in .*ckpt"),
    "vlm-resume-lm-ckpt": ("train_vlm.py", lambda f, t: vlm_args(f, t, resume="true", out_dir=copy(f / "lm_run", t / "o")),
                           r"ckpt is a checkpoint of train_lm.py, not of train_vlm.py"),
    "vlm-resume-pickle-payload": ("train_vlm.py", lambda f, t: vlm_args(f, t, resume="true", out_dir=payload_ckpt(f / "vlm_run", t, t / "ran")),
                                  r"state.pt was refused: .*Nothing in it was run"),
    "vlm-stage2-without-stage1": ("train_vlm.py", lambda f, t: vlm_args(f, t, stage="2"), r"stage 2 starts from stage 1's model in .*stage1"),
    # --- chat.py ---
    "chat-ckpt-missing": ("chat.py", lambda f, t: ["--ckpt", str(t / "none"), "hi"], r"--ckpt .*none is not a directory: train one"),
    "chat-lm-with-image": ("chat.py", lambda f, t: ["--ckpt", str(f / "lm"), "--image", image(f), "hi"],
                           r"lm is a language model without a vision tower; drop --image"),
    "chat-image-placeholder": ("chat.py", lambda f, t: ["--ckpt", str(f / "vlm"), "what is <image> here"],
                               r"the question contains <image>"),
    "chat-image-missing": ("chat.py", lambda f, t: ["--ckpt", str(f / "vlm"), "--image", str(t / "x.png"), "hi"], r"image .*x.png not found"),
    "chat-image-corrupt": ("chat.py", lambda f, t: ["--ckpt", str(f / "vlm"), "--image", write(t / "x.png", b"nope"), "hi"],
                           r"cannot read image .*x.png"),
    "chat-max-new-tokens": ("chat.py", lambda f, t: ["--ckpt", str(f / "vlm"), "--max_new_tokens", "0", "hi"],
                            r"--max_new_tokens: 0 is not allowed"),
    "chat-top-p": ("chat.py", lambda f, t: ["--ckpt", str(f / "vlm"), "--top_p", "2", "hi"], r"--top_p: 2 is not allowed"),
    "chat-device": ("chat.py", lambda f, t: ["--ckpt", str(f / "vlm"), "--device", "tpu", "hi"], r"--device=tpu: unknown device"),
    "chat-swapped-tokenizer": ("chat.py", lambda f, t: ["--ckpt", str(swapped_tokenizer(f, t, "vlm")), "hi"],
                               r"tok.model is not the tokenizer this model was trained with"),
    "chat-bigger-tokenizer": ("chat.py", lambda f, t: ["--ckpt", str(bigger_vocab_tokenizer(f, t)), "hi"],
                              r"big.model has \d+ tokens, more than the model's vocabulary"),
    "chat-clip": ("chat.py", lambda f, t: ["--ckpt", str(f / "clip"), "hi"], r"clip holds a CLIP vision tower"),
    "chat-truncated-weights": ("chat.py", lambda f, t: ["--ckpt", str(cut(f / "lm", t, "model.safetensors", into="")), "hi"],
                               r"cannot read .*model.safetensors"),
    "chat-no-weights": ("chat.py", lambda f, t: ["--ckpt", str(emptied(f / "lm", t, "model.safetensors", delete=True)), "hi"],
                        r"no weights in \S+: expected model.safetensors"),
    "chat-too-long": ("chat.py", lambda f, t: ["--ckpt", str(f / "lm"), "circle " * 300], r"the conversation is \d+ tokens, .*context is 256"),
    # --- eval_vlm.py ---
    "eval-batch-size": ("eval_vlm.py", lambda f, t: ["run", "shapes_gqa", "--ckpt", str(f / "vlm"), "--data", str(f / "shapes"),
                                                     "--out", str(t / "a.jsonl"), "--batch_size", "0"], r"--batch_size: 0 is not allowed"),
    "eval-lm": ("eval_vlm.py", lambda f, t: ["run", "shapes_gqa", "--ckpt", str(f / "lm"), "--data", str(f / "shapes"),
                                             "--out", str(t / "a.jsonl")], r"lm is a language model without a vision tower"),
    "eval-question-bad-json": ("eval_vlm.py", lambda f, t: eval_run(f, t, '{"question_id": 1, "text": "a"}\n{oops\n'),
                               r"llava_pope_test.jsonl, line 2: not valid JSON"),
    "eval-question-fields": ("eval_vlm.py", lambda f, t: eval_run(f, t, '{"id": 1, "prompt": "a"}\n'),
                             r"llava_pope_test.jsonl, line 1: expected question_id, text"),
    "eval-question-image": ("eval_vlm.py", lambda f, t: eval_run(f, t, '{"question_id": 1, "text": "a", "image": "gone.png"}\n'),
                            r"image .*gone.png not found"),
    "eval-data-missing": ("eval_vlm.py", lambda f, t: ["run", "pope", "--ckpt", str(f / "vlm"), "--data", str(t / "none"),
                                                       "--out", str(t / "a.jsonl")], r"none: expected llava_pope_test.jsonl"),
    "eval-score-no-answers": ("eval_vlm.py", lambda f, t: ["score", "shapes_gqa", "--answers", str(t / "a.jsonl"), "--data",
                                                           str(f / "shapes")], r"a.jsonl: answer file not found"),
    "eval-score-bad-line": ("eval_vlm.py", lambda f, t: ["score", "shapes_gqa", "--answers", write(t / "a.jsonl", "{x\n"), "--data",
                                                         str(f / "shapes")], r"a.jsonl, line 1: not valid JSON"),
    # --- ablate.py ---
    "ablate-tokens": ("ablate.py", lambda f, t: ["--tokens=abc"], r"--tokens takes comma-separated integers, got 'abc'"),
    "ablate-no-projector": ("ablate.py", lambda f, t: ["--projector=,", f"--out={t / 'o'}"], r"--projector needs at least one"),
    "ablate-projector": ("ablate.py", lambda f, t: ["--projector=foo", f"--lm={f / 'lm'}", f"--vision={f / 'clip'}",
                                                    f"--out={t / 'o'}"], r"unknown projector kind 'foo'"),
    "ablate-lm-missing": ("ablate.py", lambda f, t: [f"--lm={t / 'nolm'}", f"--vision={f / 'clip'}", f"--out={t / 'o'}"],
                          r"nolm/config.json not found"),
    "ablate-steps": ("ablate.py", lambda f, t: ["--steps1", "0"], r"--steps1: 0 is not allowed"),
    # --- shapes.py, bench.py ---
    "shapes-size": ("shapes.py", lambda f, t: ["--size", "8", "--out", str(t / "w")], r"--size: 8 is not allowed: .*16 <= x <= 336"),
    "shapes-n-train": ("shapes.py", lambda f, t: ["--n_train", "0", "--out", str(t / "w")], r"--n_train: 0 is not allowed"),
    "shapes-corpus-mb": ("shapes.py", lambda f, t: ["--corpus_mb", "-1", "--out", str(t / "w")], r"--corpus_mb: -1 is not allowed"),
    "bench-gpu-gib": ("bench.py", lambda f, t: ["memory", "--gpu_gib=-1"], r"--gpu_gib=-1.0 .*gpu_gib > 0"),
    "bench-preset": ("bench.py", lambda f, t: ["memory", "--preset=huge"], r"--preset=huge: unknown LM preset"),
    "bench-world": ("bench.py", lambda f, t: ["memory", "--world=0"], r"--world=0"),
    "bench-mode": ("bench.py", lambda f, t: ["bogus"], r"usage: python bench.py \{lm\|"),
    # --- the old command lines, which run the new scripts ---
    "old-vision-py": ("vision.py", lambda f, t: ["--batch_size=1"], r"--batch_size=1 .*batch_size >= 2"),
    "old-data-py-shapes": ("data.py", lambda f, t: ["shapes", "--size", "8"], r"--size: 8 is not allowed"),
    "old-eval-vlm-ablate": ("eval_vlm.py", lambda f, t: ["ablate", "--tokens=abc"], r"--tokens takes comma-separated integers"),
}


def shards_with(f, t, damage):
    """A copy of the tokenized shards: truncated, with a bad header, or with ids past the vocabulary."""
    d = copy(f / "shards", t / "shards")
    shard = str(d / "train_000000.bin")
    if damage == "truncated":
        truncated(shard, keep=1000)
    elif damage == "header":
        write(shard, b"NOTASHARD" + bytes(100))
    elif damage == "ids":
        os.remove(d / "summary.json")
        data.write_shard(shard, np.tile([1] + [5000] * 30, 40))  # documents (<s> ...) of ids past the vocabulary
    return d


def stale_shards(f, t):
    """An out_dir whose tokens/ were made from the world's corpus, given other text as --corpus."""
    copy(f / "shards", t / "out" / "tokens")
    return lm_args(f, t, corpus=f / "other")


def emptied(run, t, name, delete=False):
    out = copy(run, t / "o")
    path = next(p for p in (out / "ckpt" / name, out / name) if p.exists())
    os.remove(path) if delete else write(path, b"")
    return out


def cut(run, t, name, into="ckpt"):
    out = copy(run, t / "o")
    truncated(out / into / name)
    return out


def config_is(f, t, content):
    d = copy(f / "lm", t / "lm")
    write(d / "config.json", content)
    return d


def tokenize(f, t, *extra, input=None, tokenizer=None):
    return ["tokenize", "--input", str(input or f / "shapes" / "corpus" / "val.txt"),
            "--tokenizer", str(tokenizer or f / "tok" / "tok.model"), "--out", str(t / "tokens"), "--workers", "1", *extra]


def bpe_with_sidecar(t, sidecar):
    path = write(t / "t.tiktoken", "YQ== 0\nYg== 1\n")
    write(t / "t.tiktoken.json", sidecar)
    return path


def clip_args(t, world):
    return [f"--data={world}", f"--out_dir={t / 'out'}", "--max_steps=1", "--batch_size=4", "--text_width=64",
            "--probe=false", "--eval_groups=1", "--eval_group=4"]


def text_only(f):
    """The first 8 samples without their images (and placeholders)."""
    rows = samples(f)
    for r in rows:
        r.pop("image")
        r["conversations"][0]["value"] = r["conversations"][0]["value"].replace("<image>", "").strip() or "Describe."
    return rows


def clip_with_tokenizer(f, t):
    d = copy(f / "clip", t / "clip")
    shutil.copy(f / "tok" / "tok.model", d)
    return d


def image(f):
    return str(next((f / "shapes" / "eval" / "images").glob("*.png")))


def eval_run(f, t, questions):
    write(t / "q" / "llava_pope_test.jsonl", questions)
    return ["run", "pope", "--ckpt", str(f / "vlm"), "--data", str(t / "q"), "--out", str(t / "a.jsonl")]


# -----------------------------------------------------------------------------
# Running a script as `python SCRIPT ARGS`, in this process

def run_script(script, argv, capsys, monkeypatch):
    """(exit status, everything it said: stdout, stderr and the exit message)."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, argv)])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on every machine
    code = 0
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as e:  # how a script ends with an error; any other exception fails the test with its traceback
        code = e.code
    out = capsys.readouterr()
    said = out.out + out.err + (code if isinstance(code, str) else "")
    return (1 if isinstance(code, str) else code or 0), said


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_refused_clearly(name, f, tmp_path, capsys, monkeypatch):
    script, argv, expect = BAD[name]
    status, said = run_script(script, argv(f, tmp_path), capsys, monkeypatch)
    assert status not in (0, None), f"{name}: exit status {status}\n{said[-2000:]}"
    assert "Traceback" not in said, said[-3000:]
    assert "error: " in said or "usage: " in said, said[-2000:]
    assert re.search(expect, said, re.S), f"{name}: {expect!r} not in\n{said[-2000:]}"


def test_pickle_payloads_never_run(f, tmp_path, capsys, monkeypatch):
    """The two resume paths refuse the payload, and the folder it would make does not exist."""
    for script, run in (("train_lm.py", f / "lm_run"), ("train_vlm.py", f / "vlm_run")):
        t = tmp_path / script
        marker = t / "ran"
        out = payload_ckpt(run, t, marker)
        argv = lm_args(f, t, resume="true", out_dir=out) if script == "train_lm.py" else vlm_args(
            f, t, resume="true", out_dir=out)
        status, said = run_script(script, argv, capsys, monkeypatch)
        assert status == 1 and "Nothing in it was run" in said and not marker.exists()


# -----------------------------------------------------------------------------
# Accepted, but never silently: a counted skip, or a note saying what happened

OK = {
    # a resumed run with nothing left to do says so and exports the model it has
    "lm-resume-past-max-steps": ("train_lm.py", lambda f, t: lm_args(f, t, resume="true", out_dir=copy(f / "lm_run", t / "o"),
                                                                  max_steps=1),
                                 r"checkpoint is at step 2 and --max_steps=1: nothing is left to train; exporting",
                                 lambda t: (t / "o" / "model" / "model.safetensors").exists()),
    # one sample of 151 has a missing image: skipped, counted before and after training
    "vlm-one-bad-sample": ("train_vlm.py", lambda f, t: vlm_args(f, t, stage="1", pretrain_json=write(
                               t / "p.json", samples(f, n=1) * 150 + samples(f, n=1, image="gone.png", id="bad"))),
                           r"1 of the 151 samples will be skipped, e.g.\n  .*\(id bad\): image 'gone.png' not found",
                           lambda t: (t / "out" / "stage1" / "model.safetensors").exists()),
    # malformed .jsonl lines are skipped and counted with the first one's place
    "data-bad-jsonl-lines": ("data.py", lambda f, t: tokenize(f, t, input=write(t / "c.jsonl", '{"text": "a red circle"}\n'
                                                                                               'oops\n{"text": 5}\n')),
                             r"skipped 2 malformed .jsonl lines \(first at .*c.jsonl:2\)",
                             lambda t: (t / "tokens" / "summary.json").exists()),
    # invalid UTF-8 bytes are replaced with U+FFFD and counted (README: "When something is wrong")
    "data-invalid-utf8": ("data.py", lambda f, t: tokenize(f, t, input=write(t / "c.txt", b"a red \xff circle\n\nthe \xfe star\n")),
                          r"replaced 2 invalid UTF-8 byte sequences",
                          lambda t: (t / "tokens" / "summary.json").exists()),
}


@pytest.mark.parametrize("name", list(OK))
def test_accepted_input_is_counted_or_explained(name, f, tmp_path, capsys, monkeypatch):
    script, argv, expect, done = OK[name]
    status, said = run_script(script, argv(f, tmp_path), capsys, monkeypatch)
    assert status == 0, f"{name}: exit status {status}\n{said[-2000:]}"
    assert re.search(expect, said), f"{name}: {expect!r} not in\n{said[-2000:]}"
    assert done(tmp_path), name
