"""Private fine-tuning with Opacus on the course's pretrained encoder (chapter 02).

DP-SGD adds noise to every trainable coordinate, so the fewer parameters it trains the less noise it needs
per unit of signal; and on two CPU cores the frozen part of the network should run once, not every step.
So the lower `frozen_layers` transformer blocks run once over the data (`encode_frozen`, cached as
safetensors), and DP-SGD trains what sits on top (`TopClassifier`): the last block(s), mean pooling and a
linear head (`frozen_layers=6` leaves the head alone: a private linear probe). With `lora_rank` > 0 the top blocks
stay frozen too and only low-rank adapters on their attention query and value (peft's LoRA) and the head train.

Opacus does the privacy: `PrivacyEngine.make_private` gives Poisson sampling (a `DPDataLoader`), per-sample
gradients (hooks), clipping, noise and the accountant. Each Poisson batch (the logical batch the guarantee is
about) is cut into length-sorted physical batches, the trick of Opacus's `BatchMemoryManager`: the optimizer
clips and accumulates each physical batch and steps, with noise, once per logical batch. Sorting by length
roughly halves the padding, and so the time, of a step on these short sentences.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import config, privacy

HIDDEN = 384          # MiniLM-L6's width
NUM_LAYERS = 6        # its transformer blocks
PHYSICAL_BATCH = 64   # examples per forward pass; the logical (Poisson) batch is larger


# ---------------------------------------------------------------------------------------------- features

@dataclass
class Features:
    """Frozen-encoder outputs for N sentences: token vectors stored flat (sum of lengths, H) in float16."""

    flat: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    frozen_layers: int
    key: str = ""  # identifies the rows for caching runs on them ("" when not from cached_features)

    def __post_init__(self) -> None:
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded (B, T, H) float32 hidden states, (B, T) attention mask and (B,) labels for rows `idx`."""
        idx = [int(i) for i in idx]
        longest = max(int(self.lengths[i]) for i in idx)
        hidden = torch.zeros(len(idx), longest, self.flat.shape[1])
        mask = torch.zeros(len(idx), longest, dtype=torch.long)
        for row, i in enumerate(idx):
            n = int(self.lengths[i])
            hidden[row, :n] = self.flat[self.offsets[i]:self.offsets[i] + n].float()
            mask[row, :n] = 1
        return hidden, mask, self.labels[idx]

    def subset(self, idx) -> "Features":
        """The rows `idx`, in that order."""
        idx = [int(i) for i in idx]
        parts = [self.flat[self.offsets[i]:self.offsets[i + 1]] for i in idx]
        key = _digest(self.key, idx) if self.key else ""
        return Features(torch.cat(parts), self.lengths[idx].clone(), self.labels[idx].clone(), self.frozen_layers,
                        key)

    @staticmethod
    def concat(*parts: "Features") -> "Features":
        """Rows of every part, one after another."""
        if len({p.frozen_layers for p in parts}) != 1:
            raise ValueError("features were cut at different layers; encode them with the same frozen_layers")
        key = _digest(*[p.key for p in parts]) if all(p.key for p in parts) else ""
        return Features(torch.cat([p.flat for p in parts]), torch.cat([p.lengths for p in parts]),
                        torch.cat([p.labels for p in parts]), parts[0].frozen_layers, key)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _check_frozen_layers(frozen_layers: int) -> int:
    if not isinstance(frozen_layers, int) or not 0 <= frozen_layers <= NUM_LAYERS:
        raise ValueError(f"frozen_layers must be an integer in 0..{NUM_LAYERS}, got {frozen_layers!r}; "
                         f"use {NUM_LAYERS - 1} to train the top block, {NUM_LAYERS} for the head alone")
    return frozen_layers


def _check_lora_rank(lora_rank: int, frozen_layers: int) -> int:
    if not isinstance(lora_rank, int) or lora_rank < 0:
        raise ValueError(f"lora_rank must be a non-negative integer, got {lora_rank!r}; 0 trains the blocks fully")
    if lora_rank and frozen_layers == NUM_LAYERS:
        raise ValueError("lora_rank needs at least one block on top to adapt; use frozen_layers=5 with LoRA")
    return lora_rank


def extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B, 1, 1, T) additive mask: 0 where attended, a very negative number on padding."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def run_blocks(blocks, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pass hidden states through BERT blocks as BertEncoder does (checked equal to the whole model in tests)."""
    ext = extended_mask(mask, hidden.dtype)
    for block in blocks:
        out = block(hidden, attention_mask=ext)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


@torch.no_grad()
def encode_frozen(texts: list[str], labels, frozen_layers: int, encoder=None, tokenizer=None,
                  batch_size: int = 64, max_length: int = 64, progress: bool = True) -> Features:
    """Run the embeddings and the lowest `frozen_layers` blocks of the pretrained encoder once over `texts`."""
    from tqdm.auto import tqdm

    from .modeling import load_model, load_tokenizer

    frozen_layers = _check_frozen_layers(frozen_layers)
    if len(texts) == 0 or len(texts) != len(labels):
        raise ValueError(f"need as many labels as texts (and at least one), got {len(texts)} texts and "
                         f"{len(labels)} labels")
    tokenizer = tokenizer or load_tokenizer()
    encoder = encoder or load_model().bert
    encoder.eval()
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: little padding
    rows: list[torch.Tensor | None] = [None] * len(texts)
    for start in tqdm(range(0, len(order), batch_size), desc=f"encode (frozen blocks 1-{frozen_layers})",
                      disable=not progress, leave=False):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        hidden = encoder.embeddings(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"))
        hidden = run_blocks(encoder.encoder.layer[:frozen_layers], hidden, enc["attention_mask"])
        for row, i in enumerate(idx):
            rows[i] = hidden[row, :lengths[i]].to(torch.float16).clone()
    return Features(torch.cat(rows), torch.as_tensor(lengths), torch.tensor(np.array(labels), dtype=torch.long),
                    frozen_layers)


def features_key(texts: list[str], labels, frozen_layers: int, max_length: int = 64) -> str:
    """Cache key of encoded features: the texts, labels, cut, truncation and the pretrained weights."""
    digest = hashlib.sha256()
    for text, label in zip(texts, np.asarray(labels).tolist()):
        digest.update(f"{label}\t{text}\n".encode())
    from .modeling import pretrained_identity

    digest.update(json.dumps([frozen_layers, max_length, pretrained_identity()]).encode())
    return digest.hexdigest()[:16]


def cached_features(frame: pd.DataFrame, frozen_layers: int, progress: bool = True, **kwargs) -> Features:
    """`encode_frozen` on a frame (text, label), cached in COURSE_CACHE/features as safetensors."""
    from safetensors.torch import load_file, save_file

    texts, labels = frame["text"].tolist(), frame["label"].to_numpy()
    key = features_key(texts, labels, frozen_layers)
    path = config.cache_dir() / "features" / f"{key}.safetensors"
    if path.exists():
        stored = load_file(path)
        return Features(stored["flat"], stored["lengths"], stored["labels"], frozen_layers, key)
    feats = encode_frozen(texts, labels, frozen_layers, progress=progress, **kwargs)
    feats.key = key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"flat": feats.flat, "lengths": feats.lengths, "labels": feats.labels}, tmp)
    tmp.replace(path)  # atomic: a reader sees the whole file or none
    return feats


# ---------------------------------------------------------------------------------------------- the model

