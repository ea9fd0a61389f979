"""lookup.py, the reading ladder's synthetic task: every answer label is the asked attribute of the
object the question names, read back from the tokens themselves; the trainer runs and reports."""
import random

import pytest

import lookup

NAMES = {v: k for k, v in lookup.ASK.items()}


def objects_in(pos, cfg):
    """The scene back from the positions: [{attribute: value}] (None for an empty cell)."""
    scene = pos[1:pos.index((lookup.SEP,))]
    if cfg.objects == "words":
        scene = [tuple(t[0] for t in scene[i:i + 4]) for i in range(0, len(scene), 4)]
    found = []
    for ids in scene:
        o = {k: i - lookup.OFFSET[k] for i in ids for k in lookup.ATTRS
             if 0 <= i - lookup.OFFSET[k] < lookup.ATTRS[k]}
        found.append(o if len(o) == 4 else None)
    return found


@pytest.mark.parametrize("kw", [dict(), dict(fill=8), dict(fill=3, gap=4), dict(empty=True, gap=2),
                                dict(objects="words", fill=2)])
def test_every_label_is_the_named_objects_attribute(kw):
    cfg = lookup.LookupConfig(**kw)
    rng = random.Random(0)
    for _ in range(50):
        pos, labels = lookup.example(rng, cfg, cfg.gap)
        objs = [o for o in objects_in(pos, cfg) if o]
        assert 1 <= len(objs) <= 4 and len(pos) == len(labels)
        if cfg.empty:
            assert len(objects_in(pos, cfg)) == 9                      # every cell is a position
        answered = [i for i, y in enumerate(labels) if y != lookup.IGNORE]
        assert len(answered) == cfg.questions
        start = pos.index((lookup.SEP,)) + 1
        for i in answered:
            assert pos[i + 1] == (labels[i],)                          # the next token is the answer
            words = [t[0] for t in pos[start:i + 1 - cfg.fill]]        # this question, fillers left out
            asked = [NAMES[w] for w in words if w in NAMES]
            keys = [(k, w - lookup.OFFSET[k]) for w in words for k in ("colour", "shape")
                    if 0 <= w - lookup.OFFSET[k] < lookup.ATTRS[k]]
            assert len(asked) == 1 and len(keys) == 1
            (key, value), = keys
            named = [o for o in objs if o[key] == value]
            assert len(named) == 1                                     # the key picks out one object
            assert labels[i] == lookup.OFFSET[asked[0]] + named[0][asked[0]]
            start = i + 2


def test_train_reports_held_out_accuracy(capsys):
    curve = lookup.train(lookup.LookupConfig(steps=2, batch=4, questions=2, eval_interval=1))
    assert [s for s, _ in curve] == [0, 1, 2] and all(0 <= a <= 100 for _, a in curve)
    assert "held-out accuracy" in capsys.readouterr().out


def test_empty_cells_need_one_position_per_object():
    with pytest.raises(lookup.UserError, match="--empty=true .* needs --objects=one"):
        lookup.train(lookup.LookupConfig(objects="words", empty=True))


def test_min_objects_bounds_the_training_scenes_only(monkeypatch):
    cfg = lookup.LookupConfig(empty=True, min_objects=2)
    rng = random.Random(0)
    count = lambda fewest: [sum(o is not None for o in objects_in(lookup.example(rng, cfg, 0, fewest)[0], cfg))
                            for _ in range(200)]
    assert min(count(2)) == 2 and max(count(2)) == 4
    assert min(count(1)) == 1                                  # what the held-out set is drawn with
    calls, real = [], lookup.batch
    monkeypatch.setattr(lookup, "batch", lambda rng, cfg, n, gap, fewest=1: calls.append(fewest) or
                        real(rng, cfg, n, gap, fewest))
    lookup.train(lookup.LookupConfig(steps=1, batch=2, questions=1, eval_interval=1, min_objects=3))
    assert calls == [1, 3]                                     # held-out at 1-4, the training step at 3-4
