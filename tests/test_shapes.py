"""Tests for the shapes world (shapes.py).

Each test checks the generated files against something independent of the code that wrote
them: pixels of the rendered images, answers recomputed from the ground-truth scenes by a
small question parser written here, and the parsing logic of the official LLaVA scorers
(eval_pope.py, convert_gqa_for_eval.py + GQA's eval.py, eval_science_qa.py, MME's
convert_answer_to_mme.py + calculation.py), restated in a few lines each.
Run: python -m pytest -q tests/test_shapes.py
"""

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

import data
import eval_vlm
import scorers
import shapes

SMALL = dict(size=64, n_train=300, n_test=80, n_comp=40, corpus_mb=0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes"))
    shapes.generate_shapes_world(out, seed=0, workers=2, **SMALL)
    return out


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def scenes(world, split):
    return read_jsonl(os.path.join(world, f"scenes_{split}.jsonl"))


def tree(root):
    """{relative path: file bytes} for every file under root."""
    files = {}
    for folder, _, names in os.walk(root):
        for n in names:
            path = os.path.join(folder, n)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


# ----- an independent oracle: answer a question from the ground-truth scene ----------

def find(scene, phrase):
    """Objects a noun phrase picks out: 'the red circle', 'the large circle', 'the red object in the center'."""
    phrase, cell = phrase.removeprefix("the "), None
    if " in the " in phrase:
        phrase, cell = phrase.split(" in the ")
    words = phrase.split()
    return [o for o in scene["objects"] if (cell is None or o["cell"] == cell)
            and all(w in (o["shape"], o["colour"], o["size"], "object") for w in words)]


def the(scene, phrase):
    objs = find(scene, phrase)
    assert len(objs) == 1, f"{phrase!r} should pick out exactly one object in {scene['id']}, picks {len(objs)}"
    return objs[0]


def count(scene, noun):
    words = [w.removesuffix("s") for w in noun.split()]  # 'red shapes' -> red shape
    return sum(all(w in (o["shape"], o["colour"], "shape") for w in words) for o in scene["objects"])


def relation(x, rel, y):
    return {"left of": x["col"] < y["col"], "right of": x["col"] > y["col"],
            "above": x["row"] < y["row"], "below": x["row"] > y["row"]}[rel]


def yes(b):
    return "yes" if b else "no"


def either(truth, first, second):
    """An either-or question (shapes.either_or): the answer is the first option, never the second."""
    return truth if first == truth != second else None


CELLS = "|".join(shapes.CELLS)  # a regular expression for any cell's name


def oracle(scene, question):
    """The answer to a generated question, computed from the scene; None if not understood."""
    q = question.replace("<image>\n", "").split("\n")[0].replace(" Please answer yes or no.", "")
    rules = [
        (r"What (?:colour is|is the colour of) (.+)\?", lambda m: the(scene, m[1])["colour"]),
        (r"What (?:shape is|is the shape of) (.+)\?", lambda m: the(scene, m[1])["shape"]),
        (r"(?:Is the (.+) large or small|What size is the (.+))\?", lambda m: the(scene, m[1] or m[2])["size"]),
        (r"(?:Where is the (.+)|In which part of the image is the (.+))\?", lambda m: the(scene, m[1] or m[2])["cell"]),
        (r"How many (.+?) (?:are there|are in the image)\?", lambda m: str(count(scene, m[1]))),
        (r"Is there an? (\w+) (\w+) in (?:the|this) image\?",
         lambda m: yes(any(o["colour"] == m[1] and o["shape"] == m[2] for o in scene["objects"]))),
        (r"(?:Is|Are) there (\d) (.+?) in this image\?", lambda m: yes(count(scene, m[2]) == int(m[1]))),
        (r"Is the (\w+ \w+) (left of|right of|above|below) the (\w+ \w+)\?",
         lambda m: yes(relation(the(scene, m[1]), m[2], the(scene, m[3])))),
        (r"Is the (\w+ \w+) in the (.+) of this image\?", lambda m: yes(the(scene, m[1])["cell"] == m[2])),
        (rf"Is (the .+?) ({CELLS}) or ({CELLS})\?", lambda m: either(the(scene, m[1])["cell"], m[2], m[3])),
        (r"Is (the .+?) an? (\w+) or an? (\w+)\?", lambda m: either(the(scene, m[1])["shape"], m[2], m[3])),
        (r"Is (the .+) (\w+) or (\w+)\?", lambda m: either(the(scene, m[1])["colour"], m[2], m[3])),
        (r"Is (the .+) (\w+)\?", lambda m: yes(the(scene, m[1])["colour"] == m[2])),
    ]
    for pattern, answer in rules:
        m = re.fullmatch(pattern, q)
        if m:
            return answer(m)
    return None


def check_choice(scene, question, letter):
    """A lettered multiple-choice question: the option at `letter` is the oracle's answer."""
    options = dict(re.findall(r"\n([A-D])\. ([^\n]+)", question))
    assert options[letter] == oracle(scene, question), question


def caption_objects(text):
    return set(re.findall(r"\b[Aa]n? (small|large) (\w+) (\w+) (?:in|at) the ([a-z ]+?)(?=, | and |\.)", text))


def scene_objects(scene):
    return {(o["size"], o["colour"], o["shape"], o["cell"]) for o in scene["objects"]}


# ----- determinism ---------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    # One worker instead of two: the split of work must not change a single byte.
    shapes.generate_shapes_world(str(tmp_path / "again"), seed=0, workers=1, **SMALL)
    first, again = tree(world), tree(str(tmp_path / "again"))
    assert sorted(first) == sorted(again)
    assert [p for p in first if first[p] != again[p]] == []
    shapes.generate_shapes_world(str(tmp_path / "seed1"), seed=1, workers=2, **SMALL)
    other = tree(str(tmp_path / "seed1"))
    for path in ["pretrain.json", "instruct.json", "corpus/train.txt", "eval/gqa/testdev_balanced_questions.json",
                 "images/000/train_000000.png"]:
        assert other[path] != first[path], path


# ----- answers agree with the images ----------------------------------------------------

@pytest.mark.parametrize("split", ["train", "test", "compositional"])
def test_colour_at_each_shape_centre_is_its_colour(world, split):
    for a, b in itertools.combinations(shapes.COLOURS.values(), 2):  # the tolerance below tells them apart
        assert np.abs(np.array(a) - b).max() > 2 * 30, (a, b)
    for s in scenes(world, split)[:150]:
        img = np.asarray(Image.open(os.path.join(world, s["image"])).convert("RGB")).astype(int)
        assert img.shape == (64, 64, 3)
        for o in s["objects"]:
            x, y = (int(v) for v in o["center_px"])
            pixel = img[y, x]
            nearest = min(shapes.COLOURS, key=lambda c: np.abs(pixel - shapes.COLOURS[c]).sum())
            assert nearest == o["colour"], (s["id"], o, pixel)
            assert np.abs(pixel - shapes.COLOURS[o["colour"]]).max() <= 30, (s["id"], o, pixel)


@pytest.mark.parametrize("split", ["train", "test"])
def test_counts_match_the_image_and_the_scene(world, split):
    for s in scenes(world, split):
        img = np.asarray(Image.open(os.path.join(world, s["image"])).convert("RGB")).astype(int)
        painted = np.abs(img - np.array(s["background"])).max(axis=2) > 40  # (64, 64) pixels of some shape
        centres = (np.arange(64) + 0.5) * 3 / 64  # pixel centre -> grid coordinate
        occupied = {3 * int(r) + int(c) for r, c in zip(*[centres[i] for i in np.nonzero(painted)])}
        assert occupied == {3 * o["row"] + o["col"] for o in s["objects"]}, s["id"]
        c = s["count"]  # the planned count answer is the count of the ground-truth objects
        attr = {"total": None, "shape": "shape", "colour": "colour"}[c["kind"]]
        assert c["answer"] == sum(attr is None or o[attr] == c["value"] for o in s["objects"])
        assert len({(o["colour"], o["shape"]) for o in s["objects"]}) == len(s["objects"])


def test_every_benchmark_answer_agrees_with_the_scene(world):
    by_id = {s["id"]: s for split in ["test", "compositional"] for s in scenes(world, split)}
    ev = os.path.join(world, "eval")
    for folder in ["gqa", "gqa_compositional"]:
        answers = read_json(os.path.join(ev, folder, "testdev_balanced_questions.json"))
        for row in read_jsonl(os.path.join(ev, folder, "llava_gqa_testdev_balanced.jsonl")):
            gold = answers[row["question_id"]]
            assert oracle(by_id[gold["imageId"]], row["text"]) == gold["answer"], row
    for cat in ["random", "popular", "adversarial"]:
        for row in read_jsonl(os.path.join(ev, "pope", "coco", f"coco_pope_{cat}.json")):
            assert oracle(by_id[row["image"][:-4]], row["text"]) == row["label"], row
    for row in read_jsonl(os.path.join(ev, "mme", "llava_mme.jsonl")):
        truth = open(os.path.join(ev, "mme", "MME_Benchmark_release_version", row["question_id"][:-4] + ".txt")).read()
        gold = dict(line.split("\t") for line in truth.splitlines())[row["text"]]
        assert oracle(by_id[row["image"].split("/")[1][:-4]], row["text"]) == gold.lower(), row
    problems = read_json(os.path.join(ev, "scienceqa", "problems.json"))
    sqa_scene = {}
    for s in scenes(world, "test"):  # the SQA image is a copy of the test image: match by bytes
        sqa_scene[hashlib.sha1(open(os.path.join(world, s["image"]), "rb").read()).hexdigest()] = s
    for entry in read_json(os.path.join(ev, "scienceqa", "llava_test_CQM-A.json")):
        prob = problems[entry["id"]]
        assert entry["conversations"][1]["value"] == "ABCD"[prob["answer"]]
        if "image" in entry:
            img = open(os.path.join(ev, "scienceqa", "images", "test", entry["image"]), "rb").read()
            s = sqa_scene[hashlib.sha1(img).hexdigest()]
            assert prob["choices"][prob["answer"]] == oracle(s, prob["question"]), prob


def test_every_training_answer_agrees_with_the_scene(world):
    by_id = {s["id"]: s for s in scenes(world, "train")}
    for e in read_json(os.path.join(world, "pretrain.json")):
        assert caption_objects(e["conversations"][1]["value"]) == scene_objects(by_id[e["id"]]), e
    n_turns = 0
    by_image = {s["image"]: s for s in scenes(world, "train")}
    for e in read_json(os.path.join(world, "instruct.json")):
        if "image" not in e:
            continue
        s = by_image["images/" + e["image"]]
        assert len(e["conversations"]) == 2, e  # one question a sample
        for human, gpt in zip(e["conversations"][::2], e["conversations"][1::2]):
            q, a = human["value"], gpt["value"]
            if q.endswith(scorers.CHOICE):
                check_choice(s, q, a)
            elif q.endswith(scorers.SHORT) or q.endswith(scorers.YESNO):
                assert oracle(s, q) == a, (e["id"], q, a)
            else:  # a description: its listing names exactly the scene's objects
                assert caption_objects(a) == scene_objects(s), (e["id"], a)
            n_turns += 1
    assert n_turns > 300


def test_either_or_names_one_object_without_the_asked_attribute(world):
    """Each image gets three either-or questions asking different attributes; the name picks out one
    object and does not say the asked attribute; the answer (the first option) is the oracle's."""
    by_image = {s["image"]: s for s in scenes(world, "train")}
    asked = defaultdict(list)
    for e in read_json(os.path.join(world, "instruct.json")):
        q = e.get("conversations", [{}])[0].get("value", "")
        m = re.fullmatch(rf"<image>\nIs (the .+?) (?:({CELLS}) or (?:{CELLS})|an? (\w+) or an? \w+|(\w+) or \w+)\?"
                         + re.escape(scorers.SHORT), q)
        if not m or " large or small" in q:
            continue
        s, kind = by_image["images/" + e["image"]], "cell" if m[2] else "shape" if m[3] else "colour"
        o = the(s, m[1])
        assert o[kind] not in m[1].split() and " in the " not in m[1], q  # the name leaves the asked attribute out
        assert e["conversations"][1]["value"] == (m[2] or m[3] or m[4]) == o[kind], q
        asked[e["image"]].append(kind)
    assert len(asked) > 0.9 * len(by_image)
    assert all(len(k) == len(set(k)) <= 3 for k in asked.values())
    assert Counter(k for ks in asked.values() for k in ks).keys() == {"colour", "shape", "cell"}
    with pytest.raises(ValueError, match="the shape or the cell"):
        shapes.either_or(scenes(world, "train")[0], shapes.scene_rng(0, "instruct", 0), "size")


def test_each_image_gets_one_question_by_the_cell(world):
    """One "What colour/shape is the object in the <cell>?" per training image (shapes.by_cell), the
    two attributes both asked; the answers are the oracle's (test_every_training_answer_agrees...)."""
    by_cell = re.compile(rf"<image>\nWhat (colour is|is the colour of|shape is|is the shape of) the object in the "
                         rf"(?:{CELLS})\?")
    per_image, asked = Counter(), Counter()
    for e in read_json(os.path.join(world, "instruct.json")):
        m = by_cell.fullmatch(e["conversations"][0]["value"].removesuffix(scorers.SHORT)) if "image" in e else None
        if m:
            per_image[e["image"]] += 1
            asked["colour" in m[1]] += 1
    assert len(per_image) == len(scenes(world, "train")) and set(per_image.values()) == {1}
    assert min(asked[True], asked[False]) > 0.3 * len(per_image)  # colour and shape both asked


def test_relation_questions_and_only_they_wait_for_the_last_part_of_stage_2(world):
    """instruct.json marks each question comparing two objects' places ("Is the red star left of
    the blue circle?", read off the text here) with "after" = RELATIONS_AFTER, and nothing else."""
    relation = re.compile(r"<image>\nIs the \w+ \w+ (left of|right of|above|below) the \w+ \w+\?")
    marked = Counter()
    for e in read_json(os.path.join(world, "instruct.json")):
        is_relation = "image" in e and bool(relation.match(e["conversations"][0]["value"]))
        assert e.get("after", 0) == (shapes.RELATIONS_AFTER if is_relation else 0), e
        marked[is_relation] += 1
    assert 0 < shapes.RELATIONS_AFTER < 1 and marked[True] > 20 and marked[False] > marked[True]


# ----- held out means held out -----------------------------------------------------------

def test_no_test_scene_in_training_and_held_out_pairs_unseen(world):
    key = lambda s: tuple(sorted((o["shape"], o["colour"], o["size"], o["cell"]) for o in s["objects"]))
    train = {key(s) for s in scenes(world, "train")}
    assert not train & {key(s) for s in scenes(world, "test") + scenes(world, "compositional")}
    digest = lambda s: hashlib.sha1(open(os.path.join(world, s["image"]), "rb").read()).hexdigest()
    assert not {digest(s) for s in scenes(world, "train")} & {digest(s) for s in scenes(world, "test")}
    held = {f"{c} {s}" for c, s in shapes.HELD_OUT}
    for s in scenes(world, "train") + scenes(world, "test"):
        assert not {f"{o['colour']} {o['shape']}" for o in s["objects"]} & held
    for s in scenes(world, "compositional"):
        assert {f"{o['colour']} {o['shape']}" for o in s["objects"]} & held
    for path in ["pretrain.json", "instruct.json", "corpus/train.txt", "corpus/val.txt"]:
        text = open(os.path.join(world, path), encoding="utf-8").read()
        assert not [h for h in held if h in text], path
    comp = read_jsonl(os.path.join(world, "eval", "gqa_compositional", "llava_gqa_testdev_balanced.jsonl"))
    by_id = {s["id"]: s for s in scenes(world, "compositional")}
    answers = read_json(os.path.join(world, "eval", "gqa_compositional", "testdev_balanced_questions.json"))
    for row in comp:  # every question is about a held-out object (named, or the one its answer is)
        s = by_id[row["image"][:-4]]
        held_objs = [o for o in s["objects"] if f"{o['colour']} {o['shape']}" in held]
        assert any(h in row["text"] for h in held) or any(
            answers[row["question_id"]]["answer"] in (o["colour"], o["shape"]) for o in held_objs), row


# ----- formats ---------------------------------------------------------------------------

def test_llava_json_files_pass_the_schema_check(world, tmp_path):
    assert data.check_llava_json(os.path.join(world, "pretrain.json"), os.path.join(world, "images")) == 300
    assert data.check_llava_json(os.path.join(world, "instruct.json"), os.path.join(world, "images")) > 300
    sqa = os.path.join(world, "eval", "scienceqa")
    assert data.check_llava_json(os.path.join(sqa, "llava_test_CQM-A.json"), os.path.join(sqa, "images", "test")) > 80
    broken = read_json(os.path.join(world, "instruct.json"))
    image_sample = next(i for i, e in enumerate(broken) if "image" in e)
    broken[image_sample]["conversations"][0]["value"] = "no placeholder here"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=f"sample {image_sample} .*<image>"):
        data.check_llava_json(str(path))


