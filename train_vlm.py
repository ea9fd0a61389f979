"""
Train Xmodel-VLM the LLaVA way, in two stages.

    python train_vlm.py                       # both stages on the shapes world (CPU), then score it
    python train_vlm.py --stage=1             # only stage 1 (align the projector)
    python train_vlm.py --preset=paper --lm=Xmodel_LM --vision=clip-vit-large-patch14-336 \
        --pretrain_json=blip_laion_cc_sbu_558k.json --instruct_json=llava_v1_5_mix665k.json \
        --image_folder=playground/data --max_len=2048
    torchrun --nproc_per_node=8 train_vlm.py --preset=paper ...
    python train_vlm.py --help

Stage 1, alignment: the vision tower and the LM are frozen, only the projector learns, on
captions in the `plain` template (<image> caption\\n) (the paper preset; at the tiny scale the
LM learns in stage 1 too, --lm_in_stage1: a frozen tiny LM cannot read, so there is nothing for
the projector to align to). Stage 2, fine-tuning: the projector
and the LM learn (the tower stays frozen) on conversations in the Vicuna v1 template. Both:
one epoch, linear warmup over 3% of the steps then cosine decay, weight decay 0, gradient
accumulation to the global batch, bf16 autocast on CUDA and on CPUs with native bf16
(common.mixed_precision), DDP under torchrun. The tower is frozen, so when the features of every
training image fit in memory they are computed once, before the first stage (cache_features). A
sample with "after": x (0 <= x < 1) comes only once that share of its stage is read: a curriculum
(shapes.py holds relation questions back to 0.75).

Inputs: the LM directory from train_lm.py (HF Llama format with its tokenizer file), the
CLIP tower directory from train_clip.py (HF CLIP format), LLaVA JSON files and an image folder.
Output, under out_dir: stage1/ (the model after stage 1), model/ (the final model: config,
weights, vision/, tokenizer; chat.py and eval_vlm.py load it), ckpt/ (resume with
--resume=true), metrics.jsonl; on the shapes world also learning.png (loss and held-out accuracy
per question type against steps, from the probe every --probe steps) and attention.png (where
the answer to the first held-out question looked in its image). Samples that cannot be used
(missing or corrupt image, bad structure, too long, text-only in stage 1) are skipped and
counted; more than 1% of them stops the run, before training when a quick pass over the file
finds them. Samples longer than --max_len are cut at the end and counted.
"""

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

import data
import eval_vlm
from common import (InputNotFound, UserError, check_device, distribute, format_time, full_weights, load_checked,
                    load_checkpoint, load_optimizer_state, lr_at, make_optimizer, mixed_precision, parse_config,
                    read_json, run_main, save_checkpoint, scalar, setup_distributed)
from model import IGNORE_INDEX, XmodelLM, config_from_hf
from tokenizer import find_tokenizer, load_tokenizer, save_tokenizer
from vision import CLIPVisionTower, ImageProcessor, OracleTower
from vlm import XmodelVLM
from xdp import PROJECTORS, build_projector


