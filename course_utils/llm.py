"""A small generative LLM on a CPU: SmolLM2-135M-Instruct, generation, sampling, log-probabilities (chapter 08).

The model is an offline asset like the others: a GGUF file inside a PyPI wheel (`assets.llm_dir` converts it once to
safetensors in the cache). Generation is seeded and reproducible; `sample_next` writes one sampling step by hand
(temperature, top-p) and is tested against transformers' own logits processors.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import assets, config
from .modeling import model_device, quiet_transformers

EOS_ID = 2  # <|im_end|>: transformers before 4.48 read <|im_start|> from this GGUF, which never stops a chat turn
ONLINE_LLM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
Prompt = "str | list[dict]"  # plain text, or chat messages [{'role': 'user', 'content': ...}]


def llm_source() -> str:
    """The offline converted folder, or the hub id in online mode."""
    if config.mode() == "online":
        return ONLINE_LLM_ID
    return str(assets.llm_dir())


def load_llm(device: torch.device | str | None = None):
    """SmolLM2-135M-Instruct in fp32 on `device` (default: the course device), eval mode, and its tokenizer."""
    config.apply_mode()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(llm_source())
        model = AutoModelForCausalLM.from_pretrained(llm_source(), dtype=torch.float32)
    if tokenizer.eos_token_id != EOS_ID:
        raise assets.AssetError(
            f"the LLM's end-of-turn token is {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), not <|im_end|> "
            f"(id {EOS_ID}); upgrade transformers (>= 4.48 reads this GGUF correctly) and delete the converted folder"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device or config.device()).eval(), tokenizer


def context_length(model) -> int:
    """How many tokens the model attends over (prompt plus generated)."""
    return int(model.config.max_position_embeddings)


def check_sampling(temperature: float, top_p: float) -> None:
    """Reject a negative temperature or a top-p outside (0, 1]."""
    if not isinstance(temperature, (int, float)) or math.isnan(temperature) or temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}; 0 is greedy, 0.7-1.0 samples")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}; 1.0 keeps every token")


def encode_prompt(tokenizer, prompt, chat: bool = True) -> torch.Tensor:
    """Token ids (1, T) of a prompt: chat messages or a question through the chat template, raw text (chat=False),
    or token ids already (a tensor)."""
    if isinstance(prompt, torch.Tensor):
        if prompt.numel() == 0:
            raise ValueError("the prompt has no tokens; pass a question or some text to continue")
        return prompt.reshape(1, -1).long()
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty; pass a question or some text to continue")
        if not chat:
            return tokenizer(prompt, return_tensors="pt").input_ids
        prompt = [{"role": "user", "content": prompt}]
    if not prompt or not all(isinstance(m, dict) and str(m.get("content", "")).strip() for m in prompt):
        raise ValueError("chat messages must be a non-empty list of {'role': ..., 'content': ...} with text")
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return ids["input_ids"]


def check_length(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """Reject max_new_tokens <= 0, or a prompt plus new tokens longer than the model's context."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}; ask for at least 1")
    if prompt_tokens + max_new_tokens > context_length(model):
        raise ValueError(
            f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context of "
            f"{context_length(model)}; shorten the prompt or ask for fewer tokens"
        )


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompt,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool = True,
    num_return_sequences: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids (1, T) and new token ids (n, <= max_new_tokens): greedy at temperature 0, else seeded sampling."""
    check_sampling(temperature, top_p)
    ids = encode_prompt(tokenizer, prompt, chat)
    check_length(model, ids.shape[1], max_new_tokens)
    sample = temperature > 0
    options = {"temperature": float(temperature), "top_p": float(top_p), "top_k": 0} if sample else {}
    where = model_device(model)
    with torch.random.fork_rng(devices=[where] if where.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(
            ids.to(where),
            attention_mask=torch.ones_like(ids).to(where),
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_return_sequences,
            do_sample=sample,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=EOS_ID,
            **options,
        )
    return ids, out[:, ids.shape[1] :].cpu()


def generate(model, tokenizer, prompt, max_new_tokens: int = 64, **kwargs) -> str:
    """The model's answer to a prompt (chat messages, a question, or raw text with chat=False), as text."""
    _, new = generate_ids(model, tokenizer, prompt, max_new_tokens, **kwargs)
    return tokenizer.decode(new[0], skip_special_tokens=True).strip()


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool = False,
    samples: int = 1,
    batch_size: int = 16,
) -> list[list[str]]:
    """`samples` continuations of each prompt (raw text by default), generated in left-padded batches."""
    check_sampling(temperature, top_p)
    if isinstance(prompts, str) or not prompts or any(not str(p).strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings; wrap a single prompt in a list")
    if chat:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=False) for p in prompts]  # fmt: skip
    sample = temperature > 0
    options = {"temperature": float(temperature), "top_p": float(top_p), "top_k": 0} if sample else {}
    where, out = model_device(model), []
    with torch.random.fork_rng(devices=[where] if where.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True,
                            padding_side="left").to(where)  # fmt: skip
            check_length(model, enc.input_ids.shape[1], max_new_tokens)
            new = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=samples,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=EOS_ID, **options)  # fmt: skip
            texts = tokenizer.batch_decode(new[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
            out += [[t.strip() for t in texts[i : i + samples]] for i in range(0, len(texts), samples)]
    return out


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One decoding step by hand: greedy at temperature 0; else scale, keep the top-p nucleus, renormalise, draw."""
    check_sampling(temperature, top_p)
    if temperature == 0:
        return int(logits.argmax())
    probs = nucleus(logits / temperature, top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Probabilities after top-p: the smallest set of most likely tokens whose mass reaches top_p, renormalised."""
    probs = torch.softmax(logits.float(), dim=-1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]  # mass of the tokens ranked above each one
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[order[before < top_p]] = True  # the most likely token is always kept
    probs = probs * keep
    return probs / probs.sum()


def cache_argument(model) -> str:
    """The name under which this transformers version's forward takes the KV cache ('cache' from 5.2x on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def forward_cached(model, ids: torch.Tensor, cache=None):
    """One forward pass that takes and returns the KV cache: (logits (B, T, V), cache)."""
    out = model(input_ids=ids, use_cache=True, **{cache_argument(model): cache})
    return out.logits, getattr(out, "cache", None) or out.past_key_values


@torch.no_grad()
def decode_loop(model, ids: torch.Tensor, max_new_tokens: int, use_cache: bool = True) -> torch.Tensor:
    """Greedy decoding written out: with the KV cache each step feeds one token; without, the whole sequence."""
    where = model_device(model)
    seq, past, new = ids.to(where), None, []
    for _ in range(max_new_tokens):
        if use_cache:
            logits, past = forward_cached(model, seq if past is None else seq[:, -1:], past)
        else:
            logits = model(input_ids=seq, use_cache=False).logits  # the whole sequence, every step
        token = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        new.append(int(token))
        seq = torch.cat([seq, token], dim=1)
        if new[-1] == EOS_ID:
            break
    return torch.tensor(new)


def tokens_per_second(model, tokenizer, prompt: str, max_new_tokens: int = 48, use_cache: bool = True) -> dict:
    """Time greedy decoding of a prompt with `decode_loop`: new tokens, seconds, tokens per second."""
    ids = encode_prompt(tokenizer, prompt)
    check_length(model, ids.shape[1], max_new_tokens)
    start = time.perf_counter()
    new = decode_loop(model, ids, max_new_tokens, use_cache)
    seconds = time.perf_counter() - start
    return {
        "cache": use_cache,
        "prompt tokens": ids.shape[1],
        "new tokens": len(new),
        "seconds": seconds,
        "tokens/s": len(new) / seconds,
    }


def weight_megabytes(model) -> float:
    """Memory the parameters take (tied input/output embeddings counted once), in MB."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6


@torch.no_grad()
def token_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int = 16) -> list[np.ndarray]:
    """For each text, log p(token | tokens before it) of every token after the first (natural log)."""
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings; wrap a single text in a list")
    where, out = model_device(model), []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="right").to(where)
        logp = torch.log_softmax(model(**enc).logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        picked = logp.gather(2, enc.input_ids[:, 1:, None])[..., 0]  # (B, T-1)
        for row, mask in zip(picked.cpu().numpy(), enc.attention_mask[:, 1:].bool().cpu().numpy(), strict=True):
            out.append(row[mask])
    return out


def perplexity(model, tokenizer, texts: Sequence[str]) -> float:
    """Perplexity over a corpus: exp of the mean negative log-likelihood per predicted token."""
    logps = np.concatenate(token_logprobs(model, tokenizer, texts))
    return float(np.exp(-logps.mean()))


def continuation_logprob(model, tokenizer, prefix: str, continuations: Sequence[str]) -> np.ndarray:
    """log p(continuation | prefix) for each continuation, summed over its tokens (natural log)."""
    head = tokenizer(prefix).input_ids
    texts = [prefix + c for c in continuations]
    for text in texts:
        if tokenizer(text).input_ids[: len(head)] != head:
            raise ValueError(
                f"{text!r} does not tokenize as the prefix plus a continuation; end the prefix before a space"
            )
    n_prefix = len(head)
    return np.array([row[n_prefix - 1 :].sum() for row in token_logprobs(model, tokenizer, texts)])
