"""
Tokenizers for Xmodel-LM and Xmodel-VLM, all of it in this one file. Two kinds, one interface:

- SentencePiece unigram with Xmodel-LM's recipe (the released model is xmodel_32000.model):
  byte_fallback, split_digits, character_coverage 0.9999, unk=0 <s>=1 </s>=2, no pad piece
  (pad = unk = 0), identity normalisation, a dummy "▁" prefix, and, as in the released model,
  runs of spaces collapsed to one (so only single-spaced text round-trips exactly).
- Byte-level BPE trained here (minbpe style: regex pre-split, then merge the most frequent
  adjacent pair again and again), saved as a tiktoken rank file (`.tiktoken`, one line
  `base64(token bytes) rank` per token) plus a JSON sidecar (`.tiktoken.json`: split pattern,
  special tokens), so encoding runs in tiktoken's fast Rust code. `reference_encode` is the
  readable pure-Python definition that tiktoken must equal. Special token: `<|endoftext|>`,
  id = number of ranks; it is bos, eos and pad (GPT-2's habit). A plain GPT-2 `.tiktoken` with
  no sidecar loads with GPT-2's pattern and `<|endoftext|>` = 50256.

Both kinds: encode(text, bos=False, eos=False), encode_batch(texts, ...), decode(ids),
id_to_piece(id), and attributes bos_id, eos_id, pad_id, vocab_size, path.
load_tokenizer(path) picks the kind from the suffix (.model or .tiktoken).

Run:
  python tokenizer.py train --kind sp  --input data/corpus.txt --vocab_size 32000 --out out/tok.model
  python tokenizer.py train --kind bpe --input data/ --vocab_size 4096 --out out/tok.tiktoken
  python tokenizer.py encode --tokenizer out/tok.model "Hello world 123"
"""

import argparse
import base64
import glob
import hashlib
import heapq
import itertools
import json
import os
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import regex  # the split patterns use \p{L}-style classes, which the stdlib `re` lacks
import sentencepiece as spm
import tiktoken

from common import InputNotFound, UserError, atomic_write, read_json, run_main, write_text

# Split patterns, exactly as tiktoken defines them. BPE merges never cross a chunk boundary,
# so " dog" and " dog." share the token " dog". gpt4 also cuts numbers into groups of <= 3 digits.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
ENDOFTEXT = "<|endoftext|>"

# Xmodel-LM's SentencePiece settings, read from the released model's trainer and normalizer
# specs. Any of them can be overridden by a keyword argument of train_sentencepiece.
XMODEL_SP_OPTIONS = dict(
    model_type="unigram",
    character_coverage=0.9999,  # the rarest 0.01% of characters get no piece of their own...
    byte_fallback=True,         # ...they are spelled with the 256 pieces <0x00>..<0xFF>, never <unk>
    split_digits=True,          # each digit its own piece, so numbers are tokenised uniformly
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # no pad piece: pad = unk = 0
    normalization_rule_name="identity",  # no NFKC: text is kept exactly as written
    add_dummy_prefix=True,      # a text starts with "▁", so "Hello" is the same piece mid-sentence
    remove_extra_whitespaces=True,  # as released: "a  b" -> "a b" (lossy for code indentation)
    allow_whitespace_only_pieces=False,
    max_sentencepiece_length=16,
    input_sentence_size=2_000_000, shuffle_input_sentence=True,  # big corpora: train on a sample
    max_sentence_length=16384,  # bytes; longer lines are cut into pieces here, never dropped
    num_threads=2,  # (train_extremely_large_corpus is left out: sentencepiece 0.2 ignores it and warns)
)

# -----------------------------------------------------------------------------
# reading a corpus: .txt (one line at a time) and .jsonl (the "text" field of each line)

