"""Memorisation in a generative LLM: canaries, exposure, extraction, and LoRA fine-tuning with DP-SGD (chapter 08).

Carlini et al. (2019, "The Secret Sharer") defined exposure for generative models: insert a random secret into the
training text, then rank its likelihood among every secret of the same shape. Exposure = log2(|secrets|) -
log2(rank) (`audit.exposure`, chapter 02): 1/ln 2 = 1.44 bits on average for a secret the model never saw,
log2(10,000) = 13.3 when the true PIN is the most likely of all 10,000. `secret_logprobs` scores the whole space
exactly with one forward pass per digit level over a shared KV cache (1,110 new tokens instead of 10,000
sequences). Fine-tuning trains LoRA adapters (peft); with a finite epsilon Opacus adds Poisson sampling, per-sample
clipping, noise and the accountant, as in chapter 02.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from opacus import PrivacyEngine
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import audit, config, privacy, store
from .llm import EOS_ID, forward_cached, generate_ids
from .modeling import model_device

DIGITS = 4  # a PIN: 10,000 possible secrets
NAMES = ("Alice", "Bruno", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hana", "Ivo", "Jamal", "Kofi", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara")  # fmt: skip
LOOP_VERSION = 2  # bump when the training loop changes what it produces (2: the batch gradient is clipped too)


@dataclass(frozen=True)
class Canary:
    """A secret inserted `copies` times into the training text: "<name>'s PIN is <secret>." (0 copies: a control)."""

    name: str
    secret: str
    copies: int

    def __post_init__(self) -> None:
        if len(self.secret) != DIGITS or not self.secret.isdigit():
            raise ValueError(f"a canary's secret must be {DIGITS} digits like '0427', got {self.secret!r}")
        if isinstance(self.copies, bool) or not isinstance(self.copies, int) or self.copies < 0:
            raise ValueError(f"copies must be a whole number >= 0, got {self.copies!r}")

    @property
    def prefix(self) -> str:
        return f"{self.name}'s PIN is"

    @property
    def text(self) -> str:
        return f"{self.prefix} {self.secret}."


def make_canaries(copies: tuple[int, ...] = (0, 1, 10), per_count: int = 3, seed: int = 0) -> list[Canary]:
    """`per_count` canaries for each number of copies, each with its own name and a uniformly random PIN."""
    if per_count < 1 or any(c < 0 for c in copies) or len(copies) * per_count > len(NAMES):
        raise ValueError(
            f"need per_count >= 1, copies >= 0 and at most {len(NAMES)} canaries; got {copies}, {per_count}"
        )
    rng = np.random.default_rng(seed)
    secrets = rng.choice(10**DIGITS, size=len(copies) * per_count, replace=False)
    names = iter(NAMES)
    return [
        Canary(next(names), f"{int(secrets[i * per_count + j]):0{DIGITS}d}", c)
        for i, c in enumerate(copies)
        for j in range(per_count)
    ]


def insert_canaries(texts: list[str], canaries: list[Canary], seed: int = 0) -> list[str]:
    """The training texts plus each canary's sentence `copies` times, shuffled."""
    rows = list(texts) + [c.text for c in canaries for _ in range(c.copies)]
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def digit_ids(tokenizer) -> torch.Tensor:
    """The token ids of '0'..'9' (this tokenizer writes every digit as its own token)."""
    ids = tokenizer.convert_tokens_to_ids([str(d) for d in range(10)])
    if len(set(ids)) != 10 or tokenizer.unk_token_id in ids:
        raise ValueError("this tokenizer has no single token per digit; exposure over PINs needs one")
    return torch.tensor(ids)


def prefix_ids(tokenizer, canary: Canary) -> list[int]:
    """The tokens before the secret's digits, checked: the canary's text must tokenize as prefix + 4 digits + '.'."""
    ids = tokenizer(canary.text).input_ids
    head, tail = ids[: -(DIGITS + 1)], ids[-(DIGITS + 1) : -1]
    if tail != digit_ids(tokenizer)[[int(d) for d in canary.secret]].tolist():
        raise ValueError(f"{canary.text!r} does not end in one token per digit; keep the 'NAME's PIN is 1234.' form")
    return head


