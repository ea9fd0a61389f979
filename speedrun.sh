#!/usr/bin/env bash
# The whole pipeline on the shapes world, on a CPU, step by step. Each line is a plain command
# you can copy and run alone; together they take about 15 minutes on 2 cores without native bf16
# (README, "What the default run reaches": a CPU with AVX512-BF16 is faster). `bash speedrun.sh
# --long` trains the tower 1200 steps instead of 800 and the VLM's stage 2 15000 instead of 2000: about
# 53 minutes, and it reaches every held-out target (the default does not). The first line installs what
# requirements.txt lists and this Python lacks (nothing when all is there; never a CUDA torch by
# accident: see setup.sh).
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in
    "") CLIP=() STAGE2=() ;;
    --long) CLIP=(--max_steps=1200) STAGE2=(--steps2=15000) ;;
    *) echo "usage: bash speedrun.sh [--long]" >&2; exit 2 ;;
esac

bash setup.sh requirements.txt                   # 0. what the scripts need, if missing

python shapes.py --out data/shapes               # 1. the data: images, corpus, LLaVA JSON, benchmarks
python train_lm.py                                # 2. tokenizer + a tiny Xmodel-LM pretrained on the corpus
python train_clip.py "${CLIP[@]}"                 # 3. a tiny CLIP: contrastive on the captions, and per object
python train_vlm.py "${STAGE2[@]}"                # 4. VLM stage 1 + stage 2, then the held-out benchmarks
python eval_vlm.py score shapes_pope --answers out/vlm/eval/shapes_pope.jsonl --data data/shapes   # 5. one scorer, alone
python chat.py --ckpt out/vlm/model --image data/shapes/eval/images/test_000000.png \
    $'How many shapes are in the image?\nAnswer the question using a single word or phrase.'   # 6. the first
                                                  #    held-out question (GQA file, id 0), on an unseen image
