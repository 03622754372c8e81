"""Cached private runs: `train_private`, or the saved run with the same features, config and encoder (chapter 02).

A run lives in COURSE_CACHE/private/<key>/ (`model.safetensors` and `run.json` with epsilon, delta, noise
multiplier, steps and the loss curve). The key hashes the features' key, the whole `DPConfig`, the encoder's
identity (a compressed or adversarially trained encoder never reads the pretrained one's run) and the device class
(the noise is drawn on the training device, so a GPU run differs from a CPU run).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from . import config, privacy, store
from .evaluation import class_count
from .frozen import Features
from .modeling import encoder_identity
from .private_training import DPConfig, PrivateRun, train_private
from .topmodel import TopClassifier


def run_key(train: Features, cfg: DPConfig, encoder=None) -> str:
    """Cache key of one run: the rows (their features' key), every field of the config, the delta it resolves to
    (`DPConfig.delta=None` means `privacy.default_delta(N)`: changing that default must not reuse old runs), the
    encoder, the device class."""
    if not train.key:
        raise ValueError(
            "these features have no cache key; build them with frozen.cached_features (or call "
            "private_training.train_private directly)"
        )
    delta = cfg.delta if cfg.delta is not None else privacy.default_delta(len(train))  # the delta the run uses
    return store.key("private-run", train.key, cfg, delta, encoder_identity(encoder), config.device().type)


def train_cached(
    train: Features, cfg: DPConfig, progress: bool = True, retrain: bool | None = None, encoder=None
) -> PrivateRun:
    """`train_private`, or the saved run with the same features and config (COURSE_CACHE/private, safetensors)."""
    folder = store.path("private", run_key(train, cfg, encoder))
    retrain = config.retrain_requested() if retrain is None else retrain
    if retrain or not (folder / "run.json").exists():
        run = train_private(train, cfg, progress=progress, encoder=encoder)

        def write(tmp: Path) -> None:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}, tmp / "model.safetensors"
            )
            meta = {
                "epsilon": run.epsilon if math.isfinite(run.epsilon) else None,
                "delta": run.delta,
                "noise_multiplier": run.noise_multiplier,
                "steps": run.steps,
                "seconds": run.seconds,
                "losses": run.losses,
                "config": asdict(cfg),
            }
            (tmp / "run.json").write_text(json.dumps(meta))

        store.write_dir(folder, write)
        return run
    meta = json.loads((folder / "run.json").read_text())
    model = TopClassifier.from_pretrained(
        cfg.frozen_layers,
        encoder=encoder,
        lora_rank=cfg.lora_rank,
        num_labels=class_count(train.labels),  # as train_private built it
    )
    model.load_state_dict(load_file(folder / "model.safetensors"))
    model.to(config.device()).eval()
    spent = math.inf if meta["epsilon"] is None else meta["epsilon"]
    return PrivateRun(
        model, cfg, spent, meta["delta"], meta["noise_multiplier"], meta["steps"], meta["seconds"], meta["losses"]
    )
