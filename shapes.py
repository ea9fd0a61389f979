"""
The shapes world: scenes of coloured shapes that the project generates itself, offline, written
in exactly the file formats of the real datasets (raw text, LLaVA pretrain and instruct JSON,
POPE, GQA, ScienceQA, MME), so that the default run exercises the same loaders, training and
scoring code that real data uses. Deterministic given --seed.

    python shapes.py --out data/shapes                 # the whole world, about 15 s on 2 cores
    python shapes.py --grid assets/shapes_grid.png     # a picture of 8 scenes, with questions about them

Files written under --out. Every answer is computed from the scene; test and compositional
scenes never appear in training; the held-out pairs (red star, blue triangle and yellow
hexagon) never appear in any training image or text.

  manifest.json             seed, sizes, counts, held-out pairs, where each benchmark's files are
  scenes_train.jsonl        ground truth, one scene per line: "image" path, "objects" (shape, colour,
  scenes_test.jsonl           size, cell, row, col, rgb, center/radius as fractions of the side,
  scenes_compositional.jsonl  center_px, bbox_px), "background", "count" (the scene's count plan)
  images/NNN/train_*.png    training images, 1000 per folder; the JSON files' image paths are relative to images/
  corpus/train.txt          LM pretraining text (--corpus_mb): descriptions, relations, counts and
  corpus/val.txt              question-answer prose; one document per paragraph, blank line between
  pretrain.json             stage 1, LLaVA pretrain JSON: one caption per training image
                              [{"id", "image", "conversations": [human "<image>\\n...", gpt caption]}]
  instruct.json             stage 2, LLaVA instruct JSON: 4 one-question samples per image (colour,
                              shape, size, count, existence, position, relations, these with
                              "after": 0.75), prompted like LLaVA-1.5's data, 3 either-or questions
                              (colour, shape, cell: "Is the star blue or red?"), one by the cell ("What
                              colour is the object in the top left?"); text-only ones (no "image")
  eval/images/              test_*.png and comp_*.png, the image folder of POPE and GQA
  eval/pope/                llava_pope_test.jsonl (question_id, image, text, category) and
                              coco/coco_pope_{random,popular,adversarial}.json (one JSON per line,
                              label yes/no; up to 3 present and as many absent objects per image)
  eval/gqa/                 llava_gqa_testdev_balanced.jsonl (question_id, image, text, category)
                              and testdev_balanced_questions.json (GQA's answer file: qid ->
                              question, answer, imageId, types, ...); short answers, 2 per image
  eval/gqa_compositional/   the same two files on comp_* images, asking about held-out pairs
  eval/scienceqa/           problems.json (pid -> question, choices, answer index, image, ...),
                              pid_splits.json ("test": pids), llava_test_CQM-A.json (LLaVA's test
                              conversations), images/test/PID/image.png; 4 options, some text-only
  eval/mme/                 llava_mme.jsonl and MME_Benchmark_release_version/SUBTASK/ID.png + ID.txt
                              (lines question<TAB>Yes|No, one Yes and one No per image) for the
                              subtasks existence, count, position, color
"""

import argparse
import io
import itertools
import json
import math
import os
import random
import time
from collections import Counter
from multiprocessing import Pool

from PIL import Image, ImageDraw

from common import UserError, checked, run_main
from data import VICUNA_SYSTEM
from scorers import CHOICE, SHORT, YESNO

# A scene is 1 to 4 shapes, each alone in one cell of a 3x3 grid, so shapes never overlap and "left
# of" or "above" are exact. Every question is generated from the scene's ground truth, so every answer
# is known, and accuracy, hallucination and the effect of fewer visual tokens can be measured on a
# laptop. Text is generated in the main process (it is cheap); only rendering PNGs runs in parallel,
# and a scene's randomness comes from its own seeded RNG: the files are the same for any number of workers.

SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),
           "yellow": (235, 200, 30), "purple": (140, 60, 190), "orange": (245, 135, 20)}
SIZES = ["small", "large"]
CELLS = ["top left", "top center", "top right", "middle left", "center", "middle right",
         "bottom left", "bottom center", "bottom right"]  # cell index = 3 * row + col
# The compositional split: these (colour, shape) pairs never appear in any training scene or
# training text; eval/gqa_compositional asks only about them. No two share a colour or shape.
HELD_OUT = [("red", "star"), ("blue", "triangle"), ("yellow", "hexagon")]
ALL_PAIRS = [(c, s) for c in COLOURS for s in SHAPES]
TRAIN_PAIRS = [p for p in ALL_PAIRS if p not in HELD_OUT]

BACKGROUND = (236, 232, 224)  # off-white; each scene tints it a little
RADIUS = {"small": 0.22, "large": 0.34}  # circumradius as a fraction of a cell...
# ...times this, so that the five shapes look about equally big
SCALE = {"circle": 0.85, "square": 1.1, "triangle": 1.25, "star": 1.2, "hexagon": 1.0}
SUPERSAMPLE = 4  # draw 4x larger, then average 4x4 blocks: anti-aliased edges

QTYPES = ["colour", "shape", "size", "count", "exist", "position", "relation"]
ANSWERS = {"colour": list(COLOURS), "shape": SHAPES, "size": SIZES, "count": list("01234"),
           "exist": ["yes", "no"], "position": CELLS, "relation": ["yes", "no"]}
MC_TYPES = ["colour", "shape", "count", "position"]  # types asked as 4-way multiple choice
RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
# The "after" of relation questions: stage 2 reads them after this share of its steps (train_vlm.sample_order);
# from the start they hold back the lookups they need (README, "What the default run reaches").
RELATIONS_AFTER = 0.75
NUMBER_WORDS = ["no", "one", "two", "three", "four"]
# Questions end with the prompt suffixes of LLaVA-1.5's data and benchmark files, verbatim
# (SHORT, YESNO, CHOICE: scorers.py), and chats use the Vicuna v1 system prompt (data.py).


