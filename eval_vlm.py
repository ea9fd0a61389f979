"""
Evaluate a VLM on the benchmarks of the Xmodel-VLM paper, each scored by its official rules.

    python eval_vlm.py run BENCH --ckpt DIR --data DIR --out FILE  answer a benchmark with a model
    python eval_vlm.py score BENCH --answers FILE --data DIR      score an answer file (scorers.py)

An answer file is LLaVA's: one JSON object per line, {"question_id", "prompt", "text", "model_id"},
where "prompt" is the question as asked and "text" the model's reply. DIR is the benchmark's
folder in LLaVA's playground/data/eval layout, or for the shapes_* sets either that folder
(data/shapes/eval/pope, ...) or the shapes world itself (data/shapes, found by manifest.json).
`score` prints every sub-metric, then, as its last line, one line of JSON:
{"bench": ..., "score": HEADLINE, ...sub-metrics}.

  bench        DIR holds                                                 headline "score"
  pope         llava_pope_test.jsonl, coco/coco_pope_{random,popular,      mean F1 of the 3 splits (0-1)
                 adversarial}.json
  sqa          problems.json, pid_splits.json (llava_test_CQM-A.json)    IMG accuracy, %
  textvqa      TextVQA_0.5.1_val.json, llava_textvqa_val_v051_ocr.jsonl  VQA soft accuracy, %
  vizwiz       llava_test.jsonl (+ Annotations/val.json to score val)    soft accuracy, % (test split:
                                                                            writes the EvalAI upload file)
  gqa          testdev_balanced_questions.json                           accuracy, %
  mme          MME_Benchmark_release_version/ (ground truth .txt files)  perception: sum of the subtask
                                                                            scores (10 subtasks: of 2000)
  mmbench      mmbench_dev_20230712.tsv                                  circular accuracy, %
  mmbench_cn   mmbench_dev_cn_20231003.tsv                               circular accuracy, %
  mmvet        mm-vet.json, and --grades FILE or --grader                total, 0-100
  shapes_pope, shapes_gqa, shapes_gqa_compositional, shapes_sqa, shapes_mme: the shapes world's
               held-out sets (shapes.py), scored by the scorers above; shapes_gqa* also per question type

Each scorer (scorers.py) restates an official script and keeps that script's quirks, so that its
numbers can be compared with published ones. Input that would make a score wrong (a bad line, a
missing or extra question, POPE answers out of order) stops with an error that names the file
and line: nothing is scored on partial data. The paper's ablations are ablate.py.
"""

import argparse
import json
import math
import os
import re
import sys
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from unittest import mock

import torch

import model as lm_code
import shapes
from common import checked, pyplot, run_main, run_moved
from data import IMAGE_TOKEN_INDEX, VICUNA_SYSTEM, build_sample
from scorers import (CHOICE, SCORERS, SHAPES, ScoreError, at, find, gqa_right, load_json, load_jsonl, read_answers,
                     rounded, score)
from vision import ImageProcessor
from vlm import load

# What `run` appends to each question; every other benchmark's question file already ends with
# its suffix (scorers.SHORT or scorers.YESNO).
PROMPT_SUFFIX = {"sqa": CHOICE, "shapes_sqa": CHOICE, "mmbench": CHOICE,
                 "mmbench_cn": "\n请直接回答选项字母。"}  # LLaVA's --lang cn: "answer with the option's letter directly"


# -----------------------------------------------------------------------------
# Running a model on a benchmark
#
# LLaVA's model_vqa_loader: each question becomes one Vicuna v1 prompt, "<image>\n" + the
# question text (as the question file words it, suffix included) + the benchmark's extra
# suffix (PROMPT_SUFFIX: ScienceQA's letter instruction, which its file leaves out); the
# image is padded to a square; decoding is greedy. Answers are appended as they come, so an
# interrupted run resumes where it stopped.