def test_pope_files_score_like_eval_pope(world):
    root = os.path.join(world, "eval", "pope")
    questions = {q["question_id"]: q for q in read_jsonl(os.path.join(root, "llava_pope_test.jsonl"))}
    labels = {}
    for file in os.listdir(os.path.join(root, "coco")):  # eval_pope.py asserts exactly these names
        assert file.startswith("coco_pope_") and file.endswith(".json")
        labels[file[10:-5]] = [json.loads(line) for line in open(os.path.join(root, "coco", file))]
    assert sorted(labels) == ["adversarial", "popular", "random"]
    for category, rows in labels.items():
        # An answer file in question order, answering with the label (as a model would, in words).
        answers = [{"question_id": r["question_id"], "text": "Yes." if r["label"] == "yes" else "No, there is not."}
                   for r in rows]
        cur = [a for a in answers if questions[a["question_id"]]["category"] == category]
        preds = ["no" if {"No", "no", "not"} & set(a["text"].split(".")[0].replace(",", "").split(" ")) else "yes"
                 for a in cur]
        assert preds == [r["label"] for r in rows]  # eval_pope zips answers and labels in order
        assert Counter(r["label"] for r in rows)["yes"] * 2 == len(rows)  # POPE is exactly 50/50
        for r in rows:
            assert questions[r["question_id"]]["text"] == r["text"] + scorers.SHORT


