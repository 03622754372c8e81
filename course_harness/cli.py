"""The `course` console script (`pip install "trustworthy-llm-course[lab]"`): `python -m course_harness` renamed.

It imports the harness only when called, so a missing notebook tool (nbclient, nbformat, psutil, ipykernel: the
`lab` and `test` extras) is reported in one line with the install command instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

EXTRA_HINT = 'pip install "trustworthy-llm-course[lab]"'


def main(argv: Sequence[str] | None = None) -> int:
    """Run a harness command (`course run --only 00`, `course prepare`, ...); returns the exit code."""
    try:
        from course_harness.__main__ import main as harness_main
    except ModuleNotFoundError as err:
        print(f"error: the course command needs {err.name}, which is not installed; {EXTRA_HINT}", file=sys.stderr)
        return 1
    return harness_main(argv, prog="course")


if __name__ == "__main__":
    sys.exit(main())
