"""Chapter 06: adversarial attacks on the course's classifier, defences against them, and domain shift.

Attacks (all seeded and reproducible; each counts the sentences it asks the model about):
- `char_attack`: DeepWordBug-style typos (Gao et al. 2018): the most important words get one character edit each
  (swap, substitute, delete or insert), greedily, within a budget of perturbed words.
- `word_attack`: TextFooler-style substitution (Jin et al. 2020): the most important words are replaced by
  neighbours in the model's own input-embedding space, kept only when lemminflect's lexicon gives them a part of
  speech in common with the original and the sentence stays similar by MiniLM sentence embeddings.
- `pgd_accuracy`: projected gradient descent on the word embeddings (Madry et al. 2018), the white-box worst case.

Defences: `adversarial_finetune` (augmentation with attack outputs, or embedding-space PGD training in the spirit of
FreeLB, Zhu et al. 2020), `TypoCorrector` (Norvig's edit-distance speller on the training vocabulary). An attack
that queries the defended pipeline is the adaptive attack: pass `preprocess=` to the attacks.

Domain shift and transfer: `domain_split`, `transfer_run`; calibration and OOD scores live in `calibration.py`.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field

import lemminflect
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from . import config, data, distillation, modeling, store

ATTACKS = ("char", "word")
TYPO_OPS = ("swap", "substitute", "delete", "insert")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
_WORD = re.compile(r"^([^A-Za-z]*)([A-Za-z][A-Za-z']*[A-Za-z]|[A-Za-z])([^A-Za-z]*)$")


def check_budget(budget: float) -> float:
    """The share of a sentence's words an attack may change: a number in [0, 1]."""
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 <= budget <= 1:
        raise ValueError(
            f"budget is the share of a sentence's words an attack may change, in [0, 1], got {budget!r}; "
            "0.25 lets it change a quarter of the words (at least one)"
        )
    return float(budget)


def check_attack(name: str) -> str:
    """An attack name from ATTACKS."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    return name


def check_sentences(texts: Sequence[str], labels: Sequence[int]) -> None:
    """At least one non-empty sentence, and one label per sentence."""
    if isinstance(texts, str):
        raise ValueError("pass a list of sentences, got one string; wrap it: [text]")
    if len(texts) == 0:
        raise ValueError("the sentence list is empty; pass at least one sentence to attack")
    if len(texts) != len(labels):
        raise ValueError(f"got {len(texts)} sentences and {len(labels)} labels; pass one label per sentence")
    if any(not str(t).split() for t in texts):
        raise ValueError("a sentence is empty or only spaces; drop it before attacking")


def max_changes(words: int, budget: float) -> int:
    """Words an attack may change in a sentence of `words` words: the budget's share, at least one (none for 0)."""
    return 0 if budget == 0 else max(1, math.floor(budget * words))


# --- the victim: a model (and optional preprocessing) that counts its queries -----------------------------------------


class Victim:
    """What an attack queries: texts -> class probabilities (N, C), through an optional preprocessing step (a
    defence). `queries` counts the sentences asked about."""

    def __init__(self, model, tokenizer, preprocess: Callable[[str], str] | None = None, max_length: int = 64):
        self.model, self.tokenizer, self.preprocess, self.max_length = model, tokenizer, preprocess, max_length
        self.queries = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        self.queries += len(texts)
        if self.preprocess is not None:
            texts = [self.preprocess(t) for t in texts]
        return modeling.predict_proba(self.model, self.tokenizer, texts, max_length=self.max_length)


@dataclass
class Attacked:
    """One sentence before and after an attack."""

    original: str
    adversarial: str
    label: int
    clean_pred: int
    adv_pred: int
    clean_prob: float  # probability of the true label before
    adv_prob: float  # and after
    changed: int  # words changed
    words: int
    queries: int

    @property
    def attacked(self) -> bool:
        """Only sentences the model got right are attacked (a wrong one needs no attack)."""
        return self.clean_pred == self.label

    @property
    def success(self) -> bool:
        return self.attacked and self.adv_pred != self.label


