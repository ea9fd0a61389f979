"""Tests for the scorers (scorers.py) and eval_vlm.py's `score` command.

Each official rule and quirk on examples worked out by hand (in the comments), each headline
formula on small benchmark files written here, the shapes world's held-out sets scored from
their own ground truth (perfect) and from a deliberately wrong answer file, and bad input.
Run: python -m pytest -q tests/test_eval_scorers.py
"""

import csv
import http.server
import json
import os
import threading

import pytest

import eval_vlm
import scorers
import shapes
from common import run_main
from scorers import ScoreError


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return str(path)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score_rows(bench, tmp_path, data_dir, rows, **options):
    return scorers.score(bench, write_jsonl(tmp_path / "answers.jsonl", rows), str(data_dir), **options)


# ----- the rules, one quirk at a time ------------------------------------------

@pytest.mark.parametrize("raw, normal", [
    ("Two.", "2"), ("a dog", "dog"), ("The Dog!", "dog"), ("10,000", "10000"), ("3.5", "3.5"), ("none", "0"),
    ("dont", "don't"), ("couldnt've", "couldn't've"), ("it's", "it 's"), ("e-mail", "e mail"),
    ("left - right", "left right"),
    ("somebody'd", "somebodyd"),  # the one backwards entry of EvalAI's table
    ("Im", "im"),                 # capital-I entries never fire: the text is lower-cased first
])
def test_vqa_normalize(raw, normal):
    assert scorers.vqa_normalize(raw) == normal


def test_vqa_soft_accuracy_leave_one_out():
    # 2 of 10 match: the 2 matching annotators left out see 1 match (1/3), the 8 others see 2 (2/3):
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert scorers.vqa_soft_accuracy("Two.", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert scorers.vqa_soft_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)      # (0 + 9 * 1/3) / 10
    assert scorers.vqa_soft_accuracy("a cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)  # (3 * 2/3 + 7) / 10
    assert scorers.vqa_soft_accuracy("cat", ["cat"] * 4 + ["dog"] * 6) == pytest.approx(1.0)
    assert scorers.vqa_soft_accuracy("bird", ["cat"] * 10) == 0.0


@pytest.mark.parametrize("text, no", [
    ("No, there is not.", True), ("no", True), ("There is a cat, not a dog", True), ("not sure.", True),
    ("Yes", False), ("Yes. There is no dog.", False),  # only the first sentence counts
    ("NO", False), ("Nope", False),                    # only the words 'No', 'no', 'not'
])
def test_pope_says_no(text, no):
    assert scorers.pope_says_no(text) == no


@pytest.mark.parametrize("text, label", [
    ("Yes, it is", "yes"), ("yes", "yes"), ("YES!", "yes"), ("No.", "no"), ("Not sure", "no"), ("nope", "no"),
    ("I think yes", "other"), ("Absolutely", "other"), ("", "other"),
])
def test_mme_yes_no_reads_the_first_four_characters(text, label):
    assert scorers.mme_yes_no(text) == label


@pytest.mark.parametrize("text, n_choices, letter", [
    ("B", 4, "B"), (" C ", 4, "C"), ("B. a square", 4, "B"), ("A\nBecause it is red", 4, "A"),
    ("The answer is B.", 4, "B"), ("So... The answer is D", 4, "D"), ("E", 5, "E"),
    ("B.", 4, None), ("b", 4, None), ("(B)", 4, None), ("the answer is B", 4, None), ("", 4, None),
    ("E", 4, None),  # a letter beyond the problem's choices is wrong
])
def test_sqa_letter(text, n_choices, letter):
    assert scorers.sqa_letter(text, n_choices) == letter


OPTIONS = {"A": "cat", "B": "dog", "C": "red bird", "D": "fish"}


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("The answer is C", "C"), ("(D) fish", "D"), ("B.", "B"), ("red bird", "C"),
    ("A dog is here", "B"),  # 'A' in a reply of more than 3 words may be the article: the option text decides
    ("I choose A or B", None), ("E", "E"),
])
def test_mmbench_letter(text, letter):
    assert scorers.mmbench_letter(text, OPTIONS) == letter


# ----- headline formulas on small hand-made files -------------------------------

