"""Chapter 02 differential privacy: validation, mechanisms, the RDP accountant against Opacus, DP-SGD."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from course_utils import privacy

DELTA = 1e-5


class Tiny(torch.nn.Module):
    """Embedding -> LayerNorm -> mean over tokens -> Linear: one of each layer kind DP-SGD must handle."""

    def __init__(self, vocab: int = 20, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.emb(tokens)).mean(dim=1))  # (B, T) -> (B, T, D) -> (B, D) -> (B, C)


@pytest.fixture()
def tiny_batch() -> tuple[Tiny, torch.Tensor, torch.Tensor]:
    """A seeded tiny model and a batch of 16 token sequences of length 5."""
    torch.manual_seed(123)
    return Tiny(), torch.randint(0, 20, (16, 5)), torch.randint(0, 3, (16,))


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "check, bad",
    [
        (privacy.check_epsilon, 0),
        (privacy.check_epsilon, -1),
        (privacy.check_epsilon, math.nan),
        (privacy.check_epsilon, math.inf),
        (privacy.check_delta, 0),
        (privacy.check_delta, 1),
        (privacy.check_clip_norm, 0),
        (privacy.check_clip_norm, -0.5),
        (privacy.check_sample_rate, 0),
        (privacy.check_sample_rate, 1.5),
        (privacy.check_noise_multiplier, -0.1),
        (privacy.default_delta, 1),
    ],
)
def test_checks_raise_one_line_naming_the_value(check, bad) -> None:
    with pytest.raises(ValueError, match=f"got {bad}") as info:
        check(bad)
    assert "\n" not in str(info.value) and ";" in str(info.value)


def test_checks_accept_valid_values() -> None:
    assert privacy.check_epsilon(math.inf, allow_inf=True) == math.inf
    assert privacy.check_sample_rate(1.0) == 1.0 and privacy.check_noise_multiplier(0) == 0.0
    assert privacy.default_delta(1000) == pytest.approx(1e-4)  # 1/(10 N)


# ---------------------------------------------------------------------------------------------- mechanisms


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 0.9])
def test_analytic_gaussian_is_below_the_classic_bound(epsilon: float) -> None:
    sigma = privacy.gaussian_sigma(1.0, epsilon, DELTA)
    assert sigma < privacy.classic_gaussian_sigma(1.0, epsilon, DELTA)


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 4.0])
def test_analytic_gaussian_is_the_smallest_sigma(epsilon: float) -> None:
    sigma = privacy.gaussian_sigma(2.0, epsilon, DELTA)
    assert privacy._gaussian_delta(sigma, 2.0, epsilon) <= DELTA < privacy._gaussian_delta(0.99 * sigma, 2.0, epsilon)


def test_classic_bound_refuses_large_epsilon() -> None:
    with pytest.raises(ValueError, match="epsilon < 1, got 2"):
        privacy.classic_gaussian_sigma(1.0, 2.0, DELTA)


def test_mechanisms_add_noise_of_the_right_scale() -> None:
    rng = np.random.default_rng(0)
    laplace = privacy.laplace_mechanism(np.zeros(100_000), 2.0, 0.5, rng)
    assert laplace.std() == pytest.approx(math.sqrt(2) * 4.0, rel=0.03)  # Laplace(b) has std sqrt(2) b
    gauss = privacy.gaussian_mechanism(np.zeros(100_000), 1.0, 1.0, DELTA, rng)
    assert gauss.std() == pytest.approx(privacy.gaussian_sigma(1.0, 1.0, DELTA), rel=0.03)
    assert isinstance(privacy.laplace_mechanism(3.0, 1.0, 1.0, rng), float)


def test_private_histogram() -> None:
    rng = np.random.default_rng(0)
    values = np.repeat([0.5, 1.5, 2.5], [100, 200, 300])
    noisy = privacy.private_histogram(values, [0, 1, 2, 3], 1.0, rng)
    assert noisy.shape == (3,) and np.abs(noisy - [100, 200, 300]).max() < 20
    noisy = privacy.private_histogram(values, [0, 1, 2, 3], 1.0, rng, mechanism="gaussian", delta=DELTA)
    assert np.abs(noisy - [100, 200, 300]).max() < 30
    with pytest.raises(ValueError, match="needs delta"):
        privacy.private_histogram(values, [0, 1, 2, 3], 1.0, rng, mechanism="gaussian")


@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_private_histogram_noise_has_the_calibrated_scale(epsilon) -> None:
    """Sensitivity 1 per bin: Laplace noise of scale 1/epsilon (MAD 1/epsilon, std sqrt(2)/epsilon), Gaussian noise
    of the analytic sigma. A wrong sensitivity, a scale of epsilon, or the other distribution all fail."""
    rng = np.random.default_rng(3)
    values, bins, truth = np.repeat([0.5, 1.5, 2.5], [100, 200, 300]), [0, 1, 2, 3], np.array([100, 200, 300])
    noise = np.stack([privacy.private_histogram(values, bins, epsilon, rng) - truth for _ in range(20_000)])
    assert np.abs(noise.mean(0)).max() < 0.1 / epsilon
    assert np.abs(noise).mean() * epsilon == pytest.approx(1.0, rel=0.02)  # Gaussian: 1.13
    assert noise.std() * epsilon == pytest.approx(math.sqrt(2), rel=0.02)
    gauss = np.stack(
        [
            privacy.private_histogram(values, bins, epsilon, rng, mechanism="gaussian", delta=DELTA) - truth
            for _ in range(20_000)
        ]
    )
    assert gauss.std() == pytest.approx(privacy.gaussian_sigma(1.0, epsilon, DELTA), rel=0.02)
    assert np.abs(gauss).mean() / gauss.std() == pytest.approx(math.sqrt(2 / math.pi), rel=0.02)


def test_laplace_privacy_loss_stays_within_epsilon() -> None:
    rng = np.random.default_rng(1)
    n, epsilon, bins = 200_000, 1.0, np.arange(0.0, 21.0, 0.5)
    count_d, count_d_prime = 10.0, 11.0  # a counting query on neighbouring data sets: sensitivity 1
    out_d = privacy.laplace_mechanism(np.full(n, count_d), 1.0, epsilon, rng)
    out_d_prime = privacy.laplace_mechanism(np.full(n, count_d_prime), 1.0, epsilon, rng)
    loss = privacy.empirical_privacy_loss(out_d, out_d_prime, bins)
    assert 0.8 * epsilon < loss <= epsilon + 0.15
    too_little = privacy.laplace_mechanism(np.full(n, count_d_prime), 1.0, 4 * epsilon, rng)  # claims eps=1
    assert (
        privacy.empirical_privacy_loss(
            privacy.laplace_mechanism(np.full(n, count_d), 1.0, 4 * epsilon, rng), too_little, bins
        )
        > 2 * epsilon
    )
    no_noise = privacy.laplace_mechanism(np.full(n, count_d_prime), 1.0, math.inf, rng)
    assert privacy.empirical_privacy_loss(np.full(n, count_d), no_noise, bins) == math.inf


# ---------------------------------------------------------------------------------------------- accountant

GRID_Q, GRID_SIGMA, GRID_STEPS = (0.001, 0.01, 0.05, 0.2), (0.5, 0.8, 1.0, 2.0), (10, 100, 1000)


def _opacus_rdp_epsilon(q: float, sigma: float, steps: int) -> float:
    """Opacus's RDPAccountant epsilon, fed the history that `.step()` would build."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]  # (noise_multiplier, sample_rate, steps)
    with warnings.catch_warnings():  # Opacus warns when the best order is at the edge of the grid
        warnings.simplefilter("ignore", UserWarning)
        return accountant.get_epsilon(delta=DELTA)


