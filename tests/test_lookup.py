"""lookup.py, the reading ladder's synthetic task: every answer label is the asked attribute of the
object the question names, read back from the tokens themselves; the trainer runs and reports."""
import random
from types import SimpleNamespace

import pytest
import torch

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
                                dict(objects="words", fill=2), dict(pairs=0.5, fill=3), dict(pairs=0.5, gap=3)])
def test_every_label_is_the_named_objects_attribute(kw):
    cfg = lookup.LookupConfig(**kw)
    rng = random.Random(0)
    kinds = []
    for _ in range(50):
        pos, labels, paired = lookup.example(rng, cfg, cfg.gap)
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
            assert len(asked) == 1 and len(keys) == (2 if i in paired else 1)
            kinds.append(len(keys))
            named = [o for o in objs if all(o[key] == value for key, value in keys)]
            assert len(named) == 1                                     # the key picks out one object
            assert labels[i] == lookup.OFFSET[asked[0]] + named[0][asked[0]]
            if i in paired:                                            # colour and shape next to each other
                assert {k for k, _ in keys} == {"colour", "shape"} and asked[0] in ("size", "cell")
                at = [j for j, w in enumerate(words) if w not in NAMES and w < lookup.OTHER]
                assert at[1] == at[0] + 1
            start = i + 2
    assert (2 in kinds) == (cfg.pairs > 0) and 1 in kinds


def test_train_reports_held_out_accuracy(capsys):
    curve = lookup.train(lookup.LookupConfig(steps=2, batch=4, questions=2, eval_interval=1))
    assert [s for s, _ in curve] == [0, 1, 2] and all(0 <= a <= 100 for _, a in curve)
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "colour+shape keys" not in out
    lookup.train(lookup.LookupConfig(steps=1, batch=4, questions=2, eval_interval=1, pairs=0.5))
    assert "colour+shape keys" in capsys.readouterr().out


def test_accuracy_splits_by_kind_of_key():
    """By hand: a model whose every prediction is token 5, on labels 5, 5, 7 with the last paired."""
    class Fives(torch.nn.Module):
        def forward(self, embeds):
            logits = torch.zeros(*embeds.shape[:2], lookup.VOCAB)
            logits[..., 5] = 1.0
            return logits, None
    model = Fives()
    model.model = SimpleNamespace(embed_tokens=torch.nn.Embedding(lookup.VOCAB, 2))
    x = torch.ones(1, 4, 4, dtype=torch.long)
    y = torch.tensor([[5, lookup.IGNORE, 5, 7]])
    paired = torch.tensor([[False, False, False, True]])
    assert lookup.accuracy(model, x, y, paired) == (pytest.approx(200 / 3), 100.0, 0.0)
    assert lookup.accuracy(model, x, y, torch.zeros_like(paired))[2] is None


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


def test_width_and_heads_shape_the_model():
    """--n_embd/--n_head set the width, the heads (each with its own key and value) and an MLP that
    scales with the width; a width the heads do not divide is refused with the reason."""
    from common import UserError
    model = lookup.build_model(lookup.LookupConfig(n_embd=64, n_head=2))
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert model.config.head_dim == 32 and model.config.n_layer == 4
    assert attn.k_proj.weight.shape == attn.q_proj.weight.shape == (64, 64)
    assert mlp.up_proj.weight.shape == (172, 64)
    default = lookup.build_model(lookup.LookupConfig())
    assert default.config.n_embd == 256 and default.model.layers[0].mlp.up_proj.weight.shape == (688, 256)
    with pytest.raises(UserError, match="divisible"):
        lookup.build_model(lookup.LookupConfig(n_embd=64, n_head=3))
