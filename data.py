"""
Data for Xmodel-VLM: files on disk -> training batches. Two parts, each in its own section:
  1. Text shards: raw text -> token shards, and the loader train_lm.py draws windows from.
  2. LLaVA datasets: LLaVA JSON + image folder -> input ids, labels, pixels; the collator;
     the two chat templates (plain, vicuna_v1) and `build_sample`, the one function that
     builds a sample's ids and labels for training, chat and evaluation alike.
The shapes world, which writes data in these formats, is shapes.py.

    python data.py tokenize --input my_text/ --tokenizer tok.model --out tokens/
"""

import argparse
import glob
import itertools
import json
import multiprocessing
import os
import re
import struct
import sys
import time
import zlib
from collections import Counter
from contextlib import nullcontext

import numpy as np
import torch

from common import InputNotFound, UserError, checked, read_json, run_main, run_moved
from model import IGNORE_INDEX
from tokenizer import find_input_files, jsonl_text, load_tokenizer, tokenizer_digest

# -----------------------------------------------------------------------------
# 1. Text shards: raw text -> token shards, and the loader that trains from them
#
# A shard is a flat array of token ids behind a 32-byte header:
#   bytes 0-7   magic b"XMTOKENS"
#   bytes 8-11  format version (uint32, little endian) = 1
#   bytes 12-15 bytes per token (uint32): 2 (uint16, vocab <= 65536) or 4 (uint32)
#   bytes 16-23 number of tokens (uint64)
#   bytes 24-31 zero
# Documents are stored back to back, each as <s> tokens </s>, so the model learns where one
# ends and the next begins. Files are named {train,val}_NNNNNN.bin.

SHARD_MAGIC = b"XMTOKENS"
SHARD_VERSION = 1
HEADER_BYTES = 32


def write_shard(path, tokens):
    """Write a 1-D integer array as a shard, atomically."""
    tokens = np.asarray(tokens)
    itemsize = 2 if tokens.size == 0 or tokens.max() < 2 ** 16 else 4
    header = struct.pack("<8sIIQ8x", SHARD_MAGIC, SHARD_VERSION, itemsize, tokens.size)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(tokens.astype(np.uint16 if itemsize == 2 else np.uint32).tobytes())
    os.replace(tmp, path)


def read_shard(path):
    """Memory-map a shard's tokens (no copy). Checks the header against the file size."""
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[:8] != SHARD_MAGIC:
        raise UserError(f"{path} is not a token shard (bad header); "
                        f"make shards with `python data.py tokenize`")
    _, version, itemsize, count = struct.unpack("<8sIIQ8x", header)
    if version != SHARD_VERSION or itemsize not in (2, 4):
        raise UserError(f"{path}: unsupported shard version {version} / token size {itemsize}")
    expected = HEADER_BYTES + count * itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        raise UserError(f"{path} is truncated or corrupt: header says {count} tokens "
                        f"({expected} bytes), the file has {actual} bytes; re-run the tokenizer")
    dtype = np.uint16 if itemsize == 2 else np.uint32
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def read_documents(path, stats):
    """Yield the documents of one file: in a .txt file, blank lines separate documents; in a
    .jsonl file each line's "text" field is one. Invalid UTF-8 bytes are replaced (and counted);
    malformed JSONL lines are skipped (and counted with the first one's place)."""
    raw = open(path, "rb").read()
    text = raw.decode("utf-8", errors="replace")
    stats["replaced"] += text.count("\ufffd") - raw.count("\ufffd".encode())  # not ones already there
    if str(path).endswith(".jsonl"):
        docs = (jsonl_text(line, stats, f"{path}:{n}") for n, line in enumerate(text.splitlines(), 1))
    else:
        docs = re.split(r"\n\s*\n", text)
    for doc in docs:
        if doc and doc.strip():
            yield doc.strip()


def is_val_document(doc, val_fraction):
    """Split by a hash of the text: stable across runs, worker counts and file order."""
    return zlib.crc32(doc.encode("utf-8", errors="replace")) % 100_000 < val_fraction * 100_000


def _tokenize_file(args):
    """Worker: one file -> (train tokens, val tokens, stats)."""
    path, tokenizer_path, val_fraction = args
    tok = _worker_tokenizer(tokenizer_path)
    stats = Counter(bytes=os.path.getsize(path))
    out = {"train": [], "val": []}
    for doc in read_documents(path, stats):
        out["val" if is_val_document(doc, val_fraction) else "train"].append(
            tok.encode(doc, bos=True, eos=True))
        stats["docs"] += 1
    flat = {k: np.fromiter(itertools.chain.from_iterable(v), dtype=np.int64) for k, v in out.items()}
    return flat["train"], flat["val"], stats


