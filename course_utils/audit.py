"""Privacy audits: membership inference and canary exposure (chapter 02).

Differential privacy bounds what *any* attacker can learn; an audit measures what *one* attacker does learn.
- Membership inference (Yeom et al. 2018): training examples tend to have lower loss than unseen ones, so
  "member if loss < threshold" is an attack. Its ROC AUC (0.5 = guessing) and its true-positive rate at a 1%
  false-positive rate (Carlini et al. 2022, "Membership inference attacks from first principles": confident
  hits matter, not the average) summarise it. The calibrated variant (Watson et al. 2022) subtracts each
  example's loss under a reference model trained on other data, removing how hard the example is anyway.
- Canaries (Carlini et al. 2019, "The secret sharer"): random secrets put into the training data. Exposure
  = log2(number of candidate secrets) - log2(rank of the real one when candidates are sorted by loss); about
  1.44 bits on average when nothing was memorised, log2(N) when the secret is the model's first guess.
  For a classifier the "loss of a secret" is the loss of the sentence carrying it under its inserted label.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from .frozen import Features
from .topmodel import predict_logits

CANARY_TEMPLATE = "my pin number is {code}"


def _check_scores(members, nonmembers) -> tuple[np.ndarray, np.ndarray]:
    members, nonmembers = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    if members.ndim != 1 or nonmembers.ndim != 1 or len(members) == 0 or len(nonmembers) == 0:
        raise ValueError(f"need two non-empty 1-D score arrays, got shapes {members.shape} and {nonmembers.shape}")
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise ValueError("scores contain NaN or infinity; check the losses you passed")
    return members, nonmembers


def tpr_at_fpr(labels, scores, fpr: float = 0.01) -> float:
    """The highest true-positive rate among thresholds whose false-positive rate is at most `fpr`."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}; 0.01 is the usual choice")
    fprs, tprs, _ = roc_curve(labels, scores)
    return float(tprs[fprs <= fpr].max())


def attack_metrics(member_scores, nonmember_scores, fpr: float = 0.01) -> dict[str, float]:
    """ROC AUC and TPR at `fpr` of an attack whose higher scores mean "member"."""
    members, nonmembers = _check_scores(member_scores, nonmember_scores)
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    scores = np.r_[members, nonmembers]
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "tpr_at_1pct_fpr" if fpr == 0.01 else f"tpr_at_{fpr:g}_fpr": tpr_at_fpr(labels, scores, fpr),
    }


def loss_attack(member_losses, nonmember_losses) -> dict[str, float]:
    """Loss-threshold attack: score = -loss."""
    members, nonmembers = _check_scores(member_losses, nonmember_losses)
    return attack_metrics(-members, -nonmembers)


def calibrated_attack(member_losses, nonmember_losses, member_ref_losses, nonmember_ref_losses) -> dict[str, float]:
    """Difficulty-calibrated attack: score = reference loss - target loss (how much lower than expected)."""
    members, nonmembers = _check_scores(member_losses, nonmember_losses)
    ref_m, ref_n = _check_scores(member_ref_losses, nonmember_ref_losses)
    if ref_m.shape != members.shape or ref_n.shape != nonmembers.shape:
        raise ValueError("reference losses must match the target losses one to one")
    return attack_metrics(ref_m - members, ref_n - nonmembers)


def membership_audit(targets: dict, nonmember_ref_losses) -> pd.DataFrame:
    """Loss and calibrated attacks on each target, one row per (model, epsilon).

    `targets` maps (model name, epsilon) to (member losses, non-member losses, members' reference losses); the
    non-members' reference losses are shared. Columns: loss/calibrated AUC and TPR at 1% FPR.
    """
    rows = []
    for (name, epsilon), (members, nonmembers, member_ref) in targets.items():
        row = {"model": name, "epsilon": epsilon}
        row.update({f"loss {k}": v for k, v in loss_attack(members, nonmembers).items()})
        row.update(
            {
                f"calibrated {k}": v
                for k, v in calibrated_attack(members, nonmembers, member_ref, nonmember_ref_losses).items()
            }
        )
        rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "epsilon"])