def test_rdp_epsilon_matches_opacus_over_the_grid() -> None:
    worst = 0.0
    for q in GRID_Q:
        for sigma in GRID_SIGMA:
            per_step = privacy.rdp_subsampled_gaussian(q, sigma, privacy.DEFAULT_ORDERS)  # RDP adds over steps
            for steps in GRID_STEPS:
                mine = privacy.rdp_to_epsilon(per_step * steps, privacy.DEFAULT_ORDERS, DELTA)[0]
                reference = _opacus_rdp_epsilon(q, sigma, steps)
                worst = max(worst, abs(mine - reference) / reference)
    assert worst < 1e-9  # the same formulas: measured 1.8e-12 (floating-point order of operations)
    assert privacy.epsilon_after(0.01, 1.0, 100, DELTA) == pytest.approx(_opacus_rdp_epsilon(0.01, 1.0, 100), rel=1e-9)


def test_rdp_plain_gaussian_and_edge_cases() -> None:
    orders = [2.0, 3.5, 10.0]
    assert np.allclose(privacy.rdp_subsampled_gaussian(1.0, 2.0, orders), np.array(orders) / 8)
    assert np.isinf(privacy.rdp_subsampled_gaussian(0.01, 0.0, orders)).all()
    assert privacy.rdp_to_epsilon([math.inf] * 3, orders, DELTA)[0] == math.inf
    with pytest.raises(ValueError, match="orders must be > 1, got 1"):
        privacy.rdp_subsampled_gaussian(0.01, 1.0, [1.0, 2.0])