def make_pope(root, first_ids=None):
    """4 questions per split, labels yes, yes, no, no: a dog and a cat on two images per split.
    Ids run on through the splits (1-12, in both files), or, with first_ids {split: first id},
    as LLaVA numbers them: the question file from each split's offset, each label file from 1."""
    questions, n = [], 0
    for split in scorers.POPE_SPLITS:
        labels = []
        for j, label in enumerate(["yes", "yes", "no", "no"]):
            n += 1
            qid = n if first_ids is None else first_ids[split] + j
            image, text = f"COCO_val2014_{split}_{j // 2}.jpg", f"Is there a {['dog', 'cat'][j % 2]} in the image?"
            questions.append({"question_id": qid, "image": image, "text": text + scorers.SHORT, "category": split})
            labels.append({"question_id": n if first_ids is None else j + 1, "image": image, "text": text,
                           "label": label})
        write_jsonl(root / "coco" / f"coco_pope_{split}.json", labels)
    write_jsonl(root / "llava_pope_test.jsonl", questions)
    return questions


POPE_REPLIES = {  # (yes, yes, no, no) labels
    "adversarial": ["Yes", "Yes, there is.", "No", "There is no dog."],       # all right: F1 1
    "popular": ["Yes", "yes", "Yes. There is no dog.", "No, there is not."],  # TP2 FP1 TN1: P 2/3, R 1, F1 0.8
    "random": ["Yes", "No, not really.", "no", "No."],                        # TP1 FN1 TN2: P 1, R 1/2, F1 2/3
}
LLAVA_POPE_IDS = {"adversarial": 1, "popular": 20000001, "random": 40000001}  # llava_pope_test.jsonl's offsets


def pope_rows(questions):
    replies = [r for s in scorers.POPE_SPLITS for r in POPE_REPLIES[s]]
    return [{"question_id": q["question_id"], "prompt": q["text"], "text": r} for q, r in zip(questions, replies)]


def test_pope_mean_f1_of_three_splits(tmp_path):
    rows = pope_rows(make_pope(tmp_path / "pope"))
    result = score_rows("pope", tmp_path, tmp_path / "pope", rows)
    assert result["score"] == pytest.approx((1 + 0.8 + 2 / 3) / 3)
    assert result["popular"]["precision"] == pytest.approx(2 / 3) and result["popular"]["recall"] == 1.0
    assert result["random"]["f1"] == pytest.approx(2 / 3) and result["random"]["yes_ratio"] == 0.25
    assert result["accuracy"] == pytest.approx((1 + 0.75 + 0.75) / 3)


def test_pope_llava_numbering_pairs_by_position_within_each_category(tmp_path):
    # LLaVA's files: questions 1-4, 20000001-4, 40000001-4; each label file 1-4. eval_pope.py never
    # compares the ids: the k-th answer of a category meets that category's k-th label.
    rows = pope_rows(make_pope(tmp_path / "pope", LLAVA_POPE_IDS))
    assert rows[4]["question_id"] == 20000001
    result = score_rows("pope", tmp_path, tmp_path / "pope", rows)
    assert result["score"] == pytest.approx((1 + 0.8 + 2 / 3) / 3)  # the hand-worked F1s above
    assert result["popular"]["tp"] == 2 and result["popular"]["fp"] == 1 and result["random"]["fn"] == 1
    interleaved = [rows[k + 4 * s] for k in range(4) for s in range(3)]  # categories mixed, each in its order
    assert score_rows("pope", tmp_path, tmp_path / "pope", interleaved)["score"] == pytest.approx(result["score"])


@pytest.mark.parametrize("first_ids", [None, LLAVA_POPE_IDS])
def test_pope_answers_out_of_order_name_the_line(tmp_path, first_ids):
    rows = pope_rows(make_pope(tmp_path / "pope", first_ids))
    rows[5], rows[6] = rows[6], rows[5]  # eval_pope.py would silently pair them with the wrong labels
    with pytest.raises(ScoreError, match=r"answers.jsonl, line 6: answer 2 of category 'popular' is to question "
                                         r"\d+ \(COCO_val2014_popular_1.jpg: 'Is there a dog.*label 2 of .*"
                                         r"coco_pope_popular.json is about COCO_val2014_popular_0.jpg: 'Is there a "
                                         r"cat.*by position"):
        score_rows("pope", tmp_path, tmp_path / "pope", rows)


