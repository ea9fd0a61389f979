"""Xmodel-VLM: the label builder, image splicing, the two training stages, resume, loading."""

import json
import math
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import ablate
import data
import eval_vlm
import shapes
import train_vlm
from common import UserError
from data import IMAGE_TOKEN_INDEX
from model import IGNORE_INDEX, LMConfig, XmodelLM
from tokenizer import load_tokenizer, train_sentencepiece
from train_vlm import VLMConfig
from vision import CLIPVisionTower, ImageProcessor, OracleTower, VisionConfig
from vlm import XmodelVLM, load
from xdp import build_projector, grid_tokens


class CharTokenizer:
    """One id per character (ord + 3), <s>=1, </s>=2, pad 0: easy to check by hand. Characters
    outside ASCII cannot be spelled: they become 0 and decode as '?' (a tokenizer mismatch)."""
    bos_id, eos_id, pad_id, vocab_size = 1, 2, 0, 131

    def encode(self, text):
        return [ord(c) + 3 if ord(c) < 128 else 0 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 3) if i >= 3 else "?" for i in ids)


def render(ids):
    """Token ids back to LLaVA's literal prompt text."""
    special = {1: "<s>", 2: "</s>", IMAGE_TOKEN_INDEX: "<image>"}
    return "".join(special.get(i) or chr(i - 3) for i in ids)


def supervised(ids, labels):
    return "".join(render([i]) if l != IGNORE_INDEX else "|" for i, l in zip(ids, labels)).strip("|")


SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
          "helpful, detailed, and polite answers to the user's questions.")


def test_plain_template_by_hand():
    turns = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "a red star"}]
    ids, labels = data.build_sample(turns, CharTokenizer(), "plain")
    assert render(ids) == "<s><image>a red star\n"
    assert supervised(ids, labels) == "a red star\n"
    assert labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]


def test_vicuna_single_and_multi_turn_by_hand():
    turns = [{"from": "human", "value": "What colour is the star?\n<image>"}, {"from": "gpt", "value": "red"},
             {"from": "human", "value": "How many?"}, {"from": "gpt", "value": "2"}]
    ids, labels = data.build_sample(turns, CharTokenizer(), "vicuna_v1")
    assert render(ids) == (f"<s>{SYSTEM} USER: <image>\nWhat colour is the star? ASSISTANT: red</s>"
                           f"USER: How many? ASSISTANT: 2</s>")
    assert supervised(ids, labels) == " red</s>" + "|" * len("USER: How many? ASSISTANT:") + " 2</s>"
    ids1, labels1 = data.build_sample(turns[:2], CharTokenizer(), "vicuna_v1")
    assert render(ids1) == f"<s>{SYSTEM} USER: <image>\nWhat colour is the star? ASSISTANT: red</s>"
    ids2, labels2 = data.build_sample(turns[:2], CharTokenizer(), "vicuna_v1", system="")  # the tiny scale's
    assert render(ids2) == "<s>USER: <image>\nWhat colour is the star? ASSISTANT: red</s>"
    assert supervised(ids2, labels2) == " red</s>"


def test_questions_get_labels_when_asked_by_hand():
    turns = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"},
             {"from": "human", "value": "Size?"}, {"from": "gpt", "value": "small"}, {"from": "human", "value": "And?"}]
    ids, labels = data.build_sample(turns, CharTokenizer(), "vicuna_v1", questions=True)
    plain, plain_labels = data.build_sample(turns, CharTokenizer(), "vicuna_v1")
    assert ids == plain                                                  # the same tokens, more labels
    # the system prompt, the image and the last question (no answer follows: a generation prompt) have none
    assert supervised(ids, labels) == ("USER: |\nWhat colour? ASSISTANT: red</s>USER: Size? ASSISTANT: small</s>")
    assert supervised(plain, plain_labels) == " red</s>" + "|" * len("USER: Size? ASSISTANT:") + " small</s>"
    with pytest.raises(data.SampleError, match="cannot reproduce the question"):
        data.build_sample([{"from": "human", "value": "Colour of the café?"}, {"from": "gpt", "value": "red"}],
                          CharTokenizer(), "vicuna_v1", questions=True)


def test_text_only_and_generation_prompt():
    turns = [{"from": "human", "value": "Is a star a shape?"}, {"from": "gpt", "value": "yes"}]
    ids, labels = data.build_sample(turns, CharTokenizer(), "vicuna_v1")
    assert IMAGE_TOKEN_INDEX not in ids and supervised(ids, labels) == " yes</s>"
    prompt, _ = data.build_sample(turns[:1], CharTokenizer(), "vicuna_v1")   # ends before the answer
    assert render(prompt) == f"<s>{SYSTEM} USER: Is a star a shape? ASSISTANT:"


def test_tokenization_mismatch_names_the_sample():
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "café"}]
    with pytest.raises(data.SampleError, match="sample s42.*cannot reproduce the answer"):
        data.build_sample(turns, CharTokenizer(), "vicuna_v1", sample_id="s42")


def write_llava(tmp_path, samples, images=()):
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for name in images:
        Image.new("RGB", (20, 12), (200, 30, 30)).save(folder / name)
    path = tmp_path / "set.json"
    path.write_text(json.dumps(samples))
    return str(path), str(folder)