class TopClassifier(torch.nn.Module):
    """The encoder's top blocks (a copy, trainable), mean pooling over real tokens, dropout, a linear head."""

    def __init__(self, blocks, hidden: int = HIDDEN, num_labels: int = 2, dropout: float = 0.1):
        super().__init__()
        self.blocks = torch.nn.ModuleList(blocks)
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(hidden, num_labels)

    @classmethod
    def from_pretrained(cls, frozen_layers: int, encoder=None, seed: int = 0, lora_rank: int = 0,
                        **kwargs) -> "TopClassifier":
        """Copy blocks frozen_layers+1..6 of the pretrained encoder; the head is new, seeded by `seed`.

        lora_rank > 0 freezes the copied blocks and adds peft LoRA adapters (rank r, alpha 2r) to their attention
        query and value projections; the adapters and the head are then the only trainable parameters.
        """
        from .modeling import load_model

        frozen_layers = _check_frozen_layers(frozen_layers)
        _check_lora_rank(lora_rank, frozen_layers)
        encoder = encoder or load_model().bert
        torch.manual_seed(seed)
        model = cls([copy.deepcopy(b) for b in encoder.encoder.layer[frozen_layers:]], **kwargs)
        if lora_rank:
            from peft import LoraConfig, inject_adapter_in_model

            model.blocks.requires_grad_(False)
            lora = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                              target_modules=["query", "value"])
            model.blocks = inject_adapter_in_model(lora, model.blocks)  # adapters are created trainable
        return model

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = run_blocks(self.blocks, hidden, mask)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
        return self.classifier(self.dropout(pooled))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, feats: Features, batch_size: int = 256) -> np.ndarray:
    """(N, C) logits, batches sorted by length."""
    was_training = model.training
    model.eval()
    order = np.argsort(feats.lengths.numpy(), kind="stable")
    out = np.zeros((len(feats), model.classifier.out_features), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        hidden, mask, _ = feats.batch(idx)
        out[idx] = model(hidden, mask).numpy()
    model.train(was_training)
    return out


def per_example_loss(model: torch.nn.Module, feats: Features, labels=None) -> np.ndarray:
    """Cross-entropy of each example under its label (or `labels`): the membership-inference signal."""
    logits = torch.as_tensor(predict_logits(model, feats))
    target = feats.labels if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return torch.nn.functional.cross_entropy(logits, target, reduction="none").numpy()


def accuracy(model: torch.nn.Module, feats: Features) -> float:
    """Share of rows whose argmax logit is the label."""
    return float((predict_logits(model, feats).argmax(1) == feats.labels.numpy()).mean())


# ---------------------------------------------------------------------------------------------- training

@dataclass(frozen=True)
class DPConfig:
    """One private (or, with epsilon = inf, non-private) fine-tuning run.

    delta defaults to 1/N with N the number of training examples. The noise multiplier is found by Opacus so
    that `epochs` passes at sampling rate batch_size/N spend exactly `epsilon`.
    """

    epsilon: float = 8.0
    delta: float | None = None
    frozen_layers: int = 5
    epochs: int = 3
    batch_size: int = 256        # expected logical batch (Poisson sampling rate q = batch_size / N)
    lr: float = 1e-3
    clip_norm: float = 1.0
    seed: int = 0
    accountant: str = "rdp"
    lora_rank: int = 0           # > 0: train LoRA adapters of the top blocks instead of the blocks themselves

    def __post_init__(self) -> None:
        privacy.check_epsilon(self.epsilon, allow_inf=True)
        if self.delta is not None:
            privacy.check_delta(self.delta)
        privacy.check_clip_norm(self.clip_norm)
        _check_lora_rank(self.lora_rank, _check_frozen_layers(self.frozen_layers))
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
    epsilon: float                 # spent, from the accountant (inf when not private)
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
    return [idx[s:s + size] for s in range(0, len(idx), size)]


def train_private(train: Features, cfg: DPConfig, progress: bool = True, encoder=None) -> PrivateRun:
    """DP-SGD with Opacus (Poisson sampling, per-sample clipping, noise, accountant) on cached features.

    With cfg.epsilon = inf the same loop runs without Opacus: shuffled batches of cfg.batch_size, no clipping,
    no noise. Both use AdamW with a constant learning rate.
    """
    from tqdm.auto import tqdm

    if train.frozen_layers != cfg.frozen_layers:
        raise ValueError(f"features were cut after block {train.frozen_layers} but the config trains from block "
                         f"{cfg.frozen_layers + 1}; encode with frozen_layers={cfg.frozen_layers}")
    n = len(train)
    if cfg.batch_size > n:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n} training examples; lower it")
    delta = cfg.delta if cfg.delta is not None else privacy.default_delta(n)
    model = TopClassifier.from_pretrained(cfg.frozen_layers, encoder=encoder, seed=cfg.seed, lora_rank=cfg.lora_rank)
    model.train()  # Opacus wants train mode before make_private
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(_Indices(train.labels), batch_size=cfg.batch_size, shuffle=True,
                                         generator=generator)
    engine, noise = None, 0.0
    if cfg.private:
        from opacus import PrivacyEngine

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")  # chapter 02, section 9 says why
            engine = PrivacyEngine(accountant=cfg.accountant, secure_mode=False)
            warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
            model, optimizer, loader = engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, data_loader=loader, target_epsilon=cfg.epsilon,
                target_delta=delta, epochs=cfg.epochs, max_grad_norm=cfg.clip_norm, poisson_sampling=True,
                noise_generator=torch.Generator().manual_seed(cfg.seed + 1))
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
                    hidden, mask, labels = train.batch(chunk)
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