def test_gqa_files_score_like_the_official_eval(world):
    for folder in ["gqa", "gqa_compositional"]:
        root = os.path.join(world, "eval", folder)
        questions = read_json(os.path.join(root, "testdev_balanced_questions.json"))
        rows = read_jsonl(os.path.join(root, "llava_gqa_testdev_balanced.jsonl"))
        # convert_gqa_for_eval.py, fed answers that are the gold answers with a full stop:
        predictions = {r["question_id"]: (questions[r["question_id"]]["answer"].capitalize() + ".").rstrip(".").lower()
                       for r in rows}
        correct = []
        for qid, q in questions.items():  # GQA's eval.py reads these fields
            assert q["isBalanced"] and q["types"]["structural"] in ("query", "verify")
            assert q["types"]["semantic"] and "global" in q["groups"] and q["imageId"]
            assert len(q["question"].split()) > 2 and all("operation" in c and "argument" in c for c in q["semantic"])
            correct.append(predictions[qid] == q["answer"])
        assert len(correct) == len(rows) and all(correct)


def test_scienceqa_files_score_like_eval_science_qa(world):
    root = os.path.join(world, "eval", "scienceqa")
    split = read_json(os.path.join(root, "pid_splits.json"))["test"]
    problems = read_json(os.path.join(root, "problems.json"))
    llava = read_json(os.path.join(root, "llava_test_CQM-A.json"))
    assert [e["id"] for e in llava] == split
    results = []
    for e in llava:  # what model_vqa_science.py writes, answering "The answer is X."
        prompt = e["conversations"][0]["value"].replace("<image>", "").strip()
        prompt = ("<image>\n" + prompt if "image" in e else prompt) + scorers.CHOICE
        prob = problems[e["id"]]
        pred = f"The answer is {'ABCDE'[prob['answer']]}."
        letter = re.findall(r"The answer is ([A-Z])\.", pred)[0]
        results.append(("ABCDE".index(letter) == prob["answer"], "<image>" in prompt))
        assert (prob["image"] is not None) == ("image" in e) and len(prob["choices"]) == 4
    assert all(ok for ok, _ in results)
    n_img = sum(img for _, img in results)
    assert 0 < n_img < len(results)  # both kinds, so the IMG subset is a real subset