@dataclass
class VLMConfig:
    stage: str = "both"             # 1 | 2 | both
    # --- inputs ---
    lm: str = "out/lm/model"        # the LM: a HF Llama directory with its tokenizer (train_lm.py makes it)
    vision: str = "out/clip_tiny"   # the CLIP tower: a HF CLIP directory (train_clip.py makes it)
    data: str = "data/shapes"       # default folder of the three below (python shapes.py makes it)
    pretrain_json: str = ""         # stage 1 LLaVA JSON; "" = {data}/pretrain.json
    instruct_json: str = ""         # stage 2 LLaVA JSON; "" = {data}/instruct.json
    image_folder: str = ""          # image paths in the JSON are relative to it; "" = {data}/images
    projector: str = "linear"       # xdp | xdp-concat | linear | mlp2x_gelu | ldp | ldpv2. The paper's xdp
                                    # (the paper preset) mixes each of the tiny tower's 3x3 cells with its
                                    # neighbours; LLaVA's linear keeps one token per cell: 59.2% against 44.3%
    tokens: int = 0                 # visual tokens per image; 0 = the projector's default: every patch for
                                    # linear (9 on the tiny CLIP's 3x3: one per cell), a quarter for xdp
    max_len: int = 512              # longest sequence, visual tokens included (the paper: 2048)
    # --- optimisation: the paper's stage 1 is lr 1e-3, batch 64; stage 2 lr 4e-5, batch 32 ---
    lr1: float = 1e-3
    batch1: int = 64                # global batch of stage 1, in samples
    steps1: int = 150               # optimizer steps of stage 1; 0 = one epoch (the paper's; 312 here)
    lm_in_stage1: bool = True       # the LM learns in stage 1 too, on the captions (the paper's stage 1
                                    # freezes it, as the paper preset does). The tiny LM cannot read, so
                                    # with it frozen stage 1 taught nothing (image use -0.1%; +119% with it)
    lr2: float = 1e-3               # the tiny LM needs a larger step than the paper's 1.1B
    batch2: int = 32                # one-question samples a step. The same samples in more, smaller steps
                                    # teach more: 96 x 900 62.7%, 48 x 1800 68.8%, 32 x 2700 71.6% (README)
    steps2: int = 2000              # 0 = one epoch (4318 here); 2000: what the 15-minute speedrun has time
                                    # for, with a margin for a slower hour (speedrun.sh --long: 15000)
    micro_batch: int = 16           # samples per forward/backward per process
    checkpointing: bool = False     # activation checkpointing of the LM's blocks (less memory, one more forward)
    fsdp: bool = False              # stage 2 under torchrun: shard weights, gradients and AdamW state over
                                    # the processes (FSDP2) instead of a full copy in each (DDP)
    loss_on_questions: bool = True  # stage 2: the loss on the user's turns too, not only on the answers
                                    # (LLaVA's: off, as in the paper preset). Predicting what a question
                                    # names needs the image: with oracle features and single-question
                                    # samples 750 steps of 96 reach 73.7% instead of 49.6% (README,
                                    # "The reading ladder")
    system_prompt: bool = False     # stage 2: Vicuna's system prompt before each chat (LLaVA's; the paper
                                    # preset). Here it would be 30 of a sample's ~50 tokens: 59.4% instead
                                    # of 73.7% in the same oracle run. Saved with the model (XmodelVLM.system)
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # --- system ---
    device: str = "auto"
    seed: int = 1337
    out_dir: str = "out/vlm"
    resume: bool = False
    workers: int = 0                # DataLoader processes that read images (0 = in the main process)
    log_interval: int = 20
    ckpt_interval: int = 200
    image_check: int = 128          # after each stage: loss on this many samples with their own vs another
                                    # sample's image (image_use); 0 = skip
    evaluate: bool = True           # score the held-out shapes benchmarks at the end
    probe: int = 100                # shapes world, stage 2: every this many steps answer 20 held-out questions
                                    # of each type (eval_vlm.probe, logged to metrics.jsonl; 0 = never); at
                                    # the end learning.png and attention.png are drawn from them
    oracle: bool = False            # diagnostic (shapes world): perfect per-cell features from the scenes'
                                    # ground truth instead of the tower (vision.OracleTower), so the score
                                    # measures the LM and projector alone; nothing is saved, the held-out
                                    # sets are scored in-process

    CHECKS = dict(                  # the values each setting allows; parse_config refuses others at once
        stage=("1", "2", "both"), projector=tuple(PROJECTORS), tokens="x >= 0", max_len="x >= 2", lr1="x > 0",
        batch1="x >= 1", steps1="x >= 0", lr2="x > 0", batch2="x >= 1", steps2="x >= 0", micro_batch="x >= 1",
        warmup_ratio="0 <= x <= 1", weight_decay="x >= 0", grad_clip="x > 0", device=check_device, seed="x >= 0",
        out_dir="x != ''", workers="x >= 0", log_interval="x >= 1", ckpt_interval="x >= 1", image_check="x >= 0",
        probe="x >= 0")


