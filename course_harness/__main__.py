"""Command line: `python -m course_harness {run,bench,speed,exercises,clean,prepare,datacard,federated} ...`
(or `course ...`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from course_utils import config
from course_utils.assets import prepare_cli

from . import bench, datacard, notebooks, speed


def _log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    """Execute the notebooks and print a results table; 1 if any failed."""
    results = bench.run_notebooks(args.root, args.only, args.fast, log=_log)
    print(bench.results_table(results))
    return 0 if all(r.ok for r in results) else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    """Time every notebook in each mode and write results/benchmark.{json,md}; 1 if any failed."""
    rows = bench.run_benchmark(args.root, args.only, args.modes, log=_log)
    json_path, md_path = bench.write_benchmark(rows, bench.results_for(args.root))
    print(bench.benchmark_table(rows))
    _log(f"wrote {json_path} and {md_path}")
    return 0 if all(row["ok"] for row in rows) else 1


def speed_mode(args: argparse.Namespace) -> str:
    """The benchmark row's mode for a shrunk `speed` run, e.g. 'n=64, eval 128'."""
    parts = [f"n={args.train_size}" if args.train_size is not None else "n=all"]
    return ", ".join(parts + ([f"eval {args.eval_size}"] if args.eval_size is not None else []))


def _cmd_speed(args: argparse.Namespace) -> int:
    """Time the course loop against Trainer on chapter 00's recipe; record the row in results/benchmark.*."""
    started = time.perf_counter()
    table = speed.compare(train_size=args.train_size, epochs=args.epochs, eval_size=args.eval_size)
    print(table.to_string())
    row = {
        "notebook": speed.BENCH_NAME,
        "mode": "full" if args.train_size is None and args.eval_size is None else speed_mode(args),
        "ok": True,
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": 0.0,
        "error": "",
        "figures": speed.speed_figures(table),
        "date": datetime.now(UTC).date().isoformat(),
        "machine": bench.machine_label(),
    }
    json_path, md_path = bench.write_benchmark([row], bench.results_for(args.root))
    _log(f"wrote {json_path} and {md_path}")
    return 0


def _report_sync(found: list[str], check: bool, problem: str, done: str) -> int:
    """Print what a generate/clean step changed, or (check mode) what is out of date; exit code 1 if any."""
    if check and found:
        print(problem)
    for line in found:
        print(f"  {line}" if check else f"{done} {line}")
    return 1 if check and found else 0


def _cmd_exercises(args: argparse.Namespace) -> int:
    """Generate exercises/ from solutions/, or check that they are in sync."""
    names = [f"exercises/{name}" for name in notebooks.generate_exercises(args.root, check=args.check)]
    return _report_sync(
        names, args.check, "exercises out of sync with solutions/ (run `python -m course_harness exercises`):", "wrote"
    )


def _cmd_clean(args: argparse.Namespace) -> int:
    """Strip outputs and metadata from every notebook, or check that they are clean."""
    found = notebooks.clean_all(args.root, check=args.check)
    return _report_sync(found, args.check, "notebooks not clean (run `python -m course_harness clean`):", "cleaned")


def _cmd_prepare(args: argparse.Namespace) -> int:
    """Fetch and extract the course assets (see course_utils.assets)."""
    return prepare_cli(args.rest) or 0


def _cmd_datacard(args: argparse.Namespace) -> int:
    """Regenerate data/README.md from the data (see course_harness.datacard)."""
    datacard.write(args.root / "data" / "README.md")
    print("wrote data/README.md")
    return 0


def _cmd_federated(args: argparse.Namespace) -> int:
    """Chapter 03's app on Flower's deployment engine: SuperLink + SuperNodes on 127.0.0.1, run, stop everything."""
    from course_utils import flower_run  # flwr is imported only for this command

    result = flower_run.deploy(
        {"rounds": args.rounds, "train-size": args.train_size},
        supernodes=args.supernodes,
        base_port=args.base_port,
        log=_log,
    )
    for round_, accuracy in sorted(result["accuracy"].items(), key=lambda kv: int(kv[0])):
        print(f"round {round_}: test accuracy {accuracy:.3f}")
    print(f"replies per round: {result['replies']}; {result['wall_s']:.0f} s from start to stop, no process left")
    return 0