def read_questions(bench, data_dir, image_folder=None):
    """The benchmark's questions in file order: [{"question_id", "text", "image" (path or None)}]."""
    base = SHAPES.get(bench, bench)
    manifest = os.path.join(data_dir, "manifest.json")
    if bench in SHAPES and os.path.isfile(manifest):  # the shapes world's root
        info = load_json(manifest)["benchmarks"][base]
        question_file = os.path.join(data_dir, info["question_file"])
        image_folder = image_folder or os.path.join(data_dir, info["image_folder"])
    else:
        names = {"sqa": "llava_test_CQM-A.json", "scienceqa": "llava_test_CQM-A.json", "pope": "llava_pope_test.jsonl",
                 "gqa": "llava_gqa_testdev_balanced.jsonl", "mme": "llava_mme.jsonl",
                 "textvqa": "llava_textvqa_val_v051_ocr.jsonl", "vizwiz": "llava_test.jsonl"}
        if base not in names:
            raise ScoreError(f"`run` reads LLaVA question files for {', '.join(sorted(names))}; {bench} "
                             f"needs its own question reader")
        question_file = find(data_dir, names[base])
        image_folder = image_folder or data_dir
    is_json = question_file.endswith(".json")  # ScienceQA's LLaVA file: conversations, the question first
    rows = []
    for n, q in enumerate(load_json(question_file) if is_json else load_jsonl(question_file), 1):
        try:
            image = q.get("image")
            rows.append({"question_id": q["id"] if is_json else q["question_id"],
                         "image": os.path.join(image_folder, image) if image else None,
                         "text": q["conversations"][0]["value"].replace("<image>", "").strip() if is_json else q["text"]})
        except (KeyError, IndexError, TypeError, AttributeError):  # a field missing, or not a string
            expected = "id, conversations[0].value" if is_json else "question_id, text"
            raise ScoreError(f"{question_file}, {'question' if is_json else 'line'} {n}: expected {expected} (and "
                             f"an optional image file name), found {json.dumps(q)[:160]}") from None
    return rows