def test_mme_files_score_like_the_mme_tools(world):
    root = os.path.join(world, "eval", "mme")
    gt_root = os.path.join(root, "MME_Benchmark_release_version")
    GT = {}  # convert_answer_to_mme.py's get_gt
    for category in os.listdir(gt_root):
        for file in os.listdir(os.path.join(gt_root, category)):
            if file.endswith(".txt"):
                for line in open(os.path.join(gt_root, category, file)):
                    question, answer = line.strip().split("\t")
                    GT[(category, file, question)] = answer
    assert sorted(os.listdir(gt_root)) == sorted(shapes.MME_SUBTASKS)
    results = defaultdict(list)
    for q in read_jsonl(os.path.join(root, "llava_mme.jsonl")):
        assert os.path.isfile(os.path.join(gt_root, q["image"]))
        category, file = q["question_id"].split("/")[0], q["question_id"].split("/")[-1].split(".")[0] + ".txt"
        assert "Please answer yes or no." in q["text"]
        results[category].append((file, q["text"], GT[category, file, q["text"]]))
    for category, rows in results.items():  # calculation.py: two lines per image, one Yes one No
        assert len(rows) % 2 == 0
        for a, b in zip(rows[::2], rows[1::2]):
            assert a[0] == b[0] and {a[2], b[2]} == {"Yes", "No"}


