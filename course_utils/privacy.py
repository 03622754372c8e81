"""Differential privacy: the definition, noise mechanisms, an RDP accountant and DP-SGD from scratch (chapter 02).

A mechanism M is (epsilon, delta)-DP when, for every pair of neighbouring data sets D, D' (here: one record
added or removed) and every set of outputs S, P[M(D) in S] <= e^epsilon P[M(D') in S] + delta. It is a
property of the randomised algorithm, not of a loss value: the seed course's "loss + eps/N ln(1/delta) +
half the squared gradient norm" is not DP. This module builds the real thing step by step:

- validation helpers (`check_epsilon`, `check_delta`, ...) that every function below uses;
- the Laplace and Gaussian mechanisms (the analytic Gaussian of Balle & Wang 2018), a private histogram and
  an empirical check that the privacy loss of the Laplace mechanism stays within epsilon;
- a Renyi-DP accountant for the Poisson-subsampled Gaussian mechanism (Mironov 2017; Mironov, Talwar &
  Zhang 2019) written from the definitions, checked against Opacus's RDP and PRV accountants;
- DP-SGD: per-sample gradients with torch.func, clipping, Gaussian noise, one optimizer step; checked against
  Opacus's GradSampleModule + DPOptimizer.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import PRVAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from scipy import special
from torch.func import functional_call, grad, vmap

# The orders Opacus's RDPAccountant searches (1.1, 1.2, ..., 10.9, 12, ..., 63): same grid, same epsilon.
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
CLIP_EPS = 1e-6  # added to the per-sample norm before dividing, as Opacus does


# ---------------------------------------------------------------------------------------------- validation


def check_epsilon(epsilon: float, allow_inf: bool = False) -> float:
    """Return epsilon if it is > 0 (math.inf only where a function documents it as 'no privacy') (chapter 02)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating, np.integer)):
        raise ValueError(f"epsilon must be a number > 0, got {epsilon!r}; pass a positive privacy budget")
    if math.isnan(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}; pass a positive privacy budget")
    if math.isinf(epsilon) and not allow_inf:
        raise ValueError(f"epsilon must be finite here, got {epsilon}; pass a finite privacy budget such as 1.0")
    return float(epsilon)


def check_delta(delta: float) -> float:
    """Return delta if it is in (0, 1) (chapter 02)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating)) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}; pass default_delta(N) or smaller")
    return float(delta)


def check_clip_norm(clip_norm: float) -> float:
    """Return the clipping norm C if it is a finite number > 0 (chapter 02)."""
    if (
        isinstance(clip_norm, bool)
        or not isinstance(clip_norm, (int, float, np.floating))
        or not 0 < clip_norm < math.inf
    ):
        raise ValueError(f"clip_norm must be > 0 and finite, got {clip_norm!r}; try 1.0")
    return float(clip_norm)


def check_sample_rate(sample_rate: float) -> float:
    """Return the Poisson sampling rate q if it is in (0, 1] (chapter 02)."""
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, (int, float, np.floating))
        or not 0 < sample_rate <= 1
    ):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}; use batch_size / N")
    return float(sample_rate)


def check_noise_multiplier(noise_multiplier: float) -> float:
    """Return the noise multiplier sigma if it is a finite number >= 0 (0 means no privacy) (chapter 02)."""
    if (
        isinstance(noise_multiplier, bool)
        or not isinstance(noise_multiplier, (int, float, np.floating))
        or not 0 <= noise_multiplier < math.inf
    ):
        raise ValueError(f"noise_multiplier must be >= 0 and finite, got {noise_multiplier!r}; try 1.0")
    return float(noise_multiplier)


def _check_sensitivity(sensitivity: float) -> float:
    """Return the sensitivity if it is a finite number > 0."""
    if not isinstance(sensitivity, (int, float, np.floating)) or not 0 < sensitivity < math.inf:
        raise ValueError(
            f"sensitivity must be > 0 and finite, got {sensitivity!r}; bound how much one record can change the value"
        )
    return float(sensitivity)


def _check_steps(steps: int) -> int:
    """Return the number of steps if it is a positive integer."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}; pass epochs * N // batch_size")
    return int(steps)