def run(bench, ckpt, data_dir, out, batch_size=32, max_new_tokens=32, image_folder=None, device=None,
        loaded=None):
    """Answer every question of a benchmark into `out` (jsonl), skipping those already there.
    `loaded`: (model, tokenizer, is_vlm) already in memory, instead of loading ckpt."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok, is_vlm = loaded or load(ckpt, device)
    if not is_vlm:
        raise ScoreError(f"{ckpt} is a language model without a vision tower; `run` needs a VLM")
    questions = read_questions(bench, data_dir, image_folder)
    done = {str(a["question_id"]) for a in read_answers(out)} if os.path.exists(out) else set()
    todo = [q for q in questions if str(q["question_id"]) not in done]
    suffix = PROMPT_SUFFIX.get(bench, "")
    print(f"{bench}: {len(questions)} questions, {len(done)} already answered in {out}")
    t0 = time.time()
    with open(out, "a") as f:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            for q, text in zip(chunk, answer(model, tok, chunk, suffix, max_new_tokens)):
                f.write(json.dumps({"question_id": q["question_id"], "prompt": q["text"] + suffix,
                                    "text": text, "model_id": os.path.basename(ckpt.rstrip("/"))}) + "\n")
            f.flush()
            n, dt = i + len(chunk), time.time() - t0
            if sys.stdout.isatty() or n == len(todo):  # a log file gets the last line only
                print(f"\r{bench}: {n}/{len(todo)} | {n / dt:.1f} questions/s | ETA {dt / n * (len(todo) - n):.0f}s",
                      end="", flush=True)
    print()


def prompt_ids(tok, question, suffix="", system=VICUNA_SYSTEM):
    """The Vicuna v1 prompt of one question (a read_questions row), up to "ASSISTANT:", after the
    system prompt the model was trained with (XmodelVLM.system)."""
    turn = {"from": "human", "value": ("<image>\n" if question["image"] else "") + question["text"] + suffix}
    return build_sample([turn], tok, "vicuna_v1", system=system)[0]


def answer(model, tok, questions, suffix="", max_new_tokens=32):
    """Greedy replies of the model to a batch of read_questions rows, as stripped strings."""
    device = model.lm.lm_head.weight.device
    processor = ImageProcessor(model.vision_tower.config.image_size)
    images = [processor(q["image"]) for q in questions if q["image"]]
    pixels = torch.stack(images).to(device) if images else None
    new = model.generate([prompt_ids(tok, q, suffix, model.system) for q in questions], pixels, max_new_tokens=max_new_tokens,
                         eos_id=tok.eos_id, pad_id=tok.pad_id)
    rows = [row[:row.index(tok.eos_id)] if tok.eos_id in row else row for row in new.tolist()]
    return [tok.decode(row).strip() for row in rows]


def run_command(args):
    run(args.bench, args.ckpt, args.data, args.out, args.batch_size, args.max_new_tokens, args.image_folder)


def score_command(args):
    result = rounded(score(args.bench, args.answers, args.data, upload=args.upload, grades=args.grades,
                           grader=args.grader, grader_model=args.grader_model, grader_prompt=args.grader_prompt))
    print(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps(result, ensure_ascii=False))  # the last line: one JSON object, headline under "score"


# The shapes world's report: every held-out set, answered and scored, one table.

SHAPES_TARGETS = {"overall": 90.0, "colour": 95.0, "shape": 95.0, "count": 80.0, "pope_f1": 0.90}


def shapes_report(ckpt, world, out_dir, loaded=None):
    """Answer and score the shapes world's held-out sets with a trained model; print a table
    and return the numbers (accuracy per question type, POPE F1, the compositional split)."""
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    for bench in ("shapes_gqa", "shapes_gqa_compositional", "shapes_pope", "shapes_mme", "shapes_sqa"):
        answers = os.path.join(out_dir, f"{bench}.jsonl")
        if os.path.exists(answers):
            os.remove(answers)  # a fresh model: answer again
        run(bench, ckpt, world, answers, loaded=loaded)
        results[bench] = score(bench, answers, world)
    results["shapes_gqa"]["per_key"] = per_key(os.path.join(out_dir, "shapes_gqa.jsonl"), world)
    with open(os.path.join(out_dir, "shapes_report.json"), "w") as f:
        json.dump(rounded(results), f, indent=2)
    print_shapes_table(results)
    return results


def print_shapes_table(results):
    gqa = results["shapes_gqa"]
    comp = results["shapes_gqa_compositional"]
    rows = [("overall (GQA-style exact match)", gqa["score"], SHAPES_TARGETS["overall"])]
    for qtype, acc in gqa["per_detailed"].items():
        rows.append((f"  {qtype}", acc, SHAPES_TARGETS.get(qtype)))
        for k, split in gqa.get("per_key", {}).get(qtype, {}).items():
            rows.append((f"    named by {'one attribute' if k == '1' else 'two'} ({split['n']})", split["accuracy"], None))
    rows += [("compositional held-out pairs", comp["score"], None),
             ("POPE-style F1 (x100)", 100 * results["shapes_pope"]["score"], 100 * SHAPES_TARGETS["pope_f1"]),
             ("MME-style perception (of 800)", results["shapes_mme"]["score"], None),
             ("ScienceQA-style IMG accuracy", results["shapes_sqa"]["score"], None)]
    print(f"\n{'held-out shapes benchmarks':<36} {'score':>7} {'target':>7}")
    for name, value, target in rows:
        mark = "" if target is None else ("  ok" if value >= target else "  below target")
        print(f"{name:<36} {value:7.1f} {'' if target is None else f'{target:7.1f}'}{mark}")


def gqa_truth(world):
    """The shapes world's held-out GQA-style questions, as GQA's question file holds them: {id: record}."""
    info = load_json(os.path.join(world, "manifest.json"))["benchmarks"]["gqa"]
    return load_json(find(os.path.dirname(os.path.join(world, info["question_file"])),
                          "testdev_balanced_questions.json"))


def key_attributes(question):
    """How many attributes name the object in a colour or shape question, read from shapes.ref()'s
    phrase: 1 for 'the star' or 'the red object', 2 for 'the large star', 'the small red object' or
    'the star in the top left' (when one attribute does not pick the object out); None for other
    questions. The held-out report splits colour and shape questions by it."""
    m = re.match(r"What (?:colour|shape) is (the .+?)\?|What is the (?:colour|shape) of (the .+?)\?", question)
    if not m:
        return None
    words = (m.group(1) or m.group(2)).split()
    return 1 + (words[1] in shapes.SIZES) + (" in the " in " ".join(words))


def per_key(answers_path, world):
    """Accuracy (%) of the colour and shape questions by how many attributes name their object
    (key_attributes: 'the star' 1, 'the large star' 2): {type: {"1": {"accuracy", "n"}, "2": ...}}.
    The tiny VLM finds an object by its colour word and by little else (README, "Where the lookup fails")."""
    truth, right = gqa_truth(world), defaultdict(lambda: defaultdict(list))
    for a in read_answers(answers_path):
        if str(a.get("question_id")) not in truth:
            raise ScoreError(f"{at(a)}: question {a.get('question_id')!r} is not in the world's GQA-style "
                             f"question file; are these answers to {world}'s held-out set?")
        q = truth[str(a["question_id"])]
        k = key_attributes(q["question"])
        if k:
            right[q["types"]["detailed"]][str(k)].append(gqa_right(a["text"], q["answer"]))
    return {t: {k: {"accuracy": 100 * sum(v) / len(v), "n": len(v)} for k, v in sorted(ks.items())}
            for t, ks in sorted(right.items())}


# -----------------------------------------------------------------------------
# Watching a shapes-world run learn: the probe train_vlm.py runs every `probe` steps of stage 2,
# and the two pictures it saves next to the model at the end.

def probe_questions(world, per_type=20):
    """The first `per_type` held-out GQA-style questions of each type, in file order, with their
    answers: [(read_questions row, answer, type)]. The same questions at every probe."""
    truth = gqa_truth(world)
    picked, taken = [], Counter()
    for q in read_questions("shapes_gqa", world):
        gold = truth[str(q["question_id"])]
        kind = gold["types"]["detailed"]
        if taken[kind] < per_type:
            taken[kind] += 1
            picked.append((q, gold["answer"], kind))
    return picked


def probe(model, tok, picked, batch_size=32):
    """Accuracy (%) per question type, and overall, of the model's greedy replies to probe_questions."""
    was_training = model.training
    model.eval()
    right = defaultdict(list)
    for i in range(0, len(picked), batch_size):
        chunk = picked[i:i + batch_size]
        for (_, gold, kind), text in zip(chunk, answer(model, tok, [q for q, _, _ in chunk], max_new_tokens=8)):
            right[kind].append(gqa_right(text, gold))
    model.train(was_training)
    result = {"overall": 100 * sum(map(sum, right.values())) / len(picked)}
    return {**result, **{kind: 100 * sum(r) / len(r) for kind, r in sorted(right.items())}}


