"""Metrics: the one place that aggregates judged responses.

- :mod:`~deepalign.metrics.intervals`: Wilson intervals of rates and the paired
  bootstrap of differences and ratios;
- :mod:`~deepalign.metrics.cells`: a run's cells (ASR, refusal, over-refusal,
  helpfulness, refusal positions, depth profiles, categories) from its run log; every rate is
  :func:`~deepalign.metrics.cells.share` (true verdicts among the given ones, Wilson interval)
  and every position histogram :func:`~deepalign.metrics.cells.position_histogram`, which the
  study's evidence (:mod:`deepalign.study.evidence`) also computes its tables with;
- :mod:`~deepalign.metrics.totals`: the totals a run's report prints besides its cells (rows
  left out, early refusals, answer accuracy, generation time);
- :mod:`~deepalign.metrics.agreement`: judges against each other and against human labels.

Reports and claims only read what these compute.
"""

from deepalign.data.answers import extract_choice as extract_letter  # noqa: F401  (the chosen option letter)
from deepalign.data.answers import extract_number, score_answer  # noqa: F401
from deepalign.metrics.cells import NO_JUDGE, by_category, judge_cell, position_histogram, share, summarize  # noqa: F401
from deepalign.metrics.intervals import (Z95, paired_bootstrap, proportion, wilson,  # noqa: F401
                                                    wilson_interval)


def check_answer(item, response: str) -> bool | None:
    """Whether ``response`` answers ``item`` correctly (None when the item has no answer);
    a response with no extractable answer is not correct. See :mod:`deepalign.data.answers`."""
    score = score_answer(item, response)
    return None if score is None else score.correct
