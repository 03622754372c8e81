"""Explanations that are measured, not only drawn (chapter 05).

Every explainer here scores the *words* of one sentence (whitespace-separated, punctuation attached) for one class,
so attention, gradients, LIME and SHAP can be compared on the same footing and tested for faithfulness: delete the
words an explainer ranks highest and the prediction should fall (ERASER comprehensiveness); keep only those words and
it should stay (sufficiency). Attention is read from the model's own weights (eager attention), gradients come from
Captum, LIME and SHAP from their libraries; the from-scratch versions exist to teach and are tested against them.
"""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from captum.attr import LayerIntegratedGradients
from scipy import stats

from . import modeling

EXPLAINERS = ("attention", "rollout", "grad_x_input", "integrated_gradients", "lime", "shap", "random")
ERASER_BINS = (0.01, 0.05, 0.1, 0.2, 0.5)  # ERASER's AOPC bins: share of words removed or kept (DeYoung et al. 2020)

Predict = Callable[[list[str]], np.ndarray]  # texts -> class probabilities (N, C)


@dataclass(frozen=True)
class Encoded:
    """One sentence as the model reads it, and which whitespace word each token came from (-1: special)."""

    text: str
    words: list[str]
    ids: torch.Tensor  # (1, T)
    mask: torch.Tensor  # (1, T)
    tokens: list[str]
    word_of_token: list[int]


@dataclass
class Explanation:
    """Word scores (for the explained class) from one explainer, with its cost."""

    method: str
    scores: np.ndarray  # (n_words,)
    model_calls: int
    seconds: float
    extra: dict = field(default_factory=dict)


def check_method(name: str) -> str:
    """An explainer name the course knows; anything else is one line listing them."""
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explainer {name!r}; choose one of {', '.join(EXPLAINERS)}")
    return name


def check_target(model, target: int) -> int:
    """A class index the model has."""
    classes = model.config.num_labels
    if not isinstance(target, (int, np.integer)) or not 0 <= target < classes:
        raise ValueError(f"target class {target!r} does not exist; this model has classes 0..{classes - 1}")
    return int(target)


def encode(model, tokenizer, text: str) -> Encoded:
    """Tokenise one sentence without truncation, refusing empty text and text longer than the model reads."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text is empty; pass a sentence with at least one word")
    with modeling.quiet_transformers():  # the length is checked below, with a clearer message than the tokenizer's
        enc = tokenizer([text], truncation=False, return_offsets_mapping=True, return_tensors="pt")
    limit = model.config.max_position_embeddings
    length = enc["input_ids"].shape[1]
    if length > limit:
        raise ValueError(f"text has {length} tokens, the model reads at most {limit}; shorten it or split it")
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    word_of_token = []
    for start, end in enc["offset_mapping"][0].tolist():
        hit = [i for i, (a, b) in enumerate(spans) if a <= start < b] if end > start else []
        word_of_token.append(hit[0] if hit else -1)
    where = modeling.model_device(model)
    return Encoded(
        text,
        [text[a:b] for a, b in spans],
        enc["input_ids"].to(where),
        enc["attention_mask"].to(where),
        tokenizer.convert_ids_to_tokens(enc["input_ids"][0]),
        word_of_token,
    )


def word_scores(token_scores: np.ndarray | torch.Tensor, enc: Encoded) -> np.ndarray:
    """Token scores (T,) summed into the words they belong to (n_words,); special tokens are dropped."""
    values = torch.as_tensor(token_scores).detach().float().cpu().numpy()
    out = np.zeros(len(enc.words))
    for value, word in zip(values, enc.word_of_token, strict=True):
        if word >= 0:
            out[word] += value
    return out


def use_eager_attention(model) -> None:
    """Switch to eager attention, which returns its maps (SDPA, transformers' default, returns none)."""
    if model.config._attn_implementation != "eager":
        model.set_attn_implementation("eager")


@torch.no_grad()
def attentions(model, enc: Encoded) -> torch.Tensor:
    """Every layer's attention maps (L, H, T, T), from the model itself."""
    use_eager_attention(model)
    out = model(input_ids=enc.ids, attention_mask=enc.mask, output_attentions=True)
    return torch.cat(out.attentions).float()  # each (1, H, T, T)


@torch.no_grad()
def manual_attention(model, enc: Encoded, layer: int) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k) of one layer's heads (H, T, T), computed from the layer's weights and its input."""
    blocks = model.base_model.encoder.layer
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} does not exist; this model has layers 0..{len(blocks) - 1}")
    hidden = model(input_ids=enc.ids, attention_mask=enc.mask, output_hidden_states=True).hidden_states[layer]
    attn = blocks[layer].attention.self
    heads = model.config.num_attention_heads
    d_k = model.config.hidden_size // heads
    q = attn.query(hidden)[0].view(-1, heads, d_k).transpose(0, 1)  # (H, T, d_k)
    k = attn.key(hidden)[0].view(-1, heads, d_k).transpose(0, 1)  # (H, T, d_k)
    scores = q @ k.transpose(1, 2) / math.sqrt(d_k)  # (H, T, T)
    scores = scores.masked_fill(enc.mask[0] == 0, float("-inf"))  # padding is never attended to
    return torch.softmax(scores, dim=-1)


def rollout(maps: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): heads averaged, the residual added as ½I, layers multiplied (T, T)."""
    flow = torch.eye(maps.shape[-1])
    for layer in maps.float().cpu():  # (H, T, T)
        mixed = 0.5 * layer.mean(0) + 0.5 * torch.eye(maps.shape[-1])
        flow = mixed @ flow
    return flow


