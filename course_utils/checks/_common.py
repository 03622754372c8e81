"""What every chapter's self-checks share: calling the learner's function, the pass line, `cmp`.

Each check runs the learner's function on a few cases, compares it with the course's reference (the
`course_utils` function or scikit-learn) and prints one line when all pass. An unfinished stub
(NotImplementedError) or a wrong answer raises AssertionError with a hint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _call(exercise: str, fn: Callable, *args, **kwargs):
    """Call the learner's function, turning an unfinished stub into a clear failure."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(
            f"Exercise {exercise}: not done yet; replace the `raise NotImplementedError` line with your code"
        ) from None


def _passed(exercise: str, cases: int) -> None:
    """The one line a learner sees when an exercise is right."""
    print(f"Exercise {exercise}: passed ({cases} cases)")


def cmp(name: str, mine, reference, atol: float = 1e-6) -> bool:
    """Print whether two arrays are exact, approximately equal, or how far apart (nn-zero-to-hero style)."""
    a, b = np.asarray(mine, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape:
        print(f"{name:24s} shape {a.shape} != {b.shape}")
        return False
    exact, close = bool(np.array_equal(a, b)), bool(np.allclose(a, b, atol=atol))
    print(f"{name:24s} exact: {exact!s:5} approximate: {close!s:5} maxdiff: {np.abs(a - b).max(initial=0):.2e}")
    return close


@dataclass(frozen=True)
class Question:
    """A multiple-choice question: the options, the right one, and why each other one is wrong."""

    text: str
    options: dict[str, str]  # letter -> option
    correct: str  # the right letter
    why: dict[str, str]  # letter -> explanation (the right one's says why it is right)


def show_question(question: Question) -> None:
    """Print a question and its options."""
    print(question.text)
    for letter, option in question.options.items():
        print(f"  ({letter}) {option}")


def check_choice(exercise: str, question: Question, fn: Callable[[], str]) -> None:
    """A self-checked multiple-choice answer: `fn()` returns a letter; a wrong one is told why it is wrong."""
    show_question(question)
    raw = _call(exercise, fn)
    letter = str(raw).strip().strip("()").lower()
    assert letter in question.options, (
        f"Exercise {exercise}: answer with one of the letters {', '.join(question.options)}, got {raw!r}"
    )
    assert letter == question.correct, f"Exercise {exercise}: not ({letter}): {question.why[letter]}"
    print(f"Exercise {exercise}: right, ({letter}). {question.why[letter]}")
