"""
Talk to a trained model: a VLM from train_vlm.py (with an image) or an LM from train_lm.py.

    python chat.py --ckpt out/vlm/model --image data/shapes/eval/images/test_000000.png "What colour is the star?"
    python chat.py --ckpt out/vlm/model --image photo.png        # a multi-turn conversation (REPL)
    python chat.py --ckpt out/lm/model "How many circles are there?"

The prompt is built by the same function that built the training labels (data.build_sample,
Vicuna v1 template), the image is preprocessed as in training (padded to a square), and the
answer is decoded with the KV cache and streamed token by token. Greedy by default; use
--temperature (and --top_k / --top_p) to sample. In the REPL, an empty line or Ctrl-D quits and
/reset starts a new conversation.
"""

import argparse
import os

import torch

from common import InputNotFound, UserError, check_device, check_value, checked, run_main
from data import IMAGE, VICUNA_SYSTEM, build_sample
from vision import ImageProcessor
from vlm import load


def stream_answer(model, tok, is_vlm, turns, pixels, args):
    """Generate the assistant's next answer, printing it as it comes; returns the text."""
    prompt, _ = build_sample(turns, tok, "vicuna_v1", system=model.system if is_vlm else VICUNA_SYSTEM)
    lm = model.lm if is_vlm else model
    length = len(prompt) + (model.mm_projector.tokens - 1 if pixels is not None else 0)  # the image expands
    room = lm.config.max_seq_len - length
    if room < 1:
        raise UserError(f"the conversation is {length} tokens, and the model's context is {lm.config.max_seq_len}: "
                        f"nothing is left for an answer; /reset starts a new conversation (or ask a shorter question)")
    sampling = dict(max_new_tokens=min(args.max_new_tokens, room), temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, eos_id=tok.eos_id, pad_id=tok.pad_id)
    if is_vlm:
        steps = model.generate_stream([prompt], pixels, **sampling)
    else:
        steps = model.generate_stream([prompt], **sampling)
    ids, shown = [], ""
    for token in steps:
        if int(token[0]) == tok.eos_id:
            break
        ids.append(int(token[0]))
        text = tok.decode(ids)  # decode everything so far: a character may span several tokens
        print(text[len(shown):], end="", flush=True)
        shown = text
    print()
    return shown.strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", help="ask once and exit; without it, a conversation opens")
    parser.add_argument("--ckpt", default="out/vlm/model", help="model directory (default out/vlm/model)")
    parser.add_argument("--image", help="an image file (VLM only)")
    parser.add_argument("--max_new_tokens", type=checked(int, "x >= 1"), default=128)
    parser.add_argument("--temperature", type=checked(float, "x >= 0"), default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top_k", type=checked(int, "x >= 1"), default=None)
    parser.add_argument("--top_p", type=checked(float, "0 < x <= 1"), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    check_value(args.device, check_device, "--device")
    if not os.path.isdir(args.ckpt):
        raise InputNotFound(f"--ckpt {args.ckpt} is not a directory: train one with `python train_vlm.py` "
                            f"(or `python train_lm.py` for a text-only model, then --ckpt out/lm/model)")
    model, tok, is_vlm = load(args.ckpt, args.device)
    pixels = None
    if args.image:
        if not is_vlm:
            raise UserError(f"{args.ckpt} is a language model without a vision tower; drop --image")
        pixels = ImageProcessor(model.vision_tower.config.image_size)(args.image)[None].to(args.device)

    turns = []
    while True:
        question = args.question if args.question else read_line()
        if question is None:
            return
        if question == "/reset":
            turns = []
            continue
        try:
            if IMAGE in question:  # the placeholder would be a second image, or one that is not there
                raise UserError(f"the question contains {IMAGE}, the placeholder for the image: leave it out "
                                f"(with --image the image goes before the first question by itself)")
            if not turns and pixels is not None:
                question = IMAGE + "\n" + question  # the image goes with the first question
            if not args.question:
                print("ASSISTANT: ", end="", flush=True)
            answer = stream_answer(model, tok, is_vlm, turns + [{"from": "human", "value": question}], pixels, args)
        except UserError as e:
            if args.question:
                raise
            print(f"error: {e}")  # the conversation goes on
            continue
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer or "."}]
        if args.question:
            return


def read_line():
    try:
        line = input("USER: ").strip()
    except EOFError:
        return None
    return line or None


if __name__ == "__main__":
    run_main(main)