def scene_rng(seed, stream, index):
    """Each scene/question set gets its own RNG, named by (seed, stream, index): the same
    files come out however the work is split across processes. (str seeds hash with
    SHA-512, so this does not depend on PYTHONHASHSEED.)"""
    return random.Random(f"shapes/{seed}/{stream}/{index}")


def scene_key(scene):
    """What makes two scenes 'the same scene' for the train/test split: the objects, ignoring
    the small jitter of position, tint and rotation."""
    return tuple(sorted((o["shape"], o["colour"], o["size"], o["cell"]) for o in scene["objects"]))


def sample_object(rng, colour, shape, cell):
    size = rng.choice(SIZES)
    r = RADIUS[size] * SCALE[shape] / 3  # circumradius as a fraction of the image side
    slack = 1 / 6 - r - 0.01  # how far the centre may move and keep the shape inside its cell
    row, col = divmod(cell, 3)
    cx, cy = (col + 0.5) / 3 + rng.uniform(-slack, slack), (row + 0.5) / 3 + rng.uniform(-slack, slack)
    rgb = [min(255, max(0, v + rng.randint(-12, 12))) for v in COLOURS[colour]]
    return {"shape": shape, "colour": colour, "size": size, "cell": CELLS[cell], "row": row,
            "col": col, "rgb": rgb, "center": [round(cx, 4), round(cy, 4)],
            "radius": round(r, 4), "rotation": rng.randint(-10, 10)}


def sample_scene(rng, pairs=TRAIN_PAIRS, count=None):
    """A random scene whose objects use only the given (colour, shape) pairs, each at most once.

    Counting questions need scenes where a shape or a colour repeats; in a purely random
    scene most shapes appear once or not at all, so "how many circles?" would nearly always
    be 0 or 1. So a scene first draws a count plan: a number (0-4, uniform) of all shapes,
    of one shape or of one colour, and is then built to make it true. scene["count"] records
    the plan; pass `count` to keep a plan and redraw the rest."""
    if count is None:
        answer = rng.randint(0, 4)
        kind = rng.choice(["shape", "colour"] + (["total"] if answer else []))  # 'total' counts all shapes
        value = "shape" if kind == "total" else rng.choice(SHAPES if kind == "shape" else list(COLOURS))
        count = {"kind": kind, "value": value, "answer": answer}
    kind, value, answer = count["kind"], count["value"], count["answer"]
    n = answer if kind == "total" else rng.randint(max(answer, 1), 4)
    i = 1 if kind == "shape" else 0
    chosen = rng.sample(pairs, n) if kind == "total" else (rng.sample([p for p in pairs if p[i] == value], answer) +
                                                          rng.sample([p for p in pairs if p[i] != value], n - answer))
    objects = [sample_object(rng, c, s, cell) for (c, s), cell in zip(chosen, rng.sample(range(9), n))]
    objects.sort(key=lambda o: 3 * o["row"] + o["col"])  # reading order
    background = [v + rng.randint(-12, 12) for v in BACKGROUND]
    return {"objects": objects, "background": background, "count": count}


def shape_points(shape, cx, cy, r, rotation):
    """Polygon vertices of a shape with circumradius r around (cx, cy); y points down."""
    if shape == "star":  # 10 vertices, alternating outer and inner radius, one point up
        radii, start = [r, 0.45 * r] * 5, -90
    else:
        radii = [r] * {"square": 4, "triangle": 3, "hexagon": 6}[shape]
        start = {"square": 45, "triangle": -90, "hexagon": 0}[shape]
    angles = [math.radians(start + rotation + 360 * i / len(radii)) for i in range(len(radii))]
    return [(cx + q * math.cos(a), cy + q * math.sin(a)) for q, a in zip(radii, angles)]


def render_scene(scene, size=64):
    """The scene as a size x size RGB PIL image."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), tuple(scene["background"]))
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        cx, cy, r = o["center"][0] * big, o["center"][1] * big, o["radius"] * big
        if o["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(o["rgb"]))
        else:
            draw.polygon(shape_points(o["shape"], cx, cy, r, o["rotation"]), fill=tuple(o["rgb"]))
    return img.reduce(SUPERSAMPLE)  # (big, big) -> (size, size), each pixel a 4x4 mean


def scene_record(scene, size):
    """The scene's ground truth for scenes_*.jsonl, with pixel centre and bbox at `size`."""
    objects = []
    for o in scene["objects"]:
        cx, cy, r = o["center"][0] * size, o["center"][1] * size, o["radius"] * size
        pts = [(cx - r, cy - r), (cx + r, cy + r)] if o["shape"] == "circle" else \
            shape_points(o["shape"], cx, cy, r, o["rotation"])
        bbox = [min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts)]
        objects.append({**o, "center_px": [round(cx, 2), round(cy, 2)], "bbox_px": [round(v, 2) for v in bbox]})
    return {**scene, "objects": objects}


# ----- words -------------------------------------------------------------------