@torch.no_grad()
def secret_logprobs(model, tokenizer, prefix: list[int]) -> np.ndarray:
    """log p(secret | prefix) for all 10,000 PINs, indexed by the PIN's value (natural log).

    Level by level: the cache of each partial PIN is repeated once per next digit, so level k feeds 10^k tokens.
    """
    where = model_device(model)
    digits = digit_ids(tokenizer).to(where)
    logits, cache = forward_cached(model, torch.tensor([prefix], device=where))
    total = torch.log_softmax(logits[:, -1].float(), -1)[:, digits].reshape(-1)  # (10,): the first digit
    for level in range(1, DIGITS):
        cache.batch_repeat_interleave(10)  # (10^(level-1) rows) -> (10^level rows)
        feed = digits.repeat(10 ** (level - 1)).reshape(-1, 1)  # row r holds digit r % 10 after its parent r // 10
        logits, cache = forward_cached(model, feed, cache)
        step = torch.log_softmax(logits[:, -1].float(), -1)[:, digits]  # (10^level, 10)
        total = (total[:, None] + step).reshape(-1)  # index = parent * 10 + next digit
    return total.cpu().numpy()


def exposure(model, tokenizer, canary: Canary) -> dict:
    """Rank of the true PIN among all 10,000 by the model's likelihood, and its exposure log2(10^4) - log2(rank)."""
    scores = secret_logprobs(model, tokenizer, prefix_ids(tokenizer, canary))
    true = scores[int(canary.secret)]
    rank = int((scores > true).sum()) + 1  # ties count in the secret's favour
    bits = audit.exposure(-float(true), -scores.astype(float))  # chapter 02's formula, on losses = -log p
    return {"name": canary.name, "copies": canary.copies, "rank": rank, "exposure": bits, "logprob": float(true)}


def extraction(model, tokenizer, canary: Canary, samples: int = 100, temperature: float = 1.0, seed: int = 0) -> dict:
    """Prompt with the prefix: does greedy decoding write the PIN, and what share of seeded samples does?"""
    ids = torch.tensor(prefix_ids(tokenizer, canary))
    _, greedy = generate_ids(model, tokenizer, ids, DIGITS)
    _, drawn = generate_ids(model, tokenizer, ids, DIGITS, temperature=temperature, seed=seed,
                            num_return_sequences=samples)  # fmt: skip
    written = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in drawn]
    first = tokenizer.decode(greedy[0], skip_special_tokens=True).strip()
    return {"name": canary.name, "copies": canary.copies, "greedy": first, "greedy extracts": first == canary.secret,
            "sampled share": float(np.mean([w == canary.secret for w in written]))}  # fmt: skip


# ---------------------------------------------------------------------------------------------- LoRA fine-tuning


@dataclass(frozen=True)
class LoraRecipe:
    """LoRA fine-tuning of the LLM on plain text; epsilon = inf trains without DP (shuffled batches, no noise)."""

    epochs: int = 3
    batch_size: int = 16  # the expected (Poisson) batch under DP
    lr: float = 2e-3
    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    max_length: int = 64
    seed: int = 0
    epsilon: float = math.inf
    delta: float | None = None
    clip_norm: float = 1.0  # under DP each example's gradient norm; otherwise the batch's (as Trainer's max_grad_norm)

    def __post_init__(self) -> None:
        privacy.check_epsilon(self.epsilon, allow_inf=True)
        privacy.check_clip_norm(self.clip_norm)
        if self.delta is not None:
            privacy.check_delta(self.delta)
        for name in ("epochs", "batch_size", "rank", "alpha", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"LoraRecipe.{name} must be a positive integer, got {value!r}")
        if not 0 < self.lr < 1:
            raise ValueError(f"LoraRecipe.lr must be in (0, 1), got {self.lr}; try 2e-3")

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)


@dataclass
class LoraRun:
    """A LoRA-adapted LLM and what its training cost (epsilon is inf when not private)."""

    model: torch.nn.Module
    recipe: LoraRecipe
    epsilon: float
    delta: float
    noise_multiplier: float
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    trained_now: bool = False


def lora_model(base, recipe: LoraRecipe):
    """A copy of the LLM with LoRA adapters on `recipe.targets`; only the adapters train (the caller's stays)."""
    cfg = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, target_modules=list(recipe.targets), lora_dropout=0.0,
                     bias="none", task_type="CAUSAL_LM")  # fmt: skip
    torch.manual_seed(recipe.seed)  # LoRA's A matrices start random
    return get_peft_model(copy.deepcopy(base), cfg)


def _encode(tokenizer, texts: list[str], max_length: int) -> list[torch.Tensor]:
    """Each text's token ids followed by <|im_end|>, cut to max_length."""
    return [torch.tensor((tokenizer(t).input_ids + [EOS_ID])[:max_length]) for t in texts]


def _batch_loss(model, rows: list[torch.Tensor]) -> torch.Tensor:
    """Mean over examples of each example's mean next-token loss (what Opacus's loss_reduction='mean' expects)."""
    where = model_device(model)
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=EOS_ID).to(where)  # (B, T)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True).to(where)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
    keep = mask[:, 1:].float()
    return ((nll * keep).sum(1) / keep.sum(1)).mean()


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return (torch.tensor(i),)  # a tuple, as Opacus's Poisson loader expects