def test_corpus_is_paragraphs_and_help_explains_every_file(world):
    text = open(os.path.join(world, "corpus", "train.txt"), encoding="utf-8").read()
    docs = text.strip().split("\n\n")
    assert len(text) >= 0.05e6 and all(d and "\n" not in d for d in docs)
    assert len(set(docs)) == len(docs)
    assert any("Q: " in d or "Question: " in d or "The answer is" in d for d in docs)
    manifest = read_json(os.path.join(world, "manifest.json"))
    assert manifest["seed"] == 0 and manifest["counts"]["train_scenes"] == 300
    for b in manifest["benchmarks"].values():
        assert os.path.exists(os.path.join(world, b["question_file"])) and os.path.isdir(os.path.join(world, b["image_folder"]))
    out = subprocess.run([sys.executable, "shapes.py", "--help"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(shapes.__file__))).stdout
    for name in ["manifest.json", "scenes_train.jsonl", "corpus/train.txt", "pretrain.json", "instruct.json",
                 "llava_pope_test.jsonl", "coco_pope_", "llava_gqa_testdev_balanced.jsonl", "problems.json",
                 "pid_splits.json", "llava_test_CQM-A.json", "llava_mme.jsonl", "MME_Benchmark_release_version"]:
        assert name in out, name
    assert all(" ".join(p) in " ".join(out.split()) for p in shapes.HELD_OUT)  # the held-out pairs, named right


