"""Chapter 03's client and server logic as a Flower app (flwr 1.42 Message API): simulation and deployment engines.

The ClientApp trains with `federated.local_train` on its partition (node config `partition-id` / `num-partitions`)
and returns its new parameters with its example count; the ServerApp runs Flower's FedAvg strategy (weighted by
`num-examples`, the same rule as `federated.fedavg`) and scores the global model centrally on the test rows. Every
client reads the same cached features (COURSE_CACHE), so a run on Flower and `federated.run_federated` with the same
seed and settings train the same numbers. Settings come from the run config (`flwr run --run-config`) or, for
`run_simulation`, from `make_apps(overrides)`; see DEFAULTS.

Faults for the tests: `crash-partition` raises in that partition's ClientApp in every round; `sleep-partition` sleeps
`sleep-seconds` there in round 1 (set `timeout` below it): the strategy aggregates the replies that came back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from . import config, data, federated, frozen

DEFAULTS: dict[str, object] = {
    "train-size": 600,
    "test-size": 300,
    "rounds": 2,
    "local-epochs": 1,
    "lr": 0.5,
    "batch-size": 32,
    "seed": 0,
    "timeout": 120.0,
    "min-nodes": 2,
    "crash-partition": -1,
    "sleep-partition": -1,
    "sleep-seconds": 0.0,
    "result-path": "",
}


def settings(context: Context, overrides: dict | None = None) -> dict:
    """DEFAULTS, then the run config, then `overrides`."""
    return {**DEFAULTS, **dict(context.run_config), **(overrides or {})}


def fed_config(s: dict) -> federated.FedConfig:
    """The FedConfig both engines use for these settings (all clients every round, head on cut-6 features)."""
    return federated.FedConfig(
        rounds=int(s["rounds"]),
        fraction=1.0,
        local_epochs=int(s["local-epochs"]),
        lr=float(s["lr"]),
        batch_size=int(s["batch-size"]),
        seed=int(s["seed"]),
    )


def partitions(s: dict, num_partitions: int) -> tuple[list[frozen.Features], frozen.Features]:
    """The clients' rows (IID split of the first train-size training sentences) and the test rows."""
    splits = data.course_splits(own=False)  # chapter 03 keeps the course's data (owndata.MOVIE_ONLY)
    train = frozen.cached_features(data.subsample(splits.train, int(s["train-size"]), seed=0), 6, progress=False)
    test = frozen.cached_features(data.subsample(splits.test, int(s["test-size"]), seed=0), 6, progress=False)
    parts = federated.partition_iid(len(train), num_partitions, int(s["seed"]))
    return [train.subset(p) for p in parts], test


def _to_arrays(state: federated.State) -> ArrayRecord:
    return ArrayRecord({name: value.detach().cpu() for name, value in sorted(state.items())})


def _to_state(record: ArrayRecord) -> federated.State:
    return {name: value.clone() for name, value in record.to_torch_state_dict().items()}


class CountingFedAvg(FedAvg):
    """Flower's FedAvg that also records, per round, how many replies came back and which failed."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.replies: dict[int, dict[str, int]] = {}

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        failed = sum(1 for m in replies if m.has_error())
        self.replies[server_round] = {"ok": len(replies) - failed, "failed": failed}
        return super().aggregate_train(server_round, replies)


def make_apps(overrides: dict | None = None) -> tuple[ServerApp, ClientApp]:
    """A ServerApp and a ClientApp whose settings are DEFAULTS < run config < `overrides`."""
    client_app, server_app = ClientApp(), ServerApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        s = settings(context, overrides)
        partition, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
        round_ = int(msg.content["config"]["server-round"])
        if partition == int(s["crash-partition"]):
            raise RuntimeError(f"partition {partition} crashed on purpose (crash-partition)")
        if partition == int(s["sleep-partition"]) and round_ == 1:
            time.sleep(float(s["sleep-seconds"]))
        config.setup(seed=int(s["seed"]), verbose=False)
        cfg = fed_config(s)
        clients, _ = partitions(s, num)
        global_state = _to_state(msg.content["arrays"])
        model = federated.new_model(cfg)
        update, loss = federated.local_train(
            model, clients[partition], global_state, cfg, federated.client_seed(cfg.seed, round_, partition)
        )
        new_state = {n: global_state[n] + update[n] for n in global_state}
        metrics = MetricRecord({"train-loss": loss, "num-examples": len(clients[partition])})
        return Message(RecordDict({"arrays": _to_arrays(new_state), "metrics": metrics}), reply_to=msg)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        s = settings(context, overrides)
        config.setup(seed=int(s["seed"]), verbose=False)
        cfg = fed_config(s)
        _, test = partitions(s, 1)
        model = federated.new_model(cfg)

        def evaluate(round_: int, arrays: ArrayRecord) -> MetricRecord:
            federated.load_trainable(model, {k: v.to(config.device()) for k, v in _to_state(arrays).items()})
            accuracy, _ = federated.evaluate(model, test)
            return MetricRecord({"accuracy": accuracy})

        nodes = int(s["min-nodes"])
        strategy = CountingFedAvg(
            fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=nodes
        )
        started = time.perf_counter()
        result = strategy.start(
            grid=grid,
            initial_arrays=_to_arrays(federated.trainable_state(model)),
            num_rounds=cfg.rounds,
            timeout=float(s["timeout"]),
            train_config=ConfigRecord(),
            evaluate_fn=evaluate,
        )
        if s["result-path"]:
            accuracy = {int(r): float(m["accuracy"]) for r, m in result.evaluate_metrics_serverapp.items()}
            Path(str(s["result-path"])).write_text(
                json.dumps(
                    {
                        "accuracy": accuracy,
                        "replies": strategy.replies,
                        "seconds": time.perf_counter() - started,
                        "final_state": {k: np.asarray(v.numpy()).ravel().tolist() for k, v in result.arrays.items()},
                    }
                )
            )

    return server_app, client_app


server_app, client_app = make_apps()  # what `flwr run` loads (deployment engine); reads the run config