def attention_explanation(model, enc: Encoded, how: str = "attention") -> Explanation:
    """Word scores from attention: [CLS]'s last-layer attention averaged over heads, or its rollout row."""
    start = time.perf_counter()
    maps = attentions(model, enc)
    cls_row = maps[-1].mean(0)[0] if how == "attention" else rollout(maps)[0]
    return Explanation(how, word_scores(cls_row, enc), 1, time.perf_counter() - start)


def _probability(model, target: int) -> Callable:
    """The function explained: the probability of `target` from input ids (or embeddings through Captum)."""

    def forward(ids, mask):
        return torch.softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)[:, target]

    return forward


def baseline_ids(enc: Encoded, pad_id: int) -> torch.Tensor:
    """The reference input: every word token replaced by [PAD], [CLS] and [SEP] kept (1, T)."""
    ids = enc.ids.clone()
    words = torch.tensor([w >= 0 for w in enc.word_of_token], device=ids.device)
    ids[0, words] = pad_id
    return ids


def integrated_gradients(
    model, tokenizer, enc: Encoded, target: int, steps: int = 32, tolerance: float = 0.01, max_steps: int = 512
) -> Explanation:
    """Captum's Integrated Gradients on the embedding layer's output, doubling the steps until the completeness
    gap |Σ attributions − (F(x) − F(baseline))| is at most `tolerance` of |F(x) − F(baseline)|."""
    target = check_target(model, target)
    model.eval()
    start = time.perf_counter()
    prob = _probability(model, target)
    lig = LayerIntegratedGradients(prob, model.base_model.embeddings)
    reference = baseline_ids(enc, tokenizer.pad_token_id)
    with torch.no_grad():
        gap = float(prob(enc.ids, enc.mask) - prob(reference, enc.mask))  # what the attributions must add up to
    calls = 0
    while True:
        attributions, delta = lig.attribute(
            enc.ids,
            baselines=reference,
            additional_forward_args=(enc.mask,),
            n_steps=steps,
            internal_batch_size=64,
            return_convergence_delta=True,
        )
        calls += steps
        relative = abs(float(delta)) / max(abs(gap), 1e-6)
        if relative <= tolerance or steps >= max_steps:
            break
        steps *= 2
    token_scores = attributions.sum(-1)[0]  # (T,): each token's share of F(x) - F(baseline)
    extra = {"steps": steps, "delta": float(delta), "gap": gap, "relative_delta": relative}
    seconds = time.perf_counter() - start
    return Explanation("integrated_gradients", word_scores(token_scores, enc), calls, seconds, extra)