def default_delta(n: int) -> float:
    """delta = 1/(10 N) for N training examples (not batches) (chapter 02).

    delta is the probability with which the guarantee may fail outright: a mechanism that publishes one random
    record in full is (0, 1/N)-DP. So delta must sit well below 1/N; a tenth of it is the course's choice.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be the number of training examples (an integer >= 2), got {n!r}; pass len(train)")
    return check_delta(1.0 / (10 * n))


def basic_composition(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """k (epsilon, delta)-DP releases on the same data are (k epsilon, k delta)-DP (basic composition) (chapter 02)."""
    check_epsilon(epsilon)
    k = _check_count(k)
    return k * epsilon, k * delta


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """What (epsilon, delta)-DP guarantees for a group of k records, e.g. one secret written k times: (k eps,
    k e^((k-1) eps) delta) (chapter 02). Pure DP (delta = 0) gives k eps; with delta > 0 the delta term explodes."""
    check_epsilon(epsilon)
    k = _check_count(k)
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}; pass the run's delta")
    if delta == 0:
        return k * epsilon, 0.0
    log_delta = math.log(k) + (k - 1) * epsilon + math.log(delta)  # in logs: e^((k-1) eps) overflows for large k
    return k * epsilon, 1.0 if log_delta >= 0 else math.exp(log_delta)


def _check_count(k: int) -> int:
    """A positive whole number of releases or records."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (releases or records), got {k!r}")
    return int(k)


# ---------------------------------------------------------------------------------------------- mechanisms


def laplace_mechanism(value, sensitivity: float, epsilon: float, rng: np.random.Generator):
    """value + Laplace(sensitivity/epsilon) noise, epsilon-DP; epsilon=math.inf adds none (no privacy) (chapter 02)."""
    sensitivity, epsilon = _check_sensitivity(sensitivity), check_epsilon(epsilon, allow_inf=True)
    value = np.asarray(value, dtype=float)
    if math.isinf(epsilon):
        return value.copy() if value.ndim else float(value)
    noisy = value + rng.laplace(0.0, sensitivity / epsilon, size=value.shape)
    return noisy if value.ndim else float(noisy)


def _gaussian_delta(sigma: float, sensitivity: float, epsilon: float) -> float:
    """The exact delta of the Gaussian mechanism with noise std sigma (Balle & Wang 2018, Theorem 8)."""
    a = sensitivity / (2 * sigma)
    b = epsilon * sigma / sensitivity
    # Phi(a - b) - e^eps Phi(-a - b); the second term in log space so e^eps cannot overflow
    return float(special.ndtr(a - b) - math.exp(min(epsilon + special.log_ndtr(-a - b), 700.0)))


def gaussian_sigma(sensitivity: float, epsilon: float, delta: float, tol: float = 1e-12) -> float:
    """Smallest noise std making the Gaussian mechanism (epsilon, delta)-DP for any epsilon > 0 (chapter 02).

    The classic sigma = sensitivity * sqrt(2 ln(1.25/delta)) / epsilon only holds for epsilon < 1 and is loose;
    here the exact delta(sigma) of Balle & Wang (2018), decreasing in sigma, is solved for by bisection.
    """
    sensitivity, epsilon, delta = _check_sensitivity(sensitivity), check_epsilon(epsilon), check_delta(delta)
    low, high = sensitivity * 1e-3, sensitivity
    while _gaussian_delta(high, sensitivity, epsilon) > delta:
        low, high = high, 2 * high
    while _gaussian_delta(low, sensitivity, epsilon) <= delta:
        low /= 2
    while (high - low) > tol * high:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if _gaussian_delta(mid, sensitivity, epsilon) > delta else (low, mid)
    return high  # delta(high) <= delta always holds


def classic_gaussian_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    """The textbook bound sensitivity * sqrt(2 ln(1.25/delta)) / epsilon, valid only for epsilon < 1 (chapter 02)."""
    sensitivity, epsilon, delta = _check_sensitivity(sensitivity), check_epsilon(epsilon), check_delta(delta)
    if epsilon >= 1:
        raise ValueError(f"the classic Gaussian bound needs epsilon < 1, got {epsilon}; use gaussian_sigma instead")
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def gaussian_mechanism(value, sensitivity: float, epsilon: float, delta: float, rng: np.random.Generator):
    """value + N(0, gaussian_sigma^2) noise: (epsilon, delta)-DP for L2 sensitivity `sensitivity` (chapter 02)."""
    sigma = gaussian_sigma(sensitivity, epsilon, delta)
    value = np.asarray(value, dtype=float)
    noisy = value + rng.normal(0.0, sigma, size=value.shape)
    return noisy if value.ndim else float(noisy)


