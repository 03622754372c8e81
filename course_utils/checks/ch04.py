"""Self-checks of chapter 04's exercises (compression)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.utils import prune

from ..distillation import distillation_loss
from ._common import Question, _call, _passed

__all__ = ["QUESTIONS", "check_per_channel_int8", "check_global_magnitude_masks", "check_distillation_loss"]

ONE_SCALE = "one scale for the whole matrix is per-tensor quantization; give each output row (channel) its own scale"
SCALE_128 = "the largest |w| of a row must map to 127, the largest int8 value used symmetrically: scale = max|w| / 127"
TRUNCATED = "round to the nearest integer (torch.round), do not truncate toward zero"
PER_LAYER = "you pruned each matrix to the sparsity on its own; rank all the matrices' weights together (global)"
LARGEST = "you zeroed the LARGEST weights; magnitude pruning removes the smallest |w|"
KEEP_SHARE = "sparsity is the share of weights set to ZERO, not the share kept"
NO_T_SQUARED = "multiply the soft (KL) term by T^2, or its gradients shrink as 1/T^2 when T grows"
REVERSED_KL = "KL(teacher || student): the teacher's probabilities weight the log-ratio, not the student's"
UNSOFTENED = "divide the teacher's logits by T too: both distributions are softened"
IGNORED_UNLABELLED = "sentences with label -1 have no label: leave them out of the cross-entropy, keep their soft term"


def _refuse(exercise: str, got: torch.Tensor, mistakes: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    """Raise the message of the first typical wrong answer that `got` equals."""
    for message, wrong in mistakes.items():
        if got.shape == wrong.shape and torch.allclose(got.double(), wrong.double(), atol=atol):
            raise AssertionError(f"Exercise {exercise}: {message}")


def per_channel_reference(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: scale_i = max_j |w_ij| / 127, q = round(w / scale) clamped to [-127, 127]."""
    scale = weight.abs().amax(dim=1) / 127
    q = torch.clamp(torch.round(weight / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


def check_per_channel_int8(fn: Callable) -> None:
    """Exercise 4.1: (q int8 (rows, cols), scale (rows,)) of symmetric per-row quantization."""
    gen = torch.Generator().manual_seed(0)
    for rows, cols in [(4, 8), (16, 384), (1, 5)]:
        weight = torch.randn(rows, cols, generator=gen) * torch.linspace(0.1, 3, rows)[:, None]
        expected_q, expected_scale = per_channel_reference(weight)
        out = _call("4.1", fn, weight.clone())
        assert isinstance(out, tuple) and len(out) == 2, "Exercise 4.1: return a pair (q, scale)"
        q, scale = torch.as_tensor(out[0]), torch.as_tensor(out[1], dtype=torch.float64).reshape(-1)
        assert q.shape == weight.shape, f"Exercise 4.1: q must have the weight's shape {tuple(weight.shape)}"
        assert q.dtype == torch.int8, f"Exercise 4.1: q must be torch.int8, got {q.dtype}"
        if rows > 1 and scale.numel() == 1:
            raise AssertionError(f"Exercise 4.1: {ONE_SCALE}")
        assert scale.shape == (rows,), f"Exercise 4.1: one scale per row: shape ({rows},), got {tuple(scale.shape)}"
        _refuse("4.1", scale, {SCALE_128: weight.abs().amax(dim=1).double() / 128}, atol=1e-9)
        truncated = torch.clamp(torch.trunc(weight / expected_scale[:, None]), -127, 127).to(torch.int8)
        if not torch.equal(q, expected_q) and torch.equal(q, truncated):
            raise AssertionError(f"Exercise 4.1: {TRUNCATED}")
        assert torch.allclose(scale, expected_scale.double(), rtol=1e-5), "Exercise 4.1: scale = max|row| / 127"
        mismatched = int((q != expected_q).sum())
        assert mismatched == 0, f"Exercise 4.1: {mismatched} int8 values differ; q = round(w / scale of its row)"
    _passed("4.1", 3)


def global_masks_reference(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """torch.nn.utils.prune's global L1 masks (1 keeps, 0 prunes) for the given tensors."""
    layers = [torch.nn.Linear(w.shape[1], w.shape[0], bias=False) for w in weights]
    for layer, weight in zip(layers, weights, strict=True):
        layer.weight.data.copy_(weight)
    prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=sparsity)
    return [layer.weight_mask.detach().clone() for layer in layers]


def check_global_magnitude_masks(fn: Callable) -> None:
    """Exercise 4.2: masks zeroing the `sparsity` share of smallest |w| ranked over ALL matrices together."""
    gen = torch.Generator().manual_seed(1)
    cases = [
        ([torch.randn(6, 5, generator=gen) * 0.1, torch.randn(4, 5, generator=gen) * 2], 0.5),
        ([torch.randn(8, 8, generator=gen), torch.randn(3, 8, generator=gen) * 0.01], 0.3),
        ([torch.randn(10, 4, generator=gen)], 0.7),
    ]
    for weights, sparsity in cases:
        expected = global_masks_reference(weights, sparsity)
        got = _call("4.2", fn, [w.clone() for w in weights], sparsity)
        assert isinstance(got, (list, tuple)) and len(got) == len(weights), (
            f"Exercise 4.2: return one mask per matrix ({len(weights)}), got {type(got).__name__}"
        )
        got = [torch.as_tensor(m).float() for m in got]
        assert all(m.shape == w.shape for m, w in zip(got, weights, strict=True)), (
            "Exercise 4.2: each mask has its matrix's shape"
        )
        flat = torch.cat([m.flatten() for m in got])
        if len(weights) > 1:
            per_layer = []
            for w in weights:
                k = round(sparsity * w.numel())
                mask = torch.ones(w.numel())
                mask[w.abs().flatten().argsort()[:k]] = 0
                per_layer.append(mask)
            _refuse("4.2", flat, {PER_LAYER: torch.cat(per_layer)})
        everything = torch.cat([w.abs().flatten() for w in weights])
        k = round(sparsity * everything.numel())
        largest = torch.ones_like(everything)
        largest[everything.argsort(descending=True)[:k]] = 0
        kept_share = torch.ones_like(everything)
        kept_share[everything.argsort()[: everything.numel() - k]] = 0
        _refuse("4.2", flat, {LARGEST: largest, **({KEEP_SHARE: kept_share} if sparsity != 0.5 else {})})
        wrong = int((flat != torch.cat([m.flatten() for m in expected])).sum())
        assert wrong == 0, f"Exercise 4.2: {wrong} mask entries differ from torch.nn.utils.prune.global_unstructured"
    _passed("4.2", len(cases))


def check_distillation_loss(fn: Callable) -> None:
    """Exercise 4.3: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE on the labelled rows."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(2)
    for temperature, alpha, unlabelled in [(2.0, 0.5, 0), (4.0, 0.7, 2), (1.0, 1.0, 0)]:
        student, teacher = torch.randn(6, 3, generator=gen), 3 * torch.randn(6, 3, generator=gen)
        labels = torch.randint(0, 3, (6,), generator=gen)
        labels[:unlabelled] = -1
        expected = distillation_loss(student, teacher, labels, temperature, alpha)
        got = torch.as_tensor(_call("4.3", fn, student.clone(), teacher.clone(), labels.clone(), temperature, alpha))
        assert got.numel() == 1, f"Exercise 4.3: return one number (a 0-d tensor), got shape {tuple(got.shape)}"
        got = got.reshape(())
        log_s, log_t = F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1)
        known = labels >= 0
        hard = F.cross_entropy(student[known], labels[known])
        kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
        mistakes = {
            REVERSED_KL: alpha * (log_s.exp() * (log_s - log_t)).sum(-1).mean() * temperature**2 + (1 - alpha) * hard
        }
        if temperature != 1:  # at T = 1 these mistakes give the right number
            mistakes[NO_T_SQUARED] = alpha * kl + (1 - alpha) * hard
            mistakes[UNSOFTENED] = (
                alpha * (F.softmax(teacher, -1) * (F.log_softmax(teacher, -1) - log_s)).sum(-1).mean() * temperature**2
                + (1 - alpha) * hard
            )
        _refuse("4.3", got.detach(), mistakes)
        assert torch.isfinite(got), f"Exercise 4.3: got {float(got)}; {IGNORED_UNLABELLED}"
        assert torch.allclose(got.double(), expected.double(), atol=1e-5), (
            f"Exercise 4.3: T={temperature}, alpha={alpha}: got {float(got):.5f}, expected {float(expected):.5f}"
            + (f"; {IGNORED_UNLABELLED}" if unlabelled else "")
        )
    _passed("4.3", 3)


QUESTIONS = {
    "4.4": Question(
        "Half of the encoder's weights were set to zero by magnitude pruning and the model was saved with "
        "save_pretrained. What happens to its file size and its CPU latency?",
        {
            "a": "both halve: half of the weights are gone",
            "b": "both stay about the same: the zeros are still stored and still multiplied by dense kernels",
            "c": "the file halves, the latency stays",
        },
        "b",
        {
            "a": "zeros are values like any other in a dense tensor: nothing is removed from the file or the kernel.",
            "b": "only sparse formats and kernels (or structured pruning, which removes whole rows) turn zeros into "
            "savings.",
            "c": "safetensors stores a dense tensor in full, zeros included.",
        },
    ),
    "4.5": Question(
        "PyTorch's dynamic int8 (nn.Linear only) left MiniLM at about 0.65x its fp32 size, while ONNX Runtime's "
        "dynamic int8 reached about 0.26x. Why?",
        {
            "a": "ONNX files are compressed",
            "b": "ONNX Runtime also quantizes the token-embedding table (a Gather), which is half of MiniLM's "
            "parameters; torch.ao's dynamic quantization leaves it in fp32",
            "c": "ONNX Runtime uses 4-bit weights",
        },
        "b",
        {
            "a": "ONNX files are not compressed; the bytes are the weights.",
            "b": "the 30,522 x 384 embedding table is 11.7 M of 22.7 M parameters: what is quantized matters as much "
            "as how.",
            "c": "both use 8-bit weights here.",
        },
    ),
}
