"""Tests for common.py: the --key=value config mechanism, the LR schedule, and the HF-directory
writer (both files whole, config.json closed before its rename, nothing temporary left)."""

import os

import pytest
import torch
from safetensors.torch import load_file

import common
from common import UserError, lr_at, parse_config, read_json, save_hf_dir, tensor_dtype
from train_lm import TRAIN_PRESETS, TrainConfig


def test_config_overrides():
    cfg = parse_config(TrainConfig, ["--lr=0.01", "--compile=true", "--preset=xmodel-1.1b"],
                       presets=TRAIN_PRESETS)
    assert cfg.lr == 0.01 and cfg.compile is True and cfg.seq_len == 4096 and cfg.batch_size == 864
    with pytest.raises(UserError, match="did you mean --max_steps"):
        parse_config(TrainConfig, ["--max_step=3"])
    with pytest.raises(UserError, match="expects a value of type int"):
        parse_config(TrainConfig, ["--max_steps=many"])
    assert parse_config(TrainConfig, ["--micro_batch=auto"]).micro_batch == 0   # the planner picks
    with pytest.raises(UserError, match="expects a value of type int"):        # only where supported
        parse_config(TrainConfig, ["--batch_size=auto"])


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)      # halfway down the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_save_hf_dir_writes_both_files_whole(tmp_path):
    state = {"a.weight": torch.arange(6.0).view(2, 3).t(), "b": torch.ones(2, dtype=torch.bfloat16)}  # a.weight: not contiguous
    save_hf_dir(str(tmp_path / "m"), state, {"model_type": "test", "torch_dtype": tensor_dtype(state)})
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]   # no .tmp left behind
    assert read_json(str(tmp_path / "m" / "config.json")) == {"model_type": "test", "torch_dtype": "float32"}
    loaded = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_mixed_precision_follows_the_hardware(monkeypatch):
    """bf16 autocast on a CPU with native bf16 (the flags /proc/cpuinfo lists), fp32 on others and
    when XVLM_CPU_FP32=1; the weights stay fp32 either way."""
    w = torch.nn.Linear(4, 4)
    with common.mixed_precision("cpu"):
        y = w(torch.ones(2, 4))
    assert y.dtype == (torch.bfloat16 if common.cpu_native_bf16() else torch.float32)
    assert w.weight.dtype == torch.float32
    monkeypatch.setenv("XVLM_CPU_FP32", "1")
    with common.mixed_precision("cpu"):
        assert w(torch.ones(2, 4)).dtype == torch.float32