def make_mme(root):
    """existence and count (flat folders), code_reasoning (images/ + questions_answers_YN/, and a
    ground-truth line with two spaces before 'Please', as some release files have)."""
    yn = " Please answer yes or no."
    files = {
        "existence/a.txt": [("Is there a dog in this image?" + yn, "Yes"),
                            ("Is there a cat in this image?" + yn, "No")],
        "existence/b.txt": [("Is there a red car?" + yn, "No"), ("Is there a blue car?" + yn, "Yes")],
        "count/a.txt": [("Are there two dogs?" + yn, "Yes"), ("Are there three dogs?" + yn, "No")],
        "count/b.txt": [("Is there one cup?" + yn, "Yes"), ("Are there two cups?" + yn, "No")],
        "code_reasoning/questions_answers_YN/0001.txt": [("Is the output 3?  Please answer yes or no.", "Yes"),
                                                         ("Is the output 4?" + yn, "No")],
    }
    base = root / "MME_Benchmark_release_version"
    os.makedirs(base / "code_reasoning" / "images")
    for name, lines in files.items():
        os.makedirs(os.path.dirname(base / name), exist_ok=True)
        (base / name).write_text("".join(f"{q}\t{a}\n" for q, a in lines), encoding="utf-8")


def test_mme_subtask_scores_and_perception_sum(tmp_path):
    make_mme(tmp_path / "mme")
    short = scorers.SHORT  # LLaVA's llava_mme.jsonl asks with its short-answer suffix instead
    rows = [
        ("existence/a.png", "Is there a dog in this image?" + short, "Yes, it is"),
        ("existence/a.png", "Is there a cat in this image? Please answer yes or no.", "No"),
        ("existence/b.png", "Is there a red car? Please answer yes or no.", "no"),
        ("existence/b.png", "Is there a blue car? Please answer yes or no.", "Yes"),          # 4/4, 2/2 images: 200
        ("count/a.png", "Are there two dogs? Please answer yes or no.", "Yes"),
        ("count/a.png", "Are there three dogs? Please answer yes or no.", "No"),
        ("count/b.png", "Is there one cup? Please answer yes or no.", "I think yes"),          # other: wrong
        ("count/b.png", "Are there two cups? Please answer yes or no.", "No"),                # 3/4, 1/2: 75 + 50 = 125
        ("code_reasoning/0001.png", "Is the output 3?" + short, "Yes"),                       # finds the two-space line
        ("code_reasoning/0001.png", "Is the output 4? Please answer yes or no.", "Yes"),       # 1/2, 0/1: 50
    ]
    result = score_rows("mme", tmp_path, tmp_path / "mme",
                        [{"question_id": q, "prompt": p, "text": t} for q, p, t in rows])
    assert result["existence"]["score"] == pytest.approx(200)
    assert result["count"] == pytest.approx({"score": 125, "acc": 75, "acc_plus": 50})
    assert result["score"] == result["perception"] == pytest.approx(325) and result["perception_max"] == 400
    assert result["cognition"] == pytest.approx(50) and result["cognition_max"] == 200
    assert "position" in result["missing"] and "existence" not in result["missing"] and len(result["missing"]) == 11


def test_sqa_img_accuracy(tmp_path):
    problem = lambda answer, image, n=4: {"question": "?", "choices": list("wxyzv")[:n], "answer": answer,
                                          "image": image, "split": "test"}
    write_json(tmp_path / "sqa" / "problems.json", {"1": problem(1, "image.png"), "2": problem(0, "image.png"),
                                                    "3": problem(2, None), "4": problem(4, "image.png", 5),
                                                    "5": problem(0, None)})
    write_json(tmp_path / "sqa" / "pid_splits.json", {"test": ["1", "2", "3", "4"], "train": ["5"]})
    rows = [{"question_id": "1", "text": "B"}, {"question_id": "2", "text": "A."},  # 'A.' fails: wrong
            {"question_id": "3", "text": "The answer is C."}, {"question_id": "4", "text": "E"}]
    result = score_rows("sqa", tmp_path, tmp_path / "sqa", rows)
    assert result["accuracy"] == pytest.approx(75)           # 3 of 4
    assert result["score"] == pytest.approx(200 / 3)         # IMG: problems 1, 2, 4 -> 2 of 3
    assert result["n_img"] == 3 and result["failed_to_parse"] == 1


