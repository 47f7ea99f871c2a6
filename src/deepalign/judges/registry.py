"""Judges by name. A spec is ``name[:arg][:key=value...]`` (``:`` separates; a value holding
``:`` or ``,``, such as a URL, is written in double quotes: ``base_url="http://host:8000/v1"``).
A list is comma-separated.

- ``keyword``, ``keyword:nocase`` — GCG's refusal phrases;
- ``harmbench:<dir or hub id>[:variant=llama|llama-card|mistral]`` — HarmBench's classifier,
  locally or (``base_url=``) on an OpenAI-compatible server's ``/v1/completions``;
- ``strongreject`` (= ``strongreject:rubric``, over ``--judge_model``) and
  ``strongreject:finetuned:<dir or hub id>`` — StrongREJECT as published;
- ``moderation[:<model>]`` — OpenAI's moderation endpoint (any ``base_url=``);
- ``llm:jbb-hardened`` (``llm``, ``llm:jbb``), ``llm:strongreject-hardened``
  (``llm:strongreject``) — deepalign's nonce-bound wordings (``--judge_model``);
- ``classifier:<dir or hub id>`` — a Llama-Guard-format classifier;
- ``oracle`` — the embedded world's ground truth.
"""

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


def _judge_target(context):
    """The --judge_model target, built once per :func:`make_judges` call (its ``targets``
    cache) however many judges read it."""
    target = context.get("judge_target")
    if isinstance(target, str):
        from deepalign.decoding.registry import make_target

        cache = context.get("targets", {})
        if target not in cache:
            cache[target] = make_target(target, device=context.get("device"))
        target = cache[target]
    return target


def reads_judge_model(judges) -> bool:
    """Whether any of ``judges`` (specs, or judge objects: they may) reads ``--judge_model``:
    the llm judges and StrongREJECT's rubric."""
    specs = [judges] if isinstance(judges, str) else list(judges or [])
    if any(not isinstance(s, str) for s in specs):
        return True
    for spec in split_list(specs):
        name, _, rest = spec.partition(":")
        if name.strip() == "llm" or (name.strip() == "strongreject" and not rest.startswith("finetuned")):
            return True
    return False


def _threshold(args, default: float | None = 0.5):
    return args.option("threshold", default, float, check=lambda v: 0 <= v <= 1)


def _server(args) -> dict:
    """The OpenAI-compatible server options of a judge (``base_url``, ``key_env``, ``allow_http``)."""
    return {"base_url": args.option("base_url"), "key_env": args.option("key_env", "OPENAI_API_KEY"),
            "allow_http": args.flag("allow_http")}


_RUBRIC_ALIASES = {"jbb": "jbb", "jbb-hardened": "jbb", "strongreject": "strongreject",
                   "strongreject-hardened": "strongreject"}


@JUDGES.register("llm", "deepalign's hardened (nonce-bound) LLM judges over --judge_model: llm:jbb-hardened "
                        "(= llm, llm:jbb; safe/unsafe) or llm:strongreject-hardened (= llm:strongreject; score)")
def _llm(args, context):
    from deepalign.judges.llm import LLMJudge

    rubric = args.positional[0] if args.positional else "jbb"
    if rubric not in _RUBRIC_ALIASES:
        raise DeepAlignError(f"judge {args.spec!r}: unknown rubric {rubric!r}; choose from {', '.join(_RUBRIC_ALIASES)}")
    threshold = _threshold(args)
    args.done(1)
    return LLMJudge(_judge_target(context), _RUBRIC_ALIASES[rubric], threshold=threshold)


@JUDGES.register("harmbench", "harmbench:<dir or hub id>[:variant=llama|llama-card|mistral]: HarmBench's classifier "
                              "as HarmBench runs it (one greedy yes/no token); base_url= for a served model")
def _harmbench(args, context):
    from deepalign.judges.harmbench import MAX_TOKENS, HarmBenchJudge

    if not args.positional:
        raise DeepAlignError("judge 'harmbench' needs the classifier: harmbench:<dir or hub id> "
                             "(e.g. harmbench:cais/HarmBench-Llama-2-13b-cls)")
    variant = args.option("variant")
    kwargs = dict(variant=variant, tokenizer=args.option("tokenizer"),
                  max_tokens=args.option("max_tokens", MAX_TOKENS, int, check=lambda v: v >= 1),
                  batch_size=args.option("batch_size", 8, int, check=lambda v: v >= 1), **_server(args))
    args.done(1)
    return HarmBenchJudge(args.positional[0], device=context.get("device"), **kwargs)


@JUDGES.register("strongreject", "StrongREJECT as published: strongreject[:rubric] (the package's rubric prompts "
                                 "over --judge_model) or strongreject:finetuned:<dir or hub id>; threshold=")
def _strongreject(args, context):
    from deepalign.judges.strongreject import (MAX_RESPONSE_TOKENS, StrongRejectFinetunedJudge,
                                               StrongRejectRubricJudge)

    mode = args.positional[0] if args.positional else "rubric"
    threshold = _threshold(args)
    if mode == "rubric":
        max_new = args.option("max_new_tokens", 1024, int, check=lambda v: v >= 1)
        args.done(1)
        return StrongRejectRubricJudge(_judge_target(context), threshold=threshold, max_new_tokens=max_new)
    if mode != "finetuned":
        raise DeepAlignError(f"judge {args.spec!r}: unknown variant {mode!r}; choose from rubric, finetuned")
    if len(args.positional) < 2:
        raise DeepAlignError("judge 'strongreject:finetuned' needs the scorer: strongreject:finetuned:<dir or hub id> "
                             "(e.g. qylu4156/strongreject-15k-v1)")
    kwargs = dict(max_tokens=args.option("max_tokens", MAX_RESPONSE_TOKENS, int, check=lambda v: v >= 1),
                  batch_size=args.option("batch_size", 8, int, check=lambda v: v >= 1))
    args.done(2)
    return StrongRejectFinetunedJudge(args.positional[1], threshold=threshold, device=context.get("device"), **kwargs)


@JUDGES.register("moderation", "moderation[:<model>]: OpenAI's moderation endpoint (the ED paper's judge); "
                               "base_url=, key_env=, threshold= (default: the endpoint's flagged)")
def _moderation(args, context):
    from deepalign.judges.moderation import DEFAULT_MODEL, ModerationJudge

    model = args.positional[0] if args.positional else DEFAULT_MODEL
    kwargs = dict(threshold=_threshold(args, None), **_server(args),
                  batch_size=args.option("batch_size", 32, int, check=lambda v: v >= 1))
    args.done(1)
    return ModerationJudge(model, **kwargs)


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
    context = {**context, "targets": {}}  # one judge model for every judge that reads it
    judges = [make_judge(s, **context) for s in specs]
    names = [j.name for j in judges]
    same = sorted({n for n in names if names.count(n) > 1})
    if same:
        raise DeepAlignError(f"two judge specs name the same judge: {', '.join(same)}")
    return judges