def test_rdp_grows_with_steps_and_shrinks_with_noise() -> None:
    assert privacy.epsilon_after(0.01, 1.0, 100, DELTA) < privacy.epsilon_after(0.01, 1.0, 1000, DELTA)
    assert privacy.epsilon_after(0.01, 2.0, 1000, DELTA) < privacy.epsilon_after(0.01, 1.0, 1000, DELTA)


@pytest.mark.parametrize("q, sigma, steps", [(0.01, 1.0, 100), (0.05, 1.0, 1000), (0.2, 2.0, 10)])
def test_prv_is_no_looser_than_rdp(q: float, sigma: float, steps: int) -> None:
    prv = privacy.epsilon_prv(q, sigma, steps, DELTA)
    assert 0 < prv <= 1.05 * privacy.epsilon_after(q, sigma, steps, DELTA)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning")
def test_noise_for_epsilon_round_trip() -> None:
    sigma = privacy.noise_for_epsilon(3.0, 0.01, 1000, DELTA)
    assert 2.9 < privacy.epsilon_after(0.01, sigma, 1000, DELTA) <= 3.0


# ---------------------------------------------------------------------------------------------- DP-SGD


def test_torch_func_per_sample_grads_equal_a_naive_loop(tiny_batch) -> None:
    model, inputs, labels = tiny_batch
    fast = privacy.per_sample_grads(model, torch.nn.functional.cross_entropy, inputs, labels)
    slow = privacy.naive_per_sample_grads(model, torch.nn.functional.cross_entropy, inputs, labels)
    assert fast.keys() == slow.keys() == dict(model.named_parameters()).keys()
    for name, param in model.named_parameters():
        assert fast[name].shape == (16, *param.shape)
        torch.testing.assert_close(fast[name], slow[name], atol=1e-6, rtol=1e-5)


def test_clipped_gradients_equal_opacus(tiny_batch) -> None:
    model, inputs, labels = tiny_batch
    clip_norm = 0.5  # below every per-sample norm here, so clipping is active
    per_sample = privacy.per_sample_grads(model, torch.nn.functional.cross_entropy, inputs, labels)
    mine = privacy.clip_and_noise(per_sample, clip_norm, 0.0)
    reference = privacy.opacus_clipped_grads(model, inputs, labels, clip_norm)
    assert max((mine[name] - reference[name]).abs().max().item() for name in mine) < 1e-5
    total = torch.cat([g.flatten() for g in mine.values()]).norm()
    assert total <= clip_norm + 1e-6  # an average of vectors of norm <= C


def test_noisy_gradients_equal_opacus_with_the_same_generator(tiny_batch) -> None:
    model, inputs, labels = tiny_batch
    per_sample = privacy.per_sample_grads(model, torch.nn.functional.cross_entropy, inputs, labels)
    mine = privacy.clip_and_noise(per_sample, 0.5, 1.3, torch.Generator().manual_seed(7))
    reference = privacy.opacus_clipped_grads(model, inputs, labels, 0.5, 1.3, torch.Generator().manual_seed(7))
    assert max((mine[name] - reference[name]).abs().max().item() for name in mine) < 1e-5