def article(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def name(o):
    return f"{o['colour']} {o['shape']}"


def join(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def holds(x, rel, y):
    return {"left": x["col"] < y["col"], "right": x["col"] > y["col"],
            "above": x["row"] < y["row"], "below": x["row"] > y["row"]}[rel]


def relation_triples(objects):
    """All true relations (x, rel, y) between two objects."""
    return [(x, rel, y) for x in objects for y in objects for rel in RELATIONS if x is not y and holds(x, rel, y)]


def ref(o, objects, hide):
    """The shortest phrase that picks out o among the objects without saying its `hide`
    attribute ('colour' or 'shape'): 'the circle', 'the large circle', 'the circle in the top left'."""
    keep = "colour" if hide == "shape" else "shape"
    noun = o["shape"] if keep == "shape" else f"{o['colour']} object"
    same = [p for p in objects if p[keep] == o[keep]]
    if len(same) == 1:
        return f"the {noun}"
    if sum(p["size"] == o["size"] for p in same) == 1:
        return f"the {o['size']} {noun}"
    return f"the {noun} in the {o['cell']}"


def count_noun(scene, k):
    """What the scene's planned count counts, singular or plural: 'circle(s)', 'red shape(s)'."""
    c = scene["count"]
    noun = c["value"] if c["kind"] != "colour" else f"{c['value']} shape"
    return noun if k == 1 else noun + "s"


def available_types(scene, qtypes=QTYPES):
    return [t for t in qtypes if t != "relation" or len(scene["objects"]) > 1]


def choose(rng, candidates, used, qtype):
    """candidates: [(answer, way to ask for it)]. Take the answer of this type used least so
    far in this dataset (ties at random), then a way to ask for it. This keeps every answer of
    every type equally frequent in a file of any size, and yes/no at 50/50."""
    answers = sorted({a for a, _ in candidates})
    low = min(used[qtype, a] for a in answers)
    answer = rng.choice([a for a in answers if used[qtype, a] == low])
    used[qtype, answer] += 1
    return answer, rng.choice([c for a, c in candidates if a == answer])


TEMPLATES = {"colour": ["What colour is {}?", "What is the colour of {}?"],
             "shape": ["What shape is {}?", "What is the shape of {}?"],
             "size": ["Is {} large or small?", "What size is {}?"],
             "position": ["Where is {}?", "In which part of the image is {}?"],
             "count": ["How many {} are there?", "How many {} are in the image?"]}


def ask(scene, qtype, rng, used=None, pairs=TRAIN_PAIRS, focus=None):
    """One short-answer question of type qtype about the scene, and its answer.
    used: a Counter of (type, answer) over the dataset being written, for balance (see choose).
    pairs: where absent objects for 'no' answers come from. focus: the one object to ask
    about (the compositional split asks about held-out pairs)."""
    used = Counter() if used is None else used
    objs = scene["objects"]
    about = [focus] if focus else objs
    if qtype == "count":  # all shapes, one shape or one colour (the scene's count plan is among these)
        counts = {"shapes": len(objs), **{s + "s": sum(o["shape"] == s for o in objs) for s in SHAPES},
                  **{c + " shapes": sum(o["colour"] == c for o in objs) for c in COLOURS}}
        a, noun = choose(rng, [(str(k), noun) for noun, k in counts.items()], used, qtype)
        return rng.choice(TEMPLATES[qtype]).format(noun), a
    if qtype in ("colour", "shape", "size", "position"):
        a, o = choose(rng, [(o["cell" if qtype == "position" else qtype], o) for o in about], used, qtype)
        subject = ref(o, objs, hide=qtype) if qtype in ("colour", "shape") else f"the {name(o)}"
        return rng.choice(TEMPLATES[qtype]).format(subject), a
    if qtype == "exist":
        absent = sorted(set(pairs) - {(p["colour"], p["shape"]) for p in objs})
        a, thing = choose(rng, [("yes", name(o)) for o in about] + [("no", " ".join(p)) for p in absent], used, qtype)
        return f"Is there {article(thing)} in the image?", a
    if qtype == "relation":
        a, (x, rel, y) = choose(rng, [("yes" if holds(x, rel, y) else "no", (x, rel, y))
                                      for x in about for y in objs for rel in RELATIONS if x is not y], used, qtype)
        return f"Is the {name(x)} {RELATIONS[rel]} the {name(y)}?", a
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QTYPES}")


def verify_pair(scene, subtask, rng, pairs=TRAIN_PAIRS):
    """MME's design: two yes/no questions about one image, the first true, the second false.
    subtask is an MME subtask name: existence, count, position or color."""
    objs = scene["objects"]
    o = rng.choice(objs)
    if subtask == "existence":
        absent = rng.choice(sorted(set(pairs) - {(p["colour"], p["shape"]) for p in objs}))
        return [f"Is there {article(t)} in this image?" for t in (name(o), " ".join(absent))]
    if subtask == "count":
        k = scene["count"]["answer"]
        wrong = rng.choice([j for j in range(0 if scene["count"]["kind"] != "total" else 1, 5) if j != k])
        return [f"{'Is' if j == 1 else 'Are'} there {j} {count_noun(scene, j)} in this image?" for j in (k, wrong)]
    if subtask == "position" and len(objs) == 1:
        wrong = rng.choice([c for c in CELLS if c != o["cell"]])
        return [f"Is the {name(o)} in the {c} of this image?" for c in (o["cell"], wrong)]
    if subtask == "position":
        x, rel, y = rng.choice(relation_triples(objs))
        return [f"Is the {name(x)} {RELATIONS[r]} the {name(y)}?" for r in (rel, OPPOSITE[rel])]
    if subtask == "color":
        wrong = rng.choice([c for c in COLOURS if c != o["colour"]])
        return [f"Is {ref(o, objs, 'colour')} {c}?" for c in (o["colour"], wrong)]
    raise ValueError(f"unknown MME subtask {subtask!r}; expected existence, count, position or color")


def multiple_choice(question, answer, pool, rng, used):
    """Question with four lettered options (A-D) from pool, the answer at the letter used
    least so far (so a model cannot win by always saying 'A'). Returns (text, choices)."""
    choices = rng.sample([c for c in pool if c != answer], 3)
    letter, _ = choose(rng, [(L, None) for L in "ABCD"], used, "letter")
    choices.insert("ABCD".index(letter), answer)
    return question + "".join(f"\n{'ABCD'[i]}. {c}" for i, c in enumerate(choices)), choices


def describe(scene, rng):
    """One sentence listing the scene's objects: a stage-1 caption."""
    objs = scene["objects"]
    items = join([f"{article(o['size'] + ' ' + name(o))} {rng.choice(['in', 'at'])} the {o['cell']}" for o in objs])
    n = len(objs)
    return rng.choice([f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} shape{'s' * (n > 1)}: {items}.",
                       f"{items[0].upper()}{items[1:]}.", f"The image shows {items}.",
                       f"A plain background with {items}."])