_TOKENIZERS = {}


def _worker_tokenizer(path):
    """Each worker process loads the tokenizer once."""
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(path)
    return _TOKENIZERS[path]


def tokenize_corpus(inputs, tokenizer_path, out_dir, val_fraction=0.005, shard_tokens=100_000_000,
                    workers=None):
    """Tokenize text files into train/val shards in out_dir; returns a summary dict.
    Files are tokenized in parallel, results are written in file order (deterministic)."""
    if shard_tokens < 1 or not 0 <= val_fraction < 1:
        raise UserError(f"shard_tokens must be at least 1 (got {shard_tokens}) and val_fraction in [0, 1) "
                        f"(got {val_fraction})")
    files = find_input_files(inputs)
    vocab_size = load_tokenizer(tokenizer_path).vocab_size  # (and a bad tokenizer file is named now)
    os.makedirs(out_dir, exist_ok=True)
    total_bytes = sum(os.path.getsize(f) for f in files)
    totals = Counter()
    buffers = {"train": [], "val": []}
    counts = {"train": 0, "val": 0}
    shard_index = {"train": 0, "val": 0}

    def flush(split, final=False):
        tokens = np.concatenate(buffers[split]) if buffers[split] else np.zeros(0, np.int64)
        while len(tokens) >= shard_tokens or (final and len(tokens)):
            write_shard(os.path.join(out_dir, f"{split}_{shard_index[split]:06d}.bin"), tokens[:shard_tokens])
            shard_index[split] += 1
            tokens = tokens[shard_tokens:]
        buffers[split] = [tokens]

    t0 = time.time()
    workers = workers or min(len(files), os.cpu_count() or 1)
    jobs = [(str(f), str(tokenizer_path), val_fraction) for f in files]
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else nullcontext() as pool:
        results = pool.imap(_tokenize_file, jobs) if pool else map(_tokenize_file, jobs)
        for train, val, stats in results:
            for split, toks in (("train", train), ("val", val)):
                buffers[split].append(toks)
                counts[split] += len(toks)
                flush(split)
            totals.update({k: v for k, v in stats.items() if k != "first_bad_jsonl"})
            if "first_bad_jsonl" in stats:
                totals.setdefault("first_bad_jsonl", stats["first_bad_jsonl"])
            dt = max(time.time() - t0, 1e-9)
            done = totals["bytes"] / max(total_bytes, 1)
            if not sys.stdout.isatty() and done < 1:  # a log file gets the last line only
                continue
            print(f"\rtokenized {totals['bytes'] / 1e6:.1f}/{total_bytes / 1e6:.1f} MB | "
                  f"{(counts['train'] + counts['val']) / dt / 1e3:.0f}k tok/s | "
                  f"ETA {dt / max(done, 1e-9) - dt:.0f}s", end="", flush=True)
    print()
    for split in ("train", "val"):
        flush(split, final=True)
    if counts["train"] == 0:
        raise UserError(f"no training text found in {', '.join(map(str, inputs))}: "
                        f"the files are empty (or every document went to val)")
    if totals["replaced"]:
        print(f"note: replaced {totals['replaced']} invalid UTF-8 byte sequences with U+FFFD")
    if totals["bad_jsonl"]:
        print(f"note: skipped {totals['bad_jsonl']} malformed .jsonl lines (first at {totals['first_bad_jsonl']})")
    summary = {"files": len(files), "documents": totals["docs"], "train_tokens": counts["train"],
               "val_tokens": counts["val"], "replaced_utf8": totals["replaced"],
               "bad_jsonl_lines": totals["bad_jsonl"], "tokenizer": str(tokenizer_path), "vocab_size": vocab_size,
               "tokenizer_sha256": tokenizer_digest(tokenizer_path), "inputs": normalized(inputs)}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def check_shards_match(shard_dir, tokenizer_path, inputs=None):
    """Refuse shards that summary.json says were made with another tokenizer (their ids would mean
    other words) or, when `inputs` is given, from other text files than these."""
    path = os.path.join(shard_dir, "summary.json")
    summary = read_json(path) if os.path.isfile(path) else {}
    if summary.get("tokenizer_sha256", tokenizer_digest(tokenizer_path)) != tokenizer_digest(tokenizer_path):
        raise UserError(f"the shards in {shard_dir} were made with another tokenizer ({summary.get('tokenizer')}, "
                        f"says {path}) than {tokenizer_path}; tokenize the text again with this one (delete "
                        f"{shard_dir}, or use a new --out_dir)")
    if inputs is not None and summary.get("inputs", normalized(inputs)) != normalized(inputs):
        raise UserError(f"the shards in {shard_dir} hold {', '.join(summary['inputs'])} (says {path}), not "
                        f"{', '.join(normalized(inputs))}; delete {shard_dir} to tokenize the new text, or use a new "
                        f"--out_dir")


