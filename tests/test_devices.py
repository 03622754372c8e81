"""Devices and mixed precision: the choice, its overrides and errors, the cache keys, and no hard-wired device."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from course_utils import config, modeling, private_runs
from course_utils.private_training import DPConfig

ROOT = Path(__file__).resolve().parent.parent


def test_device_defaults_to_what_torch_has_and_can_be_forced(monkeypatch) -> None:
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert config.device().type == expected
    monkeypatch.setenv("COURSE_DEVICE", "CPU ")
    assert config.device() == torch.device("cpu")


@pytest.mark.parametrize("value, message", [("tpu", "COURSE_DEVICE='tpu'"), ("gpu", "cpu, cuda, mps")])
def test_unknown_devices_get_one_line_naming_the_choices(monkeypatch, value, message) -> None:
    monkeypatch.setenv("COURSE_DEVICE", value)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        config.device()
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_says_so(monkeypatch) -> None:
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(ValueError, match="no cuda device"):
        config.device()


def test_cpu_precision_follows_the_measured_bf16_speed(monkeypatch) -> None:
    monkeypatch.delenv("COURSE_PRECISION", raising=False)
    monkeypatch.setattr(config, "cpu_bf16_speedup", lambda: 1.6)
    assert config.precision("cpu") == "bf16"
    monkeypatch.setattr(config, "cpu_bf16_speedup", lambda: 0.05)  # emulated bf16: many times slower
    assert config.precision("cpu") == "fp32"
    monkeypatch.setenv("COURSE_PRECISION", "fp32")
    monkeypatch.setattr(config, "cpu_bf16_speedup", lambda: 1.6)
    assert config.precision("cpu") == "fp32"
    assert config.precision("mps") == "fp32"


def test_cpu_without_native_bf16_is_never_given_bf16(monkeypatch) -> None:
    config.cpu_bf16_speedup.cache_clear()
    monkeypatch.setattr(config, "cpu_flags", lambda: {"fpu", "avx2"})
    try:
        assert config.cpu_bf16_speedup() == 0.0
    finally:
        config.cpu_bf16_speedup.cache_clear()


def test_precision_overrides_are_checked(monkeypatch) -> None:
    monkeypatch.setenv("COURSE_PRECISION", "fp8")
    with pytest.raises(ValueError, match="COURSE_PRECISION='fp8'"):
        config.precision("cpu")
    monkeypatch.setenv("COURSE_PRECISION", "fp16")
    with pytest.raises(ValueError, match="for GPUs"):
        config.precision("cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        config.autocast("cpu", "fp64")


def test_autocast_rounds_matrix_products_only_in_mixed_precision() -> None:
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with config.autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with config.autocast("cpu", "fp32"):
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # weights stay fp32


def test_cpu_info_names_the_processor_and_its_bf16_flags() -> None:
    info = config.cpu_info()
    assert info["cpu"] and info["cores"].isdigit()
    assert set(info["flags"].split()) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "-"}


def test_checkpoint_and_private_run_keys_record_the_device_class_and_arithmetic(tiny_splits, monkeypatch) -> None:
    cfg = modeling.TrainConfig(batch_size=16, epochs=1, max_length=32)
    cpu32 = modeling.checkpoint_key(cfg, tiny_splits, torch.device("cpu"), "fp32")
    assert modeling.checkpoint_key(cfg, tiny_splits, torch.device("cpu"), "bf16") != cpu32
    assert modeling.checkpoint_key(cfg, tiny_splits, torch.device("cuda"), "fp32") != cpu32
    assert modeling.checkpoint_key(cfg, tiny_splits, torch.device("cpu"), "fp32") == cpu32

    class Rows:  # what run_key reads of the features
        key = "features-key"

        def __len__(self) -> int:
            return 100

    run = DPConfig(epsilon=8.0)
    monkeypatch.setattr(config, "device", lambda: torch.device("cpu"))
    on_cpu = private_runs.run_key(Rows(), run)
    monkeypatch.setattr(config, "device", lambda: torch.device("cuda"))
    assert private_runs.run_key(Rows(), run) != on_cpu, "noise drawn on a GPU gives another run"
    assert private_runs.run_key(Rows(), dataclasses.replace(run, seed=1)) != private_runs.run_key(Rows(), run)


def test_finetune_refuses_an_unknown_precision(tiny_splits) -> None:
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        modeling.finetune(tiny_splits, modeling.TrainConfig(epochs=1), precision="half")


def test_training_in_bf16_keeps_fp32_weights_and_learns(tmp_path, tiny_splits, tokenizer) -> None:
    cfg = modeling.TrainConfig(batch_size=16, epochs=1, max_length=32, lr=1e-4)
    torch.manual_seed(0)
    model = modeling.load_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modeling.train(
        model, tokenizer, tiny_splits.train, tiny_splits.validation, cfg, tmp_path, progress=False, precision="bf16"
    )
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any((model.state_dict()[k] - v).abs().max() > 0 for k, v in before.items())
    done = (tmp_path / "done.json").read_text()
    assert '"precision": "bf16"' in done and '"device": "cpu"' in done


def test_nothing_hard_wires_a_device() -> None:
    """Code places tensors with config.device() or a model's own device, never `.cuda()` or a literal "cuda:0"."""
    pattern = re.compile(r"\.cuda\(|[\"']cuda:\d")
    places = [
        *ROOT.glob("course_utils/**/*.py"),
        *ROOT.glob("course_harness/*.py"),
        *ROOT.glob("notebooks/*.ipynb"),
        *ROOT.glob("solutions/*.ipynb"),
    ]
    assert len(places) > 20
    offenders = [str(p.relative_to(ROOT)) for p in places if pattern.search(p.read_text())]
    assert offenders == [], f"use config.device() instead of .cuda() in {offenders}"