def find_input_files(inputs):
    """Expand files and folders (every .txt and .jsonl inside, sorted) into a list of files."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]  # one path given bare, not in a list
    files = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".txt", ".jsonl"))
            if not found:
                raise InputNotFound(f"folder {p} holds no .txt or .jsonl files; put the training text in such files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputNotFound(f"training input {p} does not exist; expected a .txt or .jsonl file, or a folder of them")
    if not files:
        raise UserError("no training input given: pass one or more files or folders (--input)")
    return files


def read_corpus(files, stats):
    """Yield the corpus as strings that each end in a newline: .txt lines, .jsonl "text" fields.
    Bytes that are not UTF-8 become U+FFFD and are counted, and bad .jsonl lines are counted
    and skipped; report() prints both, so a messy corpus never crashes a run or loses data silently."""
    for path in files:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.decode("utf-8", errors="replace")
                stats["replaced"] += line.count("\ufffd") - raw.count("\ufffd".encode())  # not ones already there
                stats["lines"] += 1
                if path.suffix == ".jsonl":
                    line = jsonl_text(line, stats, f"{path}:{lineno}")
                    if line is None:
                        continue
                yield line if line.endswith("\n") else line + "\n"


def jsonl_text(line, stats, where):
    """The "text" of one .jsonl line, or None (counted) when the line is not {"text": "..."}."""
    if not line.strip():
        return None
    try:
        text = json.loads(line).get("text")
    except (ValueError, AttributeError):
        text = None
    if not isinstance(text, str):  # not JSON, not an object, no "text", or a "text" that is not a string
        stats["bad_jsonl"] += 1
        stats.setdefault("first_bad_jsonl", where)
        return None
    return text


def nonempty(texts, files):
    """Give back the same stream of texts, or raise a clear error if it holds no text at all."""
    texts = iter(texts)
    for t in texts:
        if t.strip():
            return itertools.chain([t], texts)
    names = ", ".join(map(str, files))
    raise UserError(f"the training corpus is empty: found no text in {names}. Expected UTF-8 text lines "
                    f"(.txt) or lines like {{\"text\": \"...\"}} (.jsonl); check the --input paths.")


def report(stats, files):
    print(f"read {stats['lines']} lines from {len(files)} file(s); "
          f"{stats['replaced']} undecodable byte sequence(s) replaced with U+FFFD; "
          f"{stats['bad_jsonl']} .jsonl line(s) skipped" +
          (f" (first at {stats['first_bad_jsonl']})" if stats["bad_jsonl"] else ""))

# -----------------------------------------------------------------------------
# SentencePiece unigram (Xmodel-LM's tokenizer)

def train_sentencepiece(input_files, out, vocab_size=32000, verbose=False, **options):
    """Train a unigram SentencePiece model with Xmodel-LM's settings; returns the .model path.
    `out` is a prefix or a path ending in .model; `options` override XMODEL_SP_OPTIONS."""
    if vocab_size <= 259:
        raise UserError(f"vocab_size={vocab_size} is too small: with byte_fallback the vocabulary holds "
                        f"3 special pieces + 256 byte pieces + the corpus's common characters; use ~1000 or more")
    stats, files = Counter(), find_input_files(input_files)
    opts = {**XMODEL_SP_OPTIONS, **options}
    step = opts["max_sentence_length"] // 4  # a character is at most 4 bytes of UTF-8
    sentences = (piece for text in read_corpus(files, stats) for line in text.splitlines()
                 for piece in (line[i:i + step] for i in range(0, len(line), step)))
    prefix = Path(out).with_suffix("") if Path(out).suffix == ".model" else Path(out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=nonempty(sentences, files), model_prefix=str(prefix),
                                       vocab_size=vocab_size, minloglevel=0 if verbose else 2, **opts)
    except RuntimeError as e:
        raise UserError(explain_sp_error(str(e), vocab_size)) from None
    report(stats, files)
    return str(prefix) + ".model"


def explain_sp_error(msg, vocab_size):
    """Turn SentencePiece's C++ check failures into advice."""
    found = regex.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
    if found:
        return (f"vocab_size={vocab_size} is too small for this corpus: byte_fallback needs 3 special + 256 byte "
                f"pieces and character_coverage keeps {int(found[2]) - 259} characters, {found[2]} pieces in all "
                f"before any merges. Use a vocab_size well above {found[2]}, or lower character_coverage.")
    if "Vocabulary size too high" in msg:
        return (f"vocab_size={vocab_size} is too large for this small corpus ({msg.split('] ')[-1]}). "
                f"Give more text or a smaller vocab_size.")
    return f"SentencePiece training failed: {msg}"


class Tokenizer:
    """What both kinds share: bos/eos wrapping and a plain encode_batch."""
    def _wrap(self, ids, bos, eos):
        return [self.bos_id] * bos + list(ids) + [self.eos_id] * eos

    def encode_batch(self, texts, bos=False, eos=False):
        return [self.encode(t, bos, eos) for t in texts]

    def __repr__(self):
        return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path):
        self.path = str(path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.path)
        except (RuntimeError, OSError) as e:
            raise UserError(f"could not read {path} as a SentencePiece model ({e}); expected a .model file "
                            f"written by spm_train or `python tokenizer.py train --kind sp`") from None
        self.vocab_size = self.sp.vocab_size()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.sp.unk_id()  # Xmodel: pad = unk

    def encode(self, text, bos=False, eos=False):
        return self.sp.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(self, texts, bos=False, eos=False):
        return self.sp.encode(list(texts), add_bos=bos, add_eos=eos)  # batched in C++, multi-threaded

    def decode(self, ids):
        return self.sp.decode(list(ids))

    def id_to_piece(self, i):
        return self.sp.id_to_piece(i)