def train_cached(train: Features, cfg: DPConfig, progress: bool = True, retrain: bool | None = None,
                 encoder=None) -> PrivateRun:
    """`train_private`, or the saved run with the same features and config (COURSE_CACHE/private, safetensors)."""
    from safetensors.torch import load_file, save_file

    from .modeling import _save_dir_atomic

    if not train.key:
        raise ValueError("these features have no cache key; build them with cached_features (or call "
                         "train_private directly)")
    folder = config.cache_dir() / "private" / _digest(train.key, asdict(cfg))
    retrain = config.retrain_requested() if retrain is None else retrain
    if retrain or not (folder / "run.json").exists():
        run = train_private(train, cfg, progress=progress, encoder=encoder)

        def write(tmp: Path) -> None:
            save_file({k: v.contiguous() for k, v in run.model.state_dict().items()}, tmp / "model.safetensors")
            meta = {"epsilon": run.epsilon if math.isfinite(run.epsilon) else None, "delta": run.delta,
                    "noise_multiplier": run.noise_multiplier, "steps": run.steps, "seconds": run.seconds,
                    "losses": run.losses, "config": asdict(cfg)}
            (tmp / "run.json").write_text(json.dumps(meta))

        _save_dir_atomic(folder, write)
        return run
    meta = json.loads((folder / "run.json").read_text())
    model = TopClassifier.from_pretrained(cfg.frozen_layers, encoder=encoder, lora_rank=cfg.lora_rank)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    model.eval()
    spent = math.inf if meta["epsilon"] is None else meta["epsilon"]
    return PrivateRun(model, cfg, spent, meta["delta"], meta["noise_multiplier"], meta["steps"], meta["seconds"],
                      meta["losses"])


# ---------------------------------------------------------------------------------------------- audits, pitfalls

def canary_exposures(model: torch.nn.Module, candidates: Features, candidate_codes, canaries: pd.DataFrame
                     ) -> np.ndarray:
    """Exposure (bits) of each canary: its loss ranked among all candidate secrets' losses under its label."""
    from .audit import exposure

    codes = list(candidate_codes)
    missing = [code for code in canaries["code"] if code not in codes]
    if missing:
        raise ValueError(f"canary {missing[0]!r} is not among the candidates; draw both with audit.make_canaries")
    # every candidate's loss under label y is -log softmax(logits)[:, y]: one forward pass serves all canaries
    neg_log_probs = -torch.log_softmax(torch.as_tensor(predict_logits(model, candidates)), dim=1).numpy()  # (N, C)
    return np.array([exposure(neg_log_probs[codes.index(code), int(label)], neg_log_probs[:, int(label)])
                     for code, label in zip(canaries["code"], canaries["label"])])


def grad_sample_mismatches(model: torch.nn.Module, tokenizer, texts: list[str]) -> dict[str, tuple[int, ...]]:
    """Trainable parameters whose Opacus per-sample gradient lacks the batch dimension, with its shape.

    BERT's position embeddings are looked up with a (1, T) position_ids buffer shared by the batch, so the
    Embedding hook sees one "sample" and gives a (1, vocab, H) grad_sample: per-sample clipping then fails.
    Freeze them (as here: everything below the top is frozen) or pass position_ids expanded to (B, T).
    """
    from opacus import GradSampleModule

    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=32, return_tensors="pt")
    wrapped = GradSampleModule(model)
    model.train()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            logits = wrapped(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            logits.sum().backward()
        found = {name.removeprefix("_module."): tuple(p.grad_sample.shape) for name, p in wrapped.named_parameters()
                 if p.requires_grad and getattr(p, "grad_sample", None) is not None
                 and p.grad_sample.shape[0] != len(texts)}
    finally:
        wrapped.remove_hooks()
        for p in model.parameters():
            p.grad, p.grad_sample = None, None
        model.eval()
    return found