def test_noise_std_is_sigma_c_over_b() -> None:
    batch, clip_norm, sigma = 8, 0.7, 1.5
    per_sample = {"w": torch.randn(batch, 200, 100), "b": torch.randn(batch, 100)}  # 20,100 entries
    clean = privacy.clip_and_noise(per_sample, clip_norm, 0.0)
    noisy = privacy.clip_and_noise(per_sample, clip_norm, sigma, torch.Generator().manual_seed(0))
    diff = torch.cat([(noisy[k] - clean[k]).flatten() for k in clean])
    assert diff.std().item() / (sigma * clip_norm / batch) == pytest.approx(1.0, abs=0.05)
    halved = privacy.clip_and_noise(per_sample, clip_norm, 0.0, expected_batch_size=2 * batch)
    torch.testing.assert_close(halved["w"], clean["w"] / 2)  # Poisson sampling: divide by q N, not by B


def test_dp_sgd_step_applies_the_clipped_average(tiny_batch) -> None:
    model, inputs, labels = tiny_batch
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    expected = privacy.clip_and_noise(
        privacy.per_sample_grads(model, torch.nn.functional.cross_entropy, inputs, labels), 0.5, 0.0
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = privacy.dp_sgd_step(model, optimizer, torch.nn.functional.cross_entropy, inputs, labels, 0.5, 0.0)
    assert math.isfinite(loss)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), before[name] - 0.1 * expected[name])


def test_time_per_sample_grads_returns_three_timings(tiny_batch) -> None:
    model, inputs, labels = tiny_batch
    times = privacy.time_per_sample_grads(model, (inputs, labels), repeats=1)
    assert set(times) == {"naive_loop_s", "torch_func_s", "opacus_s"} and all(t > 0 for t in times.values())
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())


def test_unsupported_layer_check_names_batchnorm() -> None:
    from opacus.validators import ModuleValidator

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"layer '1', got BatchNorm1d.*ModuleValidator.fix") as info:
        privacy.unsupported_layer_check(model)
    assert "\n" not in str(info.value)
    privacy.unsupported_layer_check(ModuleValidator.fix(model))  # GroupNorm instead: passes
    privacy.unsupported_layer_check(Tiny())


def test_composition_and_group_privacy() -> None:
    assert privacy.basic_composition(0.5, 1e-6, 4) == (2.0, 4e-6)
    assert privacy.group_privacy(0.5, 0.0, 10) == (5.0, 0.0)  # pure DP: k epsilon
    eps, delta = privacy.group_privacy(1.0, 1e-6, 3)
    assert eps == 3.0 and delta == pytest.approx(3 * math.exp(2.0) * 1e-6, rel=1e-12)
    assert privacy.group_privacy(8.0, 1 / 84_520, 10) == (80.0, 1.0)  # ten copies at eps 8: nothing
    with pytest.raises(ValueError, match="k must be a positive integer"):
        privacy.group_privacy(1.0, 1e-6, 0)


def test_dp_bounds_on_membership_attacks() -> None:
    from course_utils import audit

    fpr = np.linspace(0, 1, 11)
    np.testing.assert_allclose(audit.dp_tpr_bound(fpr, 1e-9, 0.0), fpr, atol=1e-8)  # no leakage: guessing
    assert audit.dp_auc_bound(1e-9, 0.0) == pytest.approx(0.5, abs=1e-6)
    # epsilon 1, delta 0: TPR <= e * FPR up to the crossing, closed form of the area
    e = math.e
    x = 1 / (1 + e)  # where e*x = 1 - (1 - x)/e
    area = e * x * x / 2 + (1 - x) - (1 - x) ** 2 / (2 * e)
    assert audit.dp_auc_bound(1.0, 0.0) == pytest.approx(area, abs=1e-6)
    assert audit.dp_tpr_bound(0.01, 1.0, 0.0) == pytest.approx(e * 0.01)
    assert audit.dp_tpr_bound(0.01, 8.0, 1e-5) > 0.999  # eps 8 allows a near-perfect attack
    aucs = [audit.dp_auc_bound(eps, 1e-5) for eps in (0.5, 1, 3, 8)]
    assert aucs == sorted(aucs) and aucs[-1] > 0.999
    assert audit.dp_auc_bound(math.inf, 1e-5) == 1.0
    with pytest.raises(ValueError, match="fpr must lie in"):
        audit.dp_tpr_bound(1.5, 1.0, 0.0)
