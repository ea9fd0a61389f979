"""
The benchmarks' official scoring rules, restated: POPE, ScienceQA-IMG, TextVQA, VizWiz, GQA,
MME, MMBench(-CN), MM-Vet, and the shapes world's held-out sets (shapes_*), which use them.

    score(bench, answers_path, data_dir) -> {"bench", "score": headline, ...sub-metrics}
    (on the command line: python eval_vlm.py score BENCH --answers FILE --data DIR)

Each scorer restates an official script (named in its comment) and keeps that script's quirks,
so that its numbers can be compared with published ones. Input that would make a score wrong
(a bad line, a missing or extra question, POPE answers out of order) raises ScoreError naming
the file and line: nothing is scored on partial data. Plain Python: the scoring uses no torch.
"""

import csv
import functools
import importlib
import json
import os
import re
import statistics
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict

from common import InputNotFound, UserError, not_utf8

# The prompt suffixes of LLaVA-1.5's data and benchmark question files, verbatim. The scorers
# read answers to prompts worded with them; the shapes world (shapes.py) words its training and
# benchmark files with them; `eval_vlm.py run` appends CHOICE where a question file leaves it out.
SHORT = "\nAnswer the question using a single word or phrase."
YESNO = " Please answer yes or no."
CHOICE = "\nAnswer with the option's letter from the given choices directly."

# A scorer is score_<bench>(answers, data_dir, **options) -> {"score": headline, ...}, where
# answers is read_answers(path). score() picks the scorer from SCORERS and adds "bench".



class ScoreError(UserError):
    """Input that cannot be scored as given; the message says where and what to do."""


def at(answer):
    return f"{answer['_file']}, line {answer['_line']}"


def read_answers(path):
    """An answer file -> its rows, each with _file/_line for error messages."""
    if not os.path.isfile(path):
        raise ScoreError(f"{path}: answer file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ScoreError(f"{path}, line {n}: not valid JSON ({e.msg}); each line must be one object "
                                 '{"question_id": ..., "prompt": ..., "text": ...}') from None
            if not isinstance(row, dict) or "question_id" not in row or not isinstance(row.get("text"), str):
                raise ScoreError(f"{path}, line {n}: expected an object with a 'question_id' and a string 'text', "
                                 f"found {line.strip()[:120]}")
            rows.append({**row, "_file": path, "_line": n})
    if not rows:
        raise ScoreError(f"{path}: the answer file is empty")
    return rows


def by_key(answers, key=lambda a: str(a["question_id"])):
    """{key: answer}; two answers to one question is an error (which one would count?)."""
    out = {}
    for a in answers:
        k = key(a)
        if k in out:
            raise ScoreError(f"{at(a)}: a second answer to question {k!r} (the first is on line "
                             f"{out[k]['_line']}); keep one answer per question")
        out[k] = a
    return out


def check_complete(answers, wanted, where):
    """Every answer belongs to a question of the benchmark, and every question has an answer."""
    for k, a in answers.items():
        if k not in wanted:
            raise ScoreError(f"{at(a)}: question {k!r} is not in {where}; is this the answer file of this "
                             f"benchmark (and this split)?")
    missing = [k for k in wanted if k not in answers]
    if missing:
        some = next(iter(answers.values()))["_file"]
        raise ScoreError(f"{some}: {len(missing)} of the {len(wanted)} questions in {where} have no answer "
                         f"(the first: {missing[0]!r}); finish the run, nothing is scored on partial data")