def learning_curves(metrics_path):
    """From a run's metrics.jsonl: stage 2's loss {step: loss}, probes {type: {step: %}} and the
    count of lines that are not JSON (left out: a line cut short by a kill must not cost the
    run its evaluation). Where the steps go back (a fresh run in the same folder, a resume from
    an earlier checkpoint), the rows from there on replace the earlier ones."""
    loss, probes, last, unreadable = {}, defaultdict(dict), 0, 0
    with open(metrics_path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            unreadable += 1
            continue
        if not isinstance(row, dict) or row.get("stage") != 2 or "step" not in row:
            continue
        step = row["step"]
        if step < last:
            loss = {s: v for s, v in loss.items() if s < step}
            probes = defaultdict(dict, {k: {s: v for s, v in p.items() if s < step} for k, p in probes.items()})
        last = step
        if "loss" in row:
            loss[step] = row["loss"]
        for kind, acc in row.get("probe", {}).items():
            probes[kind][step] = acc
    return loss, dict(probes), unreadable


@contextmanager
def recorded_attention():
    """model.attention, swapped for the same computation written out, softmax(Q K^T / sqrt(d)) V,
    which also keeps its probabilities: yields a list that gets one (B, H, Tq, Tk) tensor per call
    (per layer, in order). For pictures of small models; fused attention never forms this matrix."""
    kept = []

    def written_out(q, k, v, causal, mask=None):
        rep = q.shape[1] // k.shape[1]                          # GQA: query head h reads kv head h // rep
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if mask is None and causal:                             # the last Tq of Tk positions
            Tq, Tk = scores.shape[-2:]
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(-1)
        kept.append(probs)
        return (probs @ v.float()).to(v.dtype)

    with mock.patch.object(lm_code, "attention", written_out):
        yield kept


def attention_to_image(model, tok, question):
    """Where the answer looks: for one read_questions row with an image, the attention of the
    prompt's last position (the one that predicts the answer's first token) on each visual
    token, averaged over the heads, one row per layer: (layers, visual tokens), and the reply."""
    device = model.lm.lm_head.weight.device
    ids = prompt_ids(tok, question, system=model.system)
    pixels = ImageProcessor(model.vision_tower.config.image_size)(question["image"])[None].to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), recorded_attention() as kept:
        x, _ = model.prompt_embeds([ids], pixels)
        model.lm(embeds=x)
    reply = answer(model, tok, [question], max_new_tokens=8)[0]
    model.train(was_training)
    start, n = ids.index(IMAGE_TOKEN_INDEX), model.mm_projector.tokens
    return torch.stack([p[0, :, -1, start:start + n].mean(0) for p in kept]), reply