# -----------------------------------------------------------------------------
# byte-level BPE: training (minbpe style), the reference encoder, the tiktoken-backed tokenizer

def train_bpe(input_files, out_path, vocab_size, pattern="gpt4"):
    """Learn BPE merges and save them as a .tiktoken rank file plus a .tiktoken.json sidecar.
    vocab_size counts everything: 256 byte tokens + merges + 1 special token (<|endoftext|>)."""
    if vocab_size < 258:
        raise UserError(f"vocab_size={vocab_size} is too small: BPE needs 256 byte tokens + <|endoftext|> "
                        f"+ at least one merge, so 258 or more")
    if pattern not in PATTERNS:
        raise UserError(f"unknown split pattern {pattern!r}; expected one of {sorted(PATTERNS)}")
    stats, files = Counter(), find_input_files(input_files)
    chunks = count_chunks(nonempty(read_corpus(files, stats), files), PATTERNS[pattern])
    ranks = learn_merges(chunks, vocab_size - 1)
    if len(ranks) < vocab_size - 1:
        print(f"note: stopped at {len(ranks) + 1} tokens, not {vocab_size}: no adjacent pair occurs twice any more")
    save_bpe(out_path, ranks, pattern)
    report(stats, files)
    return str(out_path)


def count_chunks(texts, pat_str, block_chars=1 << 20):
    """Split the corpus with the pattern and count each distinct chunk. A few MB of text hold only
    tens of thousands of distinct chunks, so training works on those, weighted by their counts."""
    split, counts, block, size = regex.compile(pat_str).findall, Counter(), [], 0
    for t in texts:  # split ~1 MB blocks: one regex call per line would be slower, the whole corpus too big
        block.append(t)
        size += len(t)
        if size >= block_chars:
            counts.update(split("".join(block)))
            block, size = [], 0
    counts.update(split("".join(block)))
    return counts


def learn_merges(chunk_counts, n_tokens):
    """The BPE training loop: merge the most frequent adjacent pair of tokens, n_tokens - 256 times.

    Returns ranks {token bytes: id}: ids 0..255 are the single bytes, then one id per merge in the
    order learned (that order is the merge priority when encoding). Pair counts are updated
    incrementally: a merge only revisits the chunks that contain the merged pair."""
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # each distinct chunk as token ids
    freqs = list(chunk_counts.values())
    vocab = [bytes([b]) for b in range(256)]  # id -> bytes
    ranks = {tok: i for i, tok in enumerate(vocab)}
    pair_counts, where = Counter(), defaultdict(set)  # pair -> count in the corpus; pair -> chunk indices
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += f
            where[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_counts.items()]  # most frequent first; ties: smallest ids
    heapq.heapify(heap)
    while len(vocab) < n_tokens and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -neg_count:
            continue  # stale entry: this pair's count changed after it was pushed
        if -neg_count < 2:
            break  # no pair repeats: further merges would only memorise single chunks
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = ranks.get(merged)  # the same bytes may already exist via another pair: reuse that id
        if new_id is None:  # (a rank file can hold each byte string only once)
            new_id = ranks[merged] = len(vocab)
            vocab.append(merged)
        changed = set()
        for w in where.pop(pair):
            old, new, f = words[w], merge(words[w], pair, new_id), freqs[w]
            if len(new) == len(old):
                continue  # this chunk lost the pair to an earlier merge
            for p in zip(old, old[1:]):
                pair_counts[p] -= f
                changed.add(p)
            for p in zip(new, new[1:]):
                pair_counts[p] += f
                where[p].add(w)
                changed.add(p)
            words[w] = new
        for p in changed:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
    return ranks


