"""Judges by name: ``keyword``, ``keyword:nocase``, ``llm`` (= ``llm:jbb``), ``llm:strongreject``,
``classifier:<dir or hub id>``, ``oracle``. A list is comma-separated."""

from __future__ import annotations

from typing import Sequence

from deepalign.errors import DeepAlignError

JUDGES = {
    "keyword": "GCG refusal-phrase substring match (case-sensitive); keyword:nocase ignores case",
    "llm": "LLM judge over an OpenAI-compatible API: llm / llm:jbb (safe/unsafe) or llm:strongreject (score); needs --judge-model",
    "classifier": "classifier:<dir or hub id>: a Llama-Guard-format safety classifier",
    "oracle": "the embedded world's oracle (needs --world)",
}


def split_names(names: str | Sequence[str]) -> list[str]:
    if isinstance(names, str):
        names = [names]
    return [p.strip() for n in names for p in n.split(",") if p.strip()]


def make_judge(spec: str, *, world=None, judge_target=None, tokenizer=None, device=None):
    name, _, rest = spec.partition(":")
    if name == "keyword":
        from deepalign.judges.keyword import KeywordJudge

        if rest not in ("", "nocase"):
            raise DeepAlignError(f"judge {spec!r}: the only keyword option is keyword:nocase")
        return KeywordJudge(ignore_case=rest == "nocase", tokenizer=tokenizer)
    if name == "llm":
        from deepalign.judges.llm import RUBRICS, LLMJudge

        rubric = rest or "jbb"
        if rubric not in RUBRICS:
            raise DeepAlignError(f"judge {spec!r}: unknown rubric {rubric!r}; choose from {', '.join(RUBRICS)}")
        if isinstance(judge_target, str):
            from deepalign.evaluation.targets import make_target

            judge_target = make_target(judge_target)
        return LLMJudge(judge_target, rubric, name=spec)
    if name == "classifier":
        from deepalign.judges.classifier import ClassifierJudge

        if not rest:
            raise DeepAlignError("judge 'classifier' needs a model: classifier:<dir or hub id>")
        return ClassifierJudge(rest, device=device, name=spec)
    if name == "oracle":
        from deepalign.judges.oracle import OracleJudge

        if rest:
            raise DeepAlignError(f"judge {spec!r}: oracle takes no options")
        return OracleJudge(world)
    raise DeepAlignError(f"unknown judge {name!r}; choose from {', '.join(JUDGES)}")


def make_judges(names: str | Sequence[str], **context) -> list:
    specs = split_names(names)
    if not specs:
        raise DeepAlignError("no judges given")
    dup = sorted({s for s in specs if specs.count(s) > 1})
    if dup:
        raise DeepAlignError(f"judge(s) given twice: {', '.join(dup)}")
    # check every name before building any (building may load models)
    for s in specs:
        if s.partition(":")[0] not in JUDGES:
            raise DeepAlignError(f"unknown judge {s.partition(':')[0]!r}; choose from {', '.join(JUDGES)}")
    return [make_judge(s, **context) for s in specs]
