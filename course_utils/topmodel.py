"""The classifier that trains on cached frozen features: the encoder's top blocks, pooling and a head (chapter 02).

`TopClassifier.from_pretrained(frozen_layers)` copies the blocks above the cut (their number and width read from
`encoder.config`), pools the real tokens by their mean and adds a linear head; `frozen_layers` equal to the
encoder's depth leaves the head alone (a linear probe). With `lora_rank` > 0 the copied blocks stay frozen and only
peft's LoRA adapters on their attention query and value, and the head, train.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from peft import LoraConfig, inject_adapter_in_model

from .frozen import Features, check_frozen_layers, num_layers, run_blocks
from .modeling import load_model, model_device


def check_lora_rank(lora_rank: int) -> int:
    """LoRA's rank: a non-negative integer (0 trains the copied blocks fully)."""
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
        raise ValueError(f"lora_rank must be a non-negative integer, got {lora_rank!r}; 0 trains the blocks fully")
    return lora_rank


class TopClassifier(torch.nn.Module):
    """The encoder's top blocks (a copy, trainable), mean pooling over real tokens, dropout, a linear head."""

    def __init__(self, blocks, hidden: int, num_labels: int = 2, dropout: float = 0.1):
        super().__init__()
        self.blocks = torch.nn.ModuleList(blocks)
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(hidden, num_labels)

    @classmethod
    def from_pretrained(
        cls, frozen_layers: int, encoder=None, seed: int = 0, lora_rank: int = 0, **kwargs
    ) -> TopClassifier:
        """Copy the encoder's blocks above `frozen_layers` (default: the pretrained encoder); the head is new,
        seeded by `seed`.

        lora_rank > 0 freezes the copied blocks and adds peft LoRA adapters (rank r, alpha 2r) to their attention
        query and value projections; the adapters and the head are then the only trainable parameters.
        """
        encoder = encoder or load_model().bert
        layers = num_layers(encoder)
        frozen_layers = check_frozen_layers(frozen_layers, layers)
        if check_lora_rank(lora_rank) and frozen_layers == layers:
            raise ValueError(
                f"lora_rank needs at least one block on top to adapt; use frozen_layers={layers - 1} with LoRA"
            )
        torch.manual_seed(seed)
        model = cls(
            [copy.deepcopy(b) for b in encoder.encoder.layer[frozen_layers:]],
            hidden=int(encoder.config.hidden_size),
            **kwargs,
        )
        if lora_rank:
            model.blocks.requires_grad_(False)
            lora = LoraConfig(
                r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=["query", "value"]
            )
            model.blocks = inject_adapter_in_model(lora, model.blocks)  # adapters are created trainable
        return model

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = run_blocks(self.blocks, hidden, mask)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
        return self.classifier(self.dropout(pooled))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, feats: Features, batch_size: int = 256) -> np.ndarray:
    """(N, C) logits in the rows' order, computed on the model's device (batches sorted by length for speed)."""
    where = model_device(model)
    was_training = model.training
    model.eval()
    order = np.argsort(feats.lengths.numpy(), kind="stable")
    out = np.zeros((len(feats), model.classifier.out_features), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        hidden, mask, _ = feats.batch(idx, where)
        out[idx] = model(hidden, mask).float().cpu().numpy()
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