def relation_sentence(x, rel, y, rng):
    phrase = rng.choice([RELATIONS[rel], "to the " + RELATIONS[rel]] if rel in ("left", "right") else [RELATIONS[rel]])
    return f"The {name(x)} is {phrase} the {name(y)}."


def count_sentence(scene):
    """The scene's planned count in words: 'There are two circles.', 'No shapes are red.'"""
    c, k = scene["count"], scene["count"]["answer"]
    if c["kind"] == "colour":
        return f"{NUMBER_WORDS[k].capitalize()} {'shape is' if k == 1 else 'shapes are'} {c['value']}."
    return f"There {'is' if k == 1 else 'are'} {NUMBER_WORDS[k]} {count_noun(scene, k)}."


# Facts about the world that need no picture: LM corpus sentences and text-only conversations.
FACTS = ["A triangle has three corners.", "A square has four equal sides.", "A hexagon has six sides.",
         "A star has five points.", "A circle has no corners.", "Left is the opposite of right.",
         "Above is the opposite of below.", "If one shape is left of another, the other is right of it.",
         "If one shape is above another, the other is below it.", "A large shape is bigger than a small one."]
FACT_QA = [("How many corners does a triangle have?", "3"), ("How many corners does a square have?", "4"),
           ("How many sides does a hexagon have?", "6"), ("How many points does a star have?", "5"),
           ("How many corners does a circle have?", "0"), ("What is the opposite of left?", "right"),
           ("What is the opposite of right?", "left"), ("What is the opposite of above?", "below"),
           ("What is the opposite of below?", "above"), ("Which shape has six sides?", "hexagon"),
           ("Which shape has three corners?", "triangle"), ("Which shape is round?", "circle")]


def fact_choices(answer):
    """The options a fact question's answer is one of."""
    return list("03456") if answer.isdigit() else list(OPPOSITE) if answer in OPPOSITE else SHAPES


QA_FORMATS = ["Q: {q} A: {a}.", "Question: {q} Answer: {a}.", "{q} The answer is {a}.",
              "If you ask \"{q}\", the answer is {a}."]


def text_only_conversation(rng):
    """A conversation without an image, like LLaVA-Instruct's text-only part: world facts and
    reasoning about relations given in words."""
    turns = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.5:
            q, a = rng.choice(FACT_QA)
        else:
            x, y = [" ".join(p) for p in rng.sample(TRAIN_PAIRS, 2)]
            rel = rng.choice(list(RELATIONS))
            axis = "left or right" if rel in ("left", "right") else "above or below"
            q, a = f"The {x} is {RELATIONS[rel]} the {y}. Is the {y} {axis} the {x}?", OPPOSITE[rel]
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


def corpus_document(scene, rng, used):
    """One paragraph of LM pretraining text about a scene: a description, relations, a count
    and question-answer prose; half of them as a chat in the Vicuna template the VLM is
    fine-tuned with, so the LM (and its tokenizer) know the template's words before stage 2."""
    if rng.random() < 0.5:
        return chat_document(scene, rng, used)
    triples = relation_triples(scene["objects"])
    parts = [describe(scene, rng)] + [relation_sentence(*t, rng) for t in rng.sample(triples, min(len(triples), 2))]
    parts.append(count_sentence(scene))
    for qtype in rng.choices(available_types(scene), k=4):
        q, a = ask(scene, qtype, rng, used)
        parts.append(rng.choice(QA_FORMATS).format(q=q, a=a))
    if rng.random() < 0.3:
        parts.append(rng.choice(FACTS))
    return " ".join(parts)


def chat_document(scene, rng, used):
    """The scene in words, then 3-5 questions about it, in the Vicuna v1 chat template."""
    turns = []
    for i, qtype in enumerate(rng.choices(available_types(scene), k=rng.randint(3, 5))):
        q, a = ask(scene, qtype, rng, used)
        context = describe(scene, rng) + " " if i == 0 else ""
        turns.append(f"USER: {context}{q} {SHORT.strip()} ASSISTANT: {a}")  # one line per document
    return VICUNA_SYSTEM + " " + " ".join(turns)


def reading_questions(scenes, seed=0):
    """One question per scene with the scene described in words first, as the corpus's chat
    documents do: (prompt, answer, question type). If the LM cannot answer these from the text,
    the VLM cannot learn to answer them from an image's tokens either."""
    rng, used, rows = random.Random(seed), Counter(), []
    for scene in scenes:
        qtype = rng.choice(available_types(scene))
        q, a = ask(scene, qtype, rng, used)
        rows.append((f"{VICUNA_SYSTEM} USER: {describe(scene, rng)} {q} {SHORT.strip()} ASSISTANT:", a, qtype))
    return rows


def caption_conversation(scene, rng):
    """A stage-1 sample: an instruction to describe (dropped by the 'plain' template) and a caption."""
    prompt = rng.choice(["Give a brief description of the image.", "Describe the image concisely.",
                         "Write a short caption for this picture.", "What is in the image?"])
    return [{"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": describe(scene, rng)}]