def merge(ids, pair, new_id):
    """Replace each occurrence of pair in ids, left to right and non-overlapping, by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def reference_encode(text, ranks, pat_str):
    """Pure-Python BPE encoder: the definition that the tiktoken encoder must equal.
    1. cut the text into chunks with the split pattern; merges never cross a chunk boundary;
    2. in each chunk start from single bytes and, while some adjacent pair joins into a token,
       merge (left to right) the pair whose joined bytes have the lowest rank, i.e. were learned first."""
    ids = []
    for chunk in regex.findall(pat_str, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        if b"".join(parts) in ranks:  # tiktoken's shortcut: a chunk that is a token is that token
            parts = [b"".join(parts)]
        while len(parts) > 1:
            best = min((a + b for a, b in zip(parts, parts[1:])), key=lambda j: ranks.get(j, float("inf")))
            if best not in ranks:
                break  # no adjacent pair forms a token: done
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] + parts[i + 1] == best:
                    out.append(best)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        ids += [ranks[p] for p in parts]
    return ids


def save_bpe(path, ranks, pattern):
    """Write the tiktoken rank file (in rank order) and the JSON sidecar that load_tokenizer reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    path.write_text("".join(lines))
    meta = {"pattern": pattern, "pat_str": PATTERNS[pattern], "special_tokens": {ENDOFTEXT: len(ranks)},
            "bos": ENDOFTEXT, "eos": ENDOFTEXT, "pad": ENDOFTEXT}
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=1) + "\n")


def load_ranks(path):
    """Read a .tiktoken rank file: one `base64(token bytes) rank` per line."""
    try:
        lines = Path(path).read_text().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file; expected a .tiktoken rank file of `base64 rank` lines") from None
    ranks = {}
    for lineno, line in enumerate(lines, 1):
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except ValueError:  # also catches bad base64 (binascii.Error is a ValueError)
            raise UserError(f"{path}:{lineno}: expected `base64(token bytes) rank`, found {line[:80]!r}; "
                            f"is this a tiktoken rank file?") from None
    if not ranks:
        raise UserError(f"{path} holds no tokens; expected a .tiktoken rank file of `base64 rank` lines")
    return ranks


class BPETokenizer(Tokenizer):
    def __init__(self, path):
        self.path = str(path)
        self.ranks = load_ranks(path)
        sidecar = Path(self.path + ".json")
        if sidecar.exists():
            meta = read_json(str(sidecar))
            if not {"pat_str", "special_tokens", "bos", "eos", "pad"} <= set(meta):
                raise UserError(f"{sidecar} lacks some of pat_str, special_tokens, bos, eos, pad: it is not the "
                                f"sidecar `python tokenizer.py train --kind bpe` writes; delete it to load {path} "
                                f"as a plain GPT-2 style file")
        else:  # a plain GPT-2 style file: GPT-2's pattern, <|endoftext|> right after the ranks (50256)
            meta = {"pat_str": GPT2_PATTERN, "special_tokens": {ENDOFTEXT: len(self.ranks)},
                    "bos": ENDOFTEXT, "eos": ENDOFTEXT, "pad": ENDOFTEXT}
        self.pat_str, self.special_tokens = meta["pat_str"], meta["special_tokens"]
        try:
            self.enc = tiktoken.Encoding(Path(path).stem, pat_str=self.pat_str, mergeable_ranks=self.ranks,
                                         special_tokens=self.special_tokens)
        except ValueError as e:  # e.g. two tokens with one rank, or a special token's id among them
            raise UserError(f"tiktoken refuses {path}: {e}") from None
        self.vocab_size = self.enc.n_vocab
        self.bos_id, self.eos_id, self.pad_id = (self.special_tokens[meta[k]] for k in ("bos", "eos", "pad"))

    def encode(self, text, bos=False, eos=False):
        # encode_ordinary: "<|endoftext|>" typed inside the text stays plain text, never the special id
        return self._wrap(self.enc.encode_ordinary(text), bos, eos)

    def encode_batch(self, texts, bos=False, eos=False):
        return [self._wrap(ids, bos, eos) for ids in self.enc.encode_ordinary_batch(list(texts))]

    def decode(self, ids):
        return self.enc.decode(list(ids), errors="replace")

    def id_to_piece(self, i):
        tok = self.enc.decode_single_token_bytes(i)
        try:
            return tok.decode("utf-8")
        except UnicodeDecodeError:  # part of a multi-byte character: spell it like SentencePiece does
            return "".join(f"<0x{b:02X}>" for b in tok)


