"""Raw text -> token shards -> training windows (data.py, text part)."""

import json
import os

import numpy as np
import pytest

import data
from tokenizer import load_tokenizer, train_sentencepiece


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    words = "the red blue green circle square star is left right of above below one two three".split()
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(rng.choice(words, 12)) + f" {rng.integers(100)}." for _ in range(3000))
    (root / "c.txt").write_text(text)
    return load_tokenizer(train_sentencepiece([str(root / "c.txt")], str(root / "t.model"), vocab_size=300,
                                              hard_vocab_limit=False))


@pytest.mark.parametrize("high", [300, 70_000])
def test_shard_round_trip(tmp_path, high):
    tokens = np.random.default_rng(0).integers(0, high, 1000)
    path = str(tmp_path / "train_000000.bin")
    data.write_shard(path, tokens)
    back = data.read_shard(path)
    assert back.dtype == (np.uint16 if high < 2 ** 16 else np.uint32)
    assert np.array_equal(back, tokens)


def test_corrupt_and_truncated_shards_are_refused(tmp_path):
    path = str(tmp_path / "train_000000.bin")
    data.write_shard(path, np.arange(100))
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        data.read_shard(path)
    open(path, "wb").write(b"NOTSHARD" + raw[8:])
    with pytest.raises(ValueError, match="not a token shard"):
        data.read_shard(path)


def test_tokenize_corpus_token_for_token(tmp_path, tok):
    src = tmp_path / "src"
    src.mkdir()
    docs_txt = ["the red circle is left of the blue square", "three green stars", "one star 42"]
    (src / "a.txt").write_text("\n\n".join(docs_txt) + "\n")
    docs_jsonl = ["above the square", "below two circles"]
    lines = [json.dumps({"text": d}) for d in docs_jsonl]
    lines.insert(1, "{not json")                       # a malformed line: skipped and counted
    (src / "b.jsonl").write_text("\n".join(lines) + "\n")
    (src / "c.txt").write_bytes(b"the red \xff\xfe star")  # invalid UTF-8: replaced and counted
    summary = data.tokenize_corpus([str(src)], tok.path, str(tmp_path / "out"), val_fraction=0.0, workers=2)
    assert summary["bad_jsonl_lines"] == 1 and summary["replaced_utf8"] == 2 and summary["documents"] == 6
    expected = []
    for d in docs_txt + docs_jsonl + ["the red \ufffd\ufffd star"]:
        expected += tok.encode(d, bos=True, eos=True)
    got = data.read_shard(str(tmp_path / "out" / "train_000000.bin"))
    assert got.tolist() == expected


def test_split_and_sharding_are_deterministic(tmp_path, tok):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.txt").write_text("\n\n".join(f"the red circle {i} {j}" for j in range(200)))
    a = data.tokenize_corpus([str(src)], tok.path, str(tmp_path / "a"), val_fraction=0.1, shard_tokens=1000, workers=1)
    data.tokenize_corpus([str(src)], tok.path, str(tmp_path / "b"), val_fraction=0.1, shard_tokens=1000, workers=2)
    assert a["val_tokens"] > 0 and a["train_tokens"] > 3000
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(os.listdir(tmp_path / "b")) and "train_000002.bin" in names
    for n in names:
        assert open(tmp_path / "a" / n, "rb").read() == open(tmp_path / "b" / n, "rb").read()


def test_loader_windows_depend_only_on_seed_step_index(tmp_path):
    for i in range(2):
        data.write_shard(str(tmp_path / f"train_00000{i}.bin"), np.arange(i * 5000, i * 5000 + 5000))
    loader = data.TokenLoader(str(tmp_path), "train", seq_len=16, seed=3)
    x, y = loader.batch(step=7, indices=range(4))
    assert x.shape == (4, 16) and np.array_equal(x[:, 1:], y[:, :-1])
    assert np.array_equal(np.diff(x.numpy(), axis=1), np.ones((4, 15)))   # contiguous windows
    again = data.TokenLoader(str(tmp_path), "train", seq_len=16, seed=3)
    x2, _ = again.batch(step=7, indices=[2, 3])                            # e.g. rank 1 of 2
    assert np.array_equal(x2, x[2:])
    x3, _ = loader.batch(step=8, indices=range(4))
    assert not np.array_equal(x3, x)


def test_token_loader_aligns_windows_to_documents(tmp_path):
    # documents: <s> (= 1) and 3-40 tokens; a window may start only at an <s>
    rng = np.random.default_rng(0)
    docs = [np.concatenate([[1], rng.integers(10, 99, n)]) for n in rng.integers(3, 40, 300)]
    tokens = np.concatenate([[50]] + docs)  # the shard begins mid-document
    data.write_shard(str(tmp_path / "train_000000.bin"), tokens)
    starts = set(np.flatnonzero(tokens == 1).tolist())
    loader = data.TokenLoader(str(tmp_path), "train", seq_len=32, seed=5, doc_start=1)
    x, y = loader.batch(step=3, indices=range(64))
    assert (x[:, 0] == 1).all() and np.array_equal(x[:, 1:], y[:, :-1])
    first = {int(loader.sequence(3, i)[0]) for i in range(64)}
    assert first == {1}
    # every window is a contiguous slice of the shard that begins at a document start
    for row in loader.batch(step=4, indices=range(16))[0].numpy():
        hits = [s for s in starts if np.array_equal(tokens[s:s + 32], row)]
        assert hits, "a window is not a slice starting at a document's <s>"
    # random starts (doc_start=None) mostly begin inside a document
    plain = data.TokenLoader(str(tmp_path), "train", seq_len=32, seed=5)
    assert (plain.batch(step=3, indices=range(64))[0][:, 0] != 1).float().mean() > 0.5
    with pytest.raises(ValueError, match="no document"):
        data.TokenLoader(str(tmp_path), "train", seq_len=len(tokens) - 1, seed=5, doc_start=1)
    # what aligned windows never reach (the tails of documents longer than 33 tokens) is counted
    reached = np.zeros(len(tokens), bool)
    for s in starts:
        if s + 33 <= len(tokens):
            reached[s:s + 33] = True
    assert loader.coverage == pytest.approx(reached.mean()) and loader.coverage < 1
    assert plain.coverage == 1.0


def test_missing_input_and_empty_corpus(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.tokenize_corpus([str(tmp_path / "nope")], tok.path, str(tmp_path / "out"))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no training text"):
        data.tokenize_corpus([str(tmp_path / "e")], tok.path, str(tmp_path / "out"))