# ----- balance ---------------------------------------------------------------------------

def assert_balanced(answers_by_type, space=shapes.ANSWERS):
    for qtype, answers in answers_by_type.items():
        n, counts = len(answers), Counter(answers)
        assert set(counts) <= set(space[qtype]), (qtype, counts)
        worst = max(counts.values()) / (n / len(space[qtype]))
        assert worst <= 1.5, f"{qtype}: an answer has {worst:.2f}x its uniform share: {counts}"


def test_question_types_and_answers_are_balanced():
    # The very functions that write the files, on 3000 scenes (no rendering), so counts are large.
    scenes_ = [{"id": f"t{i}", **shapes.sample_scene(shapes.scene_rng(0, "balance", i))} for i in range(3000)]
    rows, answers = shapes.gqa_files(scenes_, 0, "gqa")
    by_type = defaultdict(list)
    for r in rows:
        by_type[r["category"]].append(answers[r["question_id"]]["answer"])
    assert set(by_type) == set(shapes.QTYPES)
    assert_balanced(by_type)
    yes_no = [a for t in ("exist", "relation") for a in by_type[t]]
    assert 0.45 <= yes_no.count("yes") / len(yes_no) <= 0.55
    # Stage-2 answers, typed by their vocabulary (colour names, digits, cells, ... do not overlap).
    vocab = {a: t for t, space in shapes.ANSWERS.items() for a in space if t != "relation"}
    vocab.update({letter: "letter" for letter in "ABCD"})
    instruct, used = defaultdict(list), Counter()
    for i, s in enumerate(scenes_):
        for sample in shapes.instruct_samples(s, shapes.scene_rng(0, "instruct", i), used, lookups=0):  # either-or
            # answers follow the scenes, not the balance (the first option is the answer: tested above)
            turn = sample["conversations"][1]
            if turn["value"] in vocab:
                instruct[vocab[turn["value"]]].append(turn["value"])
    assert_balanced(instruct, {**shapes.ANSWERS, "letter": list("ABCD")})
    assert 0.45 <= instruct["exist"].count("yes") / len(instruct["exist"]) <= 0.55
    problems = shapes.sqa_files(scenes_, 0)[0]
    assert_balanced({"letter": ["ABCD"[p["answer"]] for p in problems.values()]}, {"letter": list("ABCD")})
    pope, labels = shapes.pope_files(scenes_[:500], 0, Counter())
    for rows in labels.values():
        assert sum(r["label"] == "yes" for r in rows) * 2 == len(rows)