def either_or(scene, rng, asked):
    """"Is the star blue or red?", "Is the large red object a star or a circle?", "Is the small star
    top left or center?": the answer first, right after a name of 1-3 of the object's other attributes
    that picks it out (None if none does). With the loss on the questions the word after any name is
    then a lookup by it, as "star" after "Is the blue" is one by colour (README, "What the default run
    reaches"). asked: colour, shape or cell (on perfect features: position questions 34 -> 71%)."""
    if asked not in ("colour", "shape", "cell"):
        raise ValueError(f"either_or asks for the colour, the shape or the cell, not {asked!r}")
    objs, others = scene["objects"], [a for a in ("colour", "shape", "size") if a != asked]
    for o in rng.sample(objs, len(objs)):
        names = [k for n in (1, 2, 3) for k in itertools.combinations(others, n)
                 if k != ("size",) and sum(all(p[a] == o[a] for a in k) for p in objs) == 1]
        if names:
            break
    else:
        return None
    attrs = rng.choice(names)
    words = [o[a] for a in ("size", "colour") if a in attrs] + [o["shape"] if "shape" in attrs else "object"]
    key = "the " + " ".join(words)
    truth = o[asked]
    pair = lambda v: (v if asked == "colour" else o["colour"], v if asked == "shape" else o["shape"])
    other = rng.choice([v for v in {"colour": list(COLOURS), "shape": SHAPES, "cell": CELLS}[asked]
                        if v != truth and pair(v) not in HELD_OUT])  # no held-out pair, even as the wrong option
    q = f"Is {key} {article(truth)} or {article(other)}?" if asked == "shape" else f"Is {key} {truth} or {other}?"
    return [{"from": "human", "value": "<image>\n" + q + SHORT}, {"from": "gpt", "value": truth}]


def instruct_samples(scene, rng, used, n=4, lookups=3):
    """Stage-2 samples about one image: n questions of different types, each its own one-turn
    conversation, in the mix of prompt styles of LLaVA-1.5's data: short answers (the GQA/POPE
    suffix), yes/no (MME's suffix) and lettered multiple choice (ScienceQA's suffix); then `lookups`
    (0-3) either-or questions (either_or), on the colour, the shape and the cell, and with any, one
    by the cell (by_cell). One question a sample, not LLaVA's multi-turn chats: the tiny LM learns to
    look things up from many short samples far sooner than from fewer long ones (README, "The reading
    ladder"). used: see choose()."""
    samples, mme = [], {"exist": "existence", "count": "count", "relation": "position", "colour": "color"}
    kinds = available_types(scene)
    for qtype in rng.sample(kinds, min(n, len(kinds))):
        style = rng.random()
        if style < 0.15 and qtype in mme:
            true, false = verify_pair(scene, mme[qtype], rng)
            a, q = choose(rng, [("yes", true), ("no", false)], used, "yesno")
            q += YESNO
        elif style < 0.3 and qtype in MC_TYPES:
            q, a = ask(scene, qtype, rng, used)
            q, choices = multiple_choice(q, a, ANSWERS[qtype], rng, used)
            q, a = q + CHOICE, "ABCD"[choices.index(a)]
        else:
            q, a = ask(scene, qtype, rng, used)
            q += SHORT
        samples.append({"conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}],
                        **({"after": RELATIONS_AFTER} if qtype == "relation" else {})})
    lookup_turns = [either_or(scene, rng, asked) for asked in rng.sample(["colour", "shape", "cell"], lookups)]
    lookup_turns += [by_cell(scene, rng)] if lookups else []
    return samples + [{"conversations": turns} for turns in lookup_turns if turns]


def by_cell(scene, rng):
    """A lookup BY the cell, "What colour is the object in the top left?": "the star in the top left" needs it."""
    o, asked = rng.choice(scene["objects"]), rng.choice(["colour", "shape"])
    q = rng.choice(TEMPLATES[asked]).format(f"the object in the {o['cell']}")
    return [{"from": "human", "value": "<image>\n" + q + SHORT}, {"from": "gpt", "value": o[asked]}]


# ----- benchmarks, each in its real counterpart's file format -------------------

def pope_files(scenes, seed, train_counts):
    """POPE: per image, up to 3 present objects ('yes') and as many absent ones ('no') per
    category. random: any absent object; popular: the absent objects most frequent in
    training (POPE's rule); adversarial: absent objects sharing a colour or shape with a
    present one (the shapes world's version of POPE's co-occurring objects)."""
    popular = sorted(TRAIN_PAIRS, key=lambda p: (-train_counts[p], p))
    questions, labels = [], {}
    for cat in ["adversarial", "popular", "random"]:
        labels[cat] = []
        for i, s in enumerate(scenes):
            rng = scene_rng(seed, "pope_" + cat, i)
            present = [(o["colour"], o["shape"]) for o in s["objects"]]
            absent = [p for p in TRAIN_PAIRS if p not in present]
            k = min(3, len(present))
            near = [p for p in absent if any(p[0] == q[0] or p[1] == q[1] for q in present)]
            negatives = (rng.sample(absent, k) if cat == "random" else rng.sample(near, k) if cat == "adversarial"
                         else [p for p in popular if p in absent][:k])
            items = [(p, "yes") for p in rng.sample(present, k)] + [(p, "no") for p in negatives]
            rng.shuffle(items)
            for p, label in items:
                text, qid = f"Is there {article(' '.join(p))} in the image?", len(questions) + 1
                questions.append({"question_id": qid, "image": s["id"] + ".png", "text": text + SHORT, "category": cat})
                labels[cat].append({"question_id": qid, "image": s["id"] + ".png", "text": text, "label": label})
    return questions, labels


GQA_TYPES = {"colour": ("query", "attr"), "shape": ("query", "cat"), "size": ("query", "attr"),
             "position": ("query", "rel"), "count": ("query", "obj"), "exist": ("verify", "obj"),
             "relation": ("verify", "rel")}


