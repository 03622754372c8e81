"""Compression measured side by side: pruning, quantization, ONNX Runtime, vocabulary trimming (chapter 04).

Every variant of chapter 00's classifier becomes a *runner* (`TorchRunner` for a torch module, `OrtRunner` for an
ONNX file) that maps token ids and an attention mask to logits; `measure` reports, for any runner, parameters,
non-zero parameters, bytes on disk, memory, CPU latency at batch 1 and 32 and accuracy, macro F1 and agreement with
the fp32 teacher on the same test split. Distillation and parameter-efficient tuning live in `distillation.py`.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript  # noqa: F401  torch.onnx's dynamo exporter needs it: missing, fail at import, not mid-export
import pandas as pd
import psutil
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from safetensors.torch import save_file
from torch.nn.utils import prune
from transformers.pytorch_utils import prune_linear_layer

from . import config, modeling, store
from .evaluation import classification_metrics

EXPORT_TOLERANCE = 1e-3  # max |logit difference| an fp32 export may show against PyTorch before it is refused
QUANTIZED_TOLERANCE = 1.0  # the same for int8 files: rounding moves logits, a broken graph moves them much more
ORT_ENGINES = ("CPUExecutionProvider",)


# ---------------------------------------------------------------- one interface for every variant


class Classifier(torch.nn.Module):
    """A sequence classifier as a plain function of (input_ids (B, T), attention_mask (B, T)) -> logits (B, C).

    `remap` (V,) maps the tokenizer's ids to a trimmed vocabulary's rows (see `trim_vocabulary`).
    """

    def __init__(self, model: torch.nn.Module, remap: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.register_buffer("remap", remap, persistent=remap is not None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.remap is not None:
            input_ids = self.remap[input_ids]
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class TorchRunner:
    """Runs a torch classifier on the CPU without gradients (the chapter measures CPU latency; the module is moved
    there); logits come back as float32 numpy."""

    kind = "torch"

    def __init__(self, model: torch.nn.Module, remap: torch.Tensor | None = None):
        self.module = model if isinstance(model, Classifier) else Classifier(model, remap)
        self.module.cpu().eval()

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        where = _module_device(self.module)
        with torch.inference_mode():
            out = self.module(torch.as_tensor(input_ids).to(where), torch.as_tensor(attention_mask).to(where))
        return out.float().cpu().numpy()


class OrtRunner:
    """Runs an ONNX file in ONNX Runtime's CPU engine with a fixed thread count."""

    kind = "onnx"

    def __init__(self, path: Path, threads: int | None = None, engine: str = "CPUExecutionProvider"):
        if engine not in ort.get_available_providers():
            raise ValueError(
                f"ONNX Runtime engine {engine!r} is not available here; use one of {ort.get_available_providers()}"
            )
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or config.thread_count()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
        self.session = ort.InferenceSession(str(self.path), options, providers=[engine])

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": np.asarray(input_ids, np.int64), "attention_mask": np.asarray(attention_mask, np.int64)}
        return self.session.run(["logits"], feed)[0].astype(np.float32)


def _module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (quantized modules have no parameters)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


# ---------------------------------------------------------------- measurement


