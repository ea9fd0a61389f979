"""
What every script shares: one config mechanism, distributed setup, the optimizer and its
schedule, atomic checkpoints, and reading and writing Hugging Face model directories.

- UserError, run_main: a problem with the user's input is a UserError whose message names the
  file, line, sample or setting and says what to do; every script's entry point is
  run_main(main), which prints it as `error: ...` and exits with status 1, without a traceback.
- parse_config(Config): a script's settings are a dataclass whose defaults are the commented
  block `--help` prints; `--preset=NAME` applies a named set, then `--key=value` overrides.
  Each script keeps its own dataclass (train_lm.TrainConfig, train_vlm.VLMConfig, ...), and
  its CHECKS say which values each setting allows, refused before any work starts.
- setup_distributed / distribute: one process, or torchrun with DDP or FSDP2.
- make_optimizer / lr_at: AdamW with decay on matrices only; linear warmup, then cosine decay.
- mixed_precision(device): bf16 autocast where the hardware multiplies bf16 natively (CUDA, and CPUs
  with AVX512-BF16 or AMX), fp32 elsewhere; the weights and AdamW stay fp32 either way.
- save_checkpoint / load_checkpoint: whole, name-keyed weights and optimizer state plus the
  step and RNG states, swapped in atomically, so a run resumes exactly under any world size.
- read_json, load_hf_state_dict, load_checked, save_hf_dir: the HF directory format
  (config.json + model.safetensors) that the LM, the vision tower and the VLM all use.

No script is imported here: this is a library file (tests/test_layout.py checks it).
"""

import argparse
import contextlib
import dataclasses
import difflib
import inspect
import json
import math
import os
import pickle
import re
import runpy
import shutil
import sys

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file


# -----------------------------------------------------------------------------
# Errors the user can fix: one type, printed without a traceback

class UserError(ValueError):
    """A problem with the user's input (a file, a line of data, a sample, a checkpoint, a
    setting), raised with a message that names it and says what to do. run_main prints it as
    `error: ...` and exits with status 1, without a traceback; any other exception is a bug in
    this code and keeps its traceback. (A ValueError, so code that caught those still does.)"""


class InputNotFound(UserError, FileNotFoundError):
    """A UserError for an input file or folder that is not there (also a FileNotFoundError)."""


def run_main(main, argv=None):
    """A script's entry point: main(argv), a UserError becoming `error: ...` and exit status 1."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


# -----------------------------------------------------------------------------
# One config mechanism for every script: a dataclass, presets, and --key=value overrides

def parse_config(cls, argv=None, presets=None):
    """Build cls from defaults, then `--preset=NAME` (if presets has it), then --key=value.
    `--help` prints the commented defaults block, which is the documentation.

    The class's CHECKS map a setting to the values it allows, in one of three forms:
      "x >= 1", "0 <= x < 1"   a comparison of the value x (a NaN fails every one)
      ("1", "2", "both")       the allowed values
      a function               that raises UserError (LMConfig.preset, check_device)
    A value outside them, or a float that is not finite, is refused here with the rule."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(inspect.getdoc(sys.modules[cls.__module__]) or "")
        print("\nSettings (override with --key=value):\n")
        print(inspect.getsource(cls))
        if presets:
            print(f"presets (--preset=NAME) also set these: {json.dumps(presets, indent=2)}")
        sys.exit(0)
    pairs = []
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise UserError(f"cannot parse argument {arg!r}: use --key=value (see --help)")
        pairs.append(arg[2:].split("=", 1))
    kwargs = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in pairs:
        if key == "preset" and presets and value in presets:
            kwargs.update(presets[value])
        elif key == "preset" and "preset" not in known:
            raise UserError(f"unknown --preset={value}; choose one of {', '.join(presets or ['(none)'])}")
    for key, value in pairs:
        if key == "preset" and "preset" not in known:
            continue  # a preset of settings only (train_vlm.py's paper), applied above
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise UserError(f"unknown setting --{key}" + (f" (did you mean --{hint[0]}?)" if hint else "")
                            + "; see --help")
        auto = value == "auto" and key in getattr(cls, "AUTO", ())
        kwargs[key] = 0 if auto else convert(value, known[key].type, key)  # 0: the script chooses
    cfg = cls(**kwargs)
    for key, rule in getattr(cls, "CHECKS", {}).items():
        check_value(getattr(cfg, key), rule, f"--{key}")
    return cfg


