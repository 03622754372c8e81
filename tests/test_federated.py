"""Federated learning (chapter 03): partitions, aggregators against Flower's, DP-FedAvg, faults, caching."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from flwr.server.strategy import aggregate as flwr_aggregate

from course_utils import federated as fl
from course_utils import frozen, privacy, store


def test_iid_partition_covers_every_row_once() -> None:
    parts = fl.partition_iid(103, 10, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert {len(p) for p in parts} == {10, 11}


def test_dirichlet_partition_skews_labels_more_for_small_alpha() -> None:
    labels = np.r_[np.zeros(500, int), np.ones(500, int)]
    spread = {}
    for alpha in (0.1, 100.0):
        parts = fl.partition_dirichlet(labels, 10, alpha, seed=0)
        assert sorted(np.concatenate(parts).tolist()) == list(range(1000)) and all(len(p) > 0 for p in parts)
        spread[alpha] = np.std([labels[p].mean() for p in parts])
    assert spread[0.1] > 0.3 > 0.05 > spread[100.0]


def test_group_partition_gives_one_client_per_name() -> None:
    parts, names = fl.partition_by_group(["b", "a", "b", "c", "a", "b"])
    assert names == ["a", "b", "c"] and [p.tolist() for p in parts] == [[1, 4], [0, 2, 5], [3]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fl.partition_iid(5, 6), "6 clients but only 5 examples"),
        (lambda: fl.partition_dirichlet([0, 1, 0], 2, 0.0), "alpha must be > 0"),
        (lambda: fl.partition_dirichlet([0, 1, 0], 2, -1), "alpha must be > 0"),
        (lambda: fl.FedConfig(fraction=0.0), r"fraction must be in \(0, 1\]"),
        (lambda: fl.FedConfig(fraction=1.5), r"fraction must be in \(0, 1\]"),
        (lambda: fl.FedConfig(mu=-0.1), "mu must be >= 0"),
        (lambda: fl.FedConfig(aggregator="mode"), "aggregator must be one of"),
        (lambda: fl.FedConfig(noise_multiplier=1.0), "DP-FedAvg needs clip > 0"),
    ],
)
def test_bad_input_gets_one_line_errors(call, message) -> None:
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def _updates(k: int = 7, d: int = 50, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=gen), [3, 10, 1, 7, 7, 2, 30][:k]


def _flwr(updates: torch.Tensor, weights) -> list:
    return [([u.numpy().astype(np.float64).reshape(-1, 5)], int(w)) for u, w in zip(updates, weights, strict=True)]


def test_aggregators_equal_flowers() -> None:
    updates, weights = _updates()
    results = _flwr(updates, weights)
    cases = {
        "fedavg": (fl.fedavg(updates, weights), flwr_aggregate.aggregate(results)),
        "median": (fl.coordinate_median(updates), flwr_aggregate.aggregate_median(results)),
        "trimmed": (fl.trimmed_mean(updates, 0.2), flwr_aggregate.aggregate_trimmed_avg(results, 0.2)),
        "krum": (fl.krum(updates, 1), flwr_aggregate.aggregate_krum(results, num_malicious=1, to_keep=0)),
    }
    for name, (mine, theirs) in cases.items():
        np.testing.assert_allclose(mine.numpy(), theirs[0].ravel(), atol=1e-6, err_msg=name)


def test_robust_aggregators_ignore_one_huge_update_and_fedavg_does_not() -> None:
    updates, weights = _updates(k=7)
    attacked = updates.clone()
    attacked[0] = 1000.0
    assert (fl.fedavg(attacked, weights) - fl.fedavg(updates, weights)).abs().max() > 10
    for rule in (fl.coordinate_median, lambda u: fl.trimmed_mean(u, 0.2), lambda u: fl.krum(u, 1)):
        assert rule(attacked).abs().max() < 10


@pytest.mark.parametrize("seed", range(12))
def test_krum_equals_flowers_on_many_draws(seed) -> None:
    updates, weights = _updates(k=7, d=10, seed=seed)
    updates[seed % 7] += 3.0  # one outlier, a different one each time
    theirs = flwr_aggregate.aggregate_krum(_flwr(updates, weights), num_malicious=2, to_keep=0)
    np.testing.assert_allclose(fl.krum(updates, 2).numpy(), theirs[0].ravel(), atol=1e-6)


def test_krum_picks_the_update_closest_to_the_others() -> None:
    updates = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0]])
    assert fl.krum(updates, 1).tolist() == [0.0, 0.0]


def test_dp_aggregate_clips_every_update_and_adds_noise_of_the_stated_scale() -> None:
    updates = torch.randn(20, 4000, generator=torch.Generator().manual_seed(0)) * 5
    gen = torch.Generator().manual_seed(1)
    noisy = fl.dp_aggregate(updates, clip=1.0, noise_multiplier=0.0, expected_clients=25, generator=gen)
    clipped = torch.stack([u / u.norm() for u in updates]).sum(0) / 25  # the expected count, not the 20 that came
    torch.testing.assert_close(noisy, clipped)
    with_noise = fl.dp_aggregate(updates, clip=1.0, noise_multiplier=2.0, expected_clients=25, generator=gen)
    assert abs(float((with_noise - clipped).std()) / (2.0 / 25) - 1) < 0.05


def test_dp_epsilon_is_chapter_02s_accountant_at_delta_one_over_ten_k() -> None:
    assert fl.dp_epsilon(0.1, 1.0, 50, 500) == privacy.epsilon_after(0.1, 1.0, 50, 1 / 5000)
    assert fl.dp_epsilon(0.01, 1.0, 50, 5000) < fl.dp_epsilon(0.1, 1.0, 50, 500)


def test_drift_and_bytes() -> None:
    updates = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert fl.drift(updates).tolist() == [1.0, 1.0]
    assert fl.state_bytes({"a": torch.zeros(3, 4), "b": torch.zeros(5)}) == 68


def test_flatten_round_trips() -> None:
    state = {"b": torch.arange(3.0), "a": torch.ones(2, 2)}
    back = fl.unflatten(fl.flatten(state), state)
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.fixture(scope="module")
def small_clients(movie):
    """Four clients of 40 real sentences each (head features) and 80 test sentences."""
    rows = movie.sample(240, random_state=0).reset_index(drop=True)
    feats = frozen.cached_features(rows, 6, progress=False)
    parts = fl.partition_iid(160, 4, seed=0)
    return [feats.subset(p) for p in parts], feats.subset(range(160, 240))


def test_local_training_is_seeded_and_fedprox_pulls_towards_the_global_model(small_clients) -> None:
    clients, _ = small_clients
    cfg = fl.FedConfig(local_epochs=3, lr=0.5)
    model = fl.new_model(cfg)
    start = fl.trainable_state(model)
    first, _ = fl.local_train(model, clients[0], start, cfg, seed=5)
    again, _ = fl.local_train(model, clients[0], start, cfg, seed=5)
    assert all(torch.equal(first[k], again[k]) for k in first)
    prox, _ = fl.local_train(model, clients[0], start, dataclasses.replace(cfg, mu=1.0), seed=5)  # lr mu < 2: stable
    assert fl.flatten(prox).norm() < 0.8 * fl.flatten(first).norm()


def test_one_round_of_fedavg_equals_the_weighted_mean_of_client_updates(small_clients) -> None:
    clients, test = small_clients
    clients = [clients[0], clients[1].subset(range(10))]  # unequal sizes: the weights matter
    cfg = fl.FedConfig(rounds=1, fraction=1.0, lr=0.5)
    run = fl.run_federated(clients, test, cfg, progress=False)
    model = fl.new_model(cfg)
    start = fl.trainable_state(model)
    ups = [fl.flatten(fl.local_train(model, c, start, cfg, fl.client_seed(0, 1, i))[0]) for i, c in enumerate(clients)]
    expected = fl.flatten(start) + (40 * ups[0] + 10 * ups[1]) / 50
    torch.testing.assert_close(fl.flatten(run.state), expected, atol=1e-6, rtol=0)
    assert run.history.loc[1, "bytes up"] == 2 * 770 * 4 and run.history.loc[1, "bytes down"] == 2 * 770 * 4


def test_a_crashed_or_silent_client_is_reported_and_the_round_completes(small_clients) -> None:
    clients, test = small_clients
    cfg = fl.FedConfig(rounds=2, fraction=1.0)
    run = fl.run_federated(clients, test, cfg, progress=False, faults={1: "crash", 2: "timeout"}, timeout=2.0)
    assert [(r, c) for r, c, _ in run.failures] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert "crashed" in run.failures[0][2] and "TimeoutError" in run.failures[1][2]
    assert run.history["failed"].tolist() == [2, 2] and math.isfinite(run.accuracy)
    with pytest.raises(ValueError, match="pass timeout=SECONDS"):
        fl.run_federated(clients, test, cfg, progress=False, faults={2: "timeout"})


def test_dp_fedavg_run_reports_the_accountants_epsilon(small_clients) -> None:
    clients, test = small_clients
    cfg = fl.FedConfig(rounds=3, fraction=0.5, clip=0.5, noise_multiplier=1.0)
    run = fl.run_federated(clients, test, cfg, progress=False)
    assert run.epsilon == pytest.approx(privacy.epsilon_after(0.5, 1.0, 3, 1 / 40))


def test_scaled_update_attack_multiplies_the_attackers_update(small_clients) -> None:
    clients, test = small_clients
    honest = fl.FedConfig(rounds=1, fraction=1.0, aggregator="median")
    attacked = dataclasses.replace(honest, aggregator="mean", attack="scale", attackers=(0,), attack_scale=-10.0)
    run = fl.run_federated(clients[:1], test, attacked, progress=False)
    plain = fl.run_federated(clients[:1], test, dataclasses.replace(attacked, attack="none"), progress=False)
    start = fl.flatten(fl.trainable_state(fl.new_model(honest)))
    torch.testing.assert_close(
        fl.flatten(run.state) - start, -10 * (fl.flatten(plain.state) - start), atol=1e-5, rtol=1e-4
    )


def test_cached_runs_are_reused_and_keyed_by_the_config(small_clients, tmp_cache) -> None:
    clients, test = small_clients
    cfg = fl.FedConfig(rounds=1, fraction=1.0)
    first = fl.run_cached(clients, test, cfg, progress=False)
    again = fl.run_cached(clients, test, cfg, progress=False)
    assert all(torch.equal(first.state[k].cpu(), again.state[k].cpu()) for k in first.state)
    assert again.history.equals(first.history)
    keys = {
        fl.run_key(clients, test, c, 1)
        for c in (cfg, dataclasses.replace(cfg, mu=0.1), dataclasses.replace(cfg, seed=1))
    }
    assert len(keys) == 3 and fl.run_key(clients[:2], test, cfg, 1) not in keys
    assert len(list(store.path("federated", "x").parent.iterdir())) == 1


def test_scaffold_corrects_each_gradient_by_the_control_variates_of_round_one(small_clients) -> None:
    clients, test = small_clients
    cfg = fl.FedConfig(rounds=2, fraction=1.0, lr=0.5, scaffold=True)
    run = fl.run_federated(clients, test, cfg, progress=False)
    model = fl.new_model(cfg)
    like = fl.trainable_state(model)
    state, steps = fl.flatten(like), math.ceil(40 / cfg.batch_size) * cfg.local_epochs
    controls = torch.zeros(len(clients), state.numel())
    for round_ in (1, 2):  # round 1: all controls are zero, plain FedAvg; round 2: gradients corrected by c - c_i
        c = controls.mean(0)
        ups = torch.stack(
            [
                fl.flatten(
                    fl.local_train(
                        model,
                        clients[i],
                        fl.unflatten(state, like),
                        cfg,
                        fl.client_seed(0, round_, i),
                        correction=fl.unflatten(c - controls[i], like),
                    )[0]
                )
                for i in range(len(clients))
            ]
        )
        controls = controls - c - ups / (steps * cfg.lr)
        state = state + ups.mean(0)
    torch.testing.assert_close(fl.flatten(run.state), state, atol=1e-5, rtol=0)
    assert run.history.loc[1, "bytes up"] == 2 * 4 * 770 * 4  # the control variate travels too: twice the bytes
    with pytest.raises(ValueError, match="scaffold=True works with the plain mean only"):
        dataclasses.replace(cfg, aggregator="median")