def ig_by_hand(model, tokenizer, enc: Encoded, target: int, steps: int = 32) -> np.ndarray:
    """Integrated Gradients written out (token scores, (T,)): the average gradient at the midpoints of `steps`
    equal pieces of the straight line from the baseline embedding to the input's, times (input − baseline).
    Captum's `method="riemann_middle"` computes the same sum."""
    embeddings = model.base_model.embeddings
    with torch.no_grad():
        x = embeddings(input_ids=enc.ids)  # (1, T, D)
        b = embeddings(input_ids=baseline_ids(enc, tokenizer.pad_token_id))  # (1, T, D)
    alphas = (torch.arange(steps, device=x.device) + 0.5) / steps  # (S,)
    path = (b + alphas.view(-1, 1, 1) * (x - b)).requires_grad_(True)  # (S, T, D)
    out = _from_embeddings(model, path, enc.mask.expand(steps, -1), target)  # (S,)
    (grads,) = torch.autograd.grad(out.sum(), path)  # (S, T, D)
    return (grads.mean(0) * (x - b)[0]).sum(-1).detach().cpu().numpy()


def _from_embeddings(model, embedded: torch.Tensor, mask: torch.Tensor, target: int) -> torch.Tensor:
    """The target probability with the embedding layer's output replaced by `embedded` (B, T, D) -> (B,)."""
    hook = model.base_model.embeddings.register_forward_hook(lambda module, args, output: embedded)
    try:
        ids = torch.zeros(embedded.shape[:2], dtype=torch.long, device=embedded.device)  # ignored: the hook answers
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        hook.remove()
    return torch.softmax(logits.float(), -1)[:, target]


def grad_x_input(model, enc: Encoded, target: int) -> Explanation:
    """Gradient × input on the embedding layer's output: one backward pass, a first-order guess."""
    target = check_target(model, target)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        x = model.base_model.embeddings(input_ids=enc.ids)
    x.requires_grad_(True)
    out = _from_embeddings(model, x, enc.mask, target)
    (grad,) = torch.autograd.grad(out.sum(), x)
    scores = (grad * x).sum(-1)[0]  # (T,)
    return Explanation("grad_x_input", word_scores(scores, enc), 1, time.perf_counter() - start)


class CountingPredict:
    """A predict function that counts the sentences it was asked about (the cost of perturbation explainers)."""

    def __init__(self, model, tokenizer, max_length: int = 512):
        self.model, self.tokenizer, self.max_length, self.calls = model, tokenizer, max_length, 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        self.calls += len(texts)
        return modeling.predict_proba(self.model, self.tokenizer, texts, max_length=self.max_length)


def lime_explanation(predict: CountingPredict, enc: Encoded, target: int, samples: int = 500, seed: int = 0):
    """LIME (Ribeiro et al. 2016) over whitespace words: a weighted linear model on random word deletions."""
    from lime.lime_text import LimeTextExplainer

    before, start = predict.calls, time.perf_counter()
    explainer = LimeTextExplainer(split_expression=r"\s+", bow=False, mask_string="", random_state=seed)
    found = explainer.explain_instance(
        enc.text, predict, labels=(target,), num_features=len(enc.words), num_samples=samples
    )
    scores = np.zeros(len(enc.words))
    for position, weight in found.as_map()[target]:
        scores[position] = weight
    return Explanation("lime", scores, predict.calls - before, time.perf_counter() - start)