def make_gqa(root):
    q = lambda answer, structural, balanced=True: {
        "question": "?", "answer": answer, "isBalanced": balanced,
        "types": {"structural": structural, "semantic": "attr", "detailed": "x"}}
    return write_json(root / "testdev_balanced_questions.json", {
        "1": q("red", "query"), "2": q("yes", "verify"), "3": q("2", "query"), "4": q("no", "verify", False),
        "5": q("no", "verify")})


def test_gqa_exact_match_after_rstrip_lower(tmp_path):
    make_gqa(tmp_path / "gqa")
    rows = [{"question_id": "1", "text": "Red."}, {"question_id": "2", "text": "yes"},
            {"question_id": "3", "text": " 2"},   # not stripped: wrong
            {"question_id": "4", "text": "blue"},  # unbalanced: not counted
            {"question_id": "5", "text": "No"}]
    result = score_rows("gqa", tmp_path, tmp_path / "gqa", rows)
    assert result["score"] == pytest.approx(75) and result["n"] == 4
    assert result["open"] == pytest.approx(50) and result["binary"] == pytest.approx(100)
    assert result["per_structural"] == pytest.approx({"query": 50, "verify": 100})


def test_textvqa_matches_by_image_and_question(tmp_path):
    root = tmp_path / "textvqa"
    write_json(root / "TextVQA_0.5.1_val.json", {"data": [
        {"image_id": "img1", "question": "What is written?", "answers": ["stop"] * 3 + ["go"] * 7},
        {"image_id": "img1", "question": "What colour is it?", "answers": ["red"] * 10}]})
    prompts = ["What is written?\nReference OCR token: STOP" + scorers.SHORT, "What colour is it?" + scorers.SHORT]
    write_jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", [{"question_id": "img1", "text": p} for p in prompts])
    rows = [{"question_id": "img1", "prompt": prompts[0], "text": "Stop."},  # 3 of 10 match: 0.9
            {"question_id": "img1", "prompt": prompts[1], "text": "Red"}]    # 1.0
    assert score_rows("textvqa", tmp_path, root, rows)["score"] == pytest.approx(95)
    with pytest.raises(ScoreError, match="line 2: .*prompt"):
        score_rows("textvqa", tmp_path, root, [rows[0], {"question_id": "img1", "text": "Red"}])


