"""Federated learning on cached frozen features: partitions, local training, FedAvg and its variants (chapter 03).

Clients hold rows of `frozen.Features`; each trains the trainable part of a `topmodel.TopClassifier` (the head, the
top block, or LoRA adapters) and sends back its *update* (new minus global parameters). The server samples clients,
aggregates their updates (weighted mean = FedAvg; coordinate-wise median, trimmed mean or Krum for robustness;
clipping plus Gaussian noise for DP-FedAvg), optionally with server momentum, and records per-round metrics: global
accuracy, per-client accuracy, client drift and bytes sent each way. Only the trainable parameters travel: the frozen
pretrained part is the same on every machine.

The aggregators are written out here to teach them and are tested equal to Flower's (`flwr.server.strategy.aggregate`);
`flower_app` runs the same client and server logic on Flower's engines. `run_cached` stores runs with `store`.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import config, privacy, store
from .frozen import Features
from .modeling import encoder_identity
from .topmodel import TopClassifier, predict_logits

AGGREGATORS = ("mean", "median", "trimmed", "krum")
ATTACKS = ("none", "flip", "scale")
State = dict[str, torch.Tensor]  # trainable parameters by name


# ---------------------------------------------------------------------------------------------- partitions


def _check_clients(num_clients: int, n: int) -> int:
    """num_clients must be an integer in 1..n (every client needs at least one example)."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if num_clients > n:
        raise ValueError(
            f"{num_clients} clients but only {n} examples: every client needs at least one; use at most "
            f"{n} clients or more data"
        )
    return int(num_clients)