def convert(value, typ, key):
    if typ is bool:
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise UserError(f"--{key} expects true or false, got {value!r}")
    try:
        converted = typ(value)
    except ValueError:
        raise UserError(f"--{key} expects a value of type {typ.__name__}, got {value!r}") from None
    if typ is float and not math.isfinite(converted):
        raise UserError(f"--{key} must be a finite number, got {value!r}")
    return converted


def check_value(value, rule, flag):
    """Refuse `value` of setting `flag` unless it satisfies `rule` (one of parse_config's forms)."""
    if callable(rule):
        try:
            rule(value)
        except UserError as e:
            raise UserError(f"{flag}={value}: {e}") from None
    elif isinstance(rule, str):
        if not satisfies(value, rule):
            shown = re.sub(r"\bx\b", flag.lstrip("-"), rule)
            raise UserError(f"{flag}={value} is not allowed: it must satisfy {shown}")
    elif value not in rule:
        raise UserError(f"{flag}={value} is not allowed: choose one of {', '.join(map(str, rule))}")


def satisfies(value, rule):
    """Whether value meets a rule such as "x >= 1": source code written next to the setting, never
    user input, evaluated with the value as x and nothing else in reach."""
    return eval(rule, {"__builtins__": {}}, {"x": value})


def checked(typ, rule):
    """An argparse `type` that converts with typ and refuses values outside `rule` (a comparison
    of x, as in a config's CHECKS), e.g. `add_argument("--batch_size", type=checked(int, "x >= 1"))`."""
    def convert_arg(text):
        value = typ(text)  # a ValueError here: argparse says "invalid int value"
        if typ is float and not math.isfinite(value) or not satisfies(value, rule):
            raise argparse.ArgumentTypeError(f"{text} is not allowed: it must satisfy {rule}")
        return value
    convert_arg.__name__ = typ.__name__
    return convert_arg


def check_device(device):
    """--device: auto, cpu, cuda or cuda:N; cuda only on a machine where torch sees a CUDA GPU."""
    if device in ("auto", "cpu"):
        return
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError("this machine has no CUDA GPU that torch can use (torch.cuda.is_available() is "
                        "False); use --device=cpu, or auto")


def run_moved(script, argv):
    """An old command line, kept for one release: say where it moved, then run `script` with argv."""
    print(f"note: this command is now `python {script}`; running that (the old form goes in the next "
          f"release)", file=sys.stderr)
    sys.argv = [script] + list(argv)
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), script), run_name="__main__")


# -----------------------------------------------------------------------------
# Processes, optimizer, schedule

def setup_distributed(device):
    """(rank, world_size, local device). Under torchrun, join the process group."""
    if "RANK" not in os.environ:
        dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        return 0, 1, dev
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        return rank, world, f"cuda:{local}"
    return rank, world, "cpu"


def distribute(model, blocks, world, fsdp, device):
    """How the processes share the model; returns the module to call in training.
    DDP (the default): every process holds all of it and backward averages the gradients.
    FSDP2 (--fsdp): every process holds 1/world of each weight, gradient and AdamW moment; each
    block gathers its weights (in bf16 on CUDA) just before it runs and frees them after, and
    backward reduce-scatters the gradients. Sharding happens in place: call this before
    building the optimizer."""
    if world == 1:
        return model
    if not fsdp:
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # only under torchrun with FSDP
    on_gpu = str(device).startswith("cuda")
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if on_gpu else None, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)  # the rest: embeddings, final norm, lm_head (and the VLM's tower, projector)
    return model


def cpu_native_bf16():
    """The CPU's native bf16 instructions (AVX512-BF16, AMX), from /proc/cpuinfo; [] elsewhere."""
    if sys.platform != "linux":
        return []
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return [f for f in ("avx512_bf16", "amx_bf16") if f in flags]