def normalized(paths):
    return [os.path.normpath(str(p)) for p in paths]


class TokenLoader:
    """Draws (x, y) windows of seq_len+1 tokens from memory-mapped shards.

    Every sequence of the global batch at a given step has its own random generator seeded by
    (seed, step, sequence index), so the data depends only on the step: a resumed run, or a run
    with a different number of processes, sees exactly the same global batch. A process
    (rank) reads only its own sequences."""

    def __init__(self, shard_dir, split, seq_len, seed=0, doc_start=None, vocab_size=None):
        paths = sorted(glob.glob(os.path.join(shard_dir, f"{split}_*.bin")))
        if not paths:
            raise InputNotFound(f"no {split}_*.bin shards in {shard_dir}; make them with "
                                f"`python data.py tokenize --input TEXT --tokenizer TOK --out {shard_dir}`")
        self.paths, self.shards = paths, [read_shard(p) for p in paths]
        self.seq_len, self.seed, self.split, self.vocab_size = seq_len, seed, split, vocab_size
        sizes = np.array([len(s) - seq_len - 1 for s in self.shards])
        if (sizes < 0).all():
            raise UserError(f"the {split} shards in {shard_dir} hold fewer than seq_len+1 = "
                            f"{seq_len + 1} tokens; use a shorter --seq_len or more text")
        # doc_start (the BOS id): windows begin where a document begins, so a question in a
        # window always has the text it asks about before it (a random cut often drops it). The
        # price: a document's tokens past its first window are never read; `coverage` says how
        # many tokens some window reaches (1.0 without doc_start).
        self.starts, self.coverage = None, 1.0
        if doc_start is not None:
            self.starts = [np.flatnonzero(np.asarray(s) == doc_start) for s in self.shards]
            self.starts = [st[st <= len(s) - seq_len - 1] for st, s in zip(self.starts, self.shards)]
            reached = sum(np.minimum(np.diff(st, append=len(s)), seq_len + 1).sum()
                          for st, s in zip(self.starts, self.shards))
            self.coverage = reached / sum(len(s) for s in self.shards)
            sizes = np.array([len(st) for st in self.starts])
            if not sizes.any():
                raise UserError(f"no document in the {split} shards in {shard_dir} starts {seq_len + 1} "
                                f"tokens before the end; use a shorter --seq_len or more text")
        self.weights = np.clip(sizes, 0, None) / np.clip(sizes, 0, None).sum()

    def sequence(self, step, i):
        rng = np.random.default_rng([self.seed, step, i])
        k = rng.choice(len(self.shards), p=self.weights)
        shard = self.shards[k]
        if self.starts is None:
            start = int(rng.integers(0, len(shard) - self.seq_len - 1 + 1))
        else:
            start = int(self.starts[k][rng.integers(0, len(self.starts[k]))])
        window = np.asarray(shard[start:start + self.seq_len + 1], dtype=np.int64)
        if self.vocab_size is not None and window.max() >= self.vocab_size:
            raise UserError(f"{self.paths[k]} holds token id {window.max()} (near token {start}), beyond the model's "
                            f"vocabulary of {self.vocab_size}: the shards were made with another tokenizer; "
                            f"tokenize the text again with the model's")
        return window

    def batch(self, step, indices):
        """The sequences with the given indices of global batch `step`: x, y (len, seq_len)."""
        w = torch.from_numpy(np.stack([self.sequence(step, i) for i in indices]))
        return w[:, :-1], w[:, 1:]