def test_dataset_skips_and_truncates(tmp_path):
    q = lambda img, ans: [{"from": "human", "value": ("<image>\n" if img else "") + "Q?"}, {"from": "gpt", "value": ans}]
    samples = [{"id": "ok", "image": "a.png", "conversations": q(True, "yes")},
               {"id": "missing", "image": "nope.png", "conversations": q(True, "yes")},
               {"id": "corrupt", "image": "bad.png", "conversations": q(True, "yes")},
               {"id": "two-images", "image": "a.png", "conversations": q(True, "<image> yes")},
               {"id": "long", "image": "a.png", "conversations": q(True, "x" * 300)},
               {"id": "text", "conversations": q(False, "no")}]
    path, folder = write_llava(tmp_path, samples, ["a.png"])
    (tmp_path / "images" / "bad.png").write_bytes(b"not a png")
    ds = data.LLaVADataset(path, folder, CharTokenizer(), "plain", ImageProcessor(16), n_image_tokens=4, max_len=64)
    items = [ds[i] for i in range(len(ds))]
    skipped = {it["id"]: it["skip"] for it in items if "skip" in it}
    assert set(skipped) == {"missing", "corrupt", "two-images", "text"}  # text-only: stage 1 trains on images
    assert "nope.png" in skipped["missing"] and "bad.png" in skipped["corrupt"] and "no image" in skipped["text"]
    long = items[4]
    assert len(long["input_ids"]) + 4 - 1 == 64          # cut to max_len counting the expanded image
    batch = data.collate(items, pad_id=0)
    assert batch["ids"] == ["ok", "long"] and len(batch["skipped"]) == 4 and batch["cut"] == ["long"]
    assert batch["pixels"].shape == (2, 3, 16, 16) and batch["has_image"].tolist() == [True, True]
    # an image placed after max_len cannot be cut around: the sample is dropped
    late = [{"id": "late", "image": "a.png", "conversations": [
        {"from": "human", "value": "y" * 80 + "<image>"}, {"from": "gpt", "value": "ok"}]}]
    path, folder = write_llava(tmp_path, late)
    ds = data.LLaVADataset(path, folder, CharTokenizer(), "vicuna_v1", ImageProcessor(16), 4, 64)
    assert "skip" in ds[0] and "split the image" in ds[0]["skip"]


def tiny_vlm(projector="xdp", tokens=None, seed=0):
    torch.manual_seed(seed)
    tower = CLIPVisionTower(VisionConfig.preset("tiny", image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=2))
    lm = XmodelLM(LMConfig(vocab_size=131, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=64,
                           max_seq_len=256))
    return XmodelVLM(tower, build_projector(projector, 32, 32, tower.grid, tokens), lm)


def test_splice_equals_manual_embedding():
    vlm = tiny_vlm().eval()
    tok = CharTokenizer()
    a, _ = data.build_sample([{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "red"}], tok, "vicuna_v1")
    b, _ = data.build_sample([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "yo"}], tok, "vicuna_v1")
    pixels = torch.randn(1, 3, 32, 32)
    batch = data.collate([{"id": 0, "input_ids": torch.tensor(a), "labels": torch.tensor(a), "pixels": pixels[0]},
                          {"id": 1, "input_ids": torch.tensor(b), "labels": torch.tensor(b), "pixels": None}], 0)
    with torch.no_grad():
        logits, _ = vlm(batch["input_ids"], batch["lengths"], batch["has_image"], batch["pixels"])
        p = a.index(IMAGE_TOKEN_INDEX)
        emb = vlm.lm.model.embed_tokens
        image = vlm.mm_projector(vlm.vision_tower(pixels))[0]
        manual = torch.cat([emb(torch.tensor(a[:p])), image, emb(torch.tensor(a[p + 1:]))])
        ref, _ = vlm.lm(embeds=manual[None])
        ref_b, _ = vlm.lm(torch.tensor([b]))
    assert torch.allclose(logits[0, :len(manual)], ref[0], atol=1e-5)
    assert torch.allclose(logits[1, :len(b)], ref_b[0], atol=1e-5)
    with pytest.raises(ValueError, match="2 <image> placeholders"):
        ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX]])
        vlm(ids, torch.tensor([3]), torch.tensor([True]), torch.randn(1, 3, 32, 32))