def mixed_precision(device):
    """The context a training step runs in: bf16 autocast (fp32 master weights and optimizer) on
    CUDA and on a CPU that multiplies bf16 natively, where it is faster (bench.py cpu: a tiny-LM
    step 1.2x on a 2-core AVX512-BF16 CPU); fp32 on other CPUs, where bf16 is emulated and slower.
    XVLM_CPU_FP32=1 keeps a CPU in fp32: the tests that compare runs across process counts to 1e-5
    set it, since bf16 rounds a split batch differently."""
    kind = str(device).split(":")[0]
    if kind == "cuda" or (kind == "cpu" and cpu_native_bf16() and os.environ.get("XVLM_CPU_FP32") != "1"):
        return torch.autocast(kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def scalar(x):
    """A float from a tensor that FSDP may have made a DTensor (the gradient norm)."""
    return float(x.full_tensor() if hasattr(x, "full_tensor") else x)


def lr_at(step, cfg):
    """Linear warmup to lr, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model, cfg, device):
    """AdamW with weight decay on matrices (2-D weights) only: norms' gains are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = str(device).startswith("cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


PEAK_TFLOPS = {  # dense bf16 tensor-core peaks, for MFU
    "H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "A10": 125e12, "4090": 165e12, "3090": 71e12, "V100": 125e12,
}


def peak_flops(device):
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def format_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# -----------------------------------------------------------------------------
# Checkpoints: everything needed to continue exactly, written atomically

def save_checkpoint(ckpt_dir, model, optimizer, step, config_dict, master=True, extra=None):
    """Every process calls it (under FSDP they gather the shards); rank 0 writes whole, CPU
    copies of the weights and the optimizer state, both keyed by parameter name, so the
    checkpoint does not depend on the world size or on FSDP. Written into a fresh folder, then
    swapped in with renames: a crash at any moment leaves the old or the new checkpoint whole."""
    # torch.distributed.checkpoint is imported where it is used: it takes a second, and only training needs it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    weights, optim = get_state_dict(model, optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not master:
        return
    tmp, old = ckpt_dir + ".tmp", ckpt_dir + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(tmp, "model.safetensors"))
    torch.save({"optimizer": optim, "step": step, "config": config_dict,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                **(extra or {})}, os.path.join(tmp, "state.pt"))
    if os.path.exists(ckpt_dir):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(ckpt_dir, old)
    os.replace(tmp, ckpt_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_optimizer_state(model, optimizer, optim_state):
    """Put a checkpoint's whole optimizer state into this run's optimizer (sharded or not)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))


def full_weights(model):
    """The whole model's weights on the CPU (rank 0; every process calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# which script wrote a checkpoint: the key its state.pt's "config" holds
CHECKPOINT_WRITERS = {"model": "train_lm.py", "vlm": "train_vlm.py", "vision": "train_clip.py"}


def load_checkpoint(ckpt_dir, expect):
    """(weights, state) of a checkpoint folder; falls back to the .old copy of an interrupted swap.
    `expect` is the config key of the script resuming (CHECKPOINT_WRITERS): another script's
    checkpoint is refused, saying whose it is."""
    if not os.path.exists(ckpt_dir) and os.path.exists(ckpt_dir + ".old"):
        ckpt_dir = ckpt_dir + ".old"
    files = [os.path.join(ckpt_dir, f) for f in ("model.safetensors", "state.pt")]
    if not all(os.path.exists(f) for f in files):
        raise InputNotFound(f"--resume: no checkpoint in {ckpt_dir} (expected model.safetensors "
                            f"and state.pt); run without --resume to start fresh")
    weights, state = read_weights(files[0]), read_weights(files[1])
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict) or not {"optimizer", "step"} <= set(state) or expect not in config:
        writer = next((w for k, w in CHECKPOINT_WRITERS.items() if isinstance(config, dict) and k in config),
                      "another program")
        raise UserError(f"{ckpt_dir} is a checkpoint of {writer}, not of {CHECKPOINT_WRITERS[expect]}: "
                        f"--resume continues the run that wrote it; use the --out_dir of such a run, or a new one")
    return weights, state


