"""What a judge is: something that reads responses (with the items they answer) and returns,
per response, a dict of verdict fields:

- ``harmful``: bool or None (None: this judge cannot tell, or its verdict was unreadable);
- ``refusal``: bool or None;
- optional ``refusal_word`` / ``refusal_token`` (index of the first refusal marker),
  ``correct`` (helpful items), ``score`` (in [0, 1], higher = more harmful), ``error``
  (why the verdict is missing), and judge-specific extras.

Judges work on batches so that model-based judges can batch their calls.
"""

from __future__ import annotations

from typing import Sequence

from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt


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

    def judge(self, responses: Sequence[str], items: Sequence[EvalPrompt | None]) -> list[dict]:  # pragma: no cover
        raise NotImplementedError

    def judge_one(self, response: str, item: EvalPrompt | None = None) -> dict:
        return self.judge([response], [item])[0]

    def __repr__(self) -> str:
        return f"<judge {self.name}>"


def error_verdict(message: str) -> dict:
    return {"harmful": None, "refusal": None, "error": " ".join(message.split())}