def shap_explanation(predict: CountingPredict, enc: Encoded, target: int, max_evals: int = 500, seed: int = 0):
    """SHAP's partition explainer (Owen values over a word hierarchy) with words masked out."""
    import shap

    before, start = predict.calls, time.perf_counter()
    masker = shap.maskers.Text(r"\s+")  # a masked run of words becomes one "..."
    explainer = shap.Explainer(lambda texts: predict(list(texts))[:, target], masker, seed=seed)
    values = explainer([enc.text], max_evals=max_evals, silent=True)
    pieces = [p for p in values.data[0]]
    scores = np.zeros(len(enc.words))
    word = 0
    for piece, value in zip(pieces, values.values[0], strict=True):
        if piece.strip():
            scores[min(word, len(enc.words) - 1)] += value
            word += 1
    return Explanation("shap", scores, predict.calls - before, time.perf_counter() - start)


def random_explanation(enc: Encoded, seed: int) -> Explanation:
    """The control every explainer must beat: a random ranking of the words."""
    return Explanation("random", np.random.default_rng(seed).standard_normal(len(enc.words)), 0, 0.0)


def explain(
    model,
    tokenizer,
    text: str,
    target: int | None = None,
    methods: Sequence[str] = EXPLAINERS,
    samples: int = 500,
    seed: int = 0,
) -> dict[str, Explanation]:
    """Every requested explainer on one sentence, for `target` (default: the predicted class)."""
    methods = [check_method(m) for m in methods]
    enc = encode(model, tokenizer, text)
    predict = CountingPredict(model, tokenizer)
    if target is None:
        target = int(predict([text])[0].argmax())
    target = check_target(model, target)
    makers = {
        "attention": lambda: attention_explanation(model, enc, "attention"),
        "rollout": lambda: attention_explanation(model, enc, "rollout"),
        "grad_x_input": lambda: grad_x_input(model, enc, target),
        "integrated_gradients": lambda: integrated_gradients(model, tokenizer, enc, target),
        "lime": lambda: lime_explanation(predict, enc, target, samples, seed),
        "shap": lambda: shap_explanation(predict, enc, target, samples, seed),
        "random": lambda: random_explanation(enc, seed),
    }
    return {m: makers[m]() for m in methods}


def remove_words(words: Sequence[str], drop: set[int]) -> str:
    """The sentence without the words at the given positions (what ERASER feeds the model)."""
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def top_k(scores: np.ndarray, share: float) -> set[int]:
    """The positions of the ceil(share × n) highest-scoring words (at least one)."""
    k = max(1, math.ceil(share * len(scores)))
    return set(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())


def faithfulness(
    predict: Predict, words: Sequence[str], scores: np.ndarray, target: int, bins: Sequence[float] = ERASER_BINS
) -> dict[str, float]:
    """ERASER comprehensiveness and sufficiency, each averaged over the bins (AOPC form, DeYoung et al. 2020):
    comprehensiveness = p(x) − p(x without the top words): high is faithful;
    sufficiency = p(x) − p(only the top words): low is faithful."""
    if len(scores) != len(words):
        raise ValueError(f"{len(scores)} scores for {len(words)} words; pass one score per word")
    everything = set(range(len(words)))
    removed = [remove_words(words, top_k(scores, b)) for b in bins]
    kept = [remove_words(words, everything - top_k(scores, b)) for b in bins]
    probs = predict([" ".join(words), *removed, *kept])[:, target]
    full, without, only = probs[0], probs[1 : 1 + len(bins)], probs[1 + len(bins) :]
    return {"comprehensiveness": float(np.mean(full - without)), "sufficiency": float(np.mean(full - only))}


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Is `a` larger than `b` over the same sentences? Mean difference, its standard error and the one-sided
    Wilcoxon signed-rank p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = a - b
    p = float(stats.wilcoxon(a, b, alternative="greater").pvalue) if np.any(diff != 0) else 1.0
    return {"mean_diff": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(len(diff))), "p": p}