def lookup_gauge(model, tok, world, scenes=200):
    """Does the LM look up the object a word names? Teacher-forced on the first `scenes` held-out
    scenes: for each object whose colour is the only one of its kind in the scene, the prompt
    "<image>\\nIs the <colour>" (cut after the colour word): is the next word, among the scenes'
    shape words, the object's shape? And the same keyed by shape ("Is the <shape>", next: its
    colour). Beside each, per layer, the best head's rate of attending most, among the visual
    tokens, to one in the object's cell (tokens on a square grid; 9 tokens: one per cell).
    Returns {"colour": {"n", "next", "heads"}, "shape": {...}}, accuracies in %."""
    device = model.lm.lm_head.weight.device
    rows = load_jsonl(os.path.join(world, "scenes_test.jsonl"))[:scenes]  # a malformed line is named
    words = {key: sorted({o[key] for s in rows for o in s["objects"]}) for key in ("colour", "shape")}
    word_id = {w: tok.encode(" " + w)[-1] for ws in words.values() for w in ws}
    processor = ImageProcessor(model.vision_tower.config.image_size)
    n_tokens = model.mm_projector.tokens
    side = math.isqrt(n_tokens)
    cell_of = torch.tensor([(t // side * 3 // side) * 3 + t % side * 3 // side for t in range(n_tokens)])
    was_training = model.training
    model.eval()
    result = {}
    for key, other in (("colour", "shape"), ("shape", "colour")):
        right, hits = [], []
        for s in rows:
            pixels = None
            for o in s["objects"]:
                if sum(p[key] == o[key] for p in s["objects"]) != 1:
                    continue
                pixels = processor(os.path.join(world, s["image"]))[None].to(device) if pixels is None else pixels
                ids = prompt_ids(tok, {"text": f"Is the {o[key]}", "image": True}, system=model.system)
                ids = ids[:len(ids) - ids[::-1].index(word_id[o[key]])]  # up to the key word
                with torch.no_grad(), recorded_attention() as kept:
                    x, _ = model.prompt_embeds([ids], pixels)
                    logits, _ = model.lm(embeds=x)
                scores = {w: float(logits[0, -1, word_id[w]]) for w in words[other]}
                right.append(max(scores, key=scores.get) == o[other])
                start = ids.index(IMAGE_TOKEN_INDEX)
                looked = torch.stack([p[0, :, -1, start:start + n_tokens].argmax(-1) for p in kept])  # (layers, heads)
                hits.append(cell_of[looked.cpu()] == o["row"] * 3 + o["col"])
        hit = torch.stack(hits).float().mean(0) if hits else torch.zeros(0, 0)
        result[key] = {"n": len(right), "next": 100 * sum(right) / max(1, len(right)),
                       "heads": [100 * float(h.max()) for h in hit] if side * side == n_tokens else []}
    model.train(was_training)
    return result


def save_pictures(model, tok, world, metrics_path, out_dir):
    """learning.png: stage 2's loss and the probe's accuracy per question type against steps.
    attention.png: the first held-out question's image and, per layer, how much the answer
    attended to each visual token (the token grid, when the count is a square). Returns the
    paths written (none without matplotlib)."""
    plt = pyplot(without="no learning.png or attention.png")
    if plt is None:
        return []
    loss, probes, unreadable = learning_curves(metrics_path)
    if unreadable:
        print(f"learning.png: {unreadable} line(s) of {metrics_path} were not JSON (a write cut short?) and "
              f"were left out")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(list(loss), list(loss.values()))
    left.set(xlabel="stage-2 step", ylabel="training loss", title="loss")
    for kind, points in probes.items():
        right.plot(list(points), list(points.values()), marker="o", lw=2.5 if kind == "overall" else 1.2,
                   label=kind, color="black" if kind == "overall" else None)
    right.set(xlabel="stage-2 step", ylabel="held-out accuracy (%)", ylim=(0, 100),
              title="probe: 20 held-out questions of each type")
    right.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    learning = os.path.join(out_dir, "learning.png")
    fig.savefig(learning, dpi=100)
    plt.close(fig)

    question, gold, _ = probe_questions(world, per_type=1)[0]
    maps, reply = attention_to_image(model, tok, question)
    side = math.isqrt(maps.shape[1])
    shape = (side, side) if side * side == maps.shape[1] else (1, maps.shape[1])
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(2.6 * (1 + len(maps)), 3.2))
    axes[0].imshow(plt.imread(question["image"]))
    axes[0].set_title("held-out image", fontsize=9)
    for layer, (ax, m) in enumerate(zip(axes[1:], maps)):
        ax.imshow(m.reshape(shape).cpu().numpy(), cmap="viridis", vmin=0, vmax=float(maps.max()))  # one scale
        ax.set_title(f"layer {layer}: {100 * m.sum():.0f}% on the image", fontsize=9)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{question['text'].splitlines()[0]}  reply: {reply!r}  answer: {gold!r}", fontsize=9)
    fig.tight_layout()
    picture = os.path.join(out_dir, "attention.png")
    fig.savefig(picture, dpi=100)
    plt.close(fig)
    return [learning, picture]


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ablate"]:  # `python eval_vlm.py ablate` ran the ablations until this release
        return run_moved("ablate.py", argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="answer a benchmark's questions with a model (greedy, batched, resumable)")
    p.add_argument("bench", choices=list(SCORERS), help="which benchmark")
    p.add_argument("--ckpt", required=True, help="a VLM directory (train_vlm.py's out/vlm/model)")
    p.add_argument("--data", required=True, help="the benchmark's folder (LLaVA layout), or a shapes world")
    p.add_argument("--out", required=True, help="answer jsonl; questions already answered there are skipped")
    p.add_argument("--image_folder", help="where the question file's images are (default: the --data folder)")
    p.add_argument("--batch_size", type=checked(int, "x >= 1"), default=32)
    p.add_argument("--max_new_tokens", type=checked(int, "x >= 1"), default=32)
    p.set_defaults(func=run_command)
    p = sub.add_parser("score", help="score an answer file by the benchmark's official rules")
    p.add_argument("bench", choices=list(SCORERS), help="which benchmark")
    p.add_argument("--answers", required=True, help="answer jsonl: question_id, prompt, text per line")
    p.add_argument("--data", required=True, help="the benchmark's folder (LLaVA layout), or a shapes world")
    p.add_argument("--upload", help="vizwiz test split: where to write the EvalAI file (default: ANSWERS_upload.json)")
    p.add_argument("--grades", help="mmvet: precomputed grades; with --grader, where to save the grades")
    p.add_argument("--grader", help="mmvet: module:function(prompt, temperature) -> reply, or an OpenAI-compatible URL")
    p.add_argument("--grader_model", default="gpt-4-0613", help="mmvet: the model name sent to a --grader URL")
    p.add_argument("--grader_prompt", help="mmvet: a file with MM-Vet's few-shot grading prompt (needed with --grader)")
    p.set_defaults(func=score_command)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    run_main(main)
