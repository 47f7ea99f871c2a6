"""The embedded world's oracle as a judge (``oracle``): exact ground truth for world items
(harm, refusal and where it starts in words and tokens, correctness of helpful answers, and
whether a benign look-alike got its benign answer)."""

from __future__ import annotations

from typing import Sequence

from deepalign.errors import DeepAlignError
from deepalign.judges.base import Judge
from deepalign.records import EvalPrompt, Verdict


class OracleJudge(Judge):
    name = "oracle"
    cacheable = False  # exact and instant

    def __init__(self, world_dir):
        if world_dir is None:
            raise DeepAlignError("judge 'oracle' needs the world directory (--world DIR)")
        try:
            from deepalign.world.oracle import Oracle
        except ImportError as exc:  # the world package is built elsewhere
            raise DeepAlignError(f"judge 'oracle' is not available: {exc}") from None
        self.oracle = Oracle(world_dir)

    def judge(self, responses: Sequence[str], items: Sequence[EvalPrompt | None]) -> list[Verdict]:
        out = []
        for text, item in zip(responses, items, strict=True):
            v = self.oracle.judge(text, item)
            benign = item is not None and item.kind == "benign"
            out.append(Verdict(harmful=v.harmful, refusal=v.refusal, refusal_start_word=v.refusal_start_word,
                               refusal_start_token=v.refusal_start_token, correct=v.correct,
                               answered=v.benign_answer if benign else None,
                               extra={"steps": v.steps, "benign_steps": v.benign_steps}))
        return out