def private_histogram(
    values, bins, epsilon: float, rng: np.random.Generator, mechanism: str = "laplace", delta: float | None = None
) -> np.ndarray:
    """Noisy counts per bin; each record falls in at most one bin, so L1 and L2 sensitivity are 1 (chapter 02).

    Neighbouring data sets differ by adding or removing one record (values outside `bins` are not counted).
    mechanism="laplace" is epsilon-DP; "gaussian" is (epsilon, delta)-DP and needs delta.
    """
    counts = np.histogram(np.asarray(values, dtype=float), bins=bins)[0].astype(float)  # (n_bins,)
    if mechanism == "laplace":
        return laplace_mechanism(counts, 1.0, epsilon, rng)
    if mechanism == "gaussian":
        if delta is None:
            raise ValueError("the gaussian histogram needs delta, got None; pass delta=default_delta(len(values))")
        return gaussian_mechanism(counts, 1.0, epsilon, delta, rng)
    raise ValueError(f"mechanism must be 'laplace' or 'gaussian', got {mechanism!r}; pick one of the two")


def empirical_privacy_loss(samples_a, samples_b, bins, min_count: int = 1000) -> float:
    """Estimated max over bins of |log(P_a(bin) / P_b(bin))| from outputs on two neighbouring data sets (chapter 02).

    Only bins where either side has at least `min_count` samples count (rare bins are too noisy); a bin that one
    side fills and the other never reaches gives math.inf: the outputs tell the data sets apart for sure.
    """
    count_a = np.histogram(np.asarray(samples_a, dtype=float), bins=bins)[0].astype(float)  # (n_bins,)
    count_b = np.histogram(np.asarray(samples_b, dtype=float), bins=bins)[0].astype(float)  # (n_bins,)
    if count_a.sum() == 0 or count_b.sum() == 0:
        raise ValueError("no samples fall inside the bins, got an empty histogram; widen the bins")
    keep = np.maximum(count_a, count_b) >= min_count
    if not keep.any():
        raise ValueError(f"no bin holds {min_count} samples; draw more samples or use fewer, wider bins")
    p_a, p_b = count_a[keep] / count_a.sum(), count_b[keep] / count_b.sum()
    with np.errstate(divide="ignore"):
        return float(np.max(np.abs(np.log(p_a) - np.log(p_b))))


# ---------------------------------------------------------------------------------------------- RDP accountant


