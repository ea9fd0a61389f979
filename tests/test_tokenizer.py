"""
Tests for tokenizer.py: SentencePiece (Xmodel-LM recipe) and the project's own byte-level BPE.
Each tokenizer is trained once per test session on a small generated corpus (~300 KB).
Run: python -m pytest -q tests/test_tokenizer.py
"""
import base64
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tokenizer as T  # noqa: E402

XMODEL_DIR = Path(__file__).resolve().parents[2] / "shared" / "xmodel"  # released reference files, if present

# text that exercises digits, punctuation, emoji, accents, newlines, tabs and runs of spaces
TRICKY = [
    "Hello world! The 3 red circles cost $12.50, not 1,000,000.",
    "Café naïve über señor, déjà vu: ÀÉÎÕÜ.",
    "Emoji 😀👍🏽 and 中文字符 and Ж and ∑∫.",
    "line one\nline two\n\n  indented   spaces\tand\ttabs \n",
    "it's we're they'll I'd 2024-05-15 v1.2.3 <|endoftext|> done   ",
    "",
]
SINGLE_SPACED = "Café naïve über 2024 costs 3.50 dollars. 😀 The big red circle is on the left!"


def make_corpus(path, n_lines=3000, seed=0):
    """English-like sentences from syllable-made words, with numbers, punctuation and a few accents."""
    rng = random.Random(seed)
    syll = "ba ce di fo gu ha je ki lo mu na pe qui ro su ta ve wi xo yu ze th st ch sh er an in on".split()
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(1500)]
    words += "the a of and is on under near left right big small red blue circle square café naïve über".split() * 20
    lines = []
    for _ in range(n_lines):
        ws = [rng.choice(words) for _ in range(rng.randint(8, 25))]
        ws[0] = ws[0].capitalize()
        if rng.random() < 0.5:
            ws.insert(rng.randint(0, len(ws)), str(rng.randint(0, 10 ** rng.randint(1, 6))))
        lines.append(" ".join(ws) + rng.choice([".", "!", "?", ",", ";"]) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="module")