def train_lora(base, tokenizer, texts: list[str], recipe: LoraRecipe, progress: bool = True) -> LoraRun:
    """Fine-tune LoRA adapters on `texts` (AdamW, constant lr, gradient norm clipped to `clip_norm`); with a finite
    epsilon, DP-SGD through Opacus (each example's gradient clipped instead, noise, Poisson sampling)."""
    if len(texts) < recipe.batch_size:
        raise ValueError(f"{len(texts)} texts is fewer than batch_size {recipe.batch_size}; lower the batch size")
    rows = _encode(tokenizer, texts, recipe.max_length)
    delta = recipe.delta if recipe.delta is not None else privacy.default_delta(len(rows))
    model = lora_model(base, recipe).to(config.device())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(recipe.seed)
    loader = torch.utils.data.DataLoader(_Rows(len(rows)), batch_size=recipe.batch_size, shuffle=True,
                                         generator=generator)  # fmt: skip
    engine, noise, trained = None, 0.0, model
    if recipe.private:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")  # chapter 02, section 9 says why
            warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
            engine = PrivacyEngine(accountant="rdp", secure_mode=False)
            trained, optimizer, loader = engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, data_loader=loader, target_epsilon=recipe.epsilon,
                target_delta=delta, epochs=recipe.epochs, max_grad_norm=recipe.clip_norm, poisson_sampling=True,
                noise_generator=torch.Generator(config.device()).manual_seed(recipe.seed + 1),
            )  # fmt: skip
        noise = float(optimizer.noise_multiplier)
    losses: list[float] = []
    start = time.perf_counter()
    total = recipe.epochs * len(loader)
    label = "LoRA" if engine is None else f"LoRA, DP eps={recipe.epsilon:g}"
    with warnings.catch_warnings(), tqdm(total=total, desc=label, disable=not progress, leave=False) as bar:
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(recipe.epochs):
            for (idx,) in loader:
                if len(idx) > 0:  # an empty Poisson batch releases nothing
                    loss = _batch_loss(trained, [rows[i] for i in idx.tolist()])
                    loss.backward()
                    if engine is None:  # Opacus clips each example's gradient itself
                        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(loss.item())
                bar.update(1)
    seconds = time.perf_counter() - start
    spent = math.inf
    if engine is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
            spent = float(engine.get_epsilon(delta))
        trained.remove_hooks()
    model.eval()
    return LoraRun(model, recipe, spent, delta, noise, total, seconds, losses, True)


def lora_key(base, texts: list[str], recipe: LoraRecipe) -> str:
    """Cache key of a LoRA run: the base weights, every training text, the whole recipe, the loop version, the
    device class and arithmetic."""
    where = config.device()
    return store.key("lora-llm", LOOP_VERSION, base, list(texts), asdict(recipe), where.type, config.precision(where))


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) tensors of a peft model, on the CPU."""
    return {k: v.detach().cpu().contiguous() for k, v in model.named_parameters() if v.requires_grad}


def cached_lora(base, tokenizer, texts: list[str], recipe: LoraRecipe, progress: bool = True,
                retrain: bool | None = None) -> LoraRun:  # fmt: skip
    """`train_lora`, cached by `lora_key`: only the adapters (a few hundred kB) and the run's figures are stored."""
    folder = store.path("lora-llm", lora_key(base, texts, recipe))
    if config.retrain_requested() if retrain is None else retrain:
        store.remove(folder)
    if (folder / "run.json").exists():
        model = lora_model(base, recipe).to(config.device())
        saved = load_file(folder / "adapter.safetensors")
        if set(saved) != set(adapter_state(model)):
            raise ValueError(f"{folder} holds other adapter tensors than this recipe makes; delete the folder")
        model.load_state_dict(saved, strict=False)
        meta = json.loads((folder / "run.json").read_text())
        return LoraRun(model.eval(), recipe, meta["epsilon"], meta["delta"], meta["noise_multiplier"], meta["steps"],
                       meta["seconds"], meta["losses"], False)  # fmt: skip
    run = train_lora(base, tokenizer, texts, recipe, progress)

    def write(tmp: Path) -> None:
        save_file(adapter_state(run.model), tmp / "adapter.safetensors")
        meta = {k: getattr(run, k) for k in ("epsilon", "delta", "noise_multiplier", "steps", "seconds", "losses")}
        (tmp / "run.json").write_text(json.dumps(meta))

    store.write_dir(folder, write)
    return run
