"""Frozen-encoder features: run the lower blocks of the encoder once, cache their token vectors (chapter 02).

On two CPU cores the frozen part of a network should run once, not at every training step. `encode_frozen` runs
the embeddings and the lowest `frozen_layers` transformer blocks over the data; `cached_features` stores the
result as safetensors under COURSE_CACHE/features, keyed by everything that changes it (texts, labels, cut,
truncation, batch size, the encoder's and tokenizer's identity). What trains on top is in `topmodel`.
Sizes (layers, width) are read from `encoder.config`, so a compressed encoder works the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import config, store
from .modeling import encoder_identity, inference_batch, load_model, load_tokenizer, pretrained_identity


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

    @property
    def hidden_size(self) -> int:
        return int(self.flat.shape[1])

    def batch(self, idx, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded (B, T, H) float32 hidden states, (B, T) attention mask and (B,) labels for rows `idx`, on
        `device`."""
        idx = [int(i) for i in idx]
        longest = max(int(self.lengths[i]) for i in idx)
        hidden = torch.zeros(len(idx), longest, self.hidden_size)
        mask = torch.zeros(len(idx), longest, dtype=torch.long)
        for row, i in enumerate(idx):
            n = int(self.lengths[i])
            hidden[row, :n] = self.flat[self.offsets[i] : self.offsets[i] + n].float()
            mask[row, :n] = 1
        return hidden.to(device), mask.to(device), self.labels[idx].to(device)

    def subset(self, idx) -> Features:
        """The rows `idx`, in that order."""
        idx = [int(i) for i in idx]
        parts = [self.flat[self.offsets[i] : self.offsets[i + 1]] for i in idx]
        key = store.key("subset", self.key, idx) if self.key else ""
        return Features(torch.cat(parts), self.lengths[idx].clone(), self.labels[idx].clone(), self.frozen_layers, key)

    @staticmethod
    def concat(*parts: Features) -> Features:
        """Rows of every part, one after another."""
        if len({p.frozen_layers for p in parts}) != 1:
            raise ValueError("features were cut at different layers; encode them with the same frozen_layers")
        key = store.key("concat", [p.key for p in parts]) if all(p.key for p in parts) else ""
        return Features(
            torch.cat([p.flat for p in parts]),
            torch.cat([p.lengths for p in parts]),
            torch.cat([p.labels for p in parts]),
            parts[0].frozen_layers,
            key,
        )


def num_layers(encoder) -> int:
    """Transformer blocks in an encoder (from its config: a pruned or distilled encoder has fewer)."""
    return int(encoder.config.num_hidden_layers)


def check_frozen_layers(frozen_layers: int, layers: int) -> int:
    """`frozen_layers` must cut the encoder's `layers` blocks somewhere: 0..layers."""
    if isinstance(frozen_layers, bool) or not isinstance(frozen_layers, int) or not 0 <= frozen_layers <= layers:
        raise ValueError(
            f"frozen_layers must be an integer in 0..{layers} for this {layers}-block encoder, got "
            f"{frozen_layers!r}; use {layers - 1} to train the top block, {layers} for the head alone"
        )
    return frozen_layers


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
def encode_frozen(
    texts: list[str],
    labels,
    frozen_layers: int,
    encoder=None,
    tokenizer=None,
    batch_size: int = 64,
    max_length: int = 64,
    progress: bool = True,
) -> Features:
    """Run the embeddings and the lowest `frozen_layers` blocks of the encoder (default: pretrained) once, in fp32
    on `config.device()` (the encoder is moved there; the features come back to the CPU). `batch_size` is what
    the cache key records; on a GPU the work goes in batches of at least 512 (same vectors, faster)."""
    if len(texts) == 0 or len(texts) != len(labels):
        raise ValueError(
            f"need as many labels as texts (and at least one), got {len(texts)} texts and {len(labels)} labels"
        )
    tokenizer = tokenizer or load_tokenizer()
    encoder = encoder or load_model().bert
    frozen_layers = check_frozen_layers(frozen_layers, num_layers(encoder))
    where = config.device()
    encoder.to(where).eval()
    step = max(batch_size, inference_batch(where))
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: little padding
    rows: list[torch.Tensor | None] = [None] * len(texts)
    for start in tqdm(
        range(0, len(order), step), desc=f"encode (frozen blocks 1-{frozen_layers})", disable=not progress, leave=False
    ):
        idx = order[start : start + step]
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        ).to(where)
        hidden = encoder.embeddings(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"))
        hidden = run_blocks(encoder.encoder.layer[:frozen_layers], hidden, enc["attention_mask"])
        for row, i in enumerate(idx):
            rows[i] = hidden[row, : lengths[i]].to(torch.float16).cpu()
    return Features(
        torch.cat(rows), torch.as_tensor(lengths), torch.tensor(np.array(labels), dtype=torch.long), frozen_layers
    )


def tokenizer_identity(tokenizer=None) -> str:
    """What identifies a tokenizer in cache keys: the pretrained model's for None, else its vocabulary and casing."""
    if tokenizer is None:
        return pretrained_identity()
    return store.key(type(tokenizer).__name__, tokenizer.get_vocab(), getattr(tokenizer, "do_lower_case", None))


def features_key(
    texts: list[str],
    labels,
    frozen_layers: int,
    encoder=None,
    tokenizer=None,
    batch_size: int = 64,
    max_length: int = 64,
) -> str:
    """Cache key of encoded features: every argument of `encode_frozen` except the progress bar."""
    return store.key(
        "features",
        list(texts),
        np.asarray(labels),
        frozen_layers,
        encoder_identity(encoder),
        tokenizer_identity(tokenizer),
        batch_size,
        max_length,
    )


def cached_features(
    frame: pd.DataFrame,
    frozen_layers: int,
    encoder=None,
    tokenizer=None,
    batch_size: int = 64,
    max_length: int = 64,
    progress: bool = True,
) -> Features:
    """`encode_frozen` on a frame (text, label), cached in COURSE_CACHE/features as safetensors."""
    texts, labels = frame["text"].tolist(), frame["label"].to_numpy()
    key = features_key(texts, labels, frozen_layers, encoder, tokenizer, batch_size, max_length)
    path = store.path("features", f"{key}.safetensors")
    if path.exists():
        stored = load_file(path)
        return Features(stored["flat"], stored["lengths"], stored["labels"], frozen_layers, key)
    feats = encode_frozen(texts, labels, frozen_layers, encoder, tokenizer, batch_size, max_length, progress)
    feats.key = key
    with store.atomic_file(path) as tmp:
        save_file({"flat": feats.flat, "lengths": feats.lengths, "labels": feats.labels}, tmp)
    return feats