# -----------------------------------------------------------------------------
# 2. LLaVA datasets: conversations -> input ids and labels, and padded batches
#
# A LLaVA sample is {"id", "image" (optional, relative to an image folder), "conversations":
# [{"from": "human", "value": "<image>\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}.
# `build_sample` is the one function that turns it into token ids and labels, for both
# templates (LLaVA's conv_llava_plain and conv_vicuna_v1):
#   plain      <s><image>{caption}\n                       (stage 1; the instruction is dropped)
#   vicuna_v1  <s>{system} USER: <image>\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>
# {system} is Vicuna's system prompt by default; system="" leaves it out (with the space after
# it): the tiny scale's stage 2 does, since 30 tokens of every sample slow its learning.
# Only the caption and newline (plain) or the answers and their </s> (vicuna_v1) have labels;
# everything else is IGNORE_INDEX. With questions=True (train_vlm.py --loss_on_questions, not
# LLaVA's) the user's turns that an answer follows have labels too: "USER: <image>\n{q1} ASSISTANT:".
# "<image>" becomes one IMAGE_TOKEN_INDEX placeholder id that the model replaces by the
# projected visual tokens.
#
# Each piece of the template is tokenized on its own and the pieces are concatenated, so the
# labels line up with the answers by construction (LLaVA tokenizes the whole text and then
# re-tokenizes prefixes to find the answers, which silently breaks when the two disagree).
# What can still go wrong is that the tokenizer cannot spell an answer (no byte fallback: an
# <unk>), so each answer is decoded back and compared; a mismatch fails with the sample's id.

IMAGE = "<image>"
IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id for <image> in input_ids; never a real token
CHAT_TEMPLATES = ("plain", "vicuna_v1")
# the Vicuna v1 template's system prompt (LLaVA's conv_vicuna_v1), used by stage 2 and the LM corpus
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
                 "gives helpful, detailed, and polite answers to the user's questions.")


class SampleError(UserError):
    """A sample that cannot be turned into training data; the dataset skips and counts it."""


def template_pieces(turns, template, questions=False, system=VICUNA_SYSTEM):
    """(text, supervised, then_eos) pieces of one conversation. If the conversation ends with a
    human turn, the pieces end with the prompt for the answer (for generation). questions: the
    user's turns are supervised too (vicuna_v1), except a last one that no answer follows.
    system: vicuna_v1's system prompt ("" for none)."""
    if template == "plain":
        # LLaVA's plain template keeps only the image and the caption
        pieces = [(IMAGE, False, False)] if IMAGE in turns[0]["value"] else []
        return pieces + ([(turns[1]["value"] + "\n", True, False)] if len(turns) > 1 else [])
    if template != "vicuna_v1":
        raise UserError(f"unknown template {template!r}; expected one of {CHAT_TEMPLATES}")
    pieces = [(system + " ", False, False)] if system else []
    for i in range(0, len(turns), 2):
        question = turns[i]["value"]
        if i == 0 and IMAGE in question:  # LLaVA puts the image first: "<image>\n{question}"
            question = IMAGE + "\n" + question.replace(IMAGE, "").strip()
        pieces.append((f"USER: {question} ASSISTANT:", questions and i + 1 < len(turns), False))
        if i + 1 < len(turns):
            pieces.append((" " + turns[i + 1]["value"], True, True))
    return pieces


def build_sample(turns, tok, template, sample_id="?", questions=False, system=VICUNA_SYSTEM):
    """The one function that builds (input_ids, labels) lists for both templates.
    input_ids holds IMAGE_TOKEN_INDEX where the image goes; labels are IGNORE_INDEX except on
    what the model must learn to say. Raises SampleError naming the sample if it cannot."""
    ids, labels = [tok.bos_id], [IGNORE_INDEX]
    for text, supervised, then_eos in template_pieces(turns, template, questions, system):
        for k, chunk in enumerate(text.split(IMAGE)):
            if k > 0:
                ids.append(IMAGE_TOKEN_INDEX)
                labels.append(IGNORE_INDEX)
            if not chunk:
                continue
            chunk_ids = tok.encode(chunk)
            if supervised and " ".join(tok.decode(chunk_ids).split()) != " ".join(chunk.split()):
                raise SampleError(f"sample {sample_id}: the tokenizer cannot reproduce the "
                                  f"{'answer' if then_eos or template == 'plain' else 'question'} {chunk!r} "
                                  f"(it decodes to {tok.decode(chunk_ids)!r}); its labels would be wrong")
            ids += chunk_ids
            labels += chunk_ids if supervised else [IGNORE_INDEX] * len(chunk_ids)
        if then_eos:
            ids.append(tok.eos_id)
            labels.append(tok.eos_id)
    return ids, labels