def partition_iid(n: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle rows 0..n-1 and deal them into `num_clients` near-equal parts (chapter 03)."""
    num_clients = _check_clients(num_clients, n)
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def partition_dirichlet(labels, num_clients: int, alpha: float, seed: int = 0) -> list[np.ndarray]:
    """Label skew: each class is split over clients in proportions drawn from Dirichlet(alpha) (chapter 03).

    Small alpha (0.1) gives clients that hold mostly one class; large alpha (100) is close to IID. A client left
    empty by the draw gets one row from the largest client, so every client can train.
    """
    labels = np.asarray(labels)
    num_clients = _check_clients(num_clients, len(labels))
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0 < alpha < math.inf:
        raise ValueError(f"alpha must be > 0 and finite, got {alpha!r}; 0.1 is strong label skew, 100 near IID")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * len(rows)).astype(int)[:-1]
        for client, chunk in enumerate(np.split(rows, cuts)):
            parts[client].extend(chunk.tolist())
    for client in range(num_clients):
        if not parts[client]:
            donor = max(range(num_clients), key=lambda c: len(parts[c]))
            parts[client].append(parts[donor].pop())
    return [np.sort(np.array(p, dtype=int)) for p in parts]


def partition_by_group(groups) -> tuple[list[np.ndarray], list[str]]:
    """Natural clients: one per distinct value of `groups` (a movie, a domain), sorted by name (chapter 03)."""
    groups = np.asarray(groups, dtype=object)
    if len(groups) == 0:
        raise ValueError("no rows to partition; pass one group name per row")
    names = sorted(set(groups.tolist()), key=str)
    return [np.flatnonzero(groups == name) for name in names], [str(name) for name in names]


def partition_table(parts: list[np.ndarray], labels) -> pd.DataFrame:
    """Rows and share of positive labels per client: what the partition plots show."""
    labels = np.asarray(labels)
    return pd.DataFrame(
        {
            "examples": [len(p) for p in parts],
            "positive share": [float(labels[p].mean()) if len(p) else math.nan for p in parts],
        }
    )


# ---------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FedConfig:
    """One federated run. Compute per round = sampled clients x local_epochs passes over their rows."""

    rounds: int = 20
    fraction: float = 1.0  # share of clients sampled each round, in (0, 1]
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.5  # clients' SGD learning rate
    mu: float = 0.0  # FedProx: weight of (mu / 2) ||w - w_global||^2 in the local loss
    server_lr: float = 1.0
    server_momentum: float = 0.0  # FedAvgM: v = beta v + update; w += server_lr v
    scaffold: bool = False  # SCAFFOLD: control variates correct each client's gradient for drift
    aggregator: str = "mean"  # mean (FedAvg, weighted by client size), median, trimmed, krum
    trim: float = 0.1  # trimmed mean: share cut at each end
    byzantine: int = 1  # Krum: how many malicious clients it tolerates
    attack: str = "none"  # none, flip (labels), scale (update times attack_scale)
    attackers: tuple[int, ...] = ()  # client ids that attack
    attack_scale: float = -10.0
    clip: float = 0.0  # DP-FedAvg: clip each update to this L2 norm (0: no clipping)
    noise_multiplier: float = 0.0  # DP-FedAvg: noise std = noise_multiplier * clip on the sum; Poisson sampling
    frozen_layers: int = 6
    lora_rank: int = 0
    seed: int = 0
    num_labels: int = field(default=2, metadata={store.OMIT_DEFAULT: True})  # classes (a learner's file may have more)

    def __post_init__(self) -> None:
        for name in ("rounds", "local_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FedConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 2:
            raise ValueError(f"FedConfig.num_labels must be an integer of at least 2, got {self.num_labels!r}")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 < self.fraction <= 1:
            raise ValueError(
                f"fraction must be in (0, 1], got {self.fraction!r}; it is the share of clients sampled "
                "each round (1.0 = all)"
            )
        if not isinstance(self.mu, (int, float)) or not 0 <= self.mu < math.inf:
            raise ValueError(f"mu must be >= 0, got {self.mu!r}; 0 is plain FedAvg, try 0.01 to 1 for FedProx")
        if not 0 < self.lr < math.inf or not 0 < self.server_lr < math.inf:
            raise ValueError(f"learning rates must be > 0, got lr={self.lr!r}, server_lr={self.server_lr!r}")
        if not 0 <= self.server_momentum < 1:
            raise ValueError(f"server_momentum must be in [0, 1), got {self.server_momentum!r}; try 0.9")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {self.aggregator!r}")
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim!r}; 0.1 cuts 10% at each end")
        if self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}, got {self.attack!r}")
        if self.scaffold and (self.clip > 0 or self.aggregator != "mean" or self.server_momentum > 0):
            raise ValueError(
                "scaffold=True works with the plain mean only: set clip=0, aggregator='mean' and "
                "server_momentum=0, or scaffold=False"
            )
        if self.clip < 0 or self.noise_multiplier < 0 or (self.noise_multiplier > 0 and self.clip == 0):
            raise ValueError(
                f"DP-FedAvg needs clip > 0 and noise_multiplier >= 0, got clip={self.clip!r}, "
                f"noise_multiplier={self.noise_multiplier!r}; set clip to bound each update's norm"
            )

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0


# ---------------------------------------------------------------------------------------------- parameters


def trainable_state(model: torch.nn.Module) -> State:
    """A copy of the parameters that train (and travel): the head, adapters or top block."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: State) -> torch.nn.Module:
    """Write `state` into the model's trainable parameters in place; returns the model."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))
    return model


def flatten(state: State) -> torch.Tensor:
    """All parameters of a state as one (D,) vector, in name order."""
    return torch.cat([state[name].reshape(-1).float().cpu() for name in sorted(state)])


def unflatten(vector: torch.Tensor, like: State) -> State:
    """Cut a (D,) vector back into a state shaped like `like`."""
    out, start = {}, 0
    for name in sorted(like):
        size = like[name].numel()
        out[name] = vector[start : start + size].reshape(like[name].shape).to(like[name].dtype)
        start += size
    if start != vector.numel():
        raise ValueError(f"vector has {vector.numel()} numbers but the state needs {start}")
    return out


def state_bytes(state: State) -> int:
    """Bytes to send a state as float32 arrays (what crosses the network each way)."""
    return sum(v.numel() * 4 for v in state.values())


def new_model(cfg: FedConfig, encoder=None) -> TopClassifier:
    """The model every client and the server start from (same seed: same head)."""
    return TopClassifier.from_pretrained(
        cfg.frozen_layers, encoder=encoder, seed=cfg.seed, lora_rank=cfg.lora_rank, num_labels=cfg.num_labels
    ).to(config.device())


# ---------------------------------------------------------------------------------------------- client


def local_train(
    model: TopClassifier,
    feats: Features,
    global_state: State,
    cfg: FedConfig,
    seed: int,
    flip_labels: bool = False,
    epochs: int | None = None,
    correction: State | None = None,
) -> tuple[State, float]:
    """One client's work: start from the global state, run SGD for `epochs` (default cfg.local_epochs) on its rows
    (FedProx term if cfg.mu > 0), return (update = new - global, mean loss). Seeded: same seed, same update.

    `correction` (SCAFFOLD: the server's control variate minus the client's, c - c_i) is added to every gradient."""
    load_trainable(model, global_state).train()
    torch.manual_seed(seed)  # dropout draws
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [global_state[n].to(p.device) for n, p in model.named_parameters() if p.requires_grad]
    shifts = (
        [correction[n].to(p.device) for n, p in model.named_parameters() if p.requires_grad] if correction else None
    )
    optimizer = torch.optim.SGD(params, lr=cfg.lr)
    where, losses = config.device(), []
    for _ in range(cfg.local_epochs if epochs is None else epochs):
        order = torch.randperm(len(feats), generator=generator)
        for start in range(0, len(order), cfg.batch_size):
            hidden, mask, labels = feats.batch(order[start : start + cfg.batch_size], where)
            if flip_labels:
                labels = 1 - labels
            loss = torch.nn.functional.cross_entropy(model(hidden, mask), labels)
            losses.append(loss.item())
            if cfg.mu > 0:
                loss = loss + cfg.mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
            loss.backward()
            if shifts:  # SCAFFOLD: c - c_i, moved to the device once, not every step
                for p, shift in zip(params, shifts, strict=True):
                    p.grad.add_(shift)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    new = trainable_state(model)
    return {n: (new[n] - global_state[n].to(new[n].device)).cpu() for n in new}, float(np.mean(losses))


def client_seed(seed: int, round_: int, client: int) -> int:
    """The seed of one client's local training in one round (the same in every engine)."""
    return int(seed) * 1_000_003 + int(round_) * 10_007 + int(client)


# ---------------------------------------------------------------------------------------------- server


def sample_clients(num_clients: int, fraction: float, rng: np.random.Generator, poisson: bool = False) -> list[int]:
    """Clients of one round: round(fraction K) at random (at least 1), or each with probability `fraction`."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}; it is the share of clients sampled each round")
    if poisson:
        return np.flatnonzero(rng.random(num_clients) < fraction).tolist()
    k = max(1, round(fraction * num_clients))
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


def fedavg(updates: torch.Tensor, weights) -> torch.Tensor:
    """FedAvg: the (K, D) updates averaged with weights proportional to the clients' sizes -> (D,)."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    return (updates.double() * (w / w.sum())[:, None]).sum(0).float()


def coordinate_median(updates: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of (K, D) updates (the mean of the two middle values for even K, as numpy)."""
    return torch.as_tensor(np.median(updates.numpy(), axis=0))


def trimmed_mean(updates: torch.Tensor, trim: float) -> torch.Tensor:
    """Per coordinate, drop the floor(trim K) smallest and largest values and average the rest."""
    k = updates.shape[0]
    cut = int(trim * k)
    ordered = updates.sort(dim=0).values
    return ordered[cut : k - cut].mean(0)


def krum(updates: torch.Tensor, byzantine: int) -> torch.Tensor:
    """Krum: the update whose K - f - 2 nearest others are closest (sum of squared distances) (Blanchard 2017)."""
    k = updates.shape[0]
    distances = torch.cdist(updates.double(), updates.double()) ** 2  # (K, K)
    nearest = max(1, k - byzantine - 2)
    scores = distances.sort(dim=1).values[:, 1 : nearest + 1].sum(1)  # skip the distance to itself
    return updates[int(scores.argmin())]


def aggregate(updates: torch.Tensor, weights, cfg: FedConfig) -> torch.Tensor:
    """The server's rule of cfg.aggregator applied to (K, D) updates."""
    if cfg.aggregator == "mean":
        return fedavg(updates, weights)
    if cfg.aggregator == "median":
        return coordinate_median(updates)
    if cfg.aggregator == "trimmed":
        return trimmed_mean(updates, cfg.trim)
    return krum(updates, cfg.byzantine)


def clip_update(update: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale a (D,) update to L2 norm at most `clip` (DP-FedAvg's client-level clipping)."""
    return update * min(1.0, clip / (float(update.norm()) + 1e-12))


def dp_aggregate(
    updates: torch.Tensor, clip: float, noise_multiplier: float, expected_clients: float, generator: torch.Generator
) -> torch.Tensor:
    """DP-FedAvg (McMahan et al. 2018): clip each update, sum, add N(0, (sigma clip)^2), divide by the EXPECTED
    number of clients qK (a fixed denominator, so one client changes the sum by at most `clip`)."""
    clipped = torch.stack([clip_update(u, clip) for u in updates]) if len(updates) else torch.zeros(0)
    total = clipped.sum(0) if len(updates) else 0.0
    dim = updates.shape[1]
    noise = torch.normal(0.0, noise_multiplier * clip, (dim,), generator=generator)
    return (total + noise) / expected_clients


def dp_epsilon(sample_rate: float, noise_multiplier: float, rounds: int, num_clients: int) -> float:
    """Client-level epsilon of DP-FedAvg after `rounds` (RDP accountant of chapter 02, delta = 1/(10 K))."""
    return privacy.epsilon_after(sample_rate, noise_multiplier, rounds, privacy.default_delta(num_clients))


def drift(updates: torch.Tensor) -> torch.Tensor:
    """Client drift: each (K, D) update's L2 distance from the mean update -> (K,)."""
    return (updates - updates.mean(0, keepdim=True)).norm(dim=1)


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate(model: torch.nn.Module, test: Features) -> tuple[float, np.ndarray]:
    """(accuracy, (C,) accuracy on the test rows of each class) of the model."""
    pred = predict_logits(model, test).argmax(1)
    labels = test.labels.numpy()
    per_class = np.array([(pred[labels == c] == c).mean() for c in range(model.classifier.out_features)])
    return float((pred == labels).mean()), per_class


def client_accuracy(class_accuracy: np.ndarray, label_share: np.ndarray) -> np.ndarray:
    """Each client's accuracy on test data distributed like its own labels: (K, C) shares @ (C,) accuracies."""
    return np.asarray(label_share) @ np.asarray(class_accuracy)


def label_shares(clients: list[Features], num_labels: int = 2) -> np.ndarray:
    """(K, C): the share of each label among each client's rows."""
    return np.stack([np.bincount(c.labels.numpy(), minlength=num_labels) / len(c) for c in clients])


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class FedRun:
    """A finished run: the global trainable state, the model holding it, and one row of metrics per round."""

    state: State
    model: TopClassifier
    config: FedConfig
    history: pd.DataFrame
    client_accuracy: np.ndarray  # (evaluated rounds, K)
    epsilon: float = math.inf
    seconds: float = 0.0
    failures: list[tuple[int, int, str]] = field(default_factory=list)  # (round, client, what)

    @property
    def accuracy(self) -> float:
        return float(self.history["accuracy"].dropna().iloc[-1])


def call_with_timeout(fn, timeout: float | None):
    """Run fn() in a daemon thread; raise TimeoutError if it has not returned after `timeout` seconds."""
    if timeout is None:
        return fn()
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _client_update(model, feats, global_state, cfg, round_, client, fault, correction=None):
    """One client's (update, loss), with the attack or the injected fault it is configured for."""
    if fault == "crash":
        raise RuntimeError(f"client {client} crashed")
    if fault == "timeout":
        time.sleep(3600)
    attacking = client in cfg.attackers
    update, loss = local_train(
        model,
        feats,
        global_state,
        cfg,
        client_seed(cfg.seed, round_, client),
        flip_labels=attacking and cfg.attack == "flip",
        correction=correction,
    )
    if attacking and cfg.attack == "scale":
        update = {n: v * cfg.attack_scale for n, v in update.items()}
    return update, loss


def run_federated(
    clients: list[Features],
    test: Features,
    cfg: FedConfig,
    progress: bool = True,
    eval_every: int = 1,
    faults: dict[int, str] | None = None,
    timeout: float | None = None,
    encoder=None,
) -> FedRun:
    """Federated training of `clients` (one Features each), scored on `test` every `eval_every` rounds.

    faults maps a client id to "crash" (its training raises) or "timeout" (it never answers; needs `timeout`
    seconds): the round goes on with the others and the failure is recorded in `FedRun.failures`.
    """
    if not clients:
        raise ValueError("no clients; pass a list with one Features per client")
    for c in clients:
        if c.frozen_layers != cfg.frozen_layers:
            raise ValueError(
                f"client features are cut after block {c.frozen_layers} but the config trains from "
                f"block {cfg.frozen_layers + 1}; encode them with frozen_layers={cfg.frozen_layers}"
            )
    faults = faults or {}
    if any(f == "timeout" for f in faults.values()) and timeout is None:
        raise ValueError("a 'timeout' fault never answers: pass timeout=SECONDS so the server stops waiting")
    model = new_model(cfg, encoder)
    state = trainable_state(model)
    like = {n: v.cpu() for n, v in state.items()}
    sizes = np.array([len(c) for c in clients])
    shares = label_shares(clients, cfg.num_labels)
    rng = np.random.default_rng(cfg.seed)
    noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
    velocity = torch.zeros(sum(v.numel() for v in like.values()))
    control, client_control = torch.zeros_like(velocity), {}  # SCAFFOLD: server's c and each client's c_i
    per_client_bytes = state_bytes(like) * (2 if cfg.scaffold else 1)  # SCAFFOLD sends c with w, c_i with the update
    rows, per_client, failures = [], [], []
    start = time.perf_counter()
    for round_ in tqdm(range(1, cfg.rounds + 1), desc="federated rounds", disable=not progress, leave=False):
        chosen = sample_clients(len(clients), cfg.fraction, rng, poisson=cfg.private)
        updates, weights, losses, control_steps = [], [], [], []
        for client in chosen:
            mine = client_control.get(client, torch.zeros_like(control))
            correction = unflatten(control - mine, like) if cfg.scaffold else None
            try:
                work = functools.partial(
                    _client_update, model, clients[client], state, cfg, round_, client, faults.get(client), correction
                )
                update, loss = call_with_timeout(work, timeout)
            except (RuntimeError, TimeoutError) as err:
                failures.append((round_, client, f"{type(err).__name__}: {err}"))
                continue
            updates.append(flatten(update))
            weights.append(sizes[client])
            losses.append(loss)
            if cfg.scaffold:  # option II of Karimireddy et al.: c_i+ = c_i - c - update / (local steps x lr)
                steps = cfg.local_epochs * math.ceil(len(clients[client]) / cfg.batch_size)
                client_control[client] = mine - control - updates[-1] / (steps * cfg.lr)
                control_steps.append(client_control[client] - mine)
        stacked = torch.stack(updates) if updates else torch.zeros(0, len(velocity))
        if cfg.clip > 0:
            step = (
                dp_aggregate(stacked, cfg.clip, cfg.noise_multiplier, cfg.fraction * len(clients), noise_gen)
                if cfg.private
                else fedavg(torch.stack([clip_update(u, cfg.clip) for u in stacked]), weights)
            )
        elif updates:
            step = aggregate(stacked, weights, cfg)
        else:
            step = torch.zeros_like(velocity)
        velocity = cfg.server_momentum * velocity + step
        if control_steps:  # c += (|S| / N) mean(delta c_i)
            control = control + len(control_steps) / len(clients) * torch.stack(control_steps).mean(0)
        flat = flatten(state) + cfg.server_lr * velocity
        state = {n: v.to(config.device()) for n, v in unflatten(flat, like).items()}
        row = {
            "round": round_,
            "clients": len(chosen),
            "failed": len(chosen) - len(updates),
            "train loss": float(np.mean(losses)) if losses else math.nan,
            "bytes down": per_client_bytes * len(chosen),
            "bytes up": per_client_bytes * len(updates),
            "drift": float(drift(stacked).mean()) if len(updates) > 1 else 0.0,
            "update norm": float(stacked.norm(dim=1).mean()) if updates else 0.0,
            "accuracy": math.nan,
        }
        if round_ % eval_every == 0 or round_ == cfg.rounds:
            load_trainable(model, state)
            row["accuracy"], class_acc = evaluate(model, test)
            per_client.append(client_accuracy(class_acc, shares))
        rows.append(row)
    load_trainable(model, state).eval()
    epsilon = dp_epsilon(cfg.fraction, cfg.noise_multiplier, cfg.rounds, len(clients)) if cfg.private else math.inf
    return FedRun(
        state,
        model,
        cfg,
        pd.DataFrame(rows).set_index("round"),
        np.array(per_client),
        epsilon,
        time.perf_counter() - start,
        failures,
    )


def equal_compute_epochs(cfg: FedConfig) -> int:
    """Epochs of centralised training that process as many examples as the federated run (in expectation)."""
    return max(1, round(cfg.rounds * cfg.local_epochs * cfg.fraction))


def train_centralised(train: Features, cfg: FedConfig, epochs: int | None = None, encoder=None) -> TopClassifier:
    """The same model, optimiser and batch size trained on all rows in one place (default: equal compute)."""
    model = new_model(cfg, encoder)
    update, _ = local_train(
        model,
        train,
        trainable_state(model),
        cfg,
        client_seed(cfg.seed, 0, 0),
        epochs=equal_compute_epochs(cfg) if epochs is None else epochs,
    )
    return model.eval()


def personalise(global_model: TopClassifier, feats: Features, cfg: FedConfig, epochs: int = 1) -> TopClassifier:
    """Fine-tune a copy of the global model on one client's rows (personalisation)."""
    model = copy.deepcopy(global_model)
    local_train(model, feats, trainable_state(global_model), cfg, client_seed(cfg.seed, -1, 0), epochs=epochs)
    return model.eval()


# ---------------------------------------------------------------------------------------------- cache


def run_key(clients: list[Features], test: Features, cfg: FedConfig, eval_every: int, encoder=None) -> str:
    """Cache key of a run: every client's rows, the test rows, the whole config, the encoder, the device class."""
    if not all(c.key for c in clients) or not test.key:
        raise ValueError(
            "these features have no cache key; build them with frozen.cached_features (and subset), "
            "or call run_federated directly"
        )
    return store.key(
        "federated-run",
        [c.key for c in clients],
        test.key,
        cfg,
        eval_every,
        encoder_identity(encoder),
        config.device().type,
    )


def run_cached(
    clients: list[Features],
    test: Features,
    cfg: FedConfig,
    progress: bool = True,
    eval_every: int = 1,
    retrain: bool | None = None,
    encoder=None,
) -> FedRun:
    """`run_federated`, or the stored run with the same clients, test rows, config and encoder (in federated/)."""
    folder = store.path("federated", run_key(clients, test, cfg, eval_every, encoder))
    retrain = config.retrain_requested() if retrain is None else retrain
    if retrain or not (folder / "run.json").exists():
        run = run_federated(clients, test, cfg, progress=progress, eval_every=eval_every, encoder=encoder)

        def write(tmp: Path) -> None:
            save_file({k: v.detach().cpu().contiguous() for k, v in run.state.items()}, tmp / "state.safetensors")
            meta = {
                "history": run.history.reset_index().to_dict(orient="list"),
                "client_accuracy": run.client_accuracy.tolist(),
                "seconds": run.seconds,
                "epsilon": run.epsilon if math.isfinite(run.epsilon) else None,
                "config": asdict(cfg),
            }
            (tmp / "run.json").write_text(json.dumps(meta))

        store.write_dir(folder, write)
        return run
    meta = json.loads((folder / "run.json").read_text())
    state = {k: v.to(config.device()) for k, v in load_file(folder / "state.safetensors").items()}
    model = load_trainable(new_model(cfg, encoder), state).eval()
    history = pd.DataFrame(meta["history"]).set_index("round")
    epsilon = math.inf if meta["epsilon"] is None else meta["epsilon"]
    return FedRun(state, model, cfg, history, np.array(meta["client_accuracy"]), epsilon, meta["seconds"])