def rank_agreement(per_sentence: list[dict[str, np.ndarray]], methods: Sequence[str]) -> pd.DataFrame:
    """Mean Spearman correlation between every two explainers' word scores, over sentences with 3+ words."""
    table = pd.DataFrame(np.eye(len(methods)), index=list(methods), columns=list(methods))
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            rhos = [stats.spearmanr(s[a], s[b]).statistic for s in per_sentence if len(s[a]) >= 3]
            rhos = [r for r in rhos if np.isfinite(r)]
            table.loc[a, b] = table.loc[b, a] = float(np.mean(rhos)) if rhos else float("nan")
    return table


# --- the seed's "causal graphs": counterfactual edits and activation patching -------------------------------------

# Sentiment words and a counterpart of the other polarity, for edits that change one word and keep the length.
SWAPS = {
    "good": "bad", "bad": "good", "best": "worst", "worst": "best", "great": "awful", "awful": "great",
    "funny": "boring", "boring": "funny", "beautiful": "ugly", "ugly": "beautiful", "brilliant": "dull",
    "dull": "brilliant", "smart": "stupid", "stupid": "smart", "love": "hate", "hate": "love", "fun": "tedious",
    "tedious": "fun", "wonderful": "terrible", "terrible": "wonderful", "excellent": "poor", "poor": "excellent",
    "entertaining": "tiresome", "tiresome": "entertaining", "charming": "annoying", "annoying": "charming",
    "fascinating": "pointless", "pointless": "fascinating", "enjoyable": "unpleasant", "strong": "weak",
    "weak": "strong", "fresh": "stale", "stale": "fresh", "clever": "silly", "silly": "clever",
    "moving": "lifeless", "lifeless": "moving", "solid": "flimsy", "flimsy": "solid", "engaging": "tedious",
}  # fmt: skip
NEGATABLE = re.compile(r"\b(is|are|was|were|has|have|does|do|can|will)\b", re.IGNORECASE)
NAMES = ("Maria", "Kofi", "Wei", "Olga", "Ahmed", "Sven")


def _match_case(word: str, like: str) -> str:
    """`word` written with `like`'s capitalisation."""
    return word.capitalize() if like[:1].isupper() else word


def counterfactuals(text: str) -> list[tuple[str, str]]:
    """Edited versions of a sentence, each (kind, text): a negation, a sentiment-word swap, a name swap."""
    out = []
    if (hit := NEGATABLE.search(text)) is not None:
        out.append(("negation", text[: hit.end()] + " not" + text[hit.end() :]))
    words = text.split(" ")
    for i, word in enumerate(words):
        core = word.strip(".,!?;:'\"()").lower()
        if core in SWAPS:
            swapped = words[:i] + [word.lower().replace(core, _match_case(SWAPS[core], word), 1)] + words[i + 1 :]
            out.append(("sentiment swap", " ".join(swapped)))
            break
    for i, word in enumerate(words[1:], start=1):
        if word[:1].isupper() and word.isalpha() and word.lower() not in SWAPS:
            name = NAMES[sum(map(ord, word)) % len(NAMES)]
            out.append(("name swap", " ".join(words[:i] + [name] + words[i + 1 :])))
            break
    return out


def counterfactual_table(predict: Predict, texts: Sequence[str], positive: int = 1) -> pd.DataFrame:
    """Every edit of every sentence with p(positive) before and after and whether the predicted class flipped."""
    rows = [(t, kind, edited) for t in texts for kind, edited in counterfactuals(t)]
    if not rows:
        raise ValueError("no sentence could be edited; pass sentences with a verb, a sentiment word or a name")
    probs = predict([r[0] for r in rows] + [r[2] for r in rows])[:, positive]
    before, after = probs[: len(rows)], probs[len(rows) :]
    return pd.DataFrame(
        {
            "kind": [r[1] for r in rows],
            "original": [r[0] for r in rows],
            "edited": [r[2] for r in rows],
            "p_before": before,
            "p_after": after,
            "change": after - before,
            "flipped": (before >= 0.5) != (after >= 0.5),
        }
    )