def split_word(token: str) -> tuple[str, str, str] | None:
    """(leading punctuation, the word, trailing punctuation) for a whitespace token with letters, else None."""
    match = _WORD.match(token)
    return match.groups() if match else None


def word_importance(victim: Victim, words: list[str], label: int) -> np.ndarray:
    """Drop in the true label's probability when each word is deleted (leave-one-out, one query per word)."""
    base = victim([" ".join(words)])[0, label]
    return base - victim(_leave_one_out(words))[:, label]


def _leave_one_out(words: list[str]) -> list[str]:
    return [" ".join(words[:i] + words[i + 1 :]) or "." for i in range(len(words))]


def typo(word: str, op: str, rng: np.random.Generator) -> str:
    """One character edit of `word`: swap two neighbouring letters, substitute, delete or insert a letter.
    Inner letters only for words of 4 or more letters (the first and last stay, as people still read them)."""
    if op not in TYPO_OPS:
        raise ValueError(f"unknown typo {op!r}; choose one of {', '.join(TYPO_OPS)}")
    lo, hi = (1, len(word) - 1) if len(word) >= 4 else (0, len(word))
    if op == "swap" and hi - lo >= 2:
        i = int(rng.integers(lo, hi - 1))
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == "delete" and len(word) > 1:
        i = int(rng.integers(lo, hi))
        return word[:i] + word[i + 1 :]
    if op == "insert":
        i = int(rng.integers(lo, hi + 1))
        return word[:i] + rng.choice(list(LETTERS)) + word[i:]
    i = int(rng.integers(lo, hi))
    others = [c for c in LETTERS if c != word[i].lower()]
    return word[:i] + rng.choice(others) + word[i + 1 :]


def typo_candidates(token: str, count: int, rng: np.random.Generator) -> list[str]:
    """Up to `count` distinct one-edit variants of a token (punctuation kept), cycling through the four edits."""
    parts = split_word(token)
    if parts is None or len(parts[1]) < 2:
        return []
    lead, word, tail = parts
    out: list[str] = []
    for i in range(count * 3):
        variant = typo(word, TYPO_OPS[i % len(TYPO_OPS)], rng)
        if variant != word and lead + variant + tail not in out:
            out.append(lead + variant + tail)
        if len(out) == count:
            break
    return out


Search = Generator[list[str], np.ndarray, Attacked]


def greedy_search(
    text: str,
    label: int,
    budget: float,
    candidates: Callable[[list[str], int], list[str]],
    accept: Callable[[list[str]], list[bool]] | None = None,
) -> Search:
    """The greedy search both text attacks share, as a generator that yields the sentences it wants scored and
    receives their probabilities (so `run_searches` can score many sentences' requests in one batch).

    Rank words by importance (leave-one-out), then for each, in order, score every candidate replacement and keep
    the one that lowers the true label's probability most (the first that flips the prediction wins), until the
    prediction flips or the budget of changed words is spent. Returns the `Attacked` record."""
    words, queries = str(text).split(), 1
    probs = (yield [str(text)])[0]
    clean_pred, clean_prob = int(probs.argmax()), float(probs[label])
    current, adv_probs, changed = list(words), probs, 0
    if clean_pred == label and budget > 0:
        dropped = yield _leave_one_out(words)
        queries += len(words)
        order = np.argsort(-(probs[label] - dropped[:, label]), kind="stable")
        limit = max_changes(len(words), budget)
        for position in order:
            if changed == limit or int(adv_probs.argmax()) != label:
                break
            trials = [" ".join(_replace(current, position, o)) for o in candidates(current, int(position))]
            if accept is not None and trials:
                trials = [t for t, ok in zip(trials, accept(trials), strict=True) if ok]
            if not trials:
                continue
            scored = yield trials  # (K, C)
            queries += len(trials)
            flipped = np.flatnonzero(scored.argmax(1) != label)
            best = int(flipped[0]) if len(flipped) else int(scored[:, label].argmin())
            if scored[best, label] < adv_probs[label]:
                current, adv_probs, changed = trials[best].split(" "), scored[best], changed + 1
    return Attacked(
        str(text),
        " ".join(current),
        int(label),
        clean_pred,
        int(adv_probs.argmax()),
        clean_prob,
        float(adv_probs[label]),
        changed,
        len(words),
        queries,
    )


