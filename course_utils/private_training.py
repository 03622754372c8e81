"""Private fine-tuning with Opacus on cached frozen features (chapter 02).

DP-SGD adds noise to every trainable coordinate, so the fewer parameters it trains the less noise it needs per
unit of signal (on this course's CPU budget; on large models full fine-tuning under DP can match, see chapter 02).
`train_private` trains a `topmodel.TopClassifier` on `frozen.Features`; `private_runs.train_cached` caches runs.

Opacus does the privacy: `PrivacyEngine.make_private_with_epsilon` gives Poisson sampling (a `DPDataLoader`),
per-sample gradients (hooks), clipping, noise and the accountant. Each Poisson batch (the logical batch the
guarantee is about) is cut into length-sorted physical batches, the trick of Opacus's `BatchMemoryManager`: the
optimizer clips and accumulates each physical batch and steps, with noise, once per logical batch. Sorting by
length roughly halves the padding, and so the time, of a step on these short sentences.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from opacus import PrivacyEngine
from tqdm.auto import tqdm

from . import config, privacy
from .evaluation import class_count
from .frozen import Features
from .topmodel import TopClassifier, check_lora_rank

PHYSICAL_BATCH = 64  # examples per forward pass; the logical (Poisson) batch is larger


@dataclass(frozen=True)
class DPConfig:
    """One private (or, with epsilon = inf, non-private) fine-tuning run.

    delta defaults to `privacy.default_delta(N)` with N the number of training examples. frozen_layers and
    lora_rank are checked against the encoder when training starts (a compressed encoder has fewer blocks).
    The noise multiplier is found by Opacus so
    that `epochs` passes at sampling rate batch_size/N spend exactly `epsilon`.
    """

    epsilon: float = 8.0
    delta: float | None = None
    frozen_layers: int = 5
    epochs: int = 3
    batch_size: int = 256  # expected logical batch (Poisson sampling rate q = batch_size / N)
    lr: float = 1e-3
    clip_norm: float = 1.0
    seed: int = 0
    accountant: str = "rdp"
    lora_rank: int = 0  # > 0: train LoRA adapters of the top blocks instead of the blocks themselves

    def __post_init__(self) -> None:
        privacy.check_epsilon(self.epsilon, allow_inf=True)
        if self.delta is not None:
            privacy.check_delta(self.delta)
        privacy.check_clip_norm(self.clip_norm)
        check_lora_rank(self.lora_rank)
        if isinstance(self.frozen_layers, bool) or not isinstance(self.frozen_layers, int) or self.frozen_layers < 0:
            raise ValueError(
                f"DPConfig.frozen_layers must be a non-negative integer, got {self.frozen_layers!r}; "
                "the encoder's depth trains the head alone"
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DPConfig.{name} must be a positive integer, got {value!r}")
        if not 0 < self.lr < 1:
            raise ValueError(f"DPConfig.lr must be in (0, 1), got {self.lr}; try 1e-3")
        if self.accountant not in ("rdp", "prv"):
            raise ValueError(f"DPConfig.accountant must be 'rdp' or 'prv', got {self.accountant!r}")

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)


@dataclass
class PrivateRun:
    """A trained TopClassifier and what it cost in privacy and time."""

    model: TopClassifier
    config: DPConfig
    epsilon: float  # spent, from the accountant (inf when not private)
    delta: float
    noise_multiplier: float
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean training loss per logical step


class _Indices(torch.utils.data.Dataset):
    """Row numbers and labels: the data loader samples rows, the training loop gathers their features."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.tensor(i), self.labels[i]


def _physical_batches(idx: torch.Tensor, lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Cut one logical batch into length-sorted chunks of at most `size` rows."""
    idx = idx[torch.argsort(lengths[idx], stable=True)]
    return [idx[s : s + size] for s in range(0, len(idx), size)]


def train_private(train: Features, cfg: DPConfig, progress: bool = True, encoder=None) -> PrivateRun:
    """DP-SGD with Opacus (Poisson sampling, per-sample clipping, noise, accountant) on cached features.

    With cfg.epsilon = inf the same loop runs without Opacus: shuffled batches of cfg.batch_size, no clipping,
    no noise. Both use AdamW with a constant learning rate. The model trains on `config.device()` in fp32
    (Opacus's per-sample gradients are not made for autocast; these small models train fast without it); the
    noise is drawn there too, so a run on a GPU differs from a CPU run with the same seed.
    """
    if train.frozen_layers != cfg.frozen_layers:
        raise ValueError(
            f"features were cut after block {train.frozen_layers} but the config trains from block "
            f"{cfg.frozen_layers + 1}; encode with frozen_layers={cfg.frozen_layers}"
        )
    n = len(train)
    if cfg.batch_size > n:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n} training examples; lower it")
    delta = cfg.delta if cfg.delta is not None else privacy.default_delta(n)
    where = config.device()
    model = TopClassifier.from_pretrained(
        cfg.frozen_layers, encoder=encoder, seed=cfg.seed, lora_rank=cfg.lora_rank, num_labels=class_count(train.labels)
    ).to(where)
    model.train()  # Opacus wants train mode before make_private
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(
        _Indices(train.labels), batch_size=cfg.batch_size, shuffle=True, generator=generator
    )
    engine, noise = None, 0.0
    if cfg.private:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")  # chapter 02, section 9 says why
            engine = PrivacyEngine(accountant=cfg.accountant, secure_mode=False)
            warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
            model, optimizer, loader = engine.make_private_with_epsilon(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                target_epsilon=cfg.epsilon,
                target_delta=delta,
                epochs=cfg.epochs,
                max_grad_norm=cfg.clip_norm,
                poisson_sampling=True,
                noise_generator=torch.Generator(where).manual_seed(cfg.seed + 1),
            )
        noise = float(optimizer.noise_multiplier)
    total = cfg.epochs * len(loader)
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"train eps={cfg.epsilon:g}", disable=not progress, leave=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(cfg.epochs):
            for idx, _labels in loader:
                if len(idx) == 0:  # an empty Poisson batch (chance about e^-batch_size): nothing to release
                    bar.update(1)
                    continue
                chunks = _physical_batches(idx, train.lengths, PHYSICAL_BATCH)
                step_loss = 0.0
                for k, chunk in enumerate(chunks):
                    hidden, mask, labels = train.batch(chunk, where)
                    loss = torch.nn.functional.cross_entropy(model(hidden, mask), labels)
                    (loss * len(chunk) / len(idx)).backward() if engine is None else loss.backward()
                    step_loss += loss.item() * len(chunk)
                    if engine is not None:
                        optimizer.signal_skip_step(do_skip=k < len(chunks) - 1)  # noise once per Poisson batch
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                if engine is None:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                losses.append(step_loss / len(idx))
                bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    spent = math.inf
    if engine is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
            spent = float(engine.get_epsilon(delta))
        model.remove_hooks()
        model = model._module  # unwrap the GradSampleModule: a plain TopClassifier again
    model.eval()
    return PrivateRun(model, cfg, spent, delta, noise, total, seconds, losses)
