"""Self-checks that exercise notebooks call on the learner's functions: one module per chapter.

Each check runs the learner's function on a few cases, compares it with the course's reference (the
`course_utils` function or scikit-learn) and prints one line when all pass. An unfinished stub
(NotImplementedError) or a wrong answer raises AssertionError with a hint. `from course_utils import checks`
gives every chapter's checks (`checks.check_macro_f1`); `checks.ch02` holds one chapter's.
"""

from . import ch00, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08
from ._common import check_choice, cmp
from .ch00 import check_confident_errors, check_logits_to_labels, check_macro_f1, check_mcnemar, check_token_lengths
from .ch01 import (
    check_group_split,
    check_interval_alpha,
    check_redact_emails,
    check_remove_leaked,
    check_shingle_jaccard,
)
from .ch02 import check_attack_auc, check_clip_per_example, check_laplace_count, check_steps_within, check_user_level
from .ch03 import check_dp_fedavg, check_fedavg_step, check_pairwise_masks, check_trimmed_mean
from .ch04 import check_distillation_loss, check_global_magnitude_masks, check_per_channel_int8
from .ch05 import check_comprehensiveness, check_integrated_gradients
from .ch06 import check_ece, check_temperature
from .ch07 import check_form_batches, check_load_summary
from .ch08 import check_exposure, check_supported_share, check_top_k

__all__ = [
    "ch00",
    "ch01",
    "ch02",
    "ch03",
    "ch04",
    "ch05",
    "ch06",
    "ch07",
    "ch08",
    "cmp",
    "check_question",
    "check_confident_errors",
    "check_logits_to_labels",
    "check_macro_f1",
    "check_mcnemar",
    "check_token_lengths",
    "check_group_split",
    "check_interval_alpha",
    "check_redact_emails",
    "check_remove_leaked",
    "check_shingle_jaccard",
    "check_attack_auc",
    "check_clip_per_example",
    "check_laplace_count",
    "check_steps_within",
    "check_user_level",
    "check_dp_fedavg",
    "check_fedavg_step",
    "check_pairwise_masks",
    "check_trimmed_mean",
    "check_distillation_loss",
    "check_global_magnitude_masks",
    "check_per_channel_int8",
    "check_comprehensiveness",
    "check_integrated_gradients",
    "check_ece",
    "check_temperature",
    "check_form_batches",
    "check_load_summary",
    "check_top_k",
    "check_exposure",
    "check_supported_share",
]


CHAPTERS = {"0": ch00, "1": ch01, "2": ch02, "3": ch03, "4": ch04, "5": ch05, "6": ch06, "7": ch07, "8": ch08}


def check_question(exercise: str, fn) -> None:
    """A multiple-choice exercise of any chapter ('0.6', '2.7'): prints the question; `fn()` returns your letter."""
    module = CHAPTERS.get(str(exercise).split(".")[0])
    if module is None or exercise not in module.QUESTIONS:
        known = sorted(q for m in CHAPTERS.values() for q in m.QUESTIONS)
        raise ValueError(f"no multiple-choice exercise {exercise!r}; choose one of {known}")
    check_choice(exercise, module.QUESTIONS[exercise], fn)