def _logit_diff(logits: torch.Tensor, target: int) -> torch.Tensor:
    """logit(target) − logit(other class) per sentence (B,): the patching metric."""
    return logits[:, target] - logits[:, 1 - target]


@torch.no_grad()
def patch_components(model, tokenizer, clean: str, corrupt: str, target: int) -> pd.DataFrame:
    """Activation patching (causal tracing, Meng et al. 2022): run the corrupted sentence with one component's
    output taken from the clean run: one layer's output at one token position (head -1), or one attention head's
    output at every position (position -1). `restored` is the share of the clean-minus-corrupted logit difference
    that the patch brings back (1: all of it)."""
    if model.config.num_labels != 2:
        raise ValueError("patching here compares two classes; pass a binary classifier")
    a, b = encode(model, tokenizer, clean), encode(model, tokenizer, corrupt)
    if a.ids.shape != b.ids.shape:
        raise ValueError("clean and corrupted sentences must have the same number of tokens; swap one word for one")
    model.eval()
    blocks = model.base_model.encoder.layer
    heads = model.config.num_attention_heads
    d_head = model.config.hidden_size // heads
    saved: dict[str, torch.Tensor] = {}

    def keep(name: str, inputs: bool):
        def hook(module, args, output):
            value = args[0] if inputs else output[0] if isinstance(output, tuple) else output
            saved[name] = value.detach().clone()  # (1, T, D)

        return hook

    hooks = [blk.register_forward_hook(keep(f"block{i}", False)) for i, blk in enumerate(blocks)]
    hooks += [blk.attention.output.dense.register_forward_hook(keep(f"heads{i}", True)) for i, blk in enumerate(blocks)]
    clean_ld = float(_logit_diff(model(input_ids=a.ids, attention_mask=a.mask).logits, target))
    for h in hooks:
        h.remove()
    corrupt_ld = float(_logit_diff(model(input_ids=b.ids, attention_mask=b.mask).logits, target))

    def run_with(module, hook_fn, pre: bool) -> float:
        h = module.register_forward_pre_hook(hook_fn) if pre else module.register_forward_hook(hook_fn)
        try:
            return float(_logit_diff(model(input_ids=b.ids, attention_mask=b.mask).logits, target))
        finally:
            h.remove()

    rows = []
    for i, blk in enumerate(blocks):
        for pos in range(a.ids.shape[1]):

            def block_hook(module, args, output, i=i, pos=pos):
                hidden = (output[0] if isinstance(output, tuple) else output).clone()  # (1, T, D)
                hidden[:, pos] = saved[f"block{i}"][:, pos]
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            rows.append({"layer": i, "head": -1, "position": pos, "patched": run_with(blk, block_hook, pre=False)})
        for h in range(heads):

            def head_hook(module, args, i=i, h=h):
                mixed = args[0].clone()  # (1, T, H * d_head): the heads' outputs before the output projection
                mixed[..., h * d_head : (h + 1) * d_head] = saved[f"heads{i}"][..., h * d_head : (h + 1) * d_head]
                return (mixed, *args[1:])

            patched = run_with(blk.attention.output.dense, head_hook, pre=True)
            rows.append({"layer": i, "head": h, "position": -1, "patched": patched})
    table = pd.DataFrame(rows)
    gap = clean_ld - corrupt_ld
    table["restored"] = (table["patched"] - corrupt_ld) / (gap if abs(gap) > 1e-6 else float("nan"))
    changed = (a.ids[0] != b.ids[0]).nonzero().flatten().tolist()
    table.attrs.update(clean=clean_ld, corrupt=corrupt_ld, tokens=a.tokens, changed=changed)
    return table


# --- a transparent baseline: the VADER lexicon -----------------------------------------------------------------------