def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha for integer alpha: a binomial expansion of E[(mixture/base)^alpha] (Mironov et al. 2019, 3.3)."""
    i = np.arange(alpha + 1)  # (alpha+1,)
    log_binom = special.gammaln(alpha + 1) - special.gammaln(i + 1) - special.gammaln(alpha - i + 1)
    terms = log_binom + i * math.log(q) + (alpha - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
    return float(special.logsumexp(terms))


def _log_a_fractional(q: float, sigma: float, alpha: float) -> float:
    """log A_alpha for fractional alpha: a series split at z0, where the two mixture parts are equal (MTZ 2019).

    Terms of the generalised binomial series have alternating signs, so they are summed as signed values in log
    space (scipy's logsumexp with b=sign) until both halves are below e^-30.
    """
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    terms0, terms1, signs = [], [], []
    i = 0
    while True:
        coef, j = special.binom(alpha, i), alpha - i
        log_coef = math.log(abs(coef))
        log_e0 = special.log_ndtr(-(i - z0) / sigma)  # log P[N(0, sigma^2) > i - z0], i.e. 0.5 erfc(...)
        log_e1 = special.log_ndtr(-(z0 - j) / sigma)
        s0 = log_coef + i * math.log(q) + j * math.log1p(-q) + (i * i - i) / (2 * sigma**2) + log_e0
        s1 = log_coef + j * math.log(q) + i * math.log1p(-q) + (j * j - j) / (2 * sigma**2) + log_e1
        terms0.append(s0)
        terms1.append(s1)
        signs.append(1.0 if coef > 0 else -1.0)
        i += 1
        if max(s0, s1) < -30:
            break
    log_a0 = special.logsumexp(terms0, b=signs)
    log_a1 = special.logsumexp(terms1, b=signs)
    return float(np.logaddexp(log_a0, log_a1))


def _rdp_one_order(q: float, sigma: float, alpha: float) -> float:
    """RDP at order alpha of one step of the Poisson-subsampled Gaussian mechanism (sensitivity 1, std sigma)."""
    if sigma == 0:
        return math.inf  # no noise: no privacy
    if q == 1.0:
        return alpha / (2 * sigma**2)  # the plain Gaussian mechanism (Mironov 2017, Table 2)
    # mu0 = N(0, sigma^2) (record absent), mu = (1 - q) mu0 + q N(1, sigma^2) (record sampled with probability q);
    # A_alpha = E_{z ~ mu0}[(mu(z) / mu0(z))^alpha] and the RDP of order alpha is log(A_alpha) / (alpha - 1).
    log_a = _log_a_integer(q, sigma, int(alpha)) if float(alpha).is_integer() else _log_a_fractional(q, sigma, alpha)
    return log_a / (alpha - 1)


def rdp_subsampled_gaussian(q: float, sigma: float, orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """Per-step RDP of the Poisson-subsampled Gaussian mechanism at each order alpha > 1 (chapter 02)."""
    q, sigma = check_sample_rate(q), check_noise_multiplier(sigma)
    orders = np.atleast_1d(np.asarray(orders, dtype=float))  # (A,)
    if (orders <= 1).any():
        raise ValueError(f"RDP orders must be > 1, got {orders.min()}; use DEFAULT_ORDERS")
    return np.array([_rdp_one_order(q, sigma, float(a)) for a in orders])  # (A,)


def rdp_to_epsilon(rdp: Sequence[float], orders: Sequence[float], delta: float) -> tuple[float, float]:
    """(epsilon, best order) from RDP values, with Opacus's conversion (Balle et al. 2020, Theorem 21) (chapter 02).

    eps(alpha) = rdp(alpha) - (ln delta + ln alpha) / (alpha - 1) + ln((alpha - 1) / alpha), minimised over alpha;
    tighter than Mironov's rdp + ln(1/delta) / (alpha - 1). Returns (math.inf, nan) when every order is infinite.
    """
    delta = check_delta(delta)
    rdp, orders = np.atleast_1d(np.asarray(rdp, dtype=float)), np.atleast_1d(np.asarray(orders, dtype=float))
    if rdp.shape != orders.shape:
        raise ValueError(
            f"rdp and orders must have the same length, got {rdp.size} and {orders.size}; compute rdp at these orders"
        )
    eps = rdp - (math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)  # (A,)
    if not np.isfinite(eps).any():
        return math.inf, math.nan
    best = int(np.nanargmin(eps))
    return float(eps[best]), float(orders[best])


def epsilon_after(q: float, sigma: float, steps: int, delta: float, orders: Sequence[float] = DEFAULT_ORDERS) -> float:
    """Epsilon spent by `steps` DP-SGD steps (Poisson rate q, noise multiplier sigma), RDP accountant (chapter 02)."""
    rdp = rdp_subsampled_gaussian(q, sigma, orders) * _check_steps(steps)  # RDP composes by adding
    return rdp_to_epsilon(rdp, orders, delta)[0]


def epsilon_prv(q: float, sigma: float, steps: int, delta: float, eps_error: float = 0.01) -> float:
    """Epsilon from Opacus's PRV accountant (Gopi et al. 2021), an upper bound to compare with RDP (chapter 02)."""
    q, sigma, delta = check_sample_rate(q), check_noise_multiplier(sigma), check_delta(delta)
    if sigma == 0:
        raise ValueError("noise_multiplier must be > 0 for the PRV accountant, got 0; without noise epsilon is inf")
    accountant = PRVAccountant()
    accountant.history = [(sigma, q, _check_steps(steps))]
    return float(accountant.get_epsilon(delta=delta, eps_error=eps_error))


def noise_for_epsilon(target_eps: float, q: float, steps: int, delta: float) -> float:
    """The noise multiplier reaching target_eps after `steps` steps (Opacus's search, RDP accountant) (chapter 02)."""
    target_eps, q, delta = check_epsilon(target_eps), check_sample_rate(q), check_delta(delta)
    return float(
        get_noise_multiplier(
            target_epsilon=target_eps, target_delta=delta, sample_rate=q, steps=_check_steps(steps), accountant="rdp"
        )
    )


# ---------------------------------------------------------------------------------------------- DP-SGD

Inputs = "torch.Tensor | tuple[torch.Tensor, ...]"  # one input tensor, or several (e.g. hidden states and a mask)


def _as_tuple(inputs) -> tuple[torch.Tensor, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def per_sample_grads(
    model: torch.nn.Module, loss_fn: Callable, batch_inputs: Inputs, batch_labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Gradient of each example's own loss: {name: (B, *param.shape)} via torch.func vmap(grad) (chapter 02)."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def one_loss(p: dict, x: tuple, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), tuple(t.unsqueeze(0) for t in x))  # a batch of one
        return loss_fn(out, y.unsqueeze(0))

    return vmap(grad(one_loss), in_dims=(None, 0, 0), randomness="different")(
        params, _as_tuple(batch_inputs), batch_labels
    )


def clip_and_noise(
    per_sample: dict[str, torch.Tensor],
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
    expected_batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Clip each example's whole gradient to L2 norm C, sum, add N(0, (sigma C)^2), divide by B (chapter 02).

    The convention is Opacus's DPOptimizer with loss_reduction="mean": factor min(1, C / (norm + 1e-6)) with the
    norm over all parameters together, noise std sigma * C on the sum, then division by expected_batch_size
    (the actual batch size when None; with Poisson sampling pass q * N, as Opacus does).
    """
    clip_norm, noise_multiplier = check_clip_norm(clip_norm), check_noise_multiplier(noise_multiplier)
    grads = list(per_sample.values())
    batch = grads[0].shape[0]
    divisor = batch if expected_batch_size is None else expected_batch_size
    if divisor < 1:
        raise ValueError(f"expected_batch_size must be >= 1, got {divisor}; pass sample_rate * N")
    norms = torch.stack([g.reshape(batch, -1).norm(2, dim=1) for g in grads], dim=1).norm(2, dim=1)  # (B,)
    factor = (clip_norm / (norms + CLIP_EPS)).clamp(max=1.0)  # (B,)
    out = {}
    for name, g in per_sample.items():
        summed = torch.einsum("i,i...->...", factor.to(g.dtype), g)  # (*param.shape)
        noise = (
            torch.normal(0.0, noise_multiplier * clip_norm, size=summed.shape, generator=generator, dtype=summed.dtype)
            if noise_multiplier > 0
            else torch.zeros_like(summed)
        )
        out[name] = (summed + noise) / divisor
    return out


def dp_sgd_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    batch_inputs: Inputs,
    batch_labels: torch.Tensor,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
    expected_batch_size: int | None = None,
) -> float:
    """One DP-SGD step: per-sample grads, clip, noise, average into p.grad, step; returns the new loss (chapter 02)."""
    noisy = clip_and_noise(
        per_sample_grads(model, loss_fn, batch_inputs, batch_labels),
        clip_norm,
        noise_multiplier,
        generator,
        expected_batch_size,
    )
    optimizer.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        if name in noisy:
            p.grad = noisy[name].to(p.dtype)
    optimizer.step()
    with torch.no_grad():
        return float(loss_fn(model(*_as_tuple(batch_inputs)), batch_labels))  # loss after the step


def naive_per_sample_grads(
    model: torch.nn.Module, loss_fn: Callable, batch_inputs: Inputs, batch_labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample gradients the slow way: one backward pass per example (chapter 02)."""
    names = [k for k, v in model.named_parameters() if v.requires_grad]
    inputs = _as_tuple(batch_inputs)
    rows = []
    for i, y in enumerate(batch_labels):
        loss = loss_fn(model(*(t[i : i + 1] for t in inputs)), y.unsqueeze(0))
        rows.append(torch.autograd.grad(loss, [p for _, p in model.named_parameters() if p.requires_grad]))
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(names)}  # (B, *shape)


def opacus_per_sample_grads(
    model: torch.nn.Module, loss_fn: Callable, batch_inputs: Inputs, batch_labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample gradients from Opacus's GradSampleModule hooks, on a copy of the model (chapter 02)."""
    wrapped = GradSampleModule(copy.deepcopy(model), loss_reduction="mean")
    with warnings.catch_warnings():  # torch notes the hook fires on module outputs when inputs are token ids
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss_fn(wrapped(*_as_tuple(batch_inputs)), batch_labels).backward()  # loss_fn must average over the batch
    out = {
        name.removeprefix("_module."): p.grad_sample.detach()
        for name, p in wrapped.named_parameters()
        if p.requires_grad
    }
    wrapped.remove_hooks()
    return out


def opacus_clipped_grads(
    model: torch.nn.Module,
    inputs: Inputs,
    labels: torch.Tensor,
    clip_norm: float,
    noise_multiplier: float = 0.0,
    generator: torch.Generator | None = None,
    loss_fn: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """Opacus's clipped (and noised) average gradient for one batch: GradSampleModule + DPOptimizer.pre_step.

    The library counterpart of `clip_and_noise(per_sample_grads(...))`, on a copy of the model (chapter 02).
    """
    clip_norm, noise_multiplier = check_clip_norm(clip_norm), check_noise_multiplier(noise_multiplier)
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    wrapped = GradSampleModule(copy.deepcopy(model))
    optimizer = DPOptimizer(
        torch.optim.SGD(wrapped.parameters(), lr=0.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=clip_norm,
        expected_batch_size=len(labels),
        generator=generator,
    )
    optimizer.zero_grad()
    with warnings.catch_warnings():  # torch notes its backward hook fires on module outputs (integer inputs)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss_fn(wrapped(*_as_tuple(inputs)), labels).backward()
    optimizer.pre_step()
    out = {
        name.removeprefix("_module."): p.grad.detach().clone()
        for name, p in wrapped.named_parameters()
        if p.requires_grad
    }
    wrapped.remove_hooks()
    return out


def time_per_sample_grads(
    model: torch.nn.Module,
    batch: tuple,
    repeats: int = 3,
    loss_fn: Callable | None = None,
    methods: Sequence[str] = ("naive_loop_s", "torch_func_s", "opacus_s"),
) -> dict[str, float]:
    """Best-of-`repeats` seconds for per-sample grads: naive loop, torch.func, Opacus GradSampleModule (chapter 02)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}; try 3")
    known = {
        "naive_loop_s": naive_per_sample_grads,
        "torch_func_s": per_sample_grads,
        "opacus_s": opacus_per_sample_grads,
    }
    if not methods or set(methods) - set(known):
        raise ValueError(f"methods must be a non-empty subset of {sorted(known)}, got {list(methods)}")
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    inputs, labels = batch
    times = {}
    for label, fn in [(m, known[m]) for m in methods]:
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            fn(model, loss_fn, inputs, labels)
            best = min(best, time.perf_counter() - start)
        times[label] = best
    return times


def unsupported_layers(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(name, reason) for each layer Opacus's ModuleValidator rejects, e.g. BatchNorm (chapter 02)."""
    found = []
    for name, module in model.named_modules():
        validator = ModuleValidator.VALIDATORS.get(type(module))
        for error in validator(module) if validator is not None else []:
            first_sentence = " ".join(str(error).split()).split(". ")[0].rstrip(".")  # Opacus explains at length
            found.append((name or "<root>", f"{type(module).__name__}: {first_sentence}"))
    return found


def unsupported_layer_check(model: torch.nn.Module) -> None:
    """Raise a one-line ValueError naming the first layer Opacus cannot train privately (chapter 02)."""
    found = unsupported_layers(model)
    if found:
        name, reason = found[0]
        raise ValueError(
            f"Opacus cannot handle layer {name!r}, got {reason}; replace it, e.g. "
            "model = ModuleValidator.fix(model) turns BatchNorm into GroupNorm"
        )


def grad_sample_mismatches(model: torch.nn.Module, tokenizer, texts: list[str]) -> dict[str, tuple[int, ...]]:
    """Trainable parameters whose Opacus per-sample gradient lacks the batch dimension, with its shape.

    BERT's position embeddings are looked up with a (1, T) position_ids buffer shared by the batch, so the
    Embedding hook sees one "sample" and gives a (1, vocab, H) grad_sample: per-sample clipping then fails.
    Freeze them (as here: everything below the top is frozen) or pass position_ids expanded to (B, T).
    """
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=32, return_tensors="pt")
    wrapped = GradSampleModule(model)
    model.train()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            logits = wrapped(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            logits.sum().backward()
        found = {
            name.removeprefix("_module."): tuple(p.grad_sample.shape)
            for name, p in wrapped.named_parameters()
            if p.requires_grad and getattr(p, "grad_sample", None) is not None and p.grad_sample.shape[0] != len(texts)
        }
    finally:
        wrapped.remove_hooks()
        for p in model.parameters():
            p.grad, p.grad_sample = None, None
        model.eval()
    return found