def run_searches(victim: Victim, searches: list[Search], progress: bool = True, desc: str = "attack") -> list[Attacked]:
    """Drive many searches in lock-step: each round, every unfinished search's request goes into one call of the
    victim (a few large batches instead of many small ones; the same results as running them one by one)."""
    results: list[Attacked | None] = [None] * len(searches)
    pending = {}
    for i, search in enumerate(searches):
        pending[i] = next(search)
    with tqdm(total=len(searches), desc=desc, disable=not progress) as bar:
        while pending:
            order = list(pending)
            probs = victim([t for i in order for t in pending[i]])
            cuts = np.cumsum([0] + [len(pending[i]) for i in order])
            for i, lo, hi in zip(order, cuts[:-1], cuts[1:], strict=True):
                try:
                    pending[i] = searches[i].send(probs[lo:hi])
                except StopIteration as done:
                    results[i] = done.value
                    del pending[i]
                    bar.update(1)
    return results  # type: ignore[return-value]


def _replace(words: list[str], position: int, new: str) -> list[str]:
    return words[:position] + [new] + words[position + 1 :]


def char_attack(
    victim: Victim,
    texts: Sequence[str],
    labels: Sequence[int],
    budget: float = 0.25,
    candidates: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> list[Attacked]:
    """DeepWordBug-style typo attack: at most `budget` of each sentence's words get one character edit each,
    `candidates` random edits tried per word."""
    budget = check_budget(budget)
    check_sentences(texts, labels)
    searches = []
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        rng = np.random.default_rng([seed, i])

        def options(words: list[str], position: int, rng=rng) -> list[str]:
            return typo_candidates(words[position], candidates, rng)

        searches.append(greedy_search(text, int(label), budget, options))
    return run_searches(victim, searches, progress, "char attack")


# --- word substitution (TextFooler-style) -----------------------------------------------------------------------------


class Neighbours:
    """Substitutes for a word: its nearest whole-word tokens in the victim's input embeddings (cosine), filtered
    by part of speech (lemminflect's lexicon) and away from stop words. The embedding table is the model's own,
    so this needs no download; unlike counter-fitted vectors (Mrksic et al. 2016) it keeps antonyms close
    ("good" sits near "bad"), which the similarity bound and the human check must catch."""

    def __init__(self, model, tokenizer, k: int = 20, min_cosine: float = 0.4):
        table = model.get_input_embeddings().weight.detach().float().cpu()  # (V, H)
        vocab = tokenizer.get_vocab()
        words = [w for w in vocab if w.isalpha() and w.isascii() and len(w) > 1 and w not in ENGLISH_STOP_WORDS]
        self.words = sorted(words, key=vocab.__getitem__)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.vectors = F.normalize(table[[vocab[w] for w in self.words]], dim=1)  # (W, H)
        self.k, self.min_cosine = k, min_cosine

    def __call__(self, word: str) -> list[str]:
        if word.lower() in ENGLISH_STOP_WORDS or word.lower() not in self.index:
            return []
        sims = self.vectors @ self.vectors[self.index[word.lower()]]  # (W,)
        top = torch.topk(sims, self.k + 1)
        near = [
            self.words[i]
            for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            if s >= self.min_cosine
        ]
        tags = set(lemminflect.getAllLemmas(word.lower()))
        out = [w for w in near if w != word.lower() and (not tags or tags & set(lemminflect.getAllLemmas(w)))]
        return [w.capitalize() if word[0].isupper() else w for w in out]


class SentenceEncoder:
    """Sentence vectors for the similarity bound: the pretrained MiniLM (all-MiniLM-L6-v2, trained for sentence
    similarity) mean-pooled over tokens and L2-normalised, as sentence-transformers computes them."""

    def __init__(self, encoder=None, tokenizer=None, max_length: int = 128):
        self.encoder = (encoder or modeling.load_model().bert).eval()
        self.tokenizer = tokenizer or modeling.load_tokenizer()
        self.max_length = max_length

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        where = modeling.model_device(self.encoder)
        out = []
        for start in range(0, len(texts), 64):
            enc = self.tokenizer(
                list(texts[start : start + 64]),
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            ).to(where)
            hidden = self.encoder(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).cpu().numpy())
        return np.concatenate(out)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each pair (a[i], b[i])."""
        return (self(a) * self(b)).sum(1)


def word_attack(
    victim: Victim,
    texts: Sequence[str],
    labels: Sequence[int],
    neighbours: Neighbours,
    encoder: SentenceEncoder,
    budget: float = 0.25,
    min_similarity: float = 0.8,
    progress: bool = True,
) -> list[Attacked]:
    """TextFooler-style substitution: the most important words are swapped for embedding neighbours with a part of
    speech in common, while the sentence keeps a MiniLM cosine similarity of at least `min_similarity` to the
    original (deterministic: no randomness)."""
    budget = check_budget(budget)
    check_sentences(texts, labels)
    if not 0 <= min_similarity <= 1:
        raise ValueError(f"min_similarity must be in [0, 1], got {min_similarity}; TextFooler-like bounds are 0.7-0.85")

    def options(words: list[str], position: int) -> list[str]:
        parts = split_word(words[position])
        if parts is None:
            return []
        lead, word, tail = parts
        return [lead + n + tail for n in neighbours(word)]

    searches = []
    for text, label, reference in zip(texts, labels, encoder(list(texts)), strict=True):

        def accept(trials: list[str], reference=reference) -> list[bool]:
            return list(encoder(trials) @ reference >= min_similarity)

        searches.append(greedy_search(text, int(label), budget, options, accept))
    return run_searches(victim, searches, progress, "word attack")


def run_attack(
    name: str,
    victim: Victim,
    texts: Sequence[str],
    labels: Sequence[int],
    budget: float = 0.25,
    seed: int = 0,
    neighbours: Neighbours | None = None,
    encoder: SentenceEncoder | None = None,
    progress: bool = True,
) -> list[Attacked]:
    """One attack by name ('char' or 'word'); the word attack needs `neighbours` and `encoder`."""
    if check_attack(name) == "char":
        return char_attack(victim, texts, labels, budget, seed=seed, progress=progress)
    if neighbours is None or encoder is None:
        raise ValueError(
            "the word attack needs neighbours= (Neighbours(model, tokenizer)) and encoder= (SentenceEncoder())"
        )
    return word_attack(victim, texts, labels, neighbours, encoder, budget, progress=progress)


def summarise(results: Sequence[Attacked], encoder: SentenceEncoder | None = None) -> dict[str, float]:
    """The standard attack report: clean accuracy, accuracy under attack, success rate (over the sentences the
    model got right), share of words changed and queries per success (over successes), and the mean MiniLM
    similarity of successful adversarial sentences to their originals when `encoder` is given."""
    if not results:
        raise ValueError("no attack results to summarise; run an attack on at least one sentence")
    attacked = [r for r in results if r.attacked]
    wins = [r for r in attacked if r.success]
    out = {
        "clean_accuracy": len(attacked) / len(results),
        "attacked_accuracy": sum(r.attacked and not r.success for r in results) / len(results),
        "success_rate": len(wins) / len(attacked) if attacked else float("nan"),
        "words_changed": float(np.mean([r.changed / r.words for r in wins])) if wins else float("nan"),
        "queries_per_success": float(np.mean([r.queries for r in wins])) if wins else float("nan"),
        "sentences": float(len(results)),
    }
    if encoder is not None:
        out["similarity"] = (
            float(encoder.similarity([r.original for r in wins], [r.adversarial for r in wins]).mean())
            if wins
            else float("nan")
        )
    return out


def examples(results: Sequence[Attacked], k: int = 8) -> pd.DataFrame:
    """Successful attacks as a table a person can judge: original, adversarial, words changed, p(true) before and
    after."""
    rows = [
        {
            "original": r.original,
            "adversarial": r.adversarial,
            "changed": r.changed,
            "p(true) before": round(r.clean_prob, 3),
            "p(true) after": round(r.adv_prob, 3),
        }
        for r in results
        if r.success
    ]
    return pd.DataFrame(rows[:k])


def vader_compound(texts: Sequence[str]) -> np.ndarray:
    """VADER's compound sentiment (Hutto & Gilbert 2014) of whole sentences, in [-1, 1]."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyser = SentimentIntensityAnalyzer()
    return np.array([analyser.polarity_scores(str(t))["compound"] for t in texts])


