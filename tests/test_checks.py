"""Every exercise self-check passes on the reference solution and fails on the stub and on a wrong answer."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from course_utils import checks, evaluation


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


def test_cmp_reports_exact_and_approximate(capsys):
    assert checks.cmp("same", [1.0, 2.0], [1.0, 2.0])
    assert not checks.cmp("far", [1.0], [2.0])
    assert "maxdiff" in capsys.readouterr().out


def test_token_lengths_check(tokenizer):
    checks.check_token_lengths(lambda tok, texts: [len(i) for i in tok(list(texts))["input_ids"]], tokenizer)
    with pytest.raises(AssertionError, match="not done yet"):
        checks.check_token_lengths(stub, tokenizer)
    with pytest.raises(AssertionError, match="special tokens"):  # forgot [CLS]/[SEP]
        checks.check_token_lengths(lambda tok, texts: [len(tok.tokenize(t)) for t in texts], tokenizer)


def test_logits_check():
    checks.check_logits_to_labels(evaluation.predictions_from_logits)
    with pytest.raises(AssertionError, match="not done yet"):
        checks.check_logits_to_labels(stub)
    with pytest.raises(AssertionError, match="should raise ValueError"):
        checks.check_logits_to_labels(lambda logits: logits.argmax(dim=-1))
    with pytest.raises(AssertionError, match="wrong labels"):
        checks.check_logits_to_labels(lambda logits: logits.argmax(dim=0))


def test_macro_f1_check():
    checks.check_macro_f1(lambda t, p: f1_score(t, p, average="macro", labels=[0, 1], zero_division=0))
    with pytest.raises(AssertionError, match="not done yet"):
        checks.check_macro_f1(stub)
    with pytest.raises(AssertionError, match="expected"):
        checks.check_macro_f1(lambda t, p: float(np.mean(np.asarray(t) == np.asarray(p))))


def test_recommend_check():
    def reference(scores, min_count, k):
        return evaluation.rank_items(scores, min_count=min_count, k=k)["movie_name"].tolist()

    checks.check_recommend(reference)
    with pytest.raises(AssertionError, match="not done yet"):
        checks.check_recommend(stub)
    with pytest.raises(AssertionError, match="fewer reviews"):  # ignores min_count
        checks.check_recommend(lambda s, m, k: reference(s, 1, k))


def test_confident_errors_check():
    def reference(frame, probs, k):
        return evaluation.confident_errors(frame, probs, k)["text"].tolist()

    checks.check_confident_errors(reference)
    with pytest.raises(AssertionError, match="not done yet"):
        checks.check_confident_errors(stub)
    with pytest.raises(AssertionError, match="highest first"):  # least confident first
        checks.check_confident_errors(lambda f, p, k: reference(f, p, len(f))[::-1][:k])


def test_chapter_01_checks_pass_on_references_and_fail_on_stubs():
    import re

    from course_utils import cleaning, dataprep

    checks.check_redact_emails(lambda t: cleaning.PII_PATTERNS["EMAIL"].sub("[EMAIL]", t))
    checks.check_shingle_jaccard(dataprep.jaccard)
    checks.check_minmax_train_only(lambda tr, te: ((te - tr.min()) / (tr.max() - tr.min())).to_numpy())
    checks.check_random_swap(lambda t, rng, n: dataprep.random_swap(t, rng, n))

    def group_split(frame, group, size, seed):
        from sklearn.model_selection import GroupShuffleSplit
        tr, te = next(GroupShuffleSplit(1, test_size=size, random_state=seed).split(frame, groups=frame[group]))
        return frame.iloc[tr], frame.iloc[te]

    checks.check_group_split(group_split)
    for check in (checks.check_redact_emails, checks.check_shingle_jaccard, checks.check_minmax_train_only,
                  checks.check_random_swap, checks.check_group_split):
        with pytest.raises(AssertionError, match="not done yet"):
            check(stub)
    wrong = {checks.check_redact_emails: lambda t: re.sub(r"\S+@\S+", "[EMAIL]", t),        # eats handles too
             checks.check_shingle_jaccard: lambda a, b, k: dataprep.jaccard(a.lower(), b.lower(), k + 1),
             checks.check_minmax_train_only: lambda tr, te: ((te - te.min()) / (te.max() - te.min())).to_numpy(),
             checks.check_random_swap: lambda t, rng, n: " ".join(sorted(t.split())),
             checks.check_group_split: lambda f, g, s, seed: (f.iloc[:240], f.iloc[240:])}
    for check, fn in wrong.items():
        with pytest.raises(AssertionError):
            check(fn)


def test_chapter_02_checks_pass_on_references_and_fail_on_stubs_and_wrong_answers():
    import math

    import torch
    from sklearn.metrics import roc_auc_score

    from course_utils import audit, privacy

    def laplace(count, eps, rng):
        if eps <= 0:
            raise ValueError("epsilon must be > 0")
        return count + rng.laplace(0.0, 1.0 / eps)

    def clip(per_sample, c):
        norms = torch.cat([g.flatten(1) for g in per_sample.values()], 1).norm(dim=1)
        f = (c / (norms + 1e-6)).clamp(max=1.0)
        return {k: g * f.view(-1, *([1] * (g.dim() - 1))) for k, g in per_sample.items()}

    def auc(m, n):
        return roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(n))], -np.r_[m, n])

    references = {checks.check_laplace_count: laplace, checks.check_clip_per_example: clip,
                  checks.check_gaussian_epsilon: lambda s, k, d: privacy.epsilon_after(1.0, s, k, d),
                  checks.check_attack_auc: auc, checks.check_exposure: audit.exposure}
    wrong = {checks.check_laplace_count: lambda c, e, rng: c + rng.laplace(0.0, e) if e > 0 else 1 / 0,
             checks.check_clip_per_example: lambda p, c: {k: g * (c / (g.flatten(1).norm(dim=1) + 1e-6)).clamp(max=1)
                                                          .view(-1, *([1] * (g.dim() - 1))) for k, g in p.items()},
             checks.check_gaussian_epsilon: lambda s, k, d: min(k * a / (2 * s * s) + math.log(1 / d) / (a - 1)
                                                                for a in privacy.DEFAULT_ORDERS) * 1.5,
             checks.check_attack_auc: lambda m, n: 1 - auc(m, n),
             checks.check_exposure: lambda c, l: math.log2(len(l)) - math.log2(max(1, int((np.asarray(l) < c).sum())))}
    for check, fn in references.items():
        check(fn)
        with pytest.raises(AssertionError, match="not done yet"):
            check(stub)
        with pytest.raises((AssertionError, ZeroDivisionError)):
            check(wrong[check])