def test_yes_no_is_50_50_in_the_files(world):
    for folder in ["gqa", "gqa_compositional"]:
        answers = read_json(os.path.join(world, "eval", folder, "testdev_balanced_questions.json")).values()
        for qtype in ["exist", "relation"]:
            got = Counter(a["answer"] for a in answers if a["types"]["detailed"] == qtype)
            assert abs(got["yes"] - got["no"]) <= 1 and got["yes"] >= 3, (folder, qtype, got)
    yes_no = Counter(t["value"] for e in read_json(os.path.join(world, "instruct.json")) if "image" in e
                     for t in e["conversations"][1::2] if t["value"] in ("yes", "no"))
    assert abs(yes_no["yes"] - yes_no["no"]) <= 3, yes_no  # three counters: exist, relation, MME-style


def test_render_any_size_and_reject_bad_ones(tmp_path):
    scene = shapes.sample_scene(shapes.scene_rng(0, "size", 0))
    img = shapes.render_scene(scene, 336)
    assert img.size == (336, 336)
    for o in scene["objects"]:
        x, y = int(o["center"][0] * 336), int(o["center"][1] * 336)
        assert max(abs(a - b) for a, b in zip(img.getpixel((x, y)), o["rgb"])) <= 2
    with pytest.raises(ValueError, match="between 16 and 336"):
        shapes.generate_shapes_world(str(tmp_path), size=448)
    shown = shapes.make_grid(str(tmp_path / "grid.png"), n=8)
    assert Image.open(tmp_path / "grid.png").size == (4 * 128 + 5 * 4, 2 * 128 + 3 * 4) and len(shown) == 8


def test_key_attributes_counts_what_names_the_object(world):
    """eval_vlm.key_attributes, checked against the scenes: a colour question names its object by
    shape alone when no other object in the scene has that shape (a shape question: by colour),
    and by two attributes otherwise; other questions get None."""
    scenes = {s["id"]: s for s in read_jsonl(os.path.join(world, "scenes_test.jsonl"))}
    questions = read_json(os.path.join(world, "eval", "gqa", "testdev_balanced_questions.json"))
    seen = Counter()
    for q in questions.values():
        kind, k = q["types"]["detailed"], eval_vlm.key_attributes(q["question"])
        if kind not in ("colour", "shape"):
            assert k is None, q["question"]
            continue
        keep = "shape" if kind == "colour" else "colour"
        objs = scenes[q["imageId"]]["objects"]
        asked = next(o for o in objs if o[kind] == q["answer"] and re.search(rf"\b{o[keep]}\b", q["question"]))
        sharing = sum(o[keep] == asked[keep] for o in objs)
        assert k == (1 if sharing == 1 else 2), (q["question"], objs)
        seen[k] += 1
    assert seen[1] and seen[2]
    assert eval_vlm.key_attributes("What is the colour of the small star?\nAnswer the question using a single word.") == 2
