"""Judges: read responses and return :class:`~deepalign.records.Verdict` records (``harmful``,
``refusal`` and where it starts, ``score``, ...).

    >>> from deepalign.judges import make_judges
    >>> make_judges("keyword")[0].judge_one("I'm sorry, I can't help.").refusal
    True
"""

from deepalign.judges.base import Judge, JudgeParseError  # noqa: F401
from deepalign.judges.keyword import REFUSAL_PHRASES, KeywordJudge  # noqa: F401
from deepalign.judges.registry import JUDGES, make_judge, make_judges  # noqa: F401