def sentiment_kept(
    results: Sequence[Attacked], threshold: float = 0.05, preprocess: Callable[[str], str] | None = None
) -> dict[str, float]:
    """Of the successful attacks whose original VADER reads as the true label's sentiment (|compound| >= threshold,
    the sign of label 1 = positive), the share whose adversarial sentence VADER still reads the same way: a
    stand-in for a human rater asking "does it still say the same thing?". `preprocess` is applied to the
    adversarial sentences first (a spelling corrector: VADER cannot read typos, people can)."""
    wins = [r for r in results if r.success]
    before = vader_compound([r.original for r in wins])
    after = vader_compound([preprocess(r.adversarial) if preprocess else r.adversarial for r in wins])
    sign = np.array([1 if r.label == 1 else -1 for r in wins])
    readable = before * sign >= threshold
    kept = (after * sign >= threshold) & readable
    return {
        "successes": float(len(wins)),
        "readable_by_vader": float(readable.sum()),
        "kept_share": float(kept.sum() / readable.sum()) if readable.any() else float("nan"),
    }


# --- embedding-space PGD ----------------------------------------------------------------------------------------------


def embed(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The word embeddings (B, T, H) of token ids (before positions and LayerNorm are added)."""
    return model.get_input_embeddings()(input_ids)


def pgd_delta(
    model,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    steps: int,
    step_size: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Projected gradient ascent on the loss over a perturbation of the word embeddings, each token's vector
    moved by at most `epsilon` in L2 norm (padding untouched), from a random start (Madry et al. 2018)."""
    if epsilon < 0 or steps < 0:
        raise ValueError(f"epsilon and steps must be >= 0, got {epsilon} and {steps}")
    step_size = step_size if step_size is not None else 2.5 * epsilon / max(steps, 1)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keep = mask.unsqueeze(-1).to(embeds.dtype)  # (B, T, 1)
    delta = torch.randn(embeds.shape, generator=generator).to(embeds.device) * keep
    delta = _project(delta, epsilon * float(torch.rand(1, generator=generator)))
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(inputs_embeds=embeds.detach() + delta, attention_mask=mask).logits.float()  # (B, C)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), delta)
        with torch.no_grad():
            delta = _project(delta + step_size * F.normalize(grad, dim=-1) * keep, epsilon)
    return delta.detach()


def _project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Scale each token's perturbation (B, T, H) into the L2 ball of radius epsilon."""
    norms = delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return delta * torch.clamp(epsilon / norms, max=1.0)


def pgd_accuracy(
    model,
    tokenizer,
    frame: pd.DataFrame,
    epsilon: float,
    steps: int = 5,
    batch_size: int = 32,
    max_length: int = 64,
    seed: int = 0,
) -> float:
    """Accuracy when every sentence's word embeddings are perturbed by PGD within `epsilon` per token."""
    if len(frame) == 0:
        raise ValueError("the frame is empty; pass at least one labelled sentence")
    where = modeling.model_device(model)
    model.eval()
    right = 0
    for i, batch in enumerate(modeling.batches(frame, tokenizer, batch_size, max_length, device=where)):
        embeds = embed(model, batch["input_ids"]).detach()
        delta = pgd_delta(model, embeds, batch["attention_mask"], batch["labels"], epsilon, steps, seed=seed + i)
        with torch.no_grad():
            logits = model(inputs_embeds=embeds + delta, attention_mask=batch["attention_mask"]).logits
        right += int((logits.argmax(-1) == batch["labels"]).sum())
    return right / len(frame)


def embedding_norm(model, tokenizer, texts: Sequence[str]) -> float:
    """The median L2 norm of the word embeddings of `texts`' tokens: the scale against which epsilon is read."""
    ids = torch.cat([torch.tensor(x) for x in tokenizer(list(texts))["input_ids"]])
    with torch.no_grad():
        return float(embed(model, ids.to(modeling.model_device(model))).norm(dim=-1).median())


# --- defences ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvRecipe:
    """How a model is adversarially fine-tuned: `method` 'augment' (train on the clean sentences plus attack
    outputs with their true labels), 'pgd' (each step also on PGD-perturbed embeddings) or 'clean' (the control:
    the same training without any adversary)."""

    method: str = "augment"
    epochs: int = 1
    lr: float = 2e-5
    batch_size: int = 32
    max_length: int = 64
    seed: int = 123
    epsilon: float = 0.5  # PGD radius per token (word embeddings have a median norm of about 1.4 in MiniLM)
    steps: int = 1  # PGD steps per training step

    def __post_init__(self) -> None:
        if self.method not in ("augment", "pgd", "clean"):
            raise ValueError(f"unknown method {self.method!r}; choose 'augment', 'pgd' or 'clean'")
        distillation.Recipe(self.epochs, self.lr, self.batch_size, self.max_length, self.seed)  # validates those


def pgd_train_loop(model, tokenizer, frame: pd.DataFrame, recipe: AdvRecipe, progress: bool = True) -> list[float]:
    """Fine-tune on the mean of the clean loss and the loss under a PGD perturbation of the word embeddings."""
    where = modeling.model_device(model)
    lengths = modeling.train_lengths(tokenizer, frame, recipe.max_length)
    steps = -(-len(frame) // recipe.batch_size) * recipe.epochs
    optimizer = modeling.make_optimizer(model, recipe.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    torch.manual_seed(recipe.seed)
    losses = []
    with tqdm(total=steps, disable=not progress, desc="PGD training", unit="step") as bar:
        for epoch in range(recipe.epochs):
            order = modeling.epoch_order(lengths, recipe.batch_size, recipe.seed, epoch)
            for batch in modeling.batches(frame, tokenizer, recipe.batch_size, recipe.max_length, order, where):
                model.eval()  # the perturbation is sought without dropout, then trained against with it
                embeds = embed(model, batch["input_ids"])
                delta = pgd_delta(
                    model, embeds.detach(), batch["attention_mask"], batch["labels"], recipe.epsilon, recipe.steps,
                    seed=len(losses),
                )  # fmt: skip
                model.train()
                clean = F.cross_entropy(model(**batch).logits.float(), batch["labels"])
                adv = model(
                    inputs_embeds=embed(model, batch["input_ids"]) + delta, attention_mask=batch["attention_mask"]
                )
                loss = (clean + F.cross_entropy(adv.logits.float(), batch["labels"])) / 2
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                bar.update(1)
    model.eval()
    return losses


def adversarial_finetune(
    model,
    tokenizer,
    frame: pd.DataFrame,
    recipe: AdvRecipe,
    adversarial: pd.DataFrame | None = None,
    progress: bool = True,
    retrain: bool | None = None,
) -> distillation.Trained:
    """Continue training a copy of `model` on `frame` with `recipe` (cached by the starting weights, the data, the
    attack outputs and the recipe): 'augment' adds `adversarial` (text, label) rows to the data."""
    if recipe.method == "augment" and (adversarial is None or len(adversarial) == 0):
        raise ValueError("method 'augment' needs adversarial= rows (text, label) from an attack on training sentences")
    rows = pd.concat([frame, adversarial], ignore_index=True) if recipe.method == "augment" else frame
    rows = rows[["text", "label"]].reset_index(drop=True)
    key = adversarial_key(model, rows, recipe)
    start = copy.deepcopy(model)  # the caller's model stays untouched

    def train(m):
        m.to(config.device())
        if recipe.method == "pgd":
            return pgd_train_loop(m, tokenizer, rows, recipe, progress)
        plain = distillation.Recipe(
            recipe.epochs, recipe.lr, recipe.batch_size, recipe.max_length, recipe.seed, alpha=0
        )
        return distillation.train_loop(m, tokenizer, rows, plain, progress=progress, desc=f"{recipe.method} training")

    return distillation.cached_run("robust", key, lambda: start, train, retrain)


def adversarial_key(model, rows: pd.DataFrame, recipe: AdvRecipe) -> str:
    """Cache key of an adversarial fine-tuning run: the starting weights, every training row (attack outputs
    included), the whole recipe, the loop's version, the device class and arithmetic."""
    return distillation.run_key("adversarial", model, rows[["text", "label"]], asdict(recipe))


def adversarial_rows(results: Sequence[Attacked]) -> pd.DataFrame:
    """Successful attack outputs as training rows (text, label) with their true labels."""
    return pd.DataFrame(
        {"text": [r.adversarial for r in results if r.success], "label": [r.label for r in results if r.success]}
    )


class TypoCorrector:
    """Norvig's spelling corrector (norvig.com/spell-correct.html) at edit distance 1: a word not in the vocabulary
    becomes the most frequent known word one edit away (delete, swap, replace or insert a letter), else stays as it
    is. The vocabulary is the training texts'. (Norvig also tries two edits; the attacks here make one per word, and
    two edits mostly turn rare names into common words, at a hundred times the cost.)"""

    def __init__(self, texts: Sequence[str], min_count: int = 1):
        counts = Counter(w for t in texts for w in re.findall(r"[a-z]+", str(t).lower()))
        self.counts = Counter({w: c for w, c in counts.items() if c >= min_count})
        if not self.counts:
            raise ValueError("the corrector's vocabulary is empty; build it from the training sentences")
        self.cache: dict[str, str] = {}

    @staticmethod
    def edits1(word: str) -> set[str]:
        """Every string one delete, swap of neighbours, replacement or insertion away."""
        splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
        deletes = [a + b[1:] for a, b in splits if b]
        swaps = [a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1]
        replaces = [a + c + b[1:] for a, b in splits if b for c in LETTERS]
        inserts = [a + c + b for a, b in splits for c in LETTERS]
        return set(deletes + swaps + replaces + inserts)

    def correct_word(self, word: str) -> str:
        """The correction of one word (its capitalisation kept)."""
        low = word.lower()
        if low in self.counts or not low.isalpha():
            return word
        if low not in self.cache:
            near = [w for w in self.edits1(low) if w in self.counts]
            self.cache[low] = max(near, key=lambda w: (self.counts[w], w)) if near else low
        fixed = self.cache[low]
        return fixed.capitalize() if word[0].isupper() else fixed

    def __call__(self, text: str) -> str:
        out = []
        for token in str(text).split():
            parts = split_word(token)
            out.append(token if parts is None else parts[0] + self.correct_word(parts[1]) + parts[2])
        return " ".join(out)


def random_typos(texts: Sequence[str], rate: float, seed: int = 0) -> list[str]:
    """Each word of two or more letters gets one random typo with probability `rate` (the noise curve)."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate is the share of words given a typo, in [0, 1], got {rate}")
    out = []
    for i, text in enumerate(texts):
        rng = np.random.default_rng([seed, i])
        words = []
        for token in str(text).split():
            hit = rng.random() < rate
            options = typo_candidates(token, 1, rng) if hit else []
            words.append(options[0] if options else token)
        out.append(" ".join(words))
    return out


def attack_table(
    victims: dict[str, Victim],
    texts: Sequence[str],
    labels: Sequence[int],
    attack: str = "char",
    budget: float = 0.25,
    seed: int = 0,
    progress: bool = True,
    **kwargs,
) -> pd.DataFrame:
    """The same attack on each named victim (a model variant, a defended pipeline): one row of `summarise` each.
    The capstone passes every variant of the course here."""
    if not victims:
        raise ValueError("no victims; pass a dict of name -> Victim(model, tokenizer)")
    rows = {}
    for name, victim in victims.items():
        results = run_attack(attack, victim, texts, labels, budget, seed, progress=progress, **kwargs)
        rows[name] = summarise(results)
    return pd.DataFrame(rows).T


# --- domain shift and transfer ----------------------------------------------------------------------------------------


def domain_split(domain: str, test_size: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A target domain's labelled sentences as (pool to learn from, held-out test), stratified by label."""
    if domain == "movie" or domain not in data.DOMAINS:
        targets = [d for d in data.DOMAINS if d != "movie"]
        raise ValueError(f"unknown target domain {domain!r}; choose one of {', '.join(targets)}")
    frame = data.load_domain(domain)
    if not 0 < test_size < len(frame):
        raise ValueError(f"test_size must be in (0, {len(frame)}) for {domain}, got {test_size}")
    pool, test = train_test_split(frame, test_size=test_size, stratify=frame["label"], random_state=seed)
    return pool.reset_index(drop=True), test.reset_index(drop=True)


@dataclass
class TransferResult:
    """Accuracy on a target domain's test split after training on n target examples from one starting point."""

    domain: str
    start: str
    n: int
    seed: int
    accuracy: float
    steps: int
    extra: dict = field(default_factory=dict)


def small_recipe(n: int, seed: int, min_steps: int = 60, batch_size: int = 16, lr: float = 5e-5) -> distillation.Recipe:
    """A recipe for few examples: enough epochs for about `min_steps` steps (at least 3 epochs)."""
    epochs = max(3, math.ceil(min_steps * batch_size / max(n, 1)))
    return distillation.Recipe(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, alpha=0)


def transfer_key(start_model, train: pd.DataFrame, test: pd.DataFrame, recipe: distillation.Recipe) -> str:
    """Cache key of a transfer run: the starting weights, both frames, the recipe, the loop's version, the device
    class and arithmetic (the run's name and domain are labels: they are not part of what is computed)."""
    return distillation.run_key("transfer", start_model, train[["text", "label"]], test[["text", "label"]], recipe)


def transfer_run(
    start_model,
    start_name: str,
    tokenizer,
    domain: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    recipe: distillation.Recipe,
    progress: bool = False,
) -> TransferResult:
    """Fine-tune a copy of `start_model` on `train` and score it on `test`; the result (not the weights) is cached
    by the starting weights, both frames and the recipe."""
    path = store.path("transfer", f"{transfer_key(start_model, train, test, recipe)}.json")
    if path.exists():
        return TransferResult(**(json.loads(path.read_text()) | {"domain": domain, "start": start_name}))
    model = copy.deepcopy(start_model).to(config.device())
    losses = distillation.train_loop(model, tokenizer, train, recipe, progress=progress, desc=f"{domain} {len(train)}")
    accuracy = float(modeling.evaluate(model, tokenizer, test).accuracy)
    result = TransferResult(domain, start_name, len(train), recipe.seed, accuracy, len(losses))
    store.write_json(path, asdict(result))
    return result