def test_generate_matches_full_forward():
    vlm = tiny_vlm().eval()
    prompts = [[1, 40, IMAGE_TOKEN_INDEX, 50, 60], [1, 70, 71]]
    pixels = torch.randn(1, 3, 32, 32)
    new = vlm.generate(prompts, pixels, max_new_tokens=5)
    for b, p in enumerate(prompts):   # each prompt alone, greedy, no cache: the same tokens
        seq = list(p)
        for _ in range(5):
            ids = torch.tensor([seq])
            logits, _ = vlm(ids, torch.tensor([len(seq)]), torch.tensor([IMAGE_TOKEN_INDEX in seq]),
                            pixels if IMAGE_TOKEN_INDEX in seq else None)
            seq.append(int(logits[0, -1].argmax()))
        assert new[b].tolist() == seq[len(p):]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small shapes world, a SentencePiece tokenizer, a random tiny LM and CLIP on disk."""
    root = tmp_path_factory.mktemp("vlm")
    shapes.generate_shapes_world(str(root / "shapes"), n_train=120, n_test=20, n_comp=10, corpus_mb=0.1, workers=1)
    tok = train_sentencepiece([str(root / "shapes" / "corpus")], str(root / "lm" / "tok.model"), vocab_size=600,
                              hard_vocab_limit=False)
    torch.manual_seed(0)
    lm = XmodelLM(LMConfig.preset("tiny", vocab_size=load_tokenizer(tok).vocab_size, n_layer=2, n_embd=64,
                                  n_head=4, n_kv_head=2, intermediate_size=128))
    lm.save_hf(str(root / "lm"))
    CLIPVisionTower(VisionConfig.preset("tiny", image_size=64, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2)).save_hf(str(root / "clip"))
    return root


def vlm_config(root, out, **kw):
    base = dict(lm=str(root / "lm"), vision=str(root / "clip"), data=str(root / "shapes"), out_dir=str(root / out),
                batch1=8, batch2=8, micro_batch=4, steps1=3, steps2=3, lr2=1e-3, log_interval=1, evaluate=False)
    return VLMConfig(**{**base, **kw})


@pytest.mark.parametrize("lm_in_stage1", [False, True])
def test_what_each_stage_trains(world, lm_in_stage1):
    """The paper's stage 1 trains the projector alone; the tiny scale's (--lm_in_stage1, the
    default) the LM too. Stage 2 trains both; the tower never learns."""
    out = f"stages_{lm_in_stage1}"
    train_vlm.main(vlm_config(world, out, lm_in_stage1=lm_in_stage1))
    stage0 = {k: v for k, v in XmodelLM.from_hf(str(world / "lm")).state_dict().items()}
    tower0 = load_file(str(world / "clip" / "model.safetensors"))
    s1 = XmodelVLM.load(str(world / out / "stage1"))
    s2 = XmodelVLM.load(str(world / out / "model"))
    assert s2.system == "" and VLMConfig().system_prompt is False  # the tiny scale's stage 2: no system prompt
    assert VLMConfig().lm_in_stage1 and not train_vlm.VLM_PRESETS["paper"]["lm_in_stage1"]
    lm_changed = [not torch.equal(v, s1.lm.state_dict()[k]) for k, v in stage0.items()]
    assert (any(lm_changed) if lm_in_stage1 else not any(lm_changed))                       # stage 1
    assert any(not torch.equal(v, s2.lm.state_dict()[k]) for k, v in s1.lm.state_dict().items())  # stage 2
    assert any(not torch.equal(v, s1.mm_projector.state_dict()[k]) for k, v in s2.mm_projector.state_dict().items())
    for model in (s1, s2):                                                                  # tower never trained
        assert all(torch.equal(v, model.vision_tower.state_dict()[k]) for k, v in tower0.items())


@pytest.mark.parametrize("stop_at", [(1, 1), (2, 2)])
def test_exact_resume(world, stop_at):
    """Interrupted in stage 1 (where the tiny scale trains the LM too) or in stage 2, then resumed:
    the same weights as a straight run."""
    straight = train_vlm.main(vlm_config(world, "straight", steps1=2, steps2=4, ckpt_interval=2))
    halves = f"halves_{stop_at[0]}"
    train_vlm.main(vlm_config(world, halves, steps1=2, steps2=4, ckpt_interval=2), stop_at=stop_at)
    resumed = train_vlm.main(vlm_config(world, halves, steps1=2, steps2=4, ckpt_interval=2,
                                        stage=str(stop_at[0]) if stop_at[0] == 2 else "both", resume=True))
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_cached_tower_features_give_the_loss_of_the_pixels(world, tmp_path, capsys):
    """train_vlm.cache_features: the dataset then hands out each image's frozen tower features,
    and a batch's loss is the one from the pixels; a corrupt image becomes a skip naming it; the
    next stage reuses them."""
    model = train_vlm.build_model(vlm_config(world, "cache"), "cpu")
    tok = load_tokenizer(str(world / "lm" / "tok.model"))
    shapes_dir, images = world / "shapes", tmp_path / "images"
    shutil.copytree(shapes_dir / "images", images)
    samples = json.loads((shapes_dir / "instruct.json").read_text())[:12]
    (images / samples[5]["image"]).write_bytes(b"not a png")
    (tmp_path / "i.json").write_text(json.dumps(samples))
    dataset = data.LLaVADataset(str(tmp_path / "i.json"), str(images), tok, "vicuna_v1", ImageProcessor(64),
                                model.mm_projector.tokens, 512, questions=True, system="")
    keys = ("input_ids", "lengths", "has_image", "pixels", "features", "labels")
    loss = lambda items: model(**{k: data.collate(items, tok.pad_id)[k] for k in keys})[1]
    bad = [i for i, s in enumerate(samples) if s.get("image") == samples[5]["image"]]  # 7 samples share an image
    good = [i for i in range(12) if i not in bad]
    plain = [dataset[i] for i in good]
    known, off = {}, torch.autocast("cpu", enabled=False)
    train_vlm.cache_features(model, dataset, "cpu", off, 2, None, known)
    cached = [dataset[i] for i in range(12)]
    assert all("cannot read image" in cached[i]["skip"] and samples[5]["image"] in cached[i]["skip"] for i in bad)
    assert all(cached[i]["pixels"] is None and cached[i]["features"].shape == (model.vision_tower.num_patches, 32)
               for i in good) and len(good) > 2
    assert len(dataset.features) == len({s["image"] for s in samples})
    with torch.no_grad():
        assert loss([cached[i] for i in good]).item() == pytest.approx(loss(plain).item(), rel=1e-5)
    calls = []  # the next stage, on the same images: nothing computed again
    model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    again = data.LLaVADataset(str(tmp_path / "i.json"), str(images), tok, "vicuna_v1", ImageProcessor(64),
                              model.mm_projector.tokens, 512, questions=True, system="")
    train_vlm.cache_features(model, again, "cpu", off, 2, None, known)
    assert not calls and again.features == dataset.features
    again.features = None  # over the memory budget: nothing cached, the tower runs at every step
    train_vlm.cache_features(model, again, "cpu", off, 2, "stage 2", {}, budget=1000)
    assert again.features is None and again[good[0]]["pixels"] is not None and "every step" in capsys.readouterr().out


def test_missing_prerequisite_names_the_command(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="python train_clip.py"):
        train_vlm.main(vlm_config(world, "x", vision=str(tmp_path / "no_clip")))


def test_official_layout_loads_like_the_parts(tmp_path):
    """A checkpoint written in the released Xmodel_VLM layout (xdpnetv10_4, LLaVA keys)."""
    vlm = tiny_vlm("xdp-concat", tokens=4, seed=3).eval()
    vlm.vision_tower.save_hf(str(tmp_path / "clip"))
    official = tmp_path / "Xmodel_VLM"
    official.mkdir()
    state = dict(vlm.lm.state_dict())
    state.update({f"model.mm_projector.{k}": v for k, v in vlm.mm_projector.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(official / "model.safetensors"))
    c = vlm.lm.config
    json.dump({"architectures": ["XmodelLMForCausalLM"], "model_type": "xmodelvlm", "hidden_size": c.n_embd,
               "intermediate_size": c.intermediate_size, "num_attention_heads": c.n_head,
               "num_key_value_heads": c.n_kv_head, "num_hidden_layers": c.n_layer, "vocab_size": c.vocab_size,
               "rms_norm_eps": 1e-5, "max_position_embeddings": 256, "hidden_act": "silu",
               "mm_projector_type": "xdpnetv10_4", "mm_hidden_size": 32, "mm_vision_select_layer": -2,
               "mm_vision_tower": "openai/clip-vit-large-patch14-336", "tie_word_embeddings": False},
              open(official / "config.json", "w"))
    loaded = XmodelVLM.load(str(official), str(tmp_path / "clip")).eval()
    assert loaded.mm_projector.tokens == 4 and loaded.mm_projector.kind == "xdp-concat"
    assert loaded.system == data.VICUNA_SYSTEM  # no system_prompt key: the release was trained with Vicuna's
    prompts, pixels = [[1, 40, IMAGE_TOKEN_INDEX, 50, 60]], torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, _ = vlm(torch.tensor(prompts), torch.tensor([5]), torch.tensor([True]), pixels)
        b, _ = loaded(torch.tensor(prompts), torch.tensor([5]), torch.tensor([True]), pixels)
    assert torch.allclose(a, b, atol=1e-6)


def test_eval_run_writes_answers_in_order_and_resumes(world, capsys):
    cfg = vlm_config(world, "eval")
    model_dir = str(world / "eval" / "model")
    train_vlm.build_model(cfg, "cpu").save(model_dir)
    shutil.copy(str(world / "lm" / "tok.model"), model_dir)
    out = str(world / "eval" / "gqa.jsonl")
    eval_vlm.run("shapes_gqa", model_dir, str(world / "shapes"), out, batch_size=8, max_new_tokens=4)
    questions = eval_vlm.read_questions("shapes_gqa", str(world / "shapes"))
    lines = open(out).read().splitlines()
    assert [json.loads(l)["question_id"] for l in lines] == [q["question_id"] for q in questions]
    open(out, "w").write("\n".join(lines[:5]) + "\n")            # an interrupted run: 5 answers
    eval_vlm.run("shapes_gqa", model_dir, str(world / "shapes"), out, batch_size=8, max_new_tokens=4)
    assert open(out).read().splitlines() == lines                # greedy: the same answers, in order
    assert "5 already answered" in capsys.readouterr().out
    result = eval_vlm.score("shapes_gqa", out, str(world / "shapes"))
    assert 0 <= result["score"] <= 100 and result["n"] == len(questions)


def test_vlm_learns_to_read_the_image():
    """Through splice, projector gradients and cached generation: after a few dozen steps the
    model names the colour of a plain image, which it can only learn by looking at it."""
    torch.manual_seed(0)
    vlm, tok = tiny_vlm(), CharTokenizer()
    colours = {"red": (1.5, -1.5, -1.5), "green": (-1.5, 1.5, -1.5), "blue": (-1.5, -1.5, 1.5)}
    question = [{"from": "human", "value": "<image>\nColour?"}]

    def samples(names):
        items = []
        for i, c in enumerate(names):
            ids, labels = data.build_sample(question + [{"from": "gpt", "value": c}], tok, "vicuna_v1")
            pixels = torch.tensor(colours[c]).view(3, 1, 1).expand(3, 32, 32).clone()
            items.append({"id": i, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixels": pixels})
        return items

    def batch(names):
        return data.collate(samples(names), tok.pad_id)

    opt = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=3e-3)
    names = list(colours) * 4
    for _ in range(80):
        b = batch(names)
        _, loss = vlm(b["input_ids"], b["lengths"], b["has_image"], b["pixels"], b["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad()
    vlm.eval()
    prompt = data.build_sample(question, tok, "vicuna_v1")[0]
    test = ["blue", "red", "green", "red"]
    out = vlm.generate([prompt] * 4, batch(test)["pixels"], max_new_tokens=8, eos_id=tok.eos_id)
    answers = [tok.decode(row[:row.tolist().index(tok.eos_id)].tolist() if tok.eos_id in row else row.tolist()).strip()
               for row in out]
    assert answers == test
    # image_use: the answers now hang on the image, so another sample's image (another colour) costs a lot
    use = train_vlm.image_use(vlm, samples(test), tok.pad_id, "cpu", micro_batch=3)
    assert use["other"] > 10 * use["own"] and use["samples"] == 4


def test_image_use_finds_no_difference_when_the_visual_tokens_ignore_the_image():
    tok = CharTokenizer()
    items = []
    for i, c in enumerate(["red", "green", "blue"]):
        ids, labels = data.build_sample([{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": c}],
                                        tok, "vicuna_v1")
        items.append({"id": i, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                      "pixels": torch.randn(3, 32, 32)})
    ids, labels = data.build_sample([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "yo"}], tok, "vicuna_v1")
    items.append({"id": "text", "input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixels": None})
    vlm = tiny_vlm()
    use = train_vlm.image_use(vlm, items, tok.pad_id, "cpu", micro_batch=2)
    assert use["samples"] == 3 and vlm.training              # the text-only sample left out; mode restored
    assert abs(use["own"] - use["other"]) > 2e-5             # a random projector passes the image on
    with torch.no_grad():
        vlm.mm_projector.mlp[-1].weight.zero_()              # every image -> the same visual tokens
    use = train_vlm.image_use(vlm, items, tok.pad_id, "cpu", micro_batch=2)
    assert use["own"] == pytest.approx(use["other"], rel=1e-6)
    assert train_vlm.image_use(vlm, items[:1] + items[3:], tok.pad_id, "cpu") is None  # one image: nothing to swap


def test_chat_answers_from_a_saved_vlm_and_explains_a_missing_checkpoint(world, tmp_path):
    model_dir = str(world / "chat_model")
    built = train_vlm.build_model(vlm_config(world, "chat"), "cpu")
    built.system = ""  # as the tiny scale's stage 2 trains it: saved, and chat must follow it
    built.save(model_dir)
    shutil.copy(str(world / "lm" / "tok.model"), model_dir)
    image = next((world / "shapes" / "eval" / "images").glob("*.png"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    chat = [sys.executable, os.path.join(root, "chat.py")]
    out = subprocess.run(chat + ["--ckpt", model_dir, "--image", str(image), "--max_new_tokens", "5", "What colour?"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr     # a random model says something
    # the same answer as greedy generation through the API
    model, tok, _ = load(model_dir, "cpu")
    assert model.system == ""
    prompt = data.build_sample([{"from": "human", "value": "<image>\nWhat colour?"}], tok, "vicuna_v1", system="")[0]
    new = model.generate([prompt], ImageProcessor(model.vision_tower.config.image_size)(str(image))[None], max_new_tokens=5, eos_id=tok.eos_id).tolist()[0]
    new = new[:new.index(tok.eos_id)] if tok.eos_id in new else new
    assert out.stdout.strip() == tok.decode(new).strip()
    missing = subprocess.run(chat + ["--ckpt", str(tmp_path / "none"), "hi"], capture_output=True, text=True)
    assert missing.returncode != 0 and "python train_vlm.py" in missing.stderr


def test_ablation_token_counts_follow_the_papers_strides():
    assert [grid_tokens(n, 8) for n in (576, 144, 36, 4, 1)] == [64, 16, 4, 1, 1]
    assert [grid_tokens(n, 24) for n in (576, 144, 36, 4, 1)] == [576, 144, 36, 4, 1]
    assert grid_tokens(144, 12) == 36 and grid_tokens(36, 12) == 9
    with pytest.raises(ValueError, match="squares whose side divides 24"):
        grid_tokens(100, 8)
    # every projector at its default, then the first one swept; 4 and 1 both give 1 token: run once
    assert ablate.ablation_settings(["xdp", "ldpv2"], [576, 144, 4, 1], 8, 32, 64) == [
        ("xdp", 16), ("ldpv2", 16), ("xdp", 64), ("xdp", 1)]
    with pytest.raises(ValueError, match="cannot give 16"):  # before any training starts
        ablate.ablation_settings(["linear"], [144], 8, 32, 64)


def test_ablate_trains_each_setting_writes_the_table_and_resumes(world, capsys):
    out = str(world / "ablation")
    os.makedirs(out)
    options = dict(lm=str(world / "lm"), vision=str(world / "clip"), steps1=1, steps2=1, batch1=4, batch2=4,
                   micro_batch=4)
    rows = ablate.ablate(["xdp"], [576, 4], str(world / "shapes"), out, **options)
    assert [(r["projector"], r["tokens"]) for r in rows] == [("xdp", 16), ("xdp", 64), ("xdp", 1)]
    for r in rows:  # the model of each setting really has that many visual tokens
        saved = json.load(open(os.path.join(out, f"xdp_{r['tokens']}", "model", "config.json")))
        assert saved["mm_image_tokens"] == r["tokens"]
        assert 0 <= r["shapes_gqa"] <= 100 and 0 <= r["shapes_pope"] <= 1 and 0 <= r["shapes_mme"] <= 800
    table = open(os.path.join(out, "ablation.md")).read().splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("| xdp | 16 |")
    assert os.path.getsize(os.path.join(out, "ablation.png")) > 1000
    weights = os.path.join(out, "xdp_64", "model", "model.safetensors")
    mtime = os.path.getmtime(weights)
    capsys.readouterr()
    assert ablate.ablate(["xdp"], [576, 4], str(world / "shapes"), out, **options) == rows
    assert capsys.readouterr().out.count("done before") == 3 and os.path.getmtime(weights) == mtime
    # another recipe in the same folder: trained again, not mixed with the old results
    ablate.ablate(["xdp"], [576], str(world / "shapes"), out, **{**options, "steps2": 2})
    assert "done before" not in capsys.readouterr().out and os.path.getmtime(weights) > mtime


@pytest.mark.parametrize("fsdp", [False, True])
def test_resume_under_torchrun_with_two_processes_equals_one(world, fsdp, monkeypatch):
    """Stopped in one process in stage 2, resumed by two (gloo, DDP or FSDP2): the same final
    model as one process throughout. A step's global batch does not depend on the number of
    processes, and checkpoints hold whole weights and optimizer state keyed by name."""
    monkeypatch.setenv("XVLM_CPU_FP32", "1")  # bf16 autocast rounds a batch split over processes differently
    kw = dict(steps1=2, steps2=4, ckpt_interval=2)
    out = f"w2-{'fsdp' if fsdp else 'ddp'}"
    straight = train_vlm.main(vlm_config(world, "w1-" + out, **kw))
    train_vlm.main(vlm_config(world, out, **kw), stop_at=(2, 2))
    cfg = vlm_config(world, out, **kw, stage="2", resume=True, fsdp=fsdp)
    args = [f"--{k}={v}" for k, v in vars(cfg).items()]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          os.path.join(root, "train_vlm.py"), *args], cwd=root, timeout=300, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"2 processes ({'FSDP2' if fsdp else 'DDP'})" in run.stdout, run.stdout[-2000:]
    assert "resumed stage 2 at step 2" in run.stdout
    resumed = XmodelVLM.load(str(world / out / "model"))
    for k, v in straight.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-5), k


def test_more_steps_than_an_epoch_reshuffle_instead_of_running_out():
    order = train_vlm.sample_order(10, 25, [1337, 2])
    assert len(order) == 30                                                     # three epochs of 10
    assert all(sorted(order[e * 10:(e + 1) * 10]) == list(range(10)) for e in range(3))
    assert (order[:10] == np.random.default_rng([1337, 2]).permutation(10)).all()  # epoch 1 as before
    s = SimpleNamespace(batch=4, grad_accum=2)
    cfg = VLMConfig(micro_batch=2)
    batches = list(train_vlm.step_batches(order, np.zeros(10), 0, 6, s, cfg, 0, 1))  # 24 samples > 10
    assert len(batches) == 12 and all(len(b) == 2 for b in batches)


def test_a_curriculum_holds_samples_back_until_their_share_of_the_stage():
    after = [0, 0, 0, 0.5, 0.5, 0.75, 0, 0, 0, 0]                       # samples 3, 4 and 5 wait
    order = train_vlm.sample_order(10, 40, [1337, 2], after)
    assert len(order) == 40
    assert set(order[:20]) == {0, 1, 2, 6, 7, 8, 9}                      # the first half: only the 7 free ones
    assert set(order[20:30]) <= set(range(5)) | {6, 7, 8, 9} and {3, 4} <= set(order[20:30])
    assert sorted(order[30:]) == list(range(10))                          # the last quarter: one epoch of all
    assert (train_vlm.sample_order(10, 40, [1337, 2], [0] * 10) == train_vlm.sample_order(10, 40, [1337, 2])).all()
    close = train_vlm.sample_order(10, 40, [1337, 2], [0] * 8 + [0.5, 0.501])  # points closer than one sample
    assert len(close) == 40 and set(close[:20]) == set(range(8)) and {8, 9} <= set(close[20:])


@pytest.mark.parametrize("value, message", [(1.0, r"must be a number in \[0, 1\).*got 1.0"),
                                            ("0.5", r"sample 1 \(id b\).*got '0.5'"),
                                            (True, "got True"), (None, "got None")])
def test_a_bad_curriculum_value_names_its_sample(value, message):
    dataset = SimpleNamespace(path="x.json", samples=[{"id": "a"}, {"id": "b", "after": value}],
                              sample_id=lambda i: "ab"[i])
    with pytest.raises(UserError, match=message):
        train_vlm.curriculum(dataset)
    late = SimpleNamespace(path="x.json", samples=[{"id": "a", "after": 0.5}], sample_id=lambda i: "a")
    with pytest.raises(UserError, match="none may come first"):
        train_vlm.curriculum(late)


def test_oracle_tower_returns_each_scenes_ground_truth(world):
    tower = OracleTower(str(world / "shapes"))
    scene = json.loads((world / "shapes" / "scenes_test.jsonl").read_text().splitlines()[0])
    pixels = ImageProcessor(64)(str(world / "shapes" / scene["image"]))
    features = tower(pixels[None])[0]                                   # (9, 20)
    assert features.shape == (9, 20)
    assert torch.allclose(features.norm(dim=-1), torch.full((9,), 15.0))
    for o in scene["objects"]:                                          # each object's cell holds its attributes
        f = features[3 * o["row"] + o["col"]] > 0
        assert f[list(shapes.COLOURS).index(o["colour"])] and f[6 + shapes.SHAPES.index(o["shape"])]
        assert f[11 + shapes.SIZES.index(o["size"])] and f[13]
        assert f[:14].sum() == 4                                        # and nothing else
    empty = [p for p in range(9) if p not in {3 * o["row"] + o["col"] for o in scene["objects"]}]
    assert all((features[p, :14] == 0).all() for p in empty)
    assert all(features[p, 14 + p // 3] > 0 and features[p, 17 + p % 3] > 0 for p in range(9))  # row, column
    with pytest.raises(ValueError, match="not in its shapes world"):
        tower(torch.zeros(1, 3, 64, 64))


def test_oracle_run_trains_and_scores_in_process_without_saving(world):
    out = world / "oracle"
    train_vlm.main(vlm_config(world, "oracle", vision="does-not-exist", oracle=True, evaluate=True,
                              projector="mlp2x_gelu", image_check=0))
    assert (out / "eval" / "shapes_report.json").exists()
    assert not (out / "model").exists() and not (out / "stage1").exists()
    with pytest.raises(UserError, match="oracle"):
        train_vlm.main(vlm_config(world, "oracle", oracle=True, stage="2"))


# ----- the probe and the pictures ---------------------------------------------------

def test_recorded_attention_is_the_models_attention():
    """The written-out attention (which keeps its probabilities) against SDPA: the same logits,
    rows that sum to one, nothing on later positions, one matrix per layer."""
    vlm = tiny_vlm().eval()
    prompts, pixels = [[1, 40, IMAGE_TOKEN_INDEX, 50, 60, 61]], torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        x, _ = vlm.prompt_embeds(prompts, pixels)
        reference, _ = vlm.lm(embeds=x)
        with eval_vlm.recorded_attention() as kept:
            written_out, _ = vlm.lm(embeds=x)
    assert torch.allclose(written_out, reference, atol=1e-5)
    assert len(kept) == vlm.lm.config.n_layer
    T = x.shape[1]
    for probs in kept:
        assert probs.shape == (1, vlm.lm.config.n_head, T, T)
        assert torch.allclose(probs.sum(-1), torch.ones(1, vlm.lm.config.n_head, T))
        assert (probs.triu(1) == 0).all()


def test_probe_counts_right_answers_per_type(world, monkeypatch):
    picked = eval_vlm.probe_questions(str(world / "shapes"), per_type=2)
    questions = eval_vlm.read_questions("shapes_gqa", str(world / "shapes"))
    truth = json.load(open(world / "shapes" / "eval" / "gqa" / "testdev_balanced_questions.json"))
    kinds = [truth[str(q["question_id"])]["types"]["detailed"] for q in questions]
    expected = []  # by hand: the first two of each type, in file order
    for q, kind in zip(questions, kinds):
        if sum(k == kind for _, _, k in expected) < 2:
            expected.append((q, truth[str(q["question_id"])]["answer"], kind))
    assert picked == expected
    # a model that gets the first question of each type right (with GQA's allowed '.' and capitals)
    first = {}
    for q, gold, kind in picked:
        first.setdefault(kind, q["question_id"])
    gold_of = {q["question_id"]: gold for q, gold, _ in picked}
    monkeypatch.setattr(eval_vlm, "answer", lambda model, tok, qs, **_: [
        gold_of[q["question_id"]].capitalize() + "." if q["question_id"] in first.values() else "zebra"
        for q in qs])
    vlm = tiny_vlm().train()
    result = eval_vlm.probe(vlm, None, picked, batch_size=3)
    per_kind = {k: sum(kk == k for _, _, kk in picked) for k in first}
    assert result == {"overall": pytest.approx(100 * len(first) / len(picked)),
                      **{k: 100 / n for k, n in sorted(per_kind.items())}}
    assert vlm.training                                      # the mode is restored


def test_learning_curves_keep_the_latest_run(tmp_path):
    rows = [{"stage": 1, "step": 1, "loss": 9.0}]
    rows += [{"stage": 2, "step": s, "loss": 5.0 - s} for s in (1, 2, 3, 4)]
    rows += [{"stage": 2, "step": 4, "probe": {"colour": 40.0}}]
    rows += [{"stage": 2, "step": s, "loss": 10.0 + s} for s in (1, 2)]           # a fresh run, same folder
    rows += [{"stage": 2, "step": 2, "probe": {"colour": 7.0}}]
    rows += [{"stage": 2, "image_use": {"own": 1.0}}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"stage": 2, "st')  # a write cut short
    loss, probes, unreadable = eval_vlm.learning_curves(str(path))
    assert loss == {1: 11.0, 2: 12.0} and probes == {"colour": {2: 7.0}} and unreadable == 1


def test_training_probes_and_draws_the_pictures(world):
    out = world / "pictures"
    model = train_vlm.main(vlm_config(world, "pictures", steps2=2, probe=1, image_check=0))
    probes = [r for r in map(json.loads, open(out / "metrics.jsonl")) if "probe" in r]
    assert [r["step"] for r in probes] == [1, 2]
    assert all(set(r["probe"]) >= {"overall", "colour"} for r in probes)
    for name in ("learning.png", "attention.png"):
        assert Image.open(out / name).size[0] > 200
    question = eval_vlm.probe_questions(str(world / "shapes"), per_type=1)[0][0]
    maps, reply = eval_vlm.attention_to_image(model, load_tokenizer(str(world / "lm" / "tok.model")), question)
    assert maps.shape == (model.lm.config.n_layer, model.mm_projector.tokens)
    assert ((maps >= 0) & (maps.sum(1, keepdim=True) <= 1 + 1e-5)).all() and isinstance(reply, str)


def test_lookup_gauge_scores_the_named_objects_word_and_cell(world, monkeypatch, capsys):
    """lookup_gauge against the scene files, with an LM made to answer "circle" or "red" whatever
    it sees and heads made to look at one visual token in the top center cell (head 0) or the
    last one (the others): its rates must be the shares of the asked-about objects that are
    circles / red / in those cells, counted here from scenes_test.jsonl, and each prompt must end
    with the asked-about object's word."""
    out = world / "lookup"
    model = train_vlm.main(vlm_config(world, "lookup", steps2=1, probe=1, image_check=0)).eval()
    assert "lookup by colour:" in capsys.readouterr().out                        # printed by the run...
    assert "lookup" in json.loads(open(out / "metrics.jsonl").readlines()[-1])     # ...and logged
    tok = load_tokenizer(str(world / "lm" / "tok.model"))
    side = math.isqrt(model.mm_projector.tokens)
    top_center = (side + 2) // 3                       # row 0, the first column of the middle third
    prompts, real_embeds = [], model.prompt_embeds
    real_attention, real_forward = eval_vlm.lm_code.attention, model.lm.forward

    def prompt_embeds(ids, pixels):
        prompts.append(ids[0])
        return real_embeds(ids, pixels)

    @eval_vlm.contextmanager
    def pointing():
        kept = []

        def attention(q, k, v, causal, mask=None):
            start = prompts[-1].index(IMAGE_TOKEN_INDEX)
            p = torch.zeros(q.shape[0], q.shape[1], k.shape[2], k.shape[2])
            p[:, 0, -1, start + top_center] = p[:, 1:, -1, start + side * side - 1] = 1
            kept.append(p)
            return real_attention(q, k, v, causal, mask)
        with eval_vlm.mock.patch.object(eval_vlm.lm_code, "attention", attention):
            yield kept

    def forward(*args, **kw):
        logits, loss = real_forward(*args, **kw)
        for word in ("circle", "red"):
            logits[..., tok.encode(" " + word)[-1]] += 1e4
        return logits, loss
    monkeypatch.setattr(model, "prompt_embeds", prompt_embeds)
    monkeypatch.setattr(eval_vlm, "recorded_attention", pointing)
    monkeypatch.setattr(model.lm, "forward", forward)
    got = eval_vlm.lookup_gauge(model, tok, str(world / "shapes"))
    scenes = [json.loads(line) for line in open(world / "shapes" / "scenes_test.jsonl")]
    words = []
    for key, other, said in (("colour", "shape", "circle"), ("shape", "colour", "red")):
        asked = [o for s in scenes for o in s["objects"] if [p[key] for p in s["objects"]].count(o[key]) == 1]
        words += [o[key] for o in asked]
        share = lambda f: pytest.approx(100 * sum(map(f, asked)) / len(asked))
        assert got[key]["n"] == len(asked) > 10
        assert got[key]["next"] == share(lambda o: o[other] == said)
        best = max(sum(o["row"] == 0 and o["col"] == 1 for o in asked), sum(o["row"] == o["col"] == 2 for o in asked))
        assert got[key]["heads"] == [pytest.approx(100 * best / len(asked))] * model.lm.config.n_layer
    assert [tok.decode([ids[-1]]).strip() for ids in prompts] == words