VLM_PRESETS = {
    # the paper's recipe at full scale (Xmodel-LM 1.1B + CLIP ViT-L/14-336)
    "paper": dict(projector="xdp", lm_in_stage1=False, lr1=1e-3, batch1=64, steps1=0, lr2=4e-5, batch2=32, steps2=0, micro_batch=8, max_len=2048,
                  loss_on_questions=False, system_prompt=True, log_interval=10, ckpt_interval=500, workers=8,
                  evaluate=False),
}


def paths(cfg):
    """The input files, defaulting to the shapes world, with a hint if one is missing."""
    p = SimpleNamespace(pretrain=cfg.pretrain_json or os.path.join(cfg.data, "pretrain.json"),
                        instruct=cfg.instruct_json or os.path.join(cfg.data, "instruct.json"),
                        images=cfg.image_folder or os.path.join(cfg.data, "images"))
    makers = {cfg.lm: "python train_lm.py", **({} if cfg.oracle else {cfg.vision: "python train_clip.py"}),
              p.pretrain: "python shapes.py", p.instruct: "python shapes.py", p.images: "python shapes.py"}
    for path, command in makers.items():
        if not os.path.exists(path):
            raise InputNotFound(f"{path} does not exist. On the shapes world `{command}` makes it; "
                                f"otherwise point the matching --option at your own files (see --help)")
    return p


def held_out_sets(cfg):
    """Whether --data is a shapes world with its held-out sets (what the probe and the report read)."""
    return os.path.isfile(os.path.join(cfg.data, "manifest.json")) and os.path.isdir(os.path.join(cfg.data, "eval"))


def build_model(cfg, device):
    """A new VLM from the pretrained LM and tower and a fresh projector."""
    tower = OracleTower(cfg.data) if cfg.oracle else CLIPVisionTower.from_hf(cfg.vision)
    lm = XmodelLM.from_hf(cfg.lm)
    projector = build_projector(cfg.projector, tower.hidden_size, lm.config.n_embd, tower.grid,
                                cfg.tokens or None)
    return XmodelVLM(tower, projector, lm).to(device)


def stage_settings(cfg, stage, n_samples, world):
    """Learning rate, global batch, steps, accumulation and warmup of one stage."""
    lr, batch, steps = (cfg.lr1, cfg.batch1, cfg.steps1) if stage == 1 else (cfg.lr2, cfg.batch2, cfg.steps2)
    if cfg.micro_batch < 1 or batch % (cfg.micro_batch * world):
        raise UserError(f"stage {stage}: the global batch {batch} must be a multiple of micro_batch x "
                        f"processes = {cfg.micro_batch} x {world}")
    steps = steps or n_samples // batch  # one epoch
    if steps == 0:
        raise UserError(f"stage {stage}: {n_samples} samples are fewer than one batch of {batch}")
    return SimpleNamespace(lr=lr, min_lr=0.0, batch=batch, max_steps=steps, grad_accum=batch // (cfg.micro_batch * world),
                           warmup_steps=math.ceil(cfg.warmup_ratio * steps), weight_decay=cfg.weight_decay,
                           beta1=0.9, beta2=0.999, eps=1e-8)


