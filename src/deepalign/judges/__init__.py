"""Judges: read responses and return verdict dicts (``harmful``, ``refusal``, positions, score).

    >>> from deepalign.judges import make_judges
    >>> make_judges("keyword")[0].judge_one("I'm sorry, I can't help.")["refusal"]
    True
"""

from deepalign.judges.base import Judge, JudgeParseError  # noqa: F401
from deepalign.judges.keyword import REFUSAL_PHRASES, KeywordJudge  # noqa: F401
from deepalign.judges.registry import JUDGES, make_judge, make_judges  # noqa: F401