def encode(tokenizer, texts: list[str], max_length: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask (B, T), padded to the longest sentence, as int64 numpy arrays."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def predict_logits(runner, tokenizer, texts: list[str], max_length: int = 64, batch_size: int = 64) -> np.ndarray:
    """Logits (N, C) from any runner, in batches sorted by length, returned in the texts' order."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        out.append(runner.logits(*encode(tokenizer, [texts[i] for i in idx], max_length)))
    result = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
    result[order] = np.concatenate(out)
    return result


def predict_proba(runner, tokenizer, texts: list[str], max_length: int = 64, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, C) from any runner (a softmax of `predict_logits`)."""
    logits = predict_logits(runner, tokenizer, texts, max_length, batch_size)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class LatencyInputs:
    """The fixed inputs every variant is timed on: one sentence of median length, and 32 sentences."""

    one: tuple[np.ndarray, np.ndarray]
    batch: tuple[np.ndarray, np.ndarray]


def latency_inputs(tokenizer, frame: pd.DataFrame, max_length: int = 64, batch: int = 32) -> LatencyInputs:
    """Batch 1: the test sentence of median token length; batch 32: the first 32 test sentences."""
    texts = frame["text"].tolist()
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    median = int(np.argsort(lengths, kind="stable")[len(lengths) // 2])
    return LatencyInputs(encode(tokenizer, [texts[median]], max_length), encode(tokenizer, texts[:batch], max_length))


def time_runner(runner, inputs: tuple[np.ndarray, np.ndarray], repeats: int, warmup: int = 5) -> tuple[float, float]:
    """Median and 95th-percentile milliseconds of `repeats` calls after `warmup` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        runner.logits(*inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.logits(*inputs)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95))


def peak_extra_memory(call: Callable[[], object], every: float = 0.002) -> float:
    """MB the process's resident memory rose above its starting level while `call()` ran (sampled every 2 ms)."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(every)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        call()
    finally:
        done.set()
        watcher.join()
    return max(0, max(peak[0], process.memory_info().rss) - start) / 2**20


def weight_tensors(runner) -> list[np.ndarray | torch.Tensor]:
    """The stored weights of a variant: the module's state tensors (int8 ones as stored) or the ONNX initializers."""
    if runner.kind == "onnx":
        model = onnx.load(str(runner.path))
        return [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]
    tensors = []
    for value in runner.module.state_dict().values():
        parts = value if isinstance(value, tuple) else (value,)
        for part in parts:
            if isinstance(part, torch.Tensor):
                tensors.append(part.int_repr() if part.is_quantized else part)
    return tensors


def count_weights(runner) -> tuple[int, int, int]:
    """Parameters, non-zero parameters and bytes in memory of a variant's weights (buffers of ids excluded)."""
    total = nonzero = nbytes = 0
    for tensor in weight_tensors(runner):
        if tensor.dtype in (torch.int64, np.int64):
            continue  # position ids and vocabulary maps, not weights
        total += int(tensor.numel() if isinstance(tensor, torch.Tensor) else tensor.size)
        nonzero += int((tensor != 0).sum())
        nbytes += int(tensor.nbytes)
    return total, nonzero, nbytes


def save_torch_weights(module: torch.nn.Module, target: Path) -> Path:
    """Write a module's weights as safetensors (an int8 layer as its int8 matrix, scales and zero points)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in module.state_dict().items():
        parts = value if isinstance(value, tuple) else (value,)
        for i, part in enumerate(parts):
            if not isinstance(part, torch.Tensor):
                continue
            key = name if len(parts) == 1 else f"{name}.{i}"
            if part.is_quantized:
                tensors[f"{key}.int8"] = part.int_repr()
                scales = part.q_per_channel_scales() if part.qscheme() == torch.per_channel_affine else None
                tensors[f"{key}.scale"] = scales if scales is not None else torch.tensor([part.q_scale()])
            else:
                tensors[key] = part
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with store.atomic_file(Path(target)) as tmp:
        save_file(tensors, tmp)
    return Path(target)


def file_bytes(path: Path) -> int:
    """Bytes of a weights file, with an ONNX file's external data if it has any."""
    path = Path(path)
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def measure(
    name: str,
    runner,
    tokenizer,
    frame: pd.DataFrame,
    teacher_preds: np.ndarray | None,
    inputs: LatencyInputs,
    file: Path | None = None,
    repeats: tuple[int, int] = (50, 10),
    max_length: int = 64,
) -> dict:
    """One row of the chapter's tables: size, memory, latency (median, p95) at batch 1 and 32, accuracy, macro F1
    and agreement with the teacher's predictions on `frame`, with the thread count it ran on."""
    if file is None and runner.kind == "torch":
        file = save_torch_weights(runner.module, store.path("compression", "weights") / f"{store.key(name)}.st")
    params, nonzero, weight_bytes = count_weights(runner)
    activation_mb = peak_extra_memory(lambda: runner.logits(*inputs.batch))
    b1 = time_runner(runner, inputs.one, repeats[0])
    b32 = time_runner(runner, inputs.batch, repeats[1])
    probs = predict_proba(runner, tokenizer, frame["text"].tolist(), max_length)
    result = classification_metrics(frame["label"].to_numpy(), probs)
    agreement = float((result.preds == teacher_preds).mean()) if teacher_preds is not None else 1.0
    return {
        "variant": name,
        "engine": runner.kind,
        "params": params,
        "nonzero": nonzero,
        "mb": round(file_bytes(file) / 1e6, 2) if file else round(weight_bytes / 1e6, 2),
        "peak_mb": round(weight_bytes / 2**20 + activation_mb, 1),
        "b1_ms": round(b1[0], 2),
        "b1_p95_ms": round(b1[1], 2),
        "b32_ms": round(b32[0], 1),
        "b32_p95_ms": round(b32[1], 1),
        "accuracy": round(result.accuracy, 4),
        "f1": round(result.f1, 4),
        "agreement": round(agreement, 4),
        "threads": torch.get_num_threads()
        if runner.kind == "torch"
        else runner.session.get_session_options().intra_op_num_threads,
    }


def add_ratios(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Size and latency as multiples of the reference row, accuracy as points of difference."""
    if reference not in set(table["variant"]):
        raise ValueError(f"reference {reference!r} is not a row; rows are {table['variant'].tolist()}")
    ref = table.set_index("variant").loc[reference]
    return table.assign(
        size_x=(table["mb"] / ref["mb"]).round(3),
        b1_x=(table["b1_ms"] / ref["b1_ms"]).round(3),
        b32_x=(table["b32_ms"] / ref["b32_ms"]).round(3),
        acc_drop_pts=((ref["accuracy"] - table["accuracy"]) * 100).round(2),
    )


def pareto_front(table: pd.DataFrame, cost: str, gain: str = "accuracy") -> pd.Series:
    """True for rows no other row beats on both: at most the cost and at least the gain, better on one."""
    costs, gains = table[cost].to_numpy(), table[gain].to_numpy()
    dominated = [
        bool(np.any((costs <= c) & (gains >= g) & ((costs < c) | (gains > g))))
        for c, g in zip(costs, gains, strict=True)
    ]
    return pd.Series(~np.array(dominated), index=table.index)


# ---------------------------------------------------------------- unstructured pruning


def encoder_linears(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(module, 'weight') for every linear layer of the encoder blocks: what global magnitude pruning ranks."""
    base = getattr(model, "bert", model)
    return [(m, "weight") for m in base.encoder.modules() if isinstance(m, torch.nn.Linear)]


def check_sparsity(sparsity: float) -> float:
    """A sparsity in [0, 1) or a one-line error."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}; 0.5 zeroes half of the encoder's weights")
    return float(sparsity)


def magnitude_prune(model: torch.nn.Module, sparsity: float) -> torch.nn.Module:
    """A copy with the `sparsity` share of smallest-magnitude encoder weights zeroed (torch.nn.utils.prune,
    global ranking; the masks stay attached, so recovery training keeps the zeros)."""
    check_sparsity(sparsity)
    pruned = copy.deepcopy(model)
    if sparsity > 0:
        prune.global_unstructured(encoder_linears(pruned), pruning_method=prune.L1Unstructured, amount=sparsity)
    return pruned


def make_pruning_permanent(model: torch.nn.Module) -> torch.nn.Module:
    """Fold the masks into the weights (prune.remove): plain tensors with zeros, ready to save or export."""
    for module, name in encoder_linears(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)
    return model


def encoder_sparsity(model: torch.nn.Module) -> float:
    """The share of zeros among the encoder's linear weights."""
    weights = [getattr(m, n) for m, n in encoder_linears(model)]
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


# ---------------------------------------------------------------- structured pruning (heads, FFN neurons)


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a BERT-style classifier."""
    return getattr(model, "bert", model).encoder.layer


def gate_importance(
    model: torch.nn.Module, tokenizer, frame: pd.DataFrame, unit: str, batch_size: int = 32, max_length: int = 64
) -> list[torch.Tensor]:
    """Per-block importance of attention heads or FFN neurons (Michel et al. 2019): |dLoss/dgate| of a gate of ones
    multiplied into each head's output or each neuron's activation, summed over the batches of the labelled `frame`
    (Michel et al. take it per example; per batch of 32 is cheaper and ranks alike)."""
    if unit not in ("heads", "neurons"):
        raise ValueError(f"unit must be 'heads' or 'neurons', got {unit!r}")
    where = modeling.model_device(model)
    gates, hooks = [], []
    for block in blocks(model):
        if unit == "heads":
            target, size = block.attention.self, block.attention.self.query.out_features
            width = block.attention.self.attention_head_size
            gate = torch.ones(size // width, device=where, requires_grad=True)
            hook = target.register_forward_hook(
                lambda _m, _i, out, g=gate, w=width: (
                    (out[0].unflatten(-1, (-1, w)) * g[:, None]).flatten(-2),
                    *out[1:],
                )
            )
        else:
            target = block.intermediate
            gate = torch.ones(target.dense.out_features, device=where, requires_grad=True)
            hook = target.register_forward_hook(lambda _m, _i, out, g=gate: out * g)
        gates.append(gate)
        hooks.append(hook)
    was_training = model.training
    model.eval()
    totals = [torch.zeros_like(gate) for gate in gates]
    try:
        for batch in modeling.batches(frame, tokenizer, batch_size, max_length, device=where):
            grads = torch.autograd.grad(model(**batch).loss, gates)
            for total, grad in zip(totals, grads, strict=True):
                total += grad.abs()  # |dL/dgate| per batch, then summed: opposite signs must not cancel
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [total.detach().cpu() for total in totals]


def heads_to_keep(importance: list[torch.Tensor], keep: int) -> dict[int, list[int]]:
    """The `keep` most important heads over all blocks (at least one per block), as {block: sorted head ids}."""
    total = sum(len(s) for s in importance)
    if not len(importance) <= keep <= total:
        raise ValueError(f"keep must be between {len(importance)} (one head per block) and {total}, got {keep}")
    chosen = {layer: {int(scores.argmax())} for layer, scores in enumerate(importance)}
    ranked = sorted(((float(s), layer, h) for layer, scores in enumerate(importance) for h, s in enumerate(scores)))
    for _, layer, head in reversed(ranked):
        if sum(len(v) for v in chosen.values()) >= keep:
            break
        chosen[layer].add(head)
    return {layer: sorted(heads) for layer, heads in chosen.items()}


def prune_heads(model: torch.nn.Module, keep: dict[int, list[int]]) -> torch.nn.Module:
    """A copy whose blocks keep only the listed heads: query/key/value rows and output columns are cut, so the
    matrices really shrink (BERT's attention infers the head count from the weights' shape)."""
    pruned = copy.deepcopy(model)
    for layer, heads in keep.items():
        attention = blocks(pruned)[layer].attention
        width = attention.self.attention_head_size
        index = torch.cat([torch.arange(h * width, (h + 1) * width) for h in heads])
        for name in ("query", "key", "value"):
            setattr(attention.self, name, prune_linear_layer(getattr(attention.self, name), index, dim=0))
        attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
        attention.self.num_attention_heads = len(heads)
        attention.self.all_head_size = len(heads) * width
    return pruned


def neurons_to_keep(importance: list[torch.Tensor], fraction: float) -> dict[int, list[int]]:
    """The `fraction` most important FFN neurons of each block, as {block: sorted neuron ids}."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}; 0.5 keeps half of each block's neurons")
    return {
        layer: sorted(scores.topk(max(1, round(fraction * len(scores)))).indices.tolist())
        for layer, scores in enumerate(importance)
    }


def prune_neurons(model: torch.nn.Module, keep: dict[int, list[int]]) -> torch.nn.Module:
    """A copy whose feed-forward layers keep only the listed neurons (a narrower model)."""
    pruned = copy.deepcopy(model)
    for layer, neurons in keep.items():
        block = blocks(pruned)[layer]
        index = torch.as_tensor(neurons, dtype=torch.long)
        block.intermediate.dense = prune_linear_layer(block.intermediate.dense, index, dim=0)
        block.output.dense = prune_linear_layer(block.output.dense, index, dim=1)
    return pruned


def structure(model: torch.nn.Module) -> list[dict[str, int]]:
    """Heads and FFN neurons of each block: what a pruned model needs to be rebuilt before its weights load."""
    return [
        {
            "heads": b.attention.self.query.out_features // b.attention.self.attention_head_size,
            "neurons": b.intermediate.dense.out_features,
        }
        for b in blocks(model)
    ]


# ---------------------------------------------------------------- quantization


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with every nn.Linear in int8 (weights per tensor, activations quantized per batch at run time).

    This is `torch.ao.quantization.quantize_dynamic` (FBGEMM kernels). PyTorch marks torch.ao deprecated in
    favour of torchao, whose int8 path targets GPUs and torch.compile (in a trial on the course's 2-core CPU it did
    not speed this model up in eager mode), so the course keeps the torch.ao call while it exists, silences its
    deprecation notices here (they are about the future, not this result) and teaches ONNX Runtime as the
    maintained CPU int8 path.
    """
    if (
        "fbgemm" not in torch.backends.quantized.supported_engines
        and "x86" not in torch.backends.quantized.supported_engines
    ):
        raise ValueError(
            f"this torch has no x86 int8 engine (has {torch.backends.quantized.supported_engines}); "
            "use ONNX Runtime int8 (quantize_onnx) instead"
        )
    source = copy.deepcopy(model).float().cpu().eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
        return torch.ao.quantization.quantize_dynamic(source, {torch.nn.Linear}, dtype=torch.qint8)


def linear_share(model: torch.nn.Module) -> pd.DataFrame:
    """Parameters by kind of layer: what int8 Linear quantization touches and what stays fp32."""
    rows: dict[str, int] = {}
    for name, param in model.named_parameters():
        if "word_embeddings" in name:
            kind = "token embeddings (stay fp32)"
        elif "embeddings" in name:
            kind = "position/type embeddings (stay fp32)"
        elif "LayerNorm" in name:
            kind = "layer norms (stay fp32)"
        elif name.endswith("bias"):
            kind = "biases (stay fp32)"
        else:
            kind = "linear weights (int8)"
        rows[kind] = rows.get(kind, 0) + param.numel()
    table = pd.Series(rows, name="params").to_frame()
    return table.assign(share=(table["params"] / table["params"].sum()).round(3))


def corpus_vocabulary(tokenizer, texts: list[str]) -> torch.Tensor:
    """The token ids the texts use, plus the tokenizer's special tokens, sorted."""
    used = {i for ids in tokenizer(list(texts), truncation=False)["input_ids"] for i in ids}
    used.update(tokenizer.all_special_ids)
    return torch.tensor(sorted(used), dtype=torch.long)


def trim_vocabulary(model: torch.nn.Module, keep: torch.Tensor, unk_id: int) -> Classifier:
    """A copy whose token-embedding table holds only the `keep` rows, behind a map from old ids to new ones;
    any other id reads the [UNK] row (so a word the corpus never used loses its own embedding)."""
    if unk_id not in set(keep.tolist()):
        raise ValueError(f"the kept vocabulary must contain the [UNK] id {unk_id}; add tokenizer.unk_token_id")
    trimmed = copy.deepcopy(model)
    old = trimmed.get_input_embeddings()
    new = torch.nn.Embedding(len(keep), old.embedding_dim, padding_idx=None)
    new.weight.data.copy_(old.weight.data[keep])
    trimmed.set_input_embeddings(new)
    remap = torch.full((old.num_embeddings,), int((keep == unk_id).nonzero()), dtype=torch.long)
    remap[keep] = torch.arange(len(keep))
    return Classifier(trimmed, remap)


def export_onnx(
    model: torch.nn.Module, target: Path, sample: tuple[np.ndarray, np.ndarray], tolerance: float = EXPORT_TOLERANCE
) -> Path:
    """Export a classifier to ONNX (torch.onnx's dynamo exporter, one file, dynamic batch and length), then check
    ONNX Runtime's logits against PyTorch's on `sample`; a difference above `tolerance` is refused."""
    module = (model if isinstance(model, Classifier) else Classifier(model)).float().cpu().eval()
    ids, mask = (torch.as_tensor(a) for a in sample)
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2, max=512)
    target = Path(target)
    with store.atomic_file(target) as tmp, _quiet_export():
        program = torch.onnx.export(
            module,
            (ids, mask),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        program.save(str(tmp), external_data=False)
    check_export(TorchRunner(module), OrtRunner(target), sample, tolerance)
    return target


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Hide the exporter's and quantizer's progress chatter (torchvision ops it skips, axis renames, a suggestion to
    pre-process): the chapter checks every exported file's outputs instead."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=FutureWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def check_export(reference, runner, sample: tuple[np.ndarray, np.ndarray], tolerance: float) -> float:
    """The largest |logit difference| between two runners on `sample`; above `tolerance` a one-line error."""
    diff = float(np.abs(reference.logits(*sample) - runner.logits(*sample)).max())
    if not diff <= tolerance:
        raise ValueError(
            f"{getattr(runner, 'path', 'the exported model')} differs from PyTorch by {diff:.3g} > {tolerance:g}; "
            "export the model in eval mode and fp32, or check the opset and dynamic axes"
        )
    return diff


class _Calibration(CalibrationDataReader):
    """Feeds calibration batches to ONNX Runtime's static quantizer."""

    def __init__(self, batches: list[tuple[np.ndarray, np.ndarray]]):
        self.feeds = iter([{"input_ids": ids, "attention_mask": mask} for ids, mask in batches])

    def get_next(self):
        return next(self.feeds, None)


def quantize_onnx(
    source: Path, target: Path, mode: str = "dynamic", calibration: list[tuple[np.ndarray, np.ndarray]] | None = None
) -> Path:
    """Int8 ONNX: 'dynamic' (int8 weights, activation ranges found per batch at run time; matrix multiplies and the
    embedding gather) or 'static' (activation ranges fixed from `calibration` batches, QDQ format)."""
    if mode not in ("dynamic", "static"):
        raise ValueError(f"mode must be 'dynamic' or 'static', got {mode!r}")
    if mode == "static" and not calibration:
        raise ValueError("static quantization needs calibration batches: pass calibration=[(input_ids, mask), ...]")
    target = Path(target)
    with store.atomic_file(target) as tmp, _quiet_export():
        if mode == "dynamic":
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
        else:
            quantize_static(
                str(source),
                str(tmp),
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
    return target


# ---------------------------------------------------------------- the saved table (chapters 04 and 07)


def table_path() -> Path:
    """Where chapter 04's measured table lives (in the cache, beside the exported files chapter 07 serves)."""
    return store.path("compression", "table.json")


def save_table(table: pd.DataFrame, source: str) -> Path:
    """Replace the rows that notebook `source` measured in the saved table, keeping the other notebooks' rows."""
    if "variant" not in table.columns:
        raise ValueError(f"the table needs a 'variant' column; it has {list(table.columns)}")
    rows = (
        [r for r in json.loads(table_path().read_text()) if r.get("source") != source] if table_path().exists() else []
    )
    fresh = json.loads(table.assign(source=source).to_json(orient="records"))
    store.write_json(table_path(), fresh + rows if source == "04_compression" else rows + fresh)
    return table_path()


def load_table() -> pd.DataFrame:
    """The saved table of every measured variant (run notebooks/04_compression.ipynb first)."""
    if not table_path().exists():
        raise ValueError(f"no compression table at {table_path()}; run notebooks/04_compression.ipynb first")
    return pd.DataFrame(json.loads(table_path().read_text()))