def check_turns(sample, where):
    """The structure LLaVA JSON must have; raises SampleError saying what is wrong."""
    turns = sample.get("conversations") if isinstance(sample, dict) else None
    if not isinstance(turns, list) or not turns or "id" not in sample:
        raise SampleError(f"{where}: expected an object with 'id' and a non-empty 'conversations' list")
    roles = [t.get("from") if isinstance(t, dict) else None for t in turns]
    if roles != ["human", "gpt"] * (len(turns) // 2) or len(turns) % 2:
        raise SampleError(f"{where}: expected turns alternating human, gpt, ...; found roles {roles}")
    if any(not isinstance(t.get("value"), str) or not t["value"].strip() for t in turns):
        raise SampleError(f"{where}: every turn needs a non-empty string 'value'")
    if "image" in sample and (not isinstance(sample["image"], str) or not sample["image"].strip()):
        raise SampleError(f"{where}: 'image' must be a file name (relative to the image folder), found "
                          f"{sample['image']!r}; leave the key out for a text-only sample")
    n_image = sum(t["value"].count(IMAGE) for t in turns)
    want = 1 if "image" in sample else 0
    if n_image != want or (want and IMAGE not in turns[0]["value"]):
        raise SampleError(f"{where}: expected {want} {IMAGE} placeholder (in the first turn) since the sample "
                          f"has {'an' if want else 'no'} 'image' key; found {n_image}")
    return turns


def load_llava_json(path):
    """The list of samples of a LLaVA JSON file, with a clear error if it is not one."""
    return read_json(path, list, "a LLaVA JSON file: a list of samples")


def check_llava_json(path, image_folder=None):
    """Check every sample of a LLaVA JSON file (structure, placeholder, image present);
    raises naming the first bad sample, returns the number of samples."""
    samples = load_llava_json(path)
    for i, d in enumerate(samples):
        where = f"{path}: sample {i} (id {d.get('id') if isinstance(d, dict) else '?'})"
        check_turns(d, where)
        if "image" in d and image_folder and not os.path.isfile(os.path.join(image_folder, d["image"])):
            raise SampleError(f"{where}: image {d['image']!r} not found under {image_folder}; "
                              f"pass the folder the paths are relative to")
    return len(samples)


class LLaVADataset(torch.utils.data.Dataset):
    """LLaVA JSON + image folder -> {"id", "input_ids", "labels", "pixels"} per sample.
    With `features` set ({image path as the JSON gives it: the frozen tower's output for it, or why
    the image cannot be read}; train_vlm.cache_features) a sample's image comes as "features"
    instead, and no image file is read.

    A sample that cannot be used (bad structure, missing or corrupt image, labels that cannot
    be built, too long) comes back as {"id", "skip": reason}; the collator drops it and the
    trainer counts it. `n_image_tokens` is how many positions the image expands to: a sample
    longer than max_len is cut at the end (as LLaVA's model_max_length does; "cut" says so and
    the trainer counts it), never inside the image, and dropped if nothing supervised would
    remain. The plain template (stage 1) skips text-only samples: they never reach the projector."""

    def __init__(self, json_path, image_folder, tok, template, image_processor, n_image_tokens, max_len,
                 questions=False, system=VICUNA_SYSTEM):
        self.samples = load_llava_json(json_path)
        self.path, self.image_folder, self.tok, self.template = json_path, image_folder, tok, template
        self.questions, self.system = questions, system  # build_sample's: labels on the user's turns too, system prompt
        self.image_processor, self.n_image_tokens, self.max_len = image_processor, n_image_tokens, max_len
        self.features = None

    def __len__(self):
        return len(self.samples)

    def sample_id(self, i):
        sample = self.samples[i]
        return sample.get("id", f"#{i}") if isinstance(sample, dict) else f"#{i}"

    def check(self, i):
        """The checks that need neither the tokenizer nor the pixels: the sample's turns, or SampleError."""
        sample, where = self.samples[i], f"{self.path}: sample {i} (id {self.sample_id(i)})"
        turns = check_turns(sample, where)
        if self.template == "plain" and "image" not in sample:
            raise SampleError(f"{where} has no image: stage 1 (the plain template) trains only the "
                              f"projector, which a text-only sample never reaches")
        if "image" in sample and not os.path.isfile(os.path.join(self.image_folder, sample["image"])):
            raise SampleError(f"{where}: image {sample['image']!r} not found under {self.image_folder}")
        return turns

    def unusable(self):
        """(id, reason) of every sample that check() refuses: a quick pass before training."""
        bad = []
        for i in range(len(self)):
            try:
                self.check(i)
            except SampleError as e:
                bad.append((self.sample_id(i), str(e)))
        return bad

    def __getitem__(self, i):
        sample, sid = self.samples[i], self.sample_id(i)
        try:
            ids, labels = build_sample(self.check(i), self.tok, self.template, sid, self.questions, self.system)
            n = len(ids)
            ids, labels = self.truncate(ids, labels, sid)
            pixels = features = None
            if "image" in sample and self.features is not None:
                features = self.features[sample["image"]]
                if isinstance(features, str):  # the reason it could not be read
                    raise UserError(features)
            elif "image" in sample:
                pixels = self.image_processor(os.path.join(self.image_folder, sample["image"]))
        except UserError as e:  # SampleError, and an image that cannot be read
            return {"id": sid, "skip": str(e)}
        return {"id": sid, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixels": pixels,
                "features": features,
                "cut": len(ids) < n}

    def truncate(self, ids, labels, sid):
        extra = self.n_image_tokens - 1 if IMAGE_TOKEN_INDEX in ids else 0  # the placeholder expands
        if len(ids) + extra <= self.max_len:
            return ids, labels
        keep = self.max_len - extra
        if IMAGE_TOKEN_INDEX in ids and ids.index(IMAGE_TOKEN_INDEX) >= keep:
            raise SampleError(f"sample {sid}: {len(ids) + extra} tokens > max_len {self.max_len}, and cutting "
                              f"would split the image tokens")
        if all(l == IGNORE_INDEX for l in labels[:keep]):
            raise SampleError(f"sample {sid}: {len(ids) + extra} tokens > max_len {self.max_len}; cut to "
                              f"{self.max_len} it has no answer tokens left")
        return ids[:keep], labels[:keep]


def collate(samples, pad_id):
    """Right-pad a list of dataset items into a batch. Skipped items are dropped and listed
    under "skipped" as (id, reason); "cut" lists the samples cut at max_len. pixels (or features) holds the
    images of the samples that have one, in order; has_image says which those are."""
    ok = [s for s in samples if "skip" not in s]
    T = max((len(s["input_ids"]) for s in ok), default=0)
    input_ids = torch.full((len(ok), T), pad_id, dtype=torch.long)
    labels = torch.full((len(ok), T), IGNORE_INDEX, dtype=torch.long)
    for b, s in enumerate(ok):
        input_ids[b, :len(s["input_ids"])] = s["input_ids"]
        labels[b, :len(s["labels"])] = s["labels"]
    images = [s["pixels"] for s in ok if s["pixels"] is not None]
    features = [s["features"] for s in ok if s.get("features") is not None]
    return {"input_ids": input_ids, "labels": labels,
            "lengths": torch.tensor([len(s["input_ids"]) for s in ok], dtype=torch.long),
            "pixels": torch.stack(images) if images else None,
            "features": torch.stack(features) if features else None,
            "has_image": torch.tensor([s["pixels"] is not None or s.get("features") is not None for s in ok],
                                      dtype=torch.bool),
            "ids": [s["id"] for s in ok], "cut": [s["id"] for s in ok if s.get("cut")],
            "skipped": [(s["id"], s["skip"]) for s in samples if "skip" in s]}


def tokenize_main(args):
    summary = tokenize_corpus(args.input, args.tokenizer, args.out, args.val_fraction,
                              args.shard_tokens, args.workers)
    print(json.dumps(summary, indent=2))


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["shapes"]:  # `python data.py shapes` made the shapes world until this release
        return run_moved("shapes.py", argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tokenize", help="raw text -> token shards for train_lm.py",
                       description="Tokenize .txt files (documents separated by a blank line) and .jsonl files "
                                   "(a \"text\" field per line) into train_NNNNNN.bin / val_NNNNNN.bin shards: "
                                   "each document becomes <s> tokens </s>; a hash of its text picks the split.")
    p.add_argument("--input", nargs="+", required=True, help="text files or folders (searched recursively)")
    p.add_argument("--tokenizer", required=True, help="a SentencePiece .model or a .tiktoken file")
    p.add_argument("--out", required=True, help="output folder for the shards and summary.json")
    p.add_argument("--val_fraction", type=checked(float, "0 <= x < 1"), default=0.005,
                   help="share of documents for validation (default 0.005)")
    p.add_argument("--shard_tokens", type=checked(int, "x >= 1"), default=100_000_000,
                   help="tokens per shard file (default 1e8)")
    p.add_argument("--workers", type=checked(int, "x >= 1"), default=None, help="processes (default: one per core)")
    p.set_defaults(func=tokenize_main)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    run_main(main)