def sample_order(n, total, seed, after=None):
    """The order in which a stage reads its n samples: a new shuffle for each epoch, as many
    epochs as `total` samples need (more steps than one epoch reads each sample again).
    after[i], a curriculum (None: all 0), is the share of the `total` read before sample i may
    come; at each such point the samples allowed so far are shuffled anew."""
    rng = np.random.default_rng(seed)
    after = np.zeros(n) if after is None else np.asarray(after, dtype=float)
    starts = sorted(set(after.tolist()))
    parts = []
    for start, end in zip(starts, starts[1:] + [None]):
        allowed = np.flatnonzero(after <= start)
        length = (total if end is None else round(end * total)) - round(start * total)
        if length <= 0:  # two points closer than one sample of the stage
            continue
        phase = np.concatenate([rng.permutation(allowed) for _ in range(-(-length // len(allowed)))])
        parts.append(phase if end is None else phase[:length])  # the last phase ends on whole epochs
    return np.concatenate(parts)


def curriculum(dataset):
    """Each sample's optional "after" (see sample_order), checked: a number in [0, 1), with at
    least one sample free to come first. shapes.py sets it on relation questions (README, "What
    the default run reaches"); other LLaVA files have none and are read in plain shuffles."""
    after = []
    for i, sample in enumerate(dataset.samples):
        a = sample.get("after", 0) if isinstance(sample, dict) else 0
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a < 1:
            raise UserError(f"{dataset.path}: sample {i} (id {dataset.sample_id(i)}): \"after\" must be a number "
                            f"in [0, 1), the share of the stage read before the sample may come; got {a!r}")
        after.append(a)
    if after and min(after) > 0:
        raise UserError(f"{dataset.path}: every sample has \"after\" > 0, so none may come first; give the "
                        f"samples to start with \"after\": 0 (or none)")
    return after


def step_batches(order, lengths, start, steps, s, cfg, rank, world):
    """This process's micro-batches (lists of sample indices), step by step from `start`: the
    same global batch at a step whatever the number of processes, so resume is exact. Within a
    global batch, samples are sorted by length so that a micro-batch pads little."""
    for step in range(start, steps):
        batch = order[step * s.batch:(step + 1) * s.batch]
        batch = batch[np.argsort(lengths[batch], kind="stable")]
        for micro in range(s.grad_accum):
            first = (micro * world + rank) * cfg.micro_batch
            yield batch[first:first + cfg.micro_batch].tolist()


def train_stage(stage, model, cfg, tok, files, rank, world, device, start_step=0, optimizer_state=None,
                stop_at=None, features=None):
    master = rank == 0
    # stage 1 trains the projector (and with --lm_in_stage1 the LM); stage 2 both; never the tower
    model.lm.requires_grad_(stage == 2 or cfg.lm_in_stage1)
    model.lm.checkpointing = cfg.checkpointing
    model.mm_projector.requires_grad_(True)
    json_path, template = (files.pretrain, "plain") if stage == 1 else (files.instruct, "vicuna_v1")
    model.system = data.VICUNA_SYSTEM if cfg.system_prompt else ""  # saved with the model: chat and eval use it
    processor = ImageProcessor(model.vision_tower.config.image_size)
    if model.mm_projector.tokens + 2 > cfg.max_len:  # <s>, the visual tokens, at least one answer token
        raise UserError(f"--max_len={cfg.max_len} leaves no room for text: an image alone is "
                        f"{model.mm_projector.tokens} visual tokens; raise --max_len or lower --tokens")
    if cfg.max_len > model.lm.config.max_seq_len:
        raise UserError(f"--max_len={cfg.max_len} is longer than the LM's context ({model.lm.config.max_seq_len}, "
                        f"max_position_embeddings in its config.json); use --max_len={model.lm.config.max_seq_len} "
                        f"or less")
    dataset = data.LLaVADataset(json_path, files.images, tok, template, processor,
                                model.mm_projector.tokens, cfg.max_len, questions=cfg.loss_on_questions,
                                system=model.system)
    check_data(dataset, stage, master)
    autocast = mixed_precision(device)
    cache_features(model, dataset, device, autocast, cfg.micro_batch, f"stage {stage}" if master else None, features)
    s = stage_settings(cfg, stage, len(dataset), world)
    order = sample_order(len(dataset), s.max_steps * s.batch, [cfg.seed, stage], curriculum(dataset))
    lengths = np.array([len(json.dumps(sample)) for sample in dataset.samples])  # characters: a proxy for tokens
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=list(step_batches(order, lengths, start_step, s.max_steps, s, cfg, rank, world)),
        num_workers=cfg.workers, collate_fn=lambda b: data.collate(b, tok.pad_id))
    fsdp = cfg.fsdp and stage == 2 and world > 1  # stage 1 trains the small projector only: DDP
    ddp = distribute(model, model.lm.model.layers, world, fsdp, device)
    optimizer = make_optimizer(model, s, device)
    if optimizer_state:
        load_optimizer_state(model, optimizer, optimizer_state)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if master:
        sharing = f", {world} processes ({'FSDP2' if fsdp else 'DDP'})" if world > 1 else ""
        print(f"stage {stage} ({template}{sharing}): {len(dataset)} samples, {s.max_steps} steps of {s.batch}, "
              f"lr {s.lr}, {trainable / 1e6:.2f}M trainable parameters, {model.mm_projector.tokens} visual tokens")
    metrics = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") if master else None
    # the probe runs in the first process alone (greedy decoding), so not on FSDP's shards
    probing = stage == 2 and cfg.probe and master and not fsdp and held_out_sets(cfg)
    probe_set = eval_vlm.probe_questions(cfg.data) if probing else None
    skipped, cut, seen, batches = [], [], 0, iter(loader)
    t0, t_last = time.time(), time.time()
    if master and start_step >= s.max_steps:
        print(f"stage {stage}: the checkpoint is at step {start_step} of {s.max_steps}: nothing is left to train")
    model.train()
    for step in range(start_step, s.max_steps):
        lr = lr_at(step, s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micros = [next(batches) for _ in range(s.grad_accum)]
        for batch in micros:
            skipped += batch["skipped"]
            cut += batch["cut"]
            seen += len(batch["ids"]) + len(batch["skipped"])
        used = usable_micro_batches(micros, skipped, world, device)
        loss_sum, grad_norm = torch.zeros((), device=device), 0.0
        for micro, batch in enumerate(used):
            sync = micro == len(used) - 1 or world == 1 or fsdp  # see train_lm.train
            with autocast, (nullcontext() if sync else ddp.no_sync()):
                _, loss = ddp(**{k: batch[k].to(device) if torch.is_tensor(batch[k]) else batch[k]
                                 for k in ("input_ids", "lengths", "has_image", "pixels", "features", "labels")})
                (loss / len(used)).backward()
            loss_sum += loss.detach()
        if world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        loss_value = float("nan")  # when every sample of the step was skipped: no update
        if used:
            loss_value = loss_sum.item() / len(used)
            if not math.isfinite(loss_value):
                raise UserError(f"stage {stage}: loss is {loss_value} at step {step}; lower --lr{stage} and --resume")
            grad_norm = scalar(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                              cfg.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        check_skips(skipped, seen, stage, final=False)
        done = step + 1
        if master and (done % cfg.log_interval == 0 or done == s.max_steps):
            now = time.time()
            dt = (now - t_last) / min(cfg.log_interval, done - start_step)
            t_last = now
            eta = (now - t0) / (done - start_step) * (s.max_steps - done)
            print(f"stage {stage} step {done}/{s.max_steps} | loss {loss_value:.4f} | lr {lr:.2e} | "
                  f"grad norm {grad_norm:.2f} | {s.batch / dt:.1f} samples/s | ETA {format_time(eta)}", flush=True)
            metrics.write(json.dumps({"stage": stage, "step": done, "loss": loss_value, "lr": lr,
                                      "grad_norm": float(grad_norm), "samples_per_s": s.batch / dt}) + "\n")
            metrics.flush()
        if probing and (done % cfg.probe == 0 or done == s.max_steps):
            accuracy = eval_vlm.probe(model, tok, probe_set)
            print(f"stage 2 step {done} probe: " + ", ".join(f"{k} {v:.0f}" for k, v in accuracy.items()), flush=True)
            metrics.write(json.dumps({"stage": 2, "step": done, "probe": accuracy}) + "\n")
            metrics.flush()
        if done % cfg.ckpt_interval == 0 or done in (s.max_steps, stop_at):
            save_checkpoint(os.path.join(cfg.out_dir, "ckpt"), model, optimizer, done,
                            {"vlm": dataclasses.asdict(cfg)}, master, extra={"stage": stage})
        if done == stop_at:
            return False
    check_skips(skipped, seen, stage, final=True)
    if master and cut:
        print(f"stage {stage}: {len(cut)} of {seen} samples were longer than --max_len={cfg.max_len} and were cut "
              f"at the end (e.g. {', '.join(map(str, cut[:3]))}); their last tokens were not trained on")
    # every process runs it (under FSDP the forward needs them all); the first reports it
    use = image_use(ddp, [dataset[i] for i in range(min(cfg.image_check, len(dataset)))], tok.pad_id,
                    device, cfg.micro_batch, autocast) if cfg.image_check else None
    if master and cfg.image_check and use is None:
        print(f"stage {stage} image use: not measured, fewer than two of the first {cfg.image_check} samples "
              f"have a usable image")
    elif master and use:
        print(f"stage {stage} image use: loss {use['own']:.4f} on {use['samples']} training samples with their "
              f"own images, {use['other']:.4f} with another sample's ({100 * (use['other'] / use['own'] - 1):+.1f}%)")
        metrics.write(json.dumps({"stage": stage, "image_use": use}) + "\n")
    if metrics:
        metrics.close()
    return True


def cache_features(model, dataset, device, autocast, micro_batch, name, known=None, budget=2 ** 31):
    """The tower is frozen in both stages, so an image's features are the same at every step: when
    they fit in `budget` bytes, compute each image's once (in stage 2 of the shapes world 7 samples
    share an image; reading it and the tower were a quarter of a step's time) and set
    dataset.features. The paper's 558k images at 576 x 1024 do not fit: its tower runs every step.
    name: what to call the stage in the progress line (None: print nothing). known: {image file:
    features or why it cannot be read}, filled here and shared by the stages (the same frozen tower)."""
    images = sorted({s["image"] for s in dataset.samples if isinstance(s, dict) and isinstance(s.get("image"), str)})
    tower, known = model.vision_tower, {} if known is None else known
    size = len(images) * tower.num_patches * tower.hidden_size * 4
    if size > budget or not images:
        if name and images:
            print(f"{name}: the tower runs at every step (the features of {len(images)} images would take "
                  f"{size / 2 ** 30:.1f} GiB, more than {budget / 2 ** 30:.0f})")
        return
    files = {image: os.path.join(dataset.image_folder, image) for image in images}
    todo = [f for f in dict.fromkeys(files.values()) if f not in known]
    t0, batch = time.time(), []
    with torch.no_grad(), autocast:
        for i, file in enumerate(todo):
            try:
                batch.append((file, dataset.image_processor(file)))
            except UserError as e:  # a corrupt image: the samples that use it are skipped and counted
                known[file] = str(e)
            if batch and (len(batch) == 16 * micro_batch or i == len(todo) - 1):
                out = tower(torch.stack([p for _, p in batch]).to(device)).float().cpu()
                known.update({f: x for (f, _), x in zip(batch, out)})
                batch = []
    dataset.features = {image: known[file] for image, file in files.items()}
    if name:
        print(f"{name}: the frozen tower's features of {len(images)} images ({size / 2 ** 20:.0f} MB): "
              f"{len(todo)} computed now ({time.time() - t0:.1f} s), {len(images) - len(todo)} before")


def report_lookups(gauge, metrics_path):
    """Print eval_vlm.lookup_gauge's result (does the LM find the object a colour or shape word
    names?) and log it to metrics.jsonl."""
    for key, other in (("colour", "shape"), ("shape", "colour")):
        g = gauge[key]
        heads = "/".join(f"{h:.0f}" for h in g["heads"])
        print(f"lookup by {key}: after \"Is the <{key}>\" the next word is the object's {other} for {g['next']:.1f}% of "
              f"{g['n']} held-out objects" + (f"; the best head of each layer looks at its cell for {heads}%" if heads else ""))
    with open(metrics_path, "a") as f:
        f.write(json.dumps({"stage": 2, "lookup": gauge}) + "\n")


def image_use(model, items, pad_id, device, micro_batch=16, autocast=nullcontext()):
    """How much the model's predictions lean on the image: its loss on `items` (dataset samples
    with an image) as they are, and with each sample given the next sample's image instead.
    Returns {"own", "other", "samples"}, or None with fewer than two such samples (skipped and
    text-only items are left out). Close values mean the visual tokens carry little that the LM
    uses (after stage 1 on the shapes world the gap is a few percent: the frozen LM cannot read them)."""
    image = lambda it: {"pixels": it["pixels"], "features": it.get("features")}
    items = [it for it in items if "skip" not in it and any(v is not None for v in image(it).values())]
    if len(items) < 2:
        return None
    swapped = [{**it, **image(items[(i + 1) % len(items)])} for i, it in enumerate(items)]
    was_training = model.training
    model.eval()
    losses = []
    with torch.no_grad(), autocast:
        for group in (items, swapped):
            total = weight = 0.0
            for i in range(0, len(group), micro_batch):
                b = data.collate(group[i:i + micro_batch], pad_id)
                n = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())  # labelled tokens (the loss's mean)
                _, loss = model(**{k: b[k].to(device) if torch.is_tensor(b[k]) else None
                                   for k in ("input_ids", "lengths", "has_image", "pixels", "features", "labels")})
                total, weight = total + loss.item() * n, weight + n
            losses.append(total / weight)
    model.train(was_training)
    return {"own": losses[0], "other": losses[1], "samples": len(items)}


def usable_micro_batches(micros, skipped, world, device):
    """The micro-batches of a step that hold a sample: one whose samples were all skipped is left
    out (they are counted in `skipped`). Under torchrun every process leaves out the same ones,
    so that DDP's and FSDP's collectives stay in step; the samples that another process's empty
    micro-batch takes with it are counted as skipped too."""
    keep = torch.tensor([len(b["ids"]) > 0 for b in micros], dtype=torch.int32, device=device)
    if world > 1:
        dist.all_reduce(keep, op=dist.ReduceOp.MIN)
    for b, k in zip(micros, keep.tolist()):
        if b["ids"] and not k:
            skipped.extend((sid, "left out with the micro-batch of another process, all of whose samples were "
                                 "skipped") for sid in b["ids"])
    return [b for b, k in zip(micros, keep.tolist()) if k]


def check_data(dataset, stage, master):
    """Before training, the samples that cannot be used, found without tokenizing or decoding an
    image (structure, text-only in stage 1, a missing image): none usable, or more than 1% of
    them, stops the run here; fewer are skipped and counted during training."""
    bad, n = dataset.unusable(), len(dataset)
    reasons = "".join(f"\n  {why}" for _, why in bad[:5])  # each names its sample
    if len(bad) == n:
        raise UserError(f"stage {stage}: none of the {n} samples in {dataset.path} can be used, so there is "
                        f"nothing to train on{', e.g.' if bad else ''}{reasons}")
    if len(bad) > 0.01 * n:
        raise UserError(f"stage {stage}: {len(bad)} of the {n} samples in {dataset.path} cannot be used (more than "
                        f"1%); fix the data and run again. The first:{reasons}")
    if bad and master:
        print(f"stage {stage}: {len(bad)} of the {n} samples will be skipped, e.g.{reasons}")


def check_skips(skipped, seen, stage, final):
    """Report skipped samples at the end of a stage; stop when more than 1% fail."""
    too_many = seen >= 200 and len(skipped) > 0.01 * seen
    if (final and skipped) or too_many:
        print(f"stage {stage}: skipped {len(skipped)} of {seen} samples, e.g.\n  " +
              "\n  ".join(f"{sid}: {why}" for sid, why in skipped[:5]))
    if too_many or (final and len(skipped) > 0.01 * max(seen, 1)):
        raise UserError(f"stage {stage}: more than 1% of the samples could not be used; fix the data "
                        f"(the reasons are above) and run again")


def main(cfg, stop_at=None):
    """Run the stages; `stop_at` = (stage, step) ends the run there after a checkpoint, as an
    interruption would (the tests use it). Returns the model."""
    rank, world, device = setup_distributed(cfg.device)
    master = rank == 0
    torch.manual_seed(cfg.seed)
    if cfg.stage not in ("1", "2", "both"):
        raise UserError(f"--stage must be 1, 2 or both, got {cfg.stage!r}")
    if cfg.oracle and (cfg.stage != "both" or cfg.resume or world > 1):
        raise UserError("--oracle=true runs both stages in one process, without --resume: the oracle "
                        "tower is not saved, so nothing could be reloaded")
    files = paths(cfg)
    tok_path = find_tokenizer(cfg.lm)
    tok = load_tokenizer(tok_path)
    lm_vocab = config_from_hf(read_json(os.path.join(cfg.lm, "config.json")), cfg.lm).vocab_size
    if tok.vocab_size > lm_vocab:
        raise UserError(f"{tok_path} has {tok.vocab_size} tokens but the LM in {cfg.lm} only {lm_vocab}: it is "
                        f"not the tokenizer the LM was trained with; put the LM's own tokenizer there")
    os.makedirs(cfg.out_dir, exist_ok=True)
    stage1_dir, final_dir = os.path.join(cfg.out_dir, "stage1"), os.path.join(cfg.out_dir, "model")
    stages = {"1": [1], "2": [2], "both": [1, 2]}[cfg.stage]

    model, resume_at = None, {}  # resume_at: stage -> (step, optimizer state)
    if cfg.resume:
        ckpt = os.path.join(cfg.out_dir, "ckpt")
        weights, state = load_checkpoint(ckpt, expect="vlm")
        stages = [st for st in stages if st >= state["stage"]]
        if not stages:
            print(f"nothing left to do: the checkpoint in {ckpt} is in stage {state['stage']}, after --stage="
                  f"{cfg.stage}, whose model is in {stage1_dir}; resume with --stage=2 or both to continue")
            return None
        model = build_model(cfg, device) if state["stage"] == 1 else XmodelVLM.load(stage1_dir, device=device)
        load_checked(model, weights, source=ckpt)
        resume_at[state["stage"]] = (state["step"], state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if master:
            print(f"resumed stage {state['stage']} at step {state['step']}")
    features = {}  # image file -> the frozen tower's features, shared by the stages (cache_features)
    for stage in stages:
        if model is None and stage == 2 and not os.path.exists(stage1_dir):
            raise InputNotFound(f"stage 2 starts from stage 1's model in {stage1_dir}; run --stage=1 first")
        if model is None:
            model = build_model(cfg, device) if stage == 1 else XmodelVLM.load(stage1_dir, device=device)
        step, optimizer_state = resume_at.get(stage, (0, None))
        finished = train_stage(stage, model, cfg, tok, files, rank, world, device, step, optimizer_state,
                               stop_at[1] if stop_at and stop_at[0] == stage else None, features)
        if not finished:
            return model
        if cfg.fsdp and stage == 2 and world > 1:  # rank 0 saves a whole copy
            weights = full_weights(model)
            model = XmodelVLM.load(stage1_dir, device=device) if master else model
            if master:
                model.load_state_dict(weights)
        if master and cfg.oracle:
            print(f"stage {stage} done (oracle tower: not saved)")
        elif master:
            out = stage1_dir if stage == 1 else final_dir
            model.save(out)
            save_tokenizer(tok_path, out)
            print(f"stage {stage} done; model saved to {out}")
    if dist.is_initialized():  # leave together: a rank that tears down while another still
        dist.barrier()          # exports can abort at exit (seen once in CI under FSDP2 on gloo)
        dist.destroy_process_group()
    if master and 2 in stages and cfg.probe and held_out_sets(cfg):
        report_lookups(eval_vlm.lookup_gauge(model.eval(), tok, cfg.data), os.path.join(cfg.out_dir, "metrics.jsonl"))
        for picture in eval_vlm.save_pictures(model.eval(), tok, cfg.data, os.path.join(cfg.out_dir, "metrics.jsonl"),
                                              cfg.out_dir):
            print(f"drew {picture}")
    if master and 2 in stages and cfg.evaluate and held_out_sets(cfg):
        eval_vlm.shapes_report(final_dir, cfg.data, os.path.join(cfg.out_dir, "eval"),
                               loaded=(model.eval(), tok, True) if cfg.oracle else None)
    return model


if __name__ == "__main__":
    run_main(lambda argv: main(parse_config(VLMConfig, argv, presets=VLM_PRESETS)))
