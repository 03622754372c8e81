"""Checks behind `bash course colab-check` and `bash course lowest` (harness only; learners never need it).

`python -m course_harness.envcheck pip-report REPORT.json` fails when pip's `--dry-run --report` would install,
upgrade or downgrade one of Colab's own packages. `bound-pins` prints constraints that hold every direct dependency
at its lower bound's release, and `bounds PYTHON` fails when the environment built with them (`uv pip install
--resolution lowest-direct -c ...`) holds a dependency above its declared bound: the bound was not what was tested.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# Colab's GPU image (2026-08, Python 3.13): what it ships of the packages the course uses; never reinstalled there
COLAB_PINS = {
    "torch": "2.11.0",
    "transformers": "5.15.0",
    "datasets": "4.0.0",
    "ipykernel": "6.17.1",
    "ipywidgets": "7.7.1",
}
COLAB_OWN = tuple(COLAB_PINS)
ROOT = Path(__file__).resolve().parent.parent


def touched(report: Mapping, protected: Sequence[str] = COLAB_OWN) -> list[str]:
    """'name version' for each protected package a pip install report would (re)install."""
    wanted = {canonicalize_name(name) for name in protected}
    found = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        if canonicalize_name(meta.get("name", "")) in wanted:
            found.append(f"{meta['name']} {meta.get('version', '?')}")
    return found


def lower_bounds(pyproject: Path, extras: Sequence[str] = ()) -> dict[str, Version]:
    """The `>=` lower bound of each runtime dependency (and of the given extras) in pyproject.toml."""
    meta = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(meta["dependencies"])
    for extra in extras:
        requirements += meta["optional-dependencies"][extra]
    bounds = {}
    for text in requirements:
        req = Requirement(text)
        for spec in req.specifier:
            if spec.operator == ">=":
                bounds[canonicalize_name(req.name)] = Version(spec.version)
    return bounds


def above_bounds(bounds: Mapping[str, Version], installed: Mapping[str, str]) -> list[str]:
    """Dependencies installed above (or missing from) their declared lower bound, one line each."""
    versions = {canonicalize_name(name): version for name, version in installed.items()}
    problems = []
    for name, bound in sorted(bounds.items()):
        have = versions.get(name)
        if have is None:
            problems.append(f"{name}: not installed (bound >={bound})")
        elif Version(have).release[: len(bound.release)] != bound.release:
            problems.append(f"{name}: {have} installed, declared bound >={bound}")
    return problems


def bound_pins(bounds: Mapping[str, Version]) -> list[str]:
    """Constraints that hold each dependency at its lower bound's release (`numpy==2.0.*`): resolving with them
    either installs the bounds or fails, naming the bound that cannot be installed."""
    return [f"{name}=={bound}.*" for name, bound in sorted(bounds.items())]


def installed_versions(python: str) -> dict[str, str]:
    """Every distribution installed for `python`, name -> version."""
    code = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    return json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)


def main(argv: Sequence[str] | None = None) -> int:
    """pip-report, bounds, bound-pins or colab-pins (see the module docstring); 1 when a check finds a problem."""
    parser = argparse.ArgumentParser(prog="python -m course_harness.envcheck")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("pip-report", help="fail if pip would change one of Colab's own packages")
    report.add_argument("report", type=Path)
    sub.add_parser("colab-pins", help="print Colab's pins, one name==version a line")
    pins = sub.add_parser("bound-pins", help="print each lower bound as a constraint, name==X.Y.* a line")
    pins.add_argument("--extra", action="append", default=[])
    bounds = sub.add_parser("bounds", help="fail if a dependency sits above its declared lower bound")
    bounds.add_argument("python")
    bounds.add_argument("--extra", action="append", default=[])
    args = parser.parse_args(argv)
    if args.command == "colab-pins":
        print("\n".join(f"{name}=={version}" for name, version in COLAB_PINS.items()))
        return 0
    if args.command == "bound-pins":
        print("\n".join(bound_pins(lower_bounds(ROOT / "pyproject.toml", args.extra))))
        return 0
    if args.command == "pip-report":
        found = touched(json.loads(args.report.read_text()))
        for line in found:
            print(f"pip would install {line}, replacing Colab's own copy", file=sys.stderr)
        print("pip report: FAILED" if found else f"pip report: ok, {', '.join(COLAB_OWN)} stay as they are")
        return 1 if found else 0
    declared = lower_bounds(ROOT / "pyproject.toml", args.extra)
    problems = above_bounds(declared, installed_versions(args.python))
    for line in problems:
        print(f"lower bound not tested: {line}", file=sys.stderr)
    print(f"lower bounds: {len(declared) - len(problems)} of {len(declared)} installed exactly at their bound")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