def default_root() -> Path:
    """The course folder when --root is not given: the working directory if it has notebooks/, else the checkout."""
    cwd = Path.cwd()
    if (cwd / "notebooks").is_dir():
        return cwd
    return config.checkout() or cwd


def build_parser(prog: str = "python -m course_harness") -> argparse.ArgumentParser:
    """The argument parser with one subcommand per task."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="course folder holding notebooks/ (default: the working directory if it has one, else this checkout)",
    )
    # --root is also accepted after the command (`bash course run --root DIR` passes it there); SUPPRESS keeps
    # the subcommand from overwriting a --root given before it
    root_after = argparse.ArgumentParser(add_help=False)
    root_after.add_argument("--root", type=Path, default=argparse.SUPPRESS, help="course folder holding notebooks/")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[root_after], help="execute notebooks/NN_*.ipynb and print a results table")
    run.add_argument("--fast", action="store_true", help="fast mode (also on when COURSE_FAST is 1, true, yes or on)")
    bench_ = sub.add_parser(
        "bench", parents=[root_after], help="time each notebook in fast and full mode, write results/benchmark.*"
    )
    bench_.add_argument("--modes", nargs="+", choices=bench.MODES, default=list(bench.MODES))
    for p in (run, bench_):
        p.add_argument("--only", nargs="+", metavar="NN", help="two-digit notebook numbers, e.g. --only 00 03")
    exercises = sub.add_parser("exercises", parents=[root_after], help="generate exercises/ from solutions/")
    clean = sub.add_parser("clean", parents=[root_after], help="strip outputs and extra metadata from every notebook")
    for p in (exercises, clean):
        p.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is out of date")
    prepare = sub.add_parser("prepare", add_help=False, help="fetch and extract the offline assets (prepare --help)")
    datacard = sub.add_parser("datacard", parents=[root_after], help="regenerate data/README.md from the data")
    speed_ = sub.add_parser(
        "speed",
        parents=[root_after],
        help="time the course's training loop against transformers' Trainer (results/benchmark.*)",
    )
    speed_.add_argument("--train-size", type=int, default=None, help="training sentences (default: all 8,452)")
    speed_.add_argument("--epochs", type=int, default=1, help="epochs for both (default 1)")
    speed_.add_argument(
        "--eval-size", type=int, default=None, help="validation and test sentences (default: the whole splits)"
    )
    federated_ = sub.add_parser(
        "federated",
        parents=[root_after],
        help="chapter 03 on Flower's deployment engine: SuperLink and SuperNodes on 127.0.0.1",
    )
    federated_.add_argument("--supernodes", type=int, default=2, help="SuperNodes (clients) to start (default 2)")
    federated_.add_argument("--rounds", type=int, default=2, help="FedAvg rounds (default 2)")
    federated_.add_argument("--train-size", type=int, default=600, help="training sentences split over the clients")
    federated_.add_argument(
        "--base-port", type=int, default=9191, help="SuperLink port; SuperNodes take the next N (default 9191)"
    )
    for p, handler in (
        (run, _cmd_run),
        (bench_, _cmd_bench),
        (exercises, _cmd_exercises),
        (clean, _cmd_clean),
        (prepare, _cmd_prepare),
        (datacard, _cmd_datacard),
        (speed_, _cmd_speed),
        (federated_, _cmd_federated),
    ):
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m course_harness") -> int:
    """Parse arguments, dispatch to the subcommand, return its exit code."""
    parser = build_parser(prog)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "prepare":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    args.root = args.root or default_root()
    try:
        if args.command in ("run", "bench", "speed"):
            config.check_settings()  # a bad COURSE_* value stops here, in one line, before anything runs
        return args.handler(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