def dp_tpr_bound(fpr, epsilon: float, delta: float) -> np.ndarray:
    """The highest true-positive rate ANY membership attack on one record can reach at false-positive rate `fpr`
    against an (epsilon, delta)-DP training run: min(e^eps fpr + delta, 1 - e^-eps (1 - delta - fpr)), the
    hypothesis-testing view of DP (Kairouz et al. 2015). epsilon = inf allows everything (1)."""
    fpr = np.asarray(fpr, dtype=float)
    if ((fpr < 0) | (fpr > 1)).any():
        raise ValueError("fpr must lie in [0, 1]; pass false-positive rates such as 0.01")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}; pass the run's delta")
    if math.isinf(epsilon):
        return np.ones_like(fpr)
    bound = np.minimum(math.exp(epsilon) * fpr + delta, 1 - math.exp(-epsilon) * (1 - delta - fpr))
    return np.clip(np.maximum(bound, fpr), 0.0, 1.0)


def dp_auc_bound(epsilon: float, delta: float, points: int = 200_001) -> float:
    """The largest ROC AUC any attack on one record can reach against an (epsilon, delta)-DP run."""
    fpr = np.linspace(0.0, 1.0, points)
    return float(np.trapezoid(dp_tpr_bound(fpr, epsilon, delta), fpr))


def make_canaries(n_canaries: int, n_candidates: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candidate secrets (distinct 4-digit PINs in the template) and the canaries drawn from them.

    Returns (candidates: code, text; canaries: code, text, label). Each canary gets a random label, so only
    memorising the very PIN lowers its loss below the other candidates' under that label.
    """
    if not 1 <= n_canaries <= n_candidates <= 10_000:
        raise ValueError(f"need 1 <= n_canaries <= n_candidates <= 10000, got {n_canaries} and {n_candidates}")
    rng = np.random.default_rng(seed)
    codes = [f"{c:04d}" for c in rng.choice(10_000, size=n_candidates, replace=False)]
    candidates = pd.DataFrame({"code": codes, "text": [CANARY_TEMPLATE.format(code=c) for c in codes]})
    chosen = rng.choice(n_candidates, size=n_canaries, replace=False)
    canaries = candidates.iloc[chosen].reset_index(drop=True)
    canaries["label"] = rng.integers(0, 2, size=n_canaries)
    return candidates, canaries


def exposure(canary_loss: float, candidate_losses) -> float:
    """log2(N) - log2(rank): rank 1 when the canary has the lowest loss of the N candidates (it is among them)."""
    losses = np.asarray(candidate_losses, dtype=float)
    if losses.ndim != 1 or len(losses) < 2:
        raise ValueError(f"need at least two candidate losses, got shape {losses.shape}")
    if not np.isfinite(canary_loss) or not np.isfinite(losses).all():
        raise ValueError("losses contain NaN or infinity; check the model's outputs")
    rank = 1 + int((losses < canary_loss).sum())
    return math.log2(len(losses)) - math.log2(rank)


RANDOM_EXPOSURE = 1 / math.log(2)  # E[log2(N / rank)] for a uniform rank, large N: what no memorisation gives


def canary_exposures(
    model: torch.nn.Module, candidates: Features, candidate_codes, canaries: pd.DataFrame
) -> np.ndarray:
    """Exposure (bits) of each canary: its loss ranked among all candidate secrets' losses under its label."""
    codes = list(candidate_codes)
    missing = [code for code in canaries["code"] if code not in codes]
    if missing:
        raise ValueError(f"canary {missing[0]!r} is not among the candidates; draw both with audit.make_canaries")
    # every candidate's loss under label y is -log softmax(logits)[:, y]: one forward pass serves all canaries
    neg_log_probs = -torch.log_softmax(torch.as_tensor(predict_logits(model, candidates)), dim=1).numpy()  # (N, C)
    return np.array(
        [
            exposure(neg_log_probs[codes.index(code), int(label)], neg_log_probs[:, int(label)])
            for code, label in zip(canaries["code"], canaries["label"], strict=True)
        ]
    )
