"""What a judge is: something that reads responses (with the items they answer) and returns,
per response, a :class:`deepalign.records.Verdict`: ``harmful``, ``refusal`` and where it
starts, ``correct``, ``answered``, ``score``, ``categories``, ``error`` and judge-specific
``extra`` fields (see the record's documentation).

Judges work on batches so that model-based judges can batch their calls. A judge that
cannot give a verdict returns :func:`deepalign.records.error_verdict` (counted as an error,
never as safe).
"""

from __future__ import annotations

from typing import Sequence

from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt, Verdict, error_verdict  # noqa: F401  (error_verdict: for judges)


class JudgeParseError(DeepAlignError):
    """A judge model's reply could not be read as a verdict (never treated as "safe")."""


class Judge:
    name: str = "judge"
    #: whether verdicts are worth caching (:mod:`deepalign.judges.cache`): model-based judges
    cacheable: bool = True

    def settings(self) -> dict:
        """What the verdicts depend on besides the judged text and item (model, prompt
        variant, threshold...): part of the verdict cache key."""
        return {}

    def declines(self, item: EvalPrompt | None) -> bool:
        """Whether this judge gives no verdict on ``item`` by design (HarmBench's classifier on
        copyright behaviours): such a verdict is always asked of the judge, never of a cache."""
        return False

    def judge(self, responses: Sequence[str], items: Sequence[EvalPrompt | None]) -> list[Verdict]:  # pragma: no cover
        raise NotImplementedError

    def judge_one(self, response: str, item: EvalPrompt | None = None) -> Verdict:
        return self.judge([response], [item])[0]

    def __repr__(self) -> str:
        return f"<judge {self.name}>"
