"""Judges by name: ``keyword``, ``keyword:nocase``, ``llm`` (= ``llm:jbb``), ``llm:strongreject``,
``classifier:<dir or hub id>``, ``oracle``. A list is comma-separated."""

from __future__ import annotations

from typing import Sequence

from deepalign.errors import DeepAlignError
from deepalign.registry import Registry, split_list

JUDGES = Registry("judge", sep=":")


@JUDGES.register("keyword", "GCG refusal-phrase substring match (case-sensitive); keyword:nocase ignores case")
def _keyword(args, context):
    from deepalign.judges.keyword import KeywordJudge

    nocase = args.flag("nocase")
    args.done()
    return KeywordJudge(ignore_case=nocase, tokenizer=context.get("tokenizer"))


@JUDGES.register("llm", "LLM judge over any target (normally an OpenAI-compatible API): llm / llm:jbb "
                        "(safe/unsafe) or llm:strongreject (score); needs --judge_model")
def _llm(args, context):
    from deepalign.judges.llm import RUBRICS, LLMJudge

    rubric = args.positional[0] if args.positional else "jbb"
    if rubric not in RUBRICS:
        raise DeepAlignError(f"judge {args.spec!r}: unknown rubric {rubric!r}; choose from {', '.join(RUBRICS)}")
    threshold = args.option("threshold", 0.5, float, check=lambda v: 0 <= v <= 1)
    args.done(1)
    target = context.get("judge_target")
    if isinstance(target, str):
        from deepalign.decoding.registry import make_target

        target = make_target(target, device=context.get("device"))
    return LLMJudge(target, rubric, threshold=threshold, name=args.spec)


@JUDGES.register("classifier", "classifier:<dir or hub id>: a Llama-Guard-format safety classifier")
def _classifier(args, context):
    from deepalign.judges.classifier import ClassifierJudge

    path = args.spec.partition(":")[2].strip()
    if not path:
        raise DeepAlignError("judge 'classifier' needs a model: classifier:<dir or hub id>")
    return ClassifierJudge(path, device=context.get("device"), name=args.spec)


@JUDGES.register("oracle", "the embedded world's oracle (needs --world)")
def _oracle(args, context):
    from deepalign.judges.oracle import OracleJudge

    args.done()
    return OracleJudge(context.get("world"))


def make_judge(spec: str, **context):
    return JUDGES.build(spec, **context)


def make_judges(names: str | Sequence[str], **context) -> list:
    specs = split_list(names)
    if not specs:
        raise DeepAlignError("no judges given")
    dup = sorted({s for s in specs if specs.count(s) > 1})
    if dup:
        raise DeepAlignError(f"judge(s) given twice: {', '.join(dup)}")
    for s in specs:  # check every name before building any (building may load models)
        JUDGES.check_name(s)
    return [make_judge(s, **context) for s in specs]