def read_weights(path, mmap=False):
    """The tensors of a .safetensors file, or what torch.save wrote to a .pt/.bin file. torch files
    are read with weights_only=True: a pickle that would run code is refused, and nothing in it runs.
    A file that cannot be read is a UserError naming it."""
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:  # what weights_only=True raises for anything but tensors and plain data
        raise UserError(f"{path} was refused: it holds objects other than tensors and plain values "
                        f"({str(e).splitlines()[0][:160]}). Nothing in it was run. A checkpoint written by "
                        f"this project never does: this file comes from another program or was "
                        f"tampered with; use one you trust") from None
    except Exception as e:  # safetensors' SafetensorError, torch's RuntimeError, EOFError on an empty file, ...
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e)[:200] or 'empty file'}): the file is "
                        f"truncated or corrupt; write it again (or resume from an earlier copy)") from None


# -----------------------------------------------------------------------------
# Hugging Face model directories: config.json + model.safetensors (or sharded, or .bin)

def read_json(path, kind=dict, what="a Hugging Face model directory with config.json next to the weights"):
    """A JSON file that holds a `kind` (dict or list), such as a model's config.json. One that is
    missing, not UTF-8, not JSON or not a `kind` is a UserError naming it; `what` is what was expected."""
    if not os.path.isfile(path):
        raise InputNotFound(f"{path} not found: expected {what}")
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise UserError(not_utf8(path, e)) from None
    if not isinstance(content, kind):
        raise UserError(f"{path}: expected a JSON {'object' if kind is dict else 'list'} ({what}), "
                        f"found a {type(content).__name__}")
    return content


def pyplot(without):
    """matplotlib.pyplot on a file backend, or None (saying `without` what is not drawn) when
    matplotlib is not installed: the pictures are optional, the numbers are printed anyway."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed (pip install matplotlib): {without}")
        return None
    return plt


def not_utf8(path, e):
    """The message for a UnicodeDecodeError `e` reading the text file `path`."""
    return (f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); convert it to "
            f"UTF-8, e.g. `iconv -f latin1 -t utf-8`")


def load_hf_state_dict(path):
    """Read every weight file of a HF directory into one dict of tensors."""
    if not os.path.isdir(path):
        raise InputNotFound(f"{path} is not a directory: expected a Hugging Face model directory "
                            f"(config.json + model.safetensors)")
    files = sorted(os.listdir(path))
    st = [f for f in files if f.endswith(".safetensors")]
    pt = [f for f in files if f.startswith("pytorch_model") and f.endswith(".bin")]
    if not st and not pt:
        raise InputNotFound(f"no weights in {path}: expected model.safetensors, "
                            f"model-0000x-of-0000y.safetensors or pytorch_model*.bin")
    state = {}
    for f in st or pt:
        state.update(read_weights(os.path.join(path, f), mmap=True))
    return state


def load_checked(module, state, source):
    """module.load_state_dict(state) that names every missing, unexpected or mis-shaped key
    (for any module: the LM, a CLIP tower, a projector, a whole VLM)."""
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {source} does not match this model's config:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:8])}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): " + "; ".join(shapes[:8]))
        lines.append("  (is the config.json the one saved with these weights?)")
        raise UserError("\n".join(lines))
    # a model built on the meta device has no storage yet: take the checkpoint's tensors
    # as they are; otherwise copy into the existing parameters (an optimizer holds them)
    module.load_state_dict(state, assign=any(p.is_meta for p in module.parameters()))


def atomic_write(path, write):
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def write_text(path, text):
    with open(path, "w") as f:  # closed (and flushed) before atomic_write renames it
        f.write(text)


def save_hf_dir(path, state, config):
    """Write a HF model directory: `state` (name -> tensor) as model.safetensors and the
    `config` dict as config.json, each atomically. The LM, the vision tower and the VLM save
    with it; from the same files transformers' from_pretrained loads the LM and the tower."""
    os.makedirs(path, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(os.path.join(path, "model.safetensors"),
                 lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write(os.path.join(path, "config.json"), lambda tmp: write_text(tmp, json.dumps(config, indent=2)))


def tensor_dtype(state):
    """The dtype name of a state dict's first tensor, as HF's config.json writes it ("float32")."""
    return str(next(iter(state.values())).dtype).removeprefix("torch.")
