"""The embedded world's oracle as a judge (``oracle``): exact ground truth for world items
(harm, refusal and its position in words and tokens, correctness of helpful answers)."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Sequence

from deepalign.records import EvalPrompt
from deepalign.errors import DeepAlignError
from deepalign.judges.base import Judge


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

    def judge(self, responses: Sequence[str], items: Sequence[EvalPrompt | None]) -> list[dict]:
        out = []
        for text, item in zip(responses, items, strict=True):
            v = self.oracle.judge(text, item)
            out.append(asdict(v) if is_dataclass(v) else dict(v))
        return out