def gqa_files(scenes, seed, stream, qtypes=QTYPES, pairs=TRAIN_PAIRS, focus=None):
    """GQA: two short-answer questions per image, of different types. Returns LLaVA's question
    jsonl rows and the official answer file (dict qid -> GQA's fields, which its eval.py reads).
    focus(scene) picks the object to ask about (the compositional split)."""
    questions, answers, used = [], {}, Counter()
    for i, s in enumerate(scenes):
        rng = scene_rng(seed, stream, i)
        for qtype in rng.sample(available_types(s, qtypes), 2):
            q, a = ask(s, qtype, rng, used, pairs, focus(s) if focus else None)
            qid, (structural, semantic) = str(len(answers)), GQA_TYPES[qtype]
            questions.append({"question_id": qid, "image": s["id"] + ".png", "text": q + SHORT, "category": qtype})
            answers[qid] = {
                "question": q, "answer": a, "fullAnswer": f"The answer is {a}.", "imageId": s["id"],
                "isBalanced": True, "types": {"structural": structural, "semantic": semantic, "detailed": qtype},
                "groups": {"global": qtype, "local": qtype}, "entailed": [], "equivalent": [qid],
                "semantic": [{"operation": "select", "argument": "scene", "dependencies": []},
                             {"operation": structural, "argument": qtype, "dependencies": [0]}],
                "semanticStr": f"select: scene->{structural}: {qtype} [0]",
                "annotations": {"question": {}, "answer": {}, "fullAnswer": {}}}
    return questions, answers


def sqa_files(scenes, seed):
    """ScienceQA: one 4-way multiple-choice problem per image, plus one text-only problem per
    four images (ScienceQA mixes both; its IMG score counts only those with an image).
    Returns problems.json, pid_splits.json, llava_test_CQM-A.json and {pid: scene} for images."""
    problems, llava, images, used = {}, [], {}, Counter()
    for i, s in enumerate(scenes):
        rng = scene_rng(seed, "sqa", i)
        qtype = rng.choice(MC_TYPES)
        todo = [(*ask(s, qtype, rng, used), ANSWERS[qtype], qtype, s)]
        if i % 4 == 3:
            q, a = rng.choice(FACT_QA)
            todo.append((q, a, fact_choices(a), "fact", None))
        for q, a, pool, qtype, scene in todo:
            pid = str(len(problems) + 1)
            text, choices = multiple_choice(q, a, pool, rng, used)
            problems[pid] = {"question": q, "choices": choices, "answer": choices.index(a), "hint": "",
                             "image": "image.png" if scene else None, "task": "closed choice", "grade": "grade1",
                             "subject": "natural science", "topic": "shapes", "category": qtype, "skill": qtype,
                             "lecture": "", "solution": f"The answer is {a}.", "split": "test"}
            entry = {"id": pid, "conversations": [{"from": "human", "value": ("<image>\n" if scene else "") + text},
                                                  {"from": "gpt", "value": "ABCD"[choices.index(a)]}]}
            if scene:
                entry["image"], images[pid] = f"{pid}/image.png", scene
            llava.append(entry)
    pids = list(problems)
    splits = {"train": [], "val": [], "test": pids, "trainval": [], "minitrain": [], "minival": [], "minitest": pids}
    return problems, splits, llava, images


MME_SUBTASKS = ["existence", "count", "position", "color"]


def mme_files(scenes, seed):
    """MME: per subtask and image, a true and a false yes/no question. Returns LLaVA's question
    jsonl rows and {subtask/id.txt: ground-truth text} (lines 'question<TAB>Yes|No')."""
    questions, truth = [], {}
    for subtask in MME_SUBTASKS:
        for i, s in enumerate(scenes):
            rng = scene_rng(seed, "mme_" + subtask, i)
            pair = [(q + YESNO, a) for q, a in zip(verify_pair(s, subtask, rng), ["Yes", "No"])]
            rng.shuffle(pair)
            path = f"{subtask}/{s['id']}.png"
            questions += [{"question_id": path, "image": path, "text": q, "category": subtask} for q, _ in pair]
            truth[f"{subtask}/{s['id']}.txt"] = "".join(f"{q}\t{a}\n" for q, a in pair)
    return questions, truth


# ----- writing ----------------------------------------------------------------

BENCHMARKS = {  # where each benchmark's files are, for the evaluator (also in manifest.json)
    "pope": {"question_file": "eval/pope/llava_pope_test.jsonl", "annotation_dir": "eval/pope/coco",
             "image_folder": "eval/images"},
    "gqa": {"question_file": "eval/gqa/llava_gqa_testdev_balanced.jsonl",
            "answer_file": "eval/gqa/testdev_balanced_questions.json", "image_folder": "eval/images"},
    "gqa_compositional": {"question_file": "eval/gqa_compositional/llava_gqa_testdev_balanced.jsonl",
                          "answer_file": "eval/gqa_compositional/testdev_balanced_questions.json",
                          "image_folder": "eval/images"},
    "scienceqa": {"question_file": "eval/scienceqa/llava_test_CQM-A.json", "base_dir": "eval/scienceqa",
                  "image_folder": "eval/scienceqa/images/test"},
    "mme": {"question_file": "eval/mme/llava_mme.jsonl", "image_folder": "eval/mme/MME_Benchmark_release_version",
            "ground_truth": "eval/mme/MME_Benchmark_release_version"},
}
MME_ROOT = BENCHMARKS["mme"]["ground_truth"]