def load_tokenizer(path):
    """Open a tokenizer file: .model -> SentencePiece, .tiktoken -> BPE."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"no tokenizer file at {p}: expected a SentencePiece .model or a .tiktoken rank "
                            f"file; train one with `python tokenizer.py train --kind sp|bpe ...`")
    if p.suffix == ".model":
        return SentencePieceTokenizer(p)
    if p.suffix == ".tiktoken":
        return BPETokenizer(p)
    raise UserError(f"don't know how to load {p}: expected a name ending in .model (SentencePiece) or "
                    f".tiktoken (BPE rank file), found {p.suffix!r}")


# A model directory keeps its tokenizer beside config.json, and config.json records which file it
# is and its digest, so that a tokenizer from another corpus is refused where it meets the model.

def tokenizer_digest(path):
    """sha256 of a tokenizer file (and of a .tiktoken's sidecar): which tokenizer it is."""
    h = hashlib.sha256(Path(path).read_bytes())
    if Path(str(path) + ".json").is_file():
        h.update(Path(str(path) + ".json").read_bytes())
    return h.hexdigest()


def save_tokenizer(tok_path, model_dir):
    """Copy a tokenizer file (and a .tiktoken's sidecar) into a saved model's directory and record
    its name and digest in the model's config.json (tokenizer_file, tokenizer_sha256)."""
    shutil.copy(tok_path, model_dir)
    if os.path.isfile(str(tok_path) + ".json"):  # a .tiktoken's sidecar: its split pattern and special tokens
        shutil.copy(str(tok_path) + ".json", model_dir)
    config_path = os.path.join(model_dir, "config.json")
    config = {**read_json(config_path), "tokenizer_file": os.path.basename(tok_path),
              "tokenizer_sha256": tokenizer_digest(tok_path)}
    atomic_write(config_path, lambda tmp: write_text(tmp, json.dumps(config, indent=2)))


def find_tokenizer(model_dir):
    """The tokenizer file saved beside a model: the one its config.json records (checked against
    its digest), else the only *.model or *.tiktoken in model_dir."""
    config_path = os.path.join(model_dir, "config.json")
    config = read_json(config_path) if os.path.isfile(config_path) else {}
    if "tokenizer_file" in config:
        path = os.path.join(model_dir, config["tokenizer_file"])
        if not os.path.isfile(path):
            raise InputNotFound(f"{path} not found: {config_path} says the model was trained with that tokenizer; "
                                f"copy it back (from the LM's directory)")
        if tokenizer_digest(path) != config.get("tokenizer_sha256"):
            raise UserError(f"{path} is not the tokenizer this model was trained with (its sha256 differs from "
                            f"the one {config_path} records): a tokenizer of another corpus gives the model "
                            f"ids that mean other words; copy the right file back")
        return path
    found = sorted(glob.glob(os.path.join(model_dir, "*.model")) + glob.glob(os.path.join(model_dir, "*.tiktoken")))
    if not found:
        raise InputNotFound(f"no tokenizer (*.model or *.tiktoken) in {model_dir}; copy the LM's tokenizer there")
    if len(found) > 1:
        raise UserError(f"{model_dir} holds {len(found)} tokenizers ({', '.join(map(os.path.basename, found))}) and "
                        f"its config.json does not say which one the model was trained with; keep only that one")
    return found[0]

# -----------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a tokenizer on .txt/.jsonl files")
    tr.add_argument("--kind", choices=["sp", "bpe"], required=True, help="sp: SentencePiece unigram (Xmodel-LM); bpe: byte-level BPE")
    tr.add_argument("--input", nargs="+", required=True, help="files or folders (all .txt/.jsonl inside)")
    tr.add_argument("--vocab_size", type=int, required=True, help="total vocabulary size, special tokens included")
    tr.add_argument("--out", required=True, help="output path: x.model (sp) or x.tiktoken (bpe)")
    tr.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4", help="bpe only: the pre-split regex")
    tr.add_argument("--verbose", action="store_true", help="sp only: show SentencePiece's own log")
    en = sub.add_parser("encode", help="show the ids and pieces of a text")
    en.add_argument("--tokenizer", required=True, help="a .model or .tiktoken file")
    en.add_argument("--bos", action="store_true", help="prepend the bos id")
    en.add_argument("text")
    args = ap.parse_args(argv)
    try:
        if args.command == "train":
            t0 = time.time()
            if args.kind == "sp":
                path = train_sentencepiece(args.input, args.out, args.vocab_size, verbose=args.verbose)
            else:
                path = train_bpe(args.input, args.out, args.vocab_size, pattern=args.pattern)
            print(f"wrote {path} in {time.time() - t0:.1f}s: {load_tokenizer(path)}")
        else:
            tok = load_tokenizer(args.tokenizer)
            ids = tok.encode(args.text, bos=args.bos)
            print(f"{tok}\n{len(ids)} tokens: {ids}")
            for i in ids:
                print(f"{i:>8}  {tok.id_to_piece(i)!r}")
            print(f"decoded: {tok.decode(ids)!r}")
    except OSError as e:  # an output path that cannot be written, a file that cannot be read
        raise UserError(str(e)) from None


if __name__ == "__main__":
    run_main(main)
