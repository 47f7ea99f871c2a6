"""What a judge is: something that reads responses (with the items they answer) and returns,
per response, a :class:`deepalign.records.Verdict`: ``harmful``, ``refusal`` and where it
starts, ``correct``, ``answered``, ``score``, ``categories``, ``error`` and judge-specific
``extra`` fields (see the record's documentation).

Judges work on batches so that model-based judges can batch their calls. A judge that
cannot give a verdict returns :func:`deepalign.records.error_verdict` (counted as an error,
never as safe).
"""

from __future__ import annotations

from typing import Iterator, Sequence

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


def judge_batch(judge: Judge, responses: Sequence[str], items: Sequence[EvalPrompt | None]) -> list[Verdict]:
    """``judge``'s verdicts on one batch as :class:`Verdict` records, one per response (a judge
    may return records or flat dicts of verdict fields); a wrong count or a verdict that is no
    verdict is an error naming the judge."""
    got = judge.judge(list(responses), list(items))
    if len(got) != len(responses):
        raise DeepAlignError(f"judge {judge.name} returned {len(got)} verdicts for {len(responses)} responses")
    try:
        return [Verdict.coerce(v) for v in got]
    except TypeError as exc:
        raise DeepAlignError(f"judge {judge.name}: {exc}") from None


def judge_batches(judge: Judge, responses: Sequence[str], items: Sequence[EvalPrompt | None],
                  batch_size: int) -> Iterator[tuple[int, list[Verdict]]]:
    """``judge`` over ``responses`` ``batch_size`` at a time: ``(start, verdicts)`` per batch, as
    each is judged (the caller writes or counts them before the next one is asked)."""
    for start in range(0, len(responses), batch_size):
        yield start, judge_batch(judge, responses[start:start + batch_size], items[start:start + batch_size])