def sp(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("sp") / "sp1000.model"
    return T.load_tokenizer(T.train_sentencepiece([corpus], out, vocab_size=1000))


@pytest.fixture(scope="module")
def bpe(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe") / "bpe600.tiktoken"
    return T.load_tokenizer(T.train_bpe([corpus.parent], out, vocab_size=600))  # a folder as input

# -----------------------------------------------------------------------------
# SentencePiece


def test_sp_roundtrip_and_ids(sp):
    assert isinstance(sp, T.SentencePieceTokenizer) and sp.vocab_size == 1000
    assert (sp.sp.unk_id(), sp.bos_id, sp.eos_id, sp.pad_id) == (0, 1, 2, 0)
    ids = sp.encode(SINGLE_SPACED)
    assert sp.decode(ids) == SINGLE_SPACED
    assert sp.encode(SINGLE_SPACED, bos=True, eos=True) == [1] + ids + [2]
    assert sp.encode_batch([SINGLE_SPACED, "a"], bos=True) == [[1] + ids, [1] + sp.encode("a")]


def test_sp_byte_fallback_for_unseen_characters(sp, corpus):
    assert "Ж" not in corpus.read_text() and "😀" not in corpus.read_text()
    ids = sp.encode("Ж😀")
    pieces = [sp.id_to_piece(i) for i in ids]
    # "▁" from the dummy prefix, then UTF-8 bytes: Ж is D0 96, 😀 is F0 9F 98 80
    assert pieces == ["▁", "<0xD0>", "<0x96>", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert 0 not in ids  # never <unk>
    assert sp.decode(ids) == "Ж😀"


def test_sp_split_digits(sp):
    pieces = [sp.id_to_piece(i) for i in sp.encode("room 123456 and 2024")]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("1234562024")
    # the corpus is full of numbers, yet no piece in the whole vocabulary holds two digits
    pieces = [sp.id_to_piece(i) for i in range(sp.vocab_size) if not sp.sp.is_byte(i)]  # not <0x30> etc.
    assert sum(p.strip("▁").isdigit() for p in pieces) == 10
    assert not any(sum(c.isdigit() for c in p) > 1 for p in pieces)


def test_sp_collapses_spaces_like_released_model(sp):
    # remove_extra_whitespaces, as in xmodel_32000.model: documented, deliberate loss
    assert sp.decode(sp.encode("  a  b   c ")) == "a b c"


def test_released_xmodel_tokenizer():
    model = XMODEL_DIR / "xmodel_32000.model"
    if not model.exists():
        pytest.skip(f"released Xmodel tokenizer not found at {model} (reference data, absent in a user's clone)")
    tok = T.load_tokenizer(model)
    assert tok.vocab_size == 32000
    assert (tok.sp.unk_id(), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tok.decode(tok.encode(SINGLE_SPACED)) == SINGLE_SPACED
    pieces = [tok.id_to_piece(i) for i in tok.encode("year 2024")]
    assert pieces[-4:] == ["2", "0", "2", "4"]
    assert tok.decode(tok.encode("  a  b ")) == "a b"  # the same whitespace rule as ours


def test_sp_vocab_too_small(corpus, tmp_path):
    with pytest.raises(ValueError, match="too small"):
        T.train_sentencepiece([corpus], tmp_path / "x.model", vocab_size=200)
    # above the pre-check, below 259 + the corpus's characters: SentencePiece's own check, explained
    with pytest.raises(ValueError, match=r"vocab_size=262 is too small .* character_coverage"):
        T.train_sentencepiece([corpus], tmp_path / "x.model", vocab_size=262)

# -----------------------------------------------------------------------------
# BPE


def test_bpe_roundtrip_exact(bpe):
    assert isinstance(bpe, T.BPETokenizer)
    for text in TRICKY:
        assert bpe.decode(bpe.encode(text)) == text
    assert bpe.encode_batch(TRICKY, eos=True) == [bpe.encode(t) + [bpe.eos_id] for t in TRICKY]


def test_bpe_tiktoken_equals_reference(bpe, corpus):
    samples = TRICKY + corpus.read_text().splitlines(keepends=True)[:200]
    for text in samples:
        assert bpe.encode(text) == T.reference_encode(text, bpe.ranks, bpe.pat_str), text


def test_bpe_learned_merges(bpe, corpus):
    assert bpe.vocab_size == 600 and len(bpe.ranks) == 599
    assert all(bpe.ranks[bytes([b])] == b for b in range(256))  # ids 0..255 are the bytes
    assert all(len(tok) >= 2 for tok, r in bpe.ranks.items() if r >= 256)  # the rest are merges
    assert bpe.ranks.get(b" the") is not None  # a frequent word became one token
    text = corpus.read_text()[:20000]
    assert len(bpe.encode(text)) < len(text.encode()) / 2.5  # merges compress


def test_bpe_special_tokens(bpe):
    assert bpe.bos_id == bpe.eos_id == bpe.pad_id == 599  # <|endoftext|> right after the ranks
    assert bpe.id_to_piece(599) == "<|endoftext|>"
    ids = bpe.encode("hi", bos=True, eos=True)
    assert ids[0] == ids[-1] == 599 and bpe.decode(ids) == "<|endoftext|>hi<|endoftext|>"
    assert 599 not in bpe.encode("<|endoftext|>")  # typed text never becomes the special id
    meta = json.loads(Path(bpe.path + ".json").read_text())
    assert meta["pattern"] == "gpt4" and meta["special_tokens"] == {"<|endoftext|>": 599}


def test_gpt2_style_rank_file_without_sidecar(tmp_path):
    # GPT-2's byte tokens are not in byte order, so shuffle ours too; then a few merges
    rng = random.Random(1)
    tokens = [bytes([b]) for b in range(256)]
    rng.shuffle(tokens)
    tokens += [b"ab", b" a", b" ab", b"abc", b"12"]
    path = tmp_path / "tiny.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(tokens)))
    tok = T.load_tokenizer(path)
    assert tok.pat_str == T.GPT2_PATTERN and tok.eos_id == 261 and tok.vocab_size == 262
    ranks = tok.ranks
    assert tok.encode("abc ab ab") == [ranks[b"abc"], ranks[b" ab"], ranks[b" ab"]]
    for text in TRICKY + ["abcabc ab 123 12 a b  ab"]:
        assert tok.encode(text) == T.reference_encode(text, ranks, T.GPT2_PATTERN)
        assert tok.decode(tok.encode(text)) == text

# -----------------------------------------------------------------------------
# corpora and bad input


def test_messy_corpus_is_counted_not_fatal(tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(b"good line one two\nbad \xff\xfe bytes here\nalready \xef\xbf\xbd there\n" * 5)
    (tmp_path / "b.jsonl").write_text('{"text": "one two three"}\nnot json\n{"other": 1}\n\n{"text": "two three"}\n')
    out = T.train_bpe([tmp_path], tmp_path / "m.tiktoken", vocab_size=270)
    printed = capsys.readouterr().out
    assert "10 undecodable" in printed  # 2 bad bytes x 5 lines; the real U+FFFD is not counted
    assert "2 .jsonl line(s) skipped (first at" in printed and "b.jsonl:2" in printed
    assert T.load_tokenizer(out).decode(T.load_tokenizer(out).encode("one two three")) == "one two three"


def test_bpe_stops_when_nothing_repeats(tmp_path, capsys):
    (tmp_path / "tiny.txt").write_text("abab abab\n")
    tok = T.load_tokenizer(T.train_bpe(tmp_path / "tiny.txt", tmp_path / "t.tiktoken", vocab_size=1000))
    assert "note: stopped at" in capsys.readouterr().out
    # "ab" (4 times), then "abab" (twice); " abab" occurs once, so it is not learned
    assert [t for t, r in tok.ranks.items() if r >= 256] == [b"ab", b"abab"] and tok.vocab_size == 259


def test_missing_paths_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer file at .*nope\.model.*expected a SentencePiece"):
        T.load_tokenizer(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match=r"training input .*missing\.txt does not exist"):
        T.train_bpe([tmp_path / "missing.txt"], tmp_path / "x.tiktoken", vocab_size=300)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .txt or .jsonl"):
        T.train_sentencepiece([tmp_path / "empty_dir"], tmp_path / "x", vocab_size=1000)


def test_empty_corpus_gives_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    for train, out in [(T.train_sentencepiece, "x.model"), (T.train_bpe, "x.tiktoken")]:
        with pytest.raises(ValueError, match=r"corpus is empty: found no text in .*empty\.txt"):
            train([empty], tmp_path / out, vocab_size=1000)


def test_unreadable_tokenizer_files(tmp_path):
    bad_model = tmp_path / "bad.model"
    bad_model.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(ValueError, match=r"could not read .*bad\.model as a SentencePiece model"):
        T.load_tokenizer(bad_model)
    bad_ranks = tmp_path / "bad.tiktoken"
    bad_ranks.write_text("YQ== 0\nthis is not base64 at all\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken:2: expected `base64\(token bytes\) rank`"):
        T.load_tokenizer(bad_ranks)
    other = tmp_path / "tok.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match=r"expected a name ending in \.model .* found '\.json'"):
        T.load_tokenizer(other)


def test_cli_encode(bpe, capsys):
    T.main(["encode", "--tokenizer", bpe.path, "--bos", "the 12"])
    printed = capsys.readouterr().out
    assert f"[{bpe.bos_id}, " in printed and "decoded: '<|endoftext|>the 12'" in printed
    with pytest.raises(SystemExit, match="error: no tokenizer file at"):
        T.run_main(T.main, ["encode", "--tokenizer", "/nonexistent/t.model", "x"])