def vader_scores(words: Sequence[str]) -> np.ndarray:
    """Each word's valence in the VADER lexicon (Hutto & Gilbert 2014, -4..+4; 0 when absent), punctuation stripped."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    lexicon = SentimentIntensityAnalyzer().lexicon
    return np.array([float(lexicon.get(w.strip(".,!?;:'\"()").lower(), 0.0)) for w in words])


# --- explanations across model variants (a hook for the capstone) ----------------------------------------------------


def explanation_shift(models: dict[str, torch.nn.Module], tokenizer, texts: Sequence[str], reference: str):
    """How much each model's IG word scores (for its own predicted class) move from the reference model's:
    Spearman correlation and top-3 word overlap per sentence, averaged. Any classifier fits: a pruned, private,
    distilled or adversarially trained one."""
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models {sorted(models)}")
    scores: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for name, model in models.items():
        targets = CountingPredict(model, tokenizer)(list(texts)).argmax(1)  # each model explains its own prediction
        for text, target in zip(texts, targets, strict=True):
            enc = encode(model, tokenizer, text)
            scores[name].append(integrated_gradients(model, tokenizer, enc, int(target)).scores)
    rows = []
    for name in models:
        pairs = list(zip(scores[reference], scores[name], strict=True))
        rho = [stats.spearmanr(r, s).statistic for r, s in pairs if len(r) >= 3]
        overlap = [len(top_k(r, 3 / len(r)) & top_k(s, 3 / len(s))) / min(3, len(r)) for r, s in pairs]
        rows.append({"model": name, "spearman": float(np.nanmean(rho)), "top3_overlap": float(np.mean(overlap))})
    return pd.DataFrame(rows).set_index("model")


# --- drawing and exploring -------------------------------------------------------------------------------------------


def heat_html(words: Sequence[str], scores: np.ndarray) -> str:
    """Words shaded by score as plain HTML (red: towards the explained class, blue: away), for any notebook."""
    if len(words) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(words)} words; pass one score per word")
    top = max(float(np.abs(scores).max()) if len(scores) else 0.0, 1e-9)
    spans = []
    for word, score in zip(words, scores, strict=True):
        colour = "220,50,47" if score > 0 else "38,139,210"
        style = f"background: rgba({colour},{abs(score) / top:.2f}); padding: 1px 3px; border-radius: 3px"
        spans.append(f'<span title="{score:+.3f}" style="{style}">{html.escape(word)}</span>')
    return " ".join(spans)


def explorer(model, tokenizer, sentences: Sequence[str], samples: int = 100, label_names: Sequence[str] = ()):
    """A widget: pick or type a sentence, see the prediction and four explanations side by side."""
    import ipywidgets as widgets

    if not sentences:
        raise ValueError("sentences is empty; pass at least one sentence to pick from")
    box = widgets.Combobox(value=sentences[0], options=list(sentences), description="sentence",
                           ensure_option=False, layout=widgets.Layout(width="95%"))  # fmt: skip
    methods = widgets.SelectMultiple(options=EXPLAINERS, value=("attention", "integrated_gradients", "lime", "shap"),
                                     description="explainers", rows=4)  # fmt: skip
    out = widgets.HTML()

    def update(*_):
        try:
            found = explain(model, tokenizer, box.value, methods=methods.value, samples=samples)
        except ValueError as err:
            out.value = f"<p style='color:#dc322f'>{html.escape(str(err))}</p>"
            return
        probs = CountingPredict(model, tokenizer)([box.value])[0]
        names = list(label_names) or [str(i) for i in range(len(probs))]
        head = ", ".join(f"{n} {p:.2f}" for n, p in zip(names, probs, strict=True))
        words = box.value.split()
        rows = [f"<p><b>{m}</b> ({e.model_calls} calls, {e.seconds:.2f} s): {heat_html(words, e.scores)}</p>"
                for m, e in found.items()]  # fmt: skip
        out.value = f"<p>p = {head}</p>" + "".join(rows)

    box.observe(update, names="value")
    methods.observe(update, names="value")
    update()
    return widgets.VBox([box, methods, out])