def test_vizwiz_val_score_and_test_upload(tmp_path):
    questions = [{"question_id": 0, "image": "a.jpg", "text": "?"}, {"question_id": 1, "image": "b.jpg", "text": "?"}]
    rows = [{"question_id": 0, "text": "Unanswerable"}, {"question_id": 1, "text": "Two."}]
    write_jsonl(tmp_path / "val" / "llava_test.jsonl", questions)
    write_json(tmp_path / "val" / "Annotations" / "val.json", [
        {"image": "a.jpg", "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10},
        {"image": "b.jpg", "answers": [{"answer": a} for a in ["2"] * 2 + ["3"] * 8]}])
    assert score_rows("vizwiz", tmp_path, tmp_path / "val", rows)["score"] == pytest.approx(80)  # (1 + 0.6) / 2
    write_jsonl(tmp_path / "test" / "llava_test.jsonl", questions)
    result = score_rows("vizwiz", tmp_path, tmp_path / "test", rows)
    assert result["score"] is None
    with open(result["upload"], encoding="utf-8") as f:
        assert json.load(f) == [{"image": "a.jpg", "answer": "unanswerable"}, {"image": "b.jpg", "answer": "2"}]


def test_mmbench_circular_group_with_one_wrong_rotation_scores_zero(tmp_path):
    root = tmp_path / "mmbench"
    os.makedirs(root)
    rows = []
    for idx, options, answer, category in [(0, ["cat", "dog", "fish", "bird"], "B", "x"),
                                           (1, ["red", "blue", "green", "pink"], "C", "x"),
                                           (2, ["dog", "cat"], "A", "y")]:
        for k in range(len(options)):  # rotation k: options shifted, the answer letter follows its option
            opts = options[k:] + options[:k]
            letter = "ABCD"[opts.index(options["ABCD".index(answer)])]
            rows.append({"index": idx + k * 1_000_000, "question": "Which?", "hint": "nan", "answer": letter,
                         "category": category, "l2-category": "l2", "image": "iVBORw0KGgo=",
                         **{c: (opts[i] if i < len(opts) else "") for i, c in enumerate("ABCD")}})
    with open(root / "mmbench_dev_20230712.tsv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    replies = {r["index"]: r["answer"] for r in rows}
    assert replies[2_000_001] == "A"  # rotation 2 of question 1: green, pink, red, blue
    replies[2_000_001] = "B"        # group 1: one rotation wrong -> the whole question scores 0
    replies[1_000_002] = "a dog"    # group 2: matched by option text ('dog' is B in this rotation: right)
    result = score_rows("mmbench", tmp_path, root, [{"question_id": i, "text": t} for i, t in replies.items()])
    assert result["score"] == pytest.approx(200 / 3)   # groups 0 and 2 of 3
    assert result["single"] == pytest.approx(100)      # the first rotations alone are all right
    assert result["per_category"] == pytest.approx({"x": 50, "y": 100}) and result["n_rows"] == 10


MMVET = {"v1_0": ["rec"], "v1_1": ["rec", "ocr"], "v1_2": ["ocr", "math"], "v1_3": ["rec"]}


def make_mmvet(root):
    write_json(root / "mm-vet.json", {i: {"imagename": f"{i}.png", "capability": caps, "question": f"Q{i}?",
                                          "answer": "a<AND>b"} for i, caps in MMVET.items()})
    return [{"question_id": int(i[3:]), "prompt": f"Q{i}?", "text": f"reply {i}"} for i in MMVET]


def test_mmvet_aggregates_precomputed_grades(tmp_path):
    rows = make_mmvet(tmp_path / "mmvet")
    grades = write_json(tmp_path / "grades.json", {  # two grading runs, MM-Vet's grade-file format
        "v1_0": {"score": [1.0, 0.6]}, "v1_1": {"score": [0.5, 0.5]}, "v1_2": {"score": [0.0, 1.0]},
        "v1_3": {"score": [0.8, 1.0]}})
    result = score_rows("mmvet", tmp_path, tmp_path / "mmvet", rows, grades=grades)
    # total per run: 2.3/4 = 57.5 and 3.1/4 = 77.5 -> 67.5, std 10.0
    assert result["score"] == pytest.approx(67.5) and result["std"] == pytest.approx(10.0) and result["runs"] == 2
    # rec (v1_0, v1_1, v1_3): 76.67 and 70 -> 73.3; ocr (v1_1, v1_2): 25, 75 -> 50; math: 0, 100 -> 50
    assert result["per_capability"] == pytest.approx({"math": 50.0, "ocr": 50.0, "rec": 73.3})
    assert result["per_combination"] == pytest.approx({"math_ocr": 50.0, "ocr_rec": 50.0, "rec": 85.0})
    with pytest.raises(ScoreError, match="--grades"):
        score_rows("mmvet", tmp_path, tmp_path / "mmvet", rows)


# a stand-in for MM-Vet's few-shot grading prompt (the user supplies the real one)
GRADER_PROMPT = "Grade the prediction from 0.0 to 1.0.\n\nQuestion | Ground truth | Prediction | Correctness"


def test_mmvet_callable_grader_retries_like_the_official_loop(tmp_path, monkeypatch):
    rows = make_mmvet(tmp_path / "mmvet")
    (tmp_path / "fake_grader.py").write_text(
        "calls = []\n"
        "def grade(prompt, temperature):\n"
        "    calls.append((prompt, temperature))\n"
        "    row = prompt.split('Correctness\\n')[-1]\n"
        "    if 'reply v1_0' in row: return '1.0'\n"
        "    if 'reply v1_1' in row: return '0.5' if 'digit' in row else 'Great'\n"  # unusable, then usable
        "    if 'reply v1_2' in row: return 'n/a'\n"                                  # never usable: 0.0
        "    return '0.3 because'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "prompt.txt").write_text(GRADER_PROMPT)
    with pytest.raises(ScoreError, match="--grader_prompt"):
        score_rows("mmvet", tmp_path, tmp_path / "mmvet", rows, grader="fake_grader:grade")
    result = score_rows("mmvet", tmp_path, tmp_path / "mmvet", rows, grader="fake_grader:grade",
                        grader_prompt=str(tmp_path / "prompt.txt"))
    assert result["score"] == pytest.approx(45.0)  # (1.0 + 0.5 + 0.0 + 0.3) / 4
    import fake_grader
    temps = [t for p, t in fake_grader.calls if "reply v1_2" in p]
    assert temps == [0.0, 0.0, 0.5, 1.0, 1.5]  # 5 replies read, the temperature rising on each retry
    assert fake_grader.calls[0][0] == GRADER_PROMPT + "\nQv1_0? | a <AND> b | reply v1_0 | "
    with open(result["grades"], encoding="utf-8") as f:
        assert json.load(f)["v1_1"]["score"] == [0.5]


def test_mmvet_openai_compatible_endpoint(tmp_path):
    rows = make_mmvet(tmp_path / "mmvet")
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            requests.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            body = json.dumps({"choices": [{"message": {"content": "0.4"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        (tmp_path / "prompt.txt").write_text(GRADER_PROMPT)
        result = score_rows("mmvet", tmp_path, tmp_path / "mmvet", rows, grader=url, grader_model="judge",
                            grader_prompt=str(tmp_path / "prompt.txt"))
    finally:
        server.shutdown()
    assert result["score"] == pytest.approx(40.0) and len(requests) == 4
    path, body = requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "judge" and body["max_tokens"] == 3
    assert body["temperature"] == 0.0 and body["messages"][0]["content"].startswith(GRADER_PROMPT)


# ----- bad input ---------------------------------------------------------------

def test_bad_lines_are_named(tmp_path):
    make_gqa(tmp_path / "gqa")
    good = [{"question_id": q, "text": "x"} for q in "12345"]
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps(good[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ScoreError, match=r"answers.jsonl, line 2: not valid JSON"):
        scorers.score("gqa", str(path), str(tmp_path / "gqa"))
    cases = [([{"text": "x"}] + good[1:], "line 1: expected an object with a 'question_id'"),
             (good[:2] + [{"question_id": "3", "answer": "x"}] + good[3:], "line 3: .*string 'text'"),
             (good + [{"question_id": "99", "text": "x"}], "line 6: question '99' is not in"),
             (good + [{"question_id": "2", "text": "y"}], "line 6: a second answer to question '2'"),
             (good[:4], "1 of the 5 questions .* have no answer .*'5'")]
    for rows, message in cases:
        with pytest.raises(ScoreError, match=message):
            score_rows("gqa", tmp_path, tmp_path / "gqa", rows)
    with pytest.raises(ScoreError, match="expected testdev_balanced_questions.json"):
        score_rows("gqa", tmp_path, tmp_path, good)  # the wrong folder


def test_cli_prints_the_headline_last_and_errors_without_traceback(tmp_path, capsys):
    make_gqa(tmp_path / "gqa")
    path = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": q, "text": "yes"} for q in "12345"])
    eval_vlm.main(["score", "gqa", "--answers", path, "--data", str(tmp_path / "gqa")])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["bench"] == "gqa" and last["score"] == pytest.approx(25) and "per_structural" in last
    write_jsonl(path, [{"question_id": "1"}])
    with pytest.raises(SystemExit, match="error: .*line 1"):
        run_main(eval_vlm.main, ["score", "gqa", "--answers", path, "--data", str(tmp_path / "gqa")])


# ----- the shapes world: perfect answers score perfectly, wrong ones lower --------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    shapes.generate_shapes_world(str(out), n_train=50, n_test=40, n_comp=20, corpus_mb=0.05, workers=1)
    return out


def pope_answers(world, wrong):
    labels = {}
    for split in scorers.POPE_SPLITS:
        for r in read_jsonl(world / f"eval/pope/coco/coco_pope_{split}.json"):
            labels[r["question_id"]] = r["label"].capitalize()
    return [{"question_id": q["question_id"], "prompt": q["text"], "text": "Yes" if wrong else labels[q["question_id"]]}
            for q in read_jsonl(world / "eval/pope/llava_pope_test.jsonl")]


def gqa_answers(world, wrong, folder="gqa"):
    with open(world / f"eval/{folder}/testdev_balanced_questions.json", encoding="utf-8") as f:
        truth = json.load(f)
    return [{"question_id": q["question_id"], "prompt": q["text"],
             "text": "blue" if wrong else truth[q["question_id"]]["answer"].capitalize() + "."}
            for q in read_jsonl(world / f"eval/{folder}/llava_gqa_testdev_balanced.jsonl")]


def sqa_answers(world, wrong):
    with open(world / "eval/scienceqa/llava_test_CQM-A.json", encoding="utf-8") as f:
        return [{"question_id": e["id"], "prompt": e["conversations"][0]["value"] + scorers.CHOICE,
                 "text": "A" if wrong else e["conversations"][1]["value"]} for e in json.load(f)]


def mme_answers(world, wrong):
    root, rows = world / "eval/mme/MME_Benchmark_release_version", []
    for q in read_jsonl(world / "eval/mme/llava_mme.jsonl"):
        with open(root / (os.path.splitext(q["question_id"])[0] + ".txt"), encoding="utf-8") as f:
            truth = dict(line.rstrip("\n").split("\t") for line in f)
        rows.append({"question_id": q["question_id"], "prompt": q["text"],
                     "text": "Yes" if wrong else truth[q["text"]]})
    return rows


@pytest.mark.parametrize("bench, make, perfect, folder", [
    ("shapes_pope", pope_answers, 1.0, ""), ("shapes_gqa", gqa_answers, 100.0, "eval/gqa"),
    ("shapes_gqa_compositional", lambda w, x: gqa_answers(w, x, "gqa_compositional"), 100.0, ""),
    ("shapes_sqa", sqa_answers, 100.0, "eval/scienceqa"), ("shapes_mme", mme_answers, 800.0, ""),
])
def test_shapes_sets_perfect_and_wrong(world, tmp_path, bench, make, perfect, folder):
    right = score_rows(bench, tmp_path, world / folder, make(world, False))  # folder "": the world's root
    assert right["score"] == pytest.approx(perfect)
    wrong = score_rows(bench, tmp_path, world / folder, make(world, True))
    assert wrong["score"] < perfect - 1e-6
    if bench.startswith("shapes_gqa"):
        assert set(right["per_detailed"]) >= {"colour", "shape"} and set(right["per_detailed"].values()) == {100.0}
    if bench == "shapes_mme":
        assert right["perception_max"] == 800 and wrong["score"] == pytest.approx(200)  # all 'Yes': acc 50, acc+ 0
        assert len(right["missing"]) == 10


def test_per_key_splits_colour_and_shape_questions_by_what_names_the_object(tmp_path):
    """A hand-made world of five questions: the split counts each colour or shape question under
    the number of attributes in its key, scores it as GQA does, and leaves other types out."""
    gqa = tmp_path / "eval" / "gqa"
    gqa.mkdir(parents=True)
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"benchmarks": {"gqa": {"question_file": "eval/gqa/llava_gqa_testdev_balanced.jsonl"}}}))
    rows = [("colour", "What colour is the star?", "red", "Red."),                        # 1, right
            ("colour", "What colour is the large star?", "blue", "green"),                # 2, wrong
            ("colour", "What is the colour of the star in the center?", "green", "green"),  # 2, right
            ("shape", "What shape is the red object in the top left?", "circle", "circle"),  # 2, right
            ("size", "What size is the blue star?", "small", "large")]                    # not split
    (gqa / "testdev_balanced_questions.json").write_text(json.dumps(
        {str(i): {"question": q, "answer": a, "types": {"detailed": t}} for i, (t, q, a, _) in enumerate(rows)}))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": str(i), "text": r[3]}) + "\n" for i, r in enumerate(rows)))
    assert eval_vlm.per_key(str(answers), str(tmp_path)) == {
        "colour": {"1": {"accuracy": 100.0, "n": 1}, "2": {"accuracy": 50.0, "n": 2}},
        "shape": {"2": {"accuracy": 100.0, "n": 1}}}
    answers.write_text(json.dumps({"question_id": "7", "text": "red"}) + "\n")  # not a question of this world
    with pytest.raises(ScoreError, match=r"answers.jsonl, line 1: question '7' is not in"):
        eval_vlm.per_key(str(answers), str(tmp_path))