def find(data_dir, *names):
    """The first of names that exists under data_dir."""
    for name in names:
        if os.path.exists(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    found = sorted(os.listdir(data_dir))[:12] if os.path.isdir(data_dir) else "(no such folder)"
    raise ScoreError(f"{data_dir}: expected {' or '.join(names)} (LLaVA's layout for this benchmark); "
                     f"found {found}. Pass --data the benchmark's folder.")


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ScoreError(not_utf8(path, e)) from None
    except FileNotFoundError:
        raise InputNotFound(f"{path} not found") from None


def load_json(path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ScoreError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def load_jsonl(path):
    """The objects of a JSON-lines file; a line that is not JSON is named."""
    rows = []
    for n, line in enumerate(read_text(path).split("\n"), 1):  # (splitlines would also cut at U+2028)
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ScoreError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
    return rows


def mean(xs):
    return sum(xs) / len(xs) if xs else None


# ----- POPE: llava/eval/eval_pope.py ------------------------------------------

POPE_SPLITS = ["adversarial", "popular", "random"]


def pope_says_no(text):
    """eval_pope.py: keep the first sentence, drop commas, split on spaces; the words 'No', 'no'
    or 'not' make it a no, anything else is a yes ("NO" is a yes, "Nope" too)."""
    return any(w in ("No", "no", "not") for w in text.split(".")[0].replace(",", "").split(" "))


def pope_metrics(pred_yes, label_yes):
    pairs = Counter(zip(pred_yes, label_yes))  # (said yes, is yes) -> count
    tp, fp, tn, fn = pairs[True, True], pairs[True, False], pairs[False, False], pairs[False, True]
    precision = tp / (tp + fp) if tp + fp else 0.0  # eval_pope.py divides by zero here
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "accuracy": (tp + tn) / len(pred_yes), "precision": precision, "recall": recall,
            "yes_ratio": sum(pred_yes) / len(pred_yes), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def pope_question(row):
    """(image file, question) of a question-file or label-file row, for pairing checks: LLaVA's
    question file asks 'Is there a dog in the image?\nAnswer the question using a single word or
    phrase.', its label file 'Is there a dog in the image?'; the first line is the question."""
    image = row.get("image")
    return (None if image is None else os.path.basename(str(image)),
            None if row.get("text") is None else str(row["text"]).split("\n")[0].strip())


def score_pope(answers, data_dir, **_):
    """As eval_pope.py: answers are grouped by the category of their question (from the question
    file) and paired with coco/coco_pope_<category>.json BY POSITION, the i-th answer of a category
    with its i-th label. Ids are never compared: LLaVA's llava_pope_test.jsonl numbers each category
    from its own offset (1, 20000001, ...) while each label file counts from 1. Categories may be
    interleaved; within one, answers must keep the label file's order, so each pair is checked to
    be about the same image and object (a swap would pair answers with the wrong labels silently
    in eval_pope.py). Headline: the mean F1 of the three splits."""
    qfile = find(data_dir, "llava_pope_test.jsonl")
    questions = {str(q["question_id"]): q for q in load_jsonl(qfile)}
    odd = {q.get("category") for q in questions.values()} - set(POPE_SPLITS)
    if odd:
        raise ScoreError(f"{qfile}: categories {sorted(map(str, odd))} are not POPE splits ({', '.join(POPE_SPLITS)})")
    check_complete(by_key(answers), questions, qfile)
    result = {"score": None}
    for split in POPE_SPLITS:
        label_file = find(data_dir, f"coco/coco_pope_{split}.json")
        labels = load_jsonl(label_file)
        mine = [a for a in answers if questions[str(a["question_id"])]["category"] == split]
        if len(mine) != len(labels):
            raise ScoreError(f"{label_file} has {len(labels)} labels but {qfile} and the answers give {len(mine)} "
                             f"questions of category {split!r}; are they from the same POPE release?")
        for i, (a, label) in enumerate(zip(mine, labels)):
            asked, labelled = pope_question(questions[str(a["question_id"])]), pope_question(label)
            if any(x is not None and y is not None and x != y for x, y in zip(asked, labelled)):
                raise ScoreError(f"{at(a)}: answer {i + 1} of category {split!r} is to question {a['question_id']!r} "
                                 f"({asked[0]}: {asked[1]!r}), but label {i + 1} of {label_file} is about "
                                 f"{labelled[0]}: {labelled[1]!r}. eval_pope.py pairs a category's answers with "
                                 f"its labels by position: write the answers in the question file's order")
        result[split] = pope_metrics([not pope_says_no(a["text"]) for a in mine], [l["label"] != "no" for l in labels])
    result["score"] = mean([result[s]["f1"] for s in POPE_SPLITS])
    result["accuracy"] = mean([result[s]["accuracy"] for s in POPE_SPLITS])
    return result


# ----- ScienceQA: llava/eval/eval_science_qa.py -------------------------------

LETTERS = ("A", "B", "C", "D", "E")


def sqa_letter(text, n_choices):
    """eval_science_qa.py's parsing: newlines become '. '; then the reply must be a bare letter,
    or start with 'X. ', or contain 'The answer is X' (with a capital T). Anything else fails
    ('B.' alone, 'b', '(B)' all fail), as does a letter beyond the problem's choices. None = failed."""
    t = text.replace("\n", ". ")
    if t.strip() in LETTERS:
        letter = t.strip()
    elif len(t) >= 3 and t[0] in LETTERS and t[1:3] == ". ":
        letter = t[0]
    else:
        m = re.search(r"The answer is ([A-E])\.", t) or re.search(r"The answer is ([A-E])", t)
        letter = m.group(1) if m else None
    return letter if letter in LETTERS[:n_choices] else None


def score_sqa(answers, data_dir, split="test", **_):
    """All problems of the split must be answered (eval_science_qa.py would count a missing one
    as FAILED). IMG = the problems with an image (eval_science_qa.py tests '<image>' in the
    answer's prompt, which LLaVA writes exactly for those). Headline: IMG accuracy, %."""
    problems = load_json(find(data_dir, "problems.json"))
    pids = [str(p) for p in load_json(find(data_dir, "pid_splits.json"))[split]]
    preds = by_key(answers)
    check_complete(preds, set(pids), f"{data_dir}/pid_splits.json[{split!r}]")
    right, img_right, failed = [], [], 0
    for pid in pids:
        p = problems[pid]
        letter = sqa_letter(preds[pid]["text"], len(p["choices"]))
        failed += letter is None
        right.append(letter is not None and LETTERS.index(letter) == p["answer"])
        if p.get("image"):
            img_right.append(right[-1])
    img = mean(img_right)
    return {"score": None if img is None else 100 * img, "accuracy": 100 * mean(right), "n": len(right),
            "n_img": len(img_right), "failed_to_parse": failed}


# ----- TextVQA and VizWiz: llava/eval/eval_textvqa.py + m4c_evaluator.py --------
#
# EvalAI's answer normaliser (m4c_evaluator.EvalAIAnswerProcessor), quirks included: its period
# regex was meant to keep '3.5' but strips at most 32 periods; commas go before the digit-comma
# check that would have used them; contractions are looked up after lower-casing, so the
# capital-I entries of its table never fire.

NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
           "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
# The contracted forms; the table maps each spelling with one apostrophe left out to its form
# ("dont" -> "don't", "couldnt've" and "couldn'tve" -> "couldn't've"), plus one entry backwards.
CONTRACTED = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
    haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
    mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've
    somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd
    something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll they're
    they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've
    who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll
    y'all'd've you'd you'd've you'll you're you've""".split()
CONTRACTIONS = {form[:i] + form[i + 1:]: form for form in CONTRACTED for i, c in enumerate(form) if c == "'"}
CONTRACTIONS["somebody'd"] = "somebodyd"


def vqa_normalize(answer):
    s = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    s = s.replace("\n", " ").replace("\t", " ").strip()
    out = s
    for p in PUNCTUATION:  # a mark touching a space is dropped, one inside a word becomes a space
        out = out.replace(p, "" if (p + " " in s or " " + p in s) else " ")
    out = re.sub(r"\.(?!\d)", "", out, count=32)
    words = [NUMBERS.get(w, w) for w in out.split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_soft_accuracy(prediction, human_answers):
    """The VQA accuracy: for each of the (10) annotators left out in turn, min(1, matches among
    the other answers / 3); the mean over the leave-one-out subsets. 2 matches of 10 -> 0.6."""
    pred = vqa_normalize(prediction)
    same = [vqa_normalize(h) == pred for h in human_answers]
    return mean([min(1.0, (sum(same) - s) / 3) for s in same])


def textvqa_question(prompt):
    """eval_textvqa.py's prompt_processor: which line of the prompt is the question. None = unknown form."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        m = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        q = m.group(1) if m else None
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        q = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    else:
        q = lines[0] if len(lines) == 2 else None
    return None if q is None else q.lower()


def score_textvqa(answers, data_dir, **_):
    """An answer finds its annotation by (image id, question), as eval_textvqa.py does: LLaVA's
    question_id here is the image id, and the question is read back from the answer's prompt."""
    annotations = load_json(find(data_dir, "TextVQA_0.5.1_val.json"))["data"]
    truth = {(str(a["image_id"]), a["question"].lower()): a["answers"] for a in annotations}
    qfile = find(data_dir, "llava_textvqa_val_v051_ocr.jsonl")
    wanted = {(str(q["question_id"]), textvqa_question(q["text"])) for q in load_jsonl(qfile)}

    def key(a):
        q = textvqa_question(a.get("prompt", ""))
        if q is None:
            raise ScoreError(f"{at(a)}: cannot find the question in the 'prompt' field ({a.get('prompt')!r}); TextVQA "
                             f"answers need the prompt as asked: 'question\\nReference OCR token: ...\\nsuffix'")
        return str(a["question_id"]), q

    preds = by_key(answers, key)
    check_complete(preds, wanted, qfile)
    for k, a in preds.items():
        if k not in truth:
            raise ScoreError(f"{at(a)}: no annotation for image {k[0]!r} and question {k[1]!r} in "
                             f"TextVQA_0.5.1_val.json")
    return {"score": 100 * mean([vqa_soft_accuracy(a["text"], truth[k]) for k, a in preds.items()]), "n": len(preds)}


def score_vizwiz(answers, data_dir, upload=None, answers_path="answers.jsonl", **_):
    """Val (Annotations/val.json has the images): the soft accuracy above, %. Test: write the
    EvalAI submission, [{"image", "answer": normalised text}] in question order, as
    scripts/convert_vizwiz_for_submission.py does; the server scores it (score: null)."""
    qfile = find(data_dir, "llava_test.jsonl", "llava_val.jsonl")
    questions = load_jsonl(qfile)
    preds = by_key(answers)
    check_complete(preds, {str(q["question_id"]) for q in questions}, qfile)
    val_file = os.path.join(data_dir, "Annotations", "val.json")
    truth = {}
    if os.path.exists(val_file):
        truth = {v["image"]: [x["answer"] for x in v["answers"]] for v in load_json(val_file)}
    known = sum(q["image"] in truth for q in questions)
    if known == len(questions):
        accs = [vqa_soft_accuracy(preds[str(q["question_id"])]["text"], truth[q["image"]]) for q in questions]
        return {"score": 100 * mean(accs), "n": len(accs)}
    if known:
        raise ScoreError(f"{qfile}: {known} of its {len(questions)} images are in {val_file} and the rest are not; "
                         f"use one split's question file")
    upload = upload or os.path.splitext(answers_path)[0] + "_upload.json"
    with open(upload, "w", encoding="utf-8") as f:
        json.dump([{"image": q["image"], "answer": vqa_normalize(preds[str(q["question_id"])]["text"])}
                   for q in questions], f)
    return {"score": None, "upload": upload, "n": len(questions),
            "note": "test split: submit the upload file to the VizWiz EvalAI server for the score"}


# ----- GQA: scripts/convert_gqa_for_eval.py + GQA's eval/eval.py ---------------

def gqa_right(text, answer):
    """GQA's eval.py: the reply, '.' stripped from its end and lower-cased, equals the answer."""
    return text.rstrip(".").lower() == answer


def score_gqa(answers, data_dir, per_type=False, **_):
    """The prediction is text.rstrip('.').lower() (nothing else: ' red' != 'red'), compared exactly
    with the answer, over the balanced questions. Every question in the file needs an answer
    (eval.py looks each one up). Headline: accuracy, %; also binary/open and per structural and
    semantic type as eval.py prints, and with per_type the 'detailed' type (the shapes world's)."""
    qfile = find(data_dir, "testdev_balanced_questions.json")
    questions = load_json(qfile)
    preds = by_key(answers)
    check_complete(preds, questions, qfile)
    scores = defaultdict(list)
    for qid, q in questions.items():
        if not q.get("isBalanced", True):
            continue
        right = gqa_right(preds[qid]["text"], q["answer"])
        types = q.get("types", {})
        scores["accuracy"].append(right)
        scores["open" if types.get("structural") == "query" else "binary"].append(right)
        for field in ["structural", "semantic"] + ["detailed"] * per_type:
            scores[f"{field}/{types.get(field)}"].append(right)
    result = {"score": 100 * mean(scores["accuracy"]), "n": len(scores["accuracy"])}
    for name in ["binary", "open"]:
        result[name] = 100 * mean(scores[name]) if scores[name] else None
    for field in ["structural", "semantic"] + ["detailed"] * per_type:
        result[f"per_{field}"] = {k.split("/", 1)[1]: 100 * mean(v) for k, v in sorted(scores.items())
                                  if k.startswith(field + "/")}
    return result


# ----- MME: convert_answer_to_mme.py + MME's eval_tool/calculation.py ----------

MME_PERCEPTION = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR"]
MME_COGNITION = ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]


def mme_yes_no(text):
    """calculation.py: lower-case; 'yes'/'no' as is, else 'yes' or else 'no' within the first
    four characters ('Yes, it is' -> yes, 'Not sure' -> no, 'I think yes' -> other = wrong)."""
    t = text.lower()
    if t in ("yes", "no"):
        return t
    return "yes" if "yes" in t[:4] else "no" if "no" in t[:4] else "other"


def mme_ground_truth(root):
    """{(subtask, 'ID.txt', question): 'yes'|'no'} from the release's ID.txt files (lines
    question<TAB>Yes|No), which lie beside the images or under questions_answers_YN/."""
    truth = {}
    for task in sorted(os.listdir(root)):
        folder = os.path.join(root, task, "questions_answers_YN")
        folder = folder if os.path.isdir(folder) else os.path.join(root, task)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    fields = line.strip().split("\t")
                    if fields == [""]:
                        continue
                    if len(fields) != 2 or fields[1].lower() not in ("yes", "no"):
                        raise ScoreError(f"{folder}/{name}, line {n}: expected 'question<TAB>Yes|No', found {line!r}")
                    truth[task, name, fields[0]] = fields[1].lower()
    return truth


def score_mme(answers, data_dir, **_):
    """An answer finds its ground truth by (subtask, image file, question): the prompt minus
    LLaVA's short-answer suffix, plus ' Please answer yes or no.' (or with two spaces, as some
    release files have). Per subtask: acc over questions, acc+ over images (both questions
    right), score = 100 * (acc + acc+). Headline: perception, the sum over the perception
    subtasks present (all 10: out of 2000); the absent subtasks are listed."""
    root = data_dir if os.path.basename(os.path.normpath(data_dir)) == "MME_Benchmark_release_version" \
        else find(data_dir, "MME_Benchmark_release_version")
    truth = mme_ground_truth(root)

    def key(a):
        if not isinstance(a.get("prompt"), str):
            raise ScoreError(f"{at(a)}: MME answers need the 'prompt' field (the question as asked): the two questions "
                             f"of an image share one question_id")
        task, file = str(a["question_id"]).split("/")[0], str(a["question_id"]).split("/")[-1].split(".")[0] + ".txt"
        short = SHORT.strip()  # convert_answer_to_mme.py removes the suffix without its newline
        q = a["prompt"].replace(short, "").strip() if short in a["prompt"] else a["prompt"]
        if YESNO.strip() not in q:
            q += YESNO
            if (task, file, q) not in truth:
                q = q.replace(YESNO, " " + YESNO)
        return task, file, q

    preds = by_key(answers, key)
    tasks = sorted({k[0] for k in preds})
    for task in tasks:
        if task not in MME_PERCEPTION + MME_COGNITION:
            raise ScoreError(f"{at(next(a for k, a in preds.items() if k[0] == task))}: {task!r} is not an MME subtask "
                             f"({', '.join(MME_PERCEPTION + MME_COGNITION)})")
    tasks = [t for t in MME_PERCEPTION + MME_COGNITION if t in tasks]  # in MME's order
    check_complete(preds, {k for k in truth if k[0] in tasks}, f"{root} (subtasks {', '.join(tasks)})")
    result = {"score": None, "perception": None, "cognition": None}
    for task in tasks:
        images = defaultdict(list)
        for (t, file, q), a in preds.items():
            if t == task:
                images[file].append(mme_yes_no(a["text"]) == truth[t, file, q])
        odd = [f for f, r in images.items() if len(r) != 2]
        if odd:
            raise ScoreError(f"{root}/{task}/{odd[0]}: calculation.py expects 2 questions per image, "
                             f"found {len(images[odd[0]])}")
        acc, acc_plus = mean(sum(images.values(), [])), mean([all(r) for r in images.values()])
        result[task] = {"score": 100 * (acc + acc_plus), "acc": 100 * acc, "acc_plus": 100 * acc_plus}
    for part, names in [("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)]:
        present = [t for t in names if t in tasks]
        result[part] = sum(result[t]["score"] for t in present) if present else None
        result[part + "_max"] = 200 * len(present)
    result["score"] = result["perception"]
    result["missing"] = [t for t in MME_PERCEPTION + MME_COGNITION if t not in tasks]
    return result


# ----- MMBench: OpenCompass's tools/eval_mmbench.py (circular evaluation) ---------

# pandas.read_table, which the official scripts use, reads these cell values as missing.
PANDAS_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
             "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
OPTION_MARKS = [("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                (":", ","), (":", "."), (":", ")"), (":", ").")]


def mmbench_letter(text, options):
    """eval_mmbench.py's exact matching (can_infer): a letter A-E that is a whole word of the reply
    (unless 'A' appears in a reply of more than 3 words: maybe the article), else a letter written
    '(X)', 'X.', 'X)', ':X' ... once, else the one option whose text is in the reply. None = no
    match, which counts as wrong (the official script would ask GPT; LLaVA's numbers don't)."""
    words = text.split()
    count = lambda pre, suf: sum(pre + c + suf in words for c in LETTERS)
    if count("", "") == 1 and not ("A" in words and len(words) > 3):
        return next(c for c in LETTERS if c in words)
    for pre, suf in OPTION_MARKS:
        if count(pre, suf) == 1:
            return next(c for c in LETTERS if pre + c + suf in words)
    hits = [c for c, option in options.items() if option.lower() in text.lower()]
    return hits[0] if len(hits) == 1 else None


def score_mmbench(answers, data_dir, cn=False, **_):
    """The dev TSV holds each question (index < 1e6) and its option rotations (index + k*1e6).
    A question counts only if every rotation is answered right. Headline: that circular
    accuracy, %; also the first rotation alone ('single') and per category and l2-category."""
    name = "mmbench_dev_cn_20231003.tsv" if cn else "mmbench_dev_20230712.tsv"
    path = find(data_dir, name)
    csv.field_size_limit(2**31 - 1)  # the image column is base64
    with open(path, encoding="utf-8", newline="") as f:
        rows = {r["index"]: r for r in csv.DictReader(f, delimiter="\t")}
    preds = by_key(answers)
    check_complete(preds, rows, path)
    right = {i: mmbench_letter(preds[i]["text"], {c: r[c] for c in "ABCD" if r.get(c) not in PANDAS_NA | {None}})
             == r["answer"] for i, r in rows.items()}
    groups = defaultdict(list)
    for i in rows:
        groups[int(i) % 1_000_000].append(right[i])
    main = {i: r for i, r in rows.items() if int(i) < 1_000_000}
    hit = {i: all(groups[int(i)]) for i in main}
    result = {"score": 100 * mean(list(hit.values())), "single": 100 * mean([right[i] for i in main]),
              "n_questions": len(main), "n_rows": len(rows)}
    for field in ["category", "l2-category"]:
        per = defaultdict(list)
        for i, r in main.items():
            per[r.get(field)].append(hit[i])
        result["per_" + field] = {k: 100 * mean(v) for k, v in sorted(per.items(), key=lambda kv: str(kv[0]))}
    return result


# ----- MM-Vet: mm-vet_evaluator (grading by an LLM, then aggregation) -------------

# The grader is asked with MM-Vet's own few-shot grading prompt, which the grades depend on: pass
# the file holding it (from your copy of MM-Vet's evaluator) as --grader_prompt. This project does
# not ship that text. Each question is appended to it as "question | ground truth | prediction | ".


def openai_chat(url, model):
    """chat(prompt, temperature) -> reply, through an OpenAI-compatible /chat/completions endpoint
    (the key, if the server wants one, from $OPENAI_API_KEY)."""
    url = url.rstrip("/") if url.rstrip("/").endswith("/chat/completions") else url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = "Bearer " + os.environ["OPENAI_API_KEY"]

    def chat(prompt, temperature):
        body = {"model": model, "max_tokens": 3, "temperature": temperature,
                "messages": [{"role": "user", "content": prompt}]}
        for attempt in range(10):
            try:
                req = urllib.request.Request(url, json.dumps(body).encode(), headers)
                with urllib.request.urlopen(req, timeout=120) as r:
                    return json.load(r)["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                if e.code != 429 or attempt == 9:  # the official loop waits out rate limits
                    raise ScoreError(f"grader {url}: HTTP {e.code} {e.reason}") from None
                time.sleep(30)
    return chat


def load_grader(spec, model):
    """--grader: an OpenAI-compatible URL, or module:function taking (prompt, temperature) and
    returning the grader's reply text."""
    if spec.startswith(("http://", "https://")):
        return openai_chat(spec, model)
    module, _, name = spec.partition(":")
    if not name:
        raise ScoreError(f"--grader {spec!r}: expected an http(s) URL or module:function")
    return getattr(importlib.import_module(module), name)


def mmvet_grade(chat, prompt, question, truth, prediction):
    """The official loop: read the reply's first word as a number in [0, 1]; if it isn't one, ask
    again with a nudge, the temperature rising 0.5 each time; after 5 unusable replies, 0.0."""
    row = " | ".join([question, truth.replace("<AND>", " <AND> ").replace("<OR>", " <OR> "), prediction, ""])
    reply, temperature = chat(prompt + "\n" + row, 0.0), 0.0
    for attempt in range(5):
        try:
            score = float(reply.split(" ")[0].strip())
            if 0.0 <= score <= 1.0:
                return score
        except ValueError:
            pass
        if attempt < 4:
            reply = chat(prompt + "\n" + row + "\nPredict the correctness of the answer (digit): ", temperature)
            temperature += 0.5
    return 0.0


def score_mmvet(answers, data_dir, grades=None, grader=None, grader_model="gpt-4-0613", grader_prompt=None,
                answers_path="answers.jsonl", **_):
    """Per capability: the sum of the grades of its questions / their number * 100, averaged over
    grading runs and rounded to 0.1, as MM-Vet's notebook does; the same per capability
    combination (named by the sorted capabilities joined with '_'). Headline: total, the mean
    grade * 100. Grades come from --grades (MM-Vet's grade file {id: {"score": [per run]}} or
    {id: grade}), or from --grader, which writes them to --grades (default: beside the answers)."""
    meta = load_json(find(data_dir, "mm-vet.json"))
    preds = by_key(answers, lambda a: f"v1_{a['question_id']}")  # ids as scripts/convert_mmvet_for_eval.py makes them
    check_complete(preds, meta, f"{data_dir}/mm-vet.json")
    if grader:
        if not grader_prompt or not os.path.isfile(grader_prompt):
            raise ScoreError("--grader needs --grader_prompt FILE: MM-Vet's few-shot grading prompt (from its "
                             "evaluator), which the grades depend on")
        chat, prompt = load_grader(grader, grader_model), open(grader_prompt, encoding="utf-8").read().rstrip("\n")
        runs = {i: [mmvet_grade(chat, prompt, m["question"], m["answer"], preds[i]["text"])] for i, m in meta.items()}
        grades = grades or os.path.splitext(answers_path)[0] + "_mmvet_grades.json"
        with open(grades, "w", encoding="utf-8") as f:
            model = grader_model if grader.startswith(("http://", "https://")) else grader
            json.dump({i: {"model": [model], "score": s} for i, s in runs.items()}, f, indent=1)
    elif grades:
        raw = load_json(grades)
        runs = {i: (g["score"] if isinstance(g, dict) else [g]) for i, g in raw.items()}
        missing = [i for i in meta if i not in runs]
        if missing or len({len(s) for s in runs.values()}) != 1:
            raise ScoreError(f"{grades}: expected the same number of grades for each of the {len(meta)} questions of "
                             f"mm-vet.json; {len(missing)} missing (e.g. {missing[:1]}), run counts "
                             f"{sorted({len(s) for s in runs.values()})}")
    else:
        raise ScoreError("MM-Vet is graded by an LLM: give --grades FILE (precomputed grades) or --grader "
                         "(module:function, or an OpenAI-compatible URL such as http://localhost:8000/v1)")
    return mmvet_aggregate(meta, runs) | {"grades": grades}


def mmvet_aggregate(meta, runs):
    n_runs = len(next(iter(runs.values())))
    caps, combos = defaultdict(list), defaultdict(list)  # capability / combination -> question ids
    for i, m in meta.items():
        for cap in set(m["capability"]):
            caps[cap].append(i)
        combos["_".join(sorted(set(m["capability"])))].append(i)
    percent = lambda ids: [sum(runs[i][r] for i in ids) / len(ids) * 100 for r in range(n_runs)]  # per run
    totals = percent(list(meta))
    return {"score": round(mean(totals), 1), "std": round(statistics.pstdev(totals), 1), "runs": n_runs,
            "per_capability": {c: round(mean(percent(ids)), 1) for c, ids in sorted(caps.items())},
            "per_combination": {c: round(mean(percent(ids)), 1) for c, ids in sorted(combos.items())}}


# ----- dispatch -----------------------------------------------------------------

SCORERS = {
    "pope": score_pope, "sqa": score_sqa, "textvqa": score_textvqa, "vizwiz": score_vizwiz, "gqa": score_gqa,
    "mme": score_mme, "mmbench": score_mmbench, "mmbench_cn": functools.partial(score_mmbench, cn=True),
    "mmvet": score_mmvet,
    "shapes_pope": score_pope, "shapes_gqa": functools.partial(score_gqa, per_type=True),
    "shapes_gqa_compositional": functools.partial(score_gqa, per_type=True), "shapes_sqa": score_sqa,
    "shapes_mme": score_mme,
}
SHAPES = {"shapes_pope": "pope", "shapes_gqa": "gqa", "shapes_gqa_compositional": "gqa_compositional",
          "shapes_sqa": "scienceqa", "shapes_mme": "mme"}  # -> the benchmark's key in the world's manifest.json


def score(bench, answers_path, data_dir, **options):
    """Score an answer file: {"bench", "score": headline, ...sub-metrics}. options: upload (VizWiz),
    grades, grader, grader_model (MM-Vet)."""
    if bench not in SCORERS:
        raise ScoreError(f"unknown benchmark {bench!r}; one of {', '.join(SCORERS)}")
    manifest = os.path.join(data_dir, "manifest.json")
    if bench in SHAPES and os.path.isfile(manifest):  # the shapes world's root: find the benchmark's folder
        question_file = load_json(manifest)["benchmarks"][SHAPES[bench]]["question_file"]
        data_dir = os.path.join(data_dir, os.path.dirname(question_file))
    options = {k: v for k, v in options.items() if v is not None}
    result = SCORERS[bench](read_answers(answers_path), data_dir, answers_path=answers_path, **options)
    return {"bench": bench, **result}


def rounded(x):
    if isinstance(x, float):
        return round(x, 4)
    return {k: rounded(v) for k, v in x.items()} if isinstance(x, dict) else x