def jsonl(rows):
    """Rows as text, one JSON object per line (the format of POPE's files and LLaVA's question files)."""
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_file(path, content):
    """Write text as it is, anything else as JSON."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))  # dumps: C encoder, fast


def _render_job(job):
    """Render one scene once and save the PNG bytes to every path that needs them."""
    scene, size, paths = job
    buf = io.BytesIO()
    render_scene(scene, size).save(buf, format="PNG")
    for path in paths:
        with open(path, "wb") as f:
            f.write(buf.getvalue())


def render_all(jobs, workers):
    """Render (scene, size, paths) jobs, in `workers` processes."""
    for path in {os.path.dirname(p) for _, _, paths in jobs for p in paths}:
        os.makedirs(path, exist_ok=True)
    if workers <= 1:
        for job in jobs:
            _render_job(job)
        return
    with Pool(workers) as pool:  # order does not matter: each job writes its own files
        for _ in pool.imap_unordered(_render_job, jobs, chunksize=64):
            pass


def sample_split(n, seed, stream, pairs, accept, prefix):
    """n scenes from one RNG stream, each redrawn until accept(scene) holds. A redraw keeps
    the count plan for 20 tries, so that rejecting scenes already in training does not skew
    the plans (with a large --n_train every 1-shape scene is in training, and only the plan
    'one shape in total' has to change)."""
    scenes = []
    for i in range(n):
        rng = scene_rng(seed, stream, i)
        s = sample_scene(rng, pairs)
        for tries in range(1000):
            if accept(s):
                break
            s = sample_scene(rng, pairs, s["count"] if tries < 20 else None)
        else:
            raise UserError(f"could not draw {stream} scene {i}: 1000 draws were all rejected (already in "
                            f"training, probably). With --n_train this large almost every possible scene "
                            f"is a training scene; lower --n_train or --n_test.")
        scenes.append({"id": f"{prefix}_{i:06d}", **s})
    return scenes


def corpus(seed, stream, target_bytes, min_docs, avoid):
    """Documents about fresh scenes (none of them in `avoid`) until target_bytes is reached;
    one paragraph each, separated by blank lines."""
    docs, size, used = [], 0, Counter()
    while size < target_bytes or len(docs) < min_docs:
        rng = scene_rng(seed, stream, len(docs))
        scene = sample_scene(rng)
        while scene_key(scene) in avoid:
            scene = sample_scene(rng)
        docs.append(corpus_document(scene, rng, used))
        size += len(docs[-1]) + 2
    return "\n\n".join(docs) + "\n"


def generate_shapes_world(out_dir, size=64, n_train=20000, n_test=500, n_comp=300, corpus_mb=3.0,
                          seed=0, workers=None):
    """Write the whole shapes world under out_dir (see the module docstring) and return the manifest."""
    if not 16 <= size <= 336:
        raise UserError(f"--size must be between 16 and 336 (the real encoder's input), got {size}")
    if min(n_train, n_test, n_comp) < 1:
        raise UserError(f"--n_train, --n_test and --n_comp must be at least 1, got {n_train}, {n_test}, {n_comp}")

    # Scenes. Test scenes come from their own RNG stream and are redrawn while they match a
    # training scene; compositional scenes must contain a held-out pair (so they cannot be
    # training scenes) and leave one absent (for 'no' questions about held-out pairs).
    train = sample_split(n_train, seed, "train", TRAIN_PAIRS, lambda s: True, "train")
    train_keys = {scene_key(s) for s in train}
    test = sample_split(n_test, seed, "test", TRAIN_PAIRS, lambda s: scene_key(s) not in train_keys, "test")
    held = lambda s: sum((o["colour"], o["shape"]) in HELD_OUT for o in s["objects"])
    comp = sample_split(n_comp, seed, "comp", ALL_PAIRS, lambda s: 0 < held(s) < len(HELD_OUT), "comp")
    test_keys = {scene_key(s) for s in test + comp}

    # Training text. `used` counts answers for balance (see choose).
    image = {s["id"]: f"{i // 1000:03d}/{s['id']}.png" for i, s in enumerate(train)}  # relative to images/
    pretrain = [{"id": s["id"], "image": image[s["id"]],
                 "conversations": caption_conversation(s, scene_rng(seed, "caption", i))}
                for i, s in enumerate(train)]
    used = Counter()
    instruct = [{"id": f"{s['id']}_q{k}", "image": image[s["id"]], **sample}
                for i, s in enumerate(train)
                for k, sample in enumerate(instruct_samples(s, scene_rng(seed, "instruct", i), used))]
    instruct += [{"id": f"text_{i:06d}", "conversations": text_only_conversation(scene_rng(seed, "text", i))}
                 for i in range(max(1, n_train // 20))]
    scene_rng(seed, "instruct_order", 0).shuffle(instruct)  # mixed, like LLaVA's data
    files = {"pretrain.json": pretrain, "instruct.json": instruct,
             "corpus/train.txt": corpus(seed, "corpus", corpus_mb * 1e6, 1, test_keys),
             "corpus/val.txt": corpus(seed, "corpus_val", corpus_mb * 1e6 / 50, 20, test_keys)}

    # Benchmarks.
    train_counts = Counter((o["colour"], o["shape"]) for s in train for o in s["objects"])
    pope_q, pope_labels = pope_files(test, seed, train_counts)
    files["eval/pope/llava_pope_test.jsonl"] = jsonl(pope_q)
    files.update({f"eval/pope/coco/coco_pope_{cat}.json": jsonl(rows) for cat, rows in pope_labels.items()})
    focus = lambda s: next(o for o in s["objects"] if (o["colour"], o["shape"]) in HELD_OUT)
    gqa_q, gqa_a = gqa_files(test, seed, "gqa")
    comp_q, comp_a = gqa_files(comp, seed, "gqa_comp", [t for t in QTYPES if t != "count"], HELD_OUT, focus)
    for folder, q, a in [("gqa", gqa_q, gqa_a), ("gqa_compositional", comp_q, comp_a)]:
        files[f"eval/{folder}/llava_gqa_testdev_balanced.jsonl"] = jsonl(q)
        files[f"eval/{folder}/testdev_balanced_questions.json"] = a
    problems, splits, sqa_llava, sqa_images = sqa_files(test, seed)
    files.update({"eval/scienceqa/problems.json": problems, "eval/scienceqa/pid_splits.json": splits,
                  "eval/scienceqa/llava_test_CQM-A.json": sqa_llava})
    mme_q, mme_truth = mme_files(test, seed)
    files["eval/mme/llava_mme.jsonl"] = jsonl(mme_q)
    files.update({f"{MME_ROOT}/{path}": text for path, text in mme_truth.items()})
    for split, scenes in [("train", train), ("test", test), ("compositional", comp)]:
        where = lambda s: f"images/{image[s['id']]}" if split == "train" else f"eval/images/{s['id']}.png"
        files[f"scenes_{split}.jsonl"] = jsonl({"image": where(s), **scene_record(s, size)} for s in scenes)

    # Images, in parallel: each scene is rendered once and saved wherever it is needed.
    paths = {s["id"]: [f"images/{image[s['id']]}"] for s in train}
    for s in test + comp:
        paths[s["id"]] = [f"eval/images/{s['id']}.png"]
    for s in test:
        paths[s["id"]] += [f"{MME_ROOT}/{t}/{s['id']}.png" for t in MME_SUBTASKS]
    for pid, s in sqa_images.items():
        paths[s["id"]].append(f"eval/scienceqa/images/test/{pid}/image.png")
    render_all([(s, size, [os.path.join(out_dir, p) for p in paths[s["id"]]]) for s in train + test + comp],
               workers or min(os.cpu_count() or 1, 8))

    for path, content in files.items():
        write_file(os.path.join(out_dir, path), content)
    counts = {"train_scenes": n_train, "test_scenes": n_test, "compositional_scenes": n_comp,
              "images_written": sum(map(len, paths.values())), "pretrain": len(pretrain), "instruct": len(instruct),
              "instruct_text_only": sum("image" not in e for e in instruct),
              "corpus_train_docs": files["corpus/train.txt"].count("\n\n") + 1,
              "corpus_val_docs": files["corpus/val.txt"].count("\n\n") + 1, "pope": len(pope_q), "gqa": len(gqa_q),
              "gqa_compositional": len(comp_q), "scienceqa": len(problems), "scienceqa_img": len(sqa_images),
              "mme": len(mme_q)}
    manifest = {"name": "shapes world", "seed": seed, "size": size, "n_train": n_train, "n_test": n_test,
                "n_comp": n_comp, "corpus_mb": corpus_mb, "held_out_pairs": HELD_OUT, "shapes": SHAPES,
                "colours": COLOURS, "sizes": SIZES, "cells": CELLS, "mme_subtasks": MME_SUBTASKS,
                "counts": counts, "benchmarks": BENCHMARKS}
    write_file(os.path.join(out_dir, "manifest.json"), manifest)
    return manifest


def make_grid(path, seed=0, n=8, size=64, scale=2, cols=4):
    """Save a picture of n fresh scenes (upscaled `scale` times, pixels kept sharp) and return
    [(scene, [(question, answer), ...])] for them, for the README."""
    gap, tile = 4, size * scale
    rows = -(-n // cols)
    grid = Image.new("RGB", (cols * tile + (cols + 1) * gap, rows * tile + (rows + 1) * gap), (255, 255, 255))
    shown = []
    for i in range(n):
        rng = scene_rng(seed, "grid", i)
        scene = sample_scene(rng)
        img = render_scene(scene, size).resize((tile, tile), Image.NEAREST)
        grid.paste(img, (gap + (i % cols) * (tile + gap), gap + (i // cols) * (tile + gap)))
        shown.append((scene, [ask(scene, t, rng) for t in rng.sample(available_types(scene), 2)]))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    grid.save(path, optimize=True)
    return shown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/shapes", help="output folder (default data/shapes); files of the same name are overwritten")
    parser.add_argument("--size", type=checked(int, "16 <= x <= 336"), default=64, help="image side in pixels (default 64)")
    parser.add_argument("--n_train", type=checked(int, "x >= 1"), default=20000, help="training scenes (default 20000)")
    parser.add_argument("--n_test", type=checked(int, "x >= 1"), default=500, help="held-out test scenes (default 500)")
    parser.add_argument("--n_comp", type=checked(int, "x >= 1"), default=300, help="compositional test scenes (default 300)")
    parser.add_argument("--corpus_mb", type=checked(float, "x > 0"), default=3.0, help="MB of corpus/train.txt (default 3)")
    parser.add_argument("--seed", type=checked(int, "x >= 0"), default=0, help="the same seed writes byte-identical files")
    parser.add_argument("--workers", type=checked(int, "x >= 1"), default=None, help="render processes (default: cores, max 8)")
    parser.add_argument("--grid", default=None, metavar="PNG",
                        help="instead: save a picture of 8 scenes to PNG and print questions about them")
    args = parser.parse_args(argv)
    if args.grid:
        for i, (scene, qas) in enumerate(make_grid(args.grid, args.seed)):
            print(f"scene {i}: " + "  ".join(f"{q} -> {a}" for q, a in qas))
        print(f"wrote {args.grid}")
        return
    t0 = time.time()
    m = generate_shapes_world(args.out, args.size, args.n_train, args.n_test, args.n_comp, args.corpus_mb,
                              args.seed, args.workers)
    print(json.dumps(m["counts"]))
    print(f"wrote the shapes world to {args.out} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    run_main(main)
