"""Targets by spec: every target (a Hugging Face model, a composed decoder, an
OpenAI-compatible server) is built from one short string, with strict options.

    hf:<dir or hub id>[,option=value...]
    openai:<model>@<base_url>[,key_env=VAR][,concurrency=N][,timeout=S][,retries=N]
    ed:base=<model>,aligned=<model>,alpha=<a>[,...]      Emulated Disalignment
    ed:family=<name>[,alpha=<a>][,base=...][,aligned=...][,reference_decoding=false]
                                                        an ED family of the paper, with the
                                                        reference's prompts and decoding
    eft:large=<model>,tuned=<model>,small=<model>[,w=<w>]    emulated fine-tuning
    w2s:strong=<model>,weak_unsafe=<model>,weak_safe=<model>,beta=<b>   weak-to-strong

Options of local models (``hf:``, and per component of composed targets with a
``base.`` / ``aligned.`` / ``large.`` ... prefix):

    format=chat|text|text:<template>|raw|<file.txt>   prompt format (default: the chat template
                                                      when the tokenizer has one, else text)
    system=<text>            default system prompt
    chat_template=<file>     a Jinja chat template replacing the tokenizer's
    truncate=true            keep the end of prompts longer than the model's positions
    dtype=auto|float32|bfloat16|float16   device_map=auto   trust_remote_code=true

Generation overrides for the target (they win over the run's settings): ``stop=A|B``
(stop strings, ``|``-separated), ``top_k=N``, ``suppress_eos=true``.

A value holding a comma is written in double quotes: ``system="Be brief, be kind."``.
"""

from __future__ import annotations

from typing import Any

from deepalign.errors import DeepAlignError
from deepalign.registry import Registry, SpecArgs

TARGETS = Registry("target", sep=",")


def label(spec: str) -> str:
    """A target spec as it may be shown and stored: any ``user:password@`` in a URL removed."""
    import re

    return re.sub(r"(://)[^/@\s]*@", r"\1", spec)


def make_target(spec, *, batch_size: int = 16, device: str | None = None):
    """Build a target from a spec string (see the module doc); Target objects pass through."""
    if not isinstance(spec, str):
        if not callable(getattr(spec, "generate", None)):
            raise DeepAlignError(f"not a target: {spec!r}")
        return spec
    if ":" not in spec or not spec.partition(":")[2].strip():
        raise DeepAlignError(f"cannot parse target {spec!r}: use hf:<dir or hub id>, openai:<model>@<url>, "
                             "ed:base=...,aligned=...,alpha=..., eft:... or w2s:...")
    target = TARGETS.build(spec, batch_size=batch_size, device=device)
    target.name = label(spec)
    return target


def check_target(spec: str) -> None:
    """Check a local target's spec (kind, options, model paths) without loading anything."""
    if ":" not in spec or not spec.partition(":")[2].strip():
        make_target(spec)  # the same one-line error
    TARGETS.build(spec, check=True)


def is_local(spec) -> bool:
    """Whether building ``spec`` loads model weights on this machine (loaded lazily, when the
    target has work)."""
    return isinstance(spec, str) and spec.partition(":")[0].strip() in ("hf", "ed", "eft", "w2s")


# -- shared option readers -------------------------------------------------------------------


def _format_options(args: SpecArgs, prefix: str = "") -> dict[str, Any]:
    from deepalign.tokens import PromptFormat

    fmt = args.option(prefix + "format")
    return {"prompt_format": PromptFormat.parse(fmt) if fmt else None, "system": args.option(prefix + "system"),
            "chat_template": args.option(prefix + "chat_template"), "truncate": args.flag(prefix + "truncate")}


def _load_options(args: SpecArgs, context: dict, prefix: str = "") -> dict[str, Any]:
    from deepalign.models import DTYPES

    out: dict[str, Any] = {"dtype": args.option(prefix + "dtype", "auto", check=lambda v: v in DTYPES),
                           "device_map": args.option(prefix + "device_map"),
                           "trust_remote_code": args.flag(prefix + "trust_remote_code")}
    if context.get("device"):
        out["device"] = context["device"]
    return out


def _generation_options(args: SpecArgs) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stop = args.option("stop")
    if stop is not None:
        stops = [s for s in stop.split("|") if s]
        if not stops:
            raise DeepAlignError(f"target {args.spec!r}: stop= needs at least one string")
        out["stop_strings"] = stops
    top_k = args.option("top_k", None, int, check=lambda v: v >= 0)
    if top_k is not None:
        out["top_k"] = top_k
    if "suppress_eos" in args.options or "suppress_eos" in args.positional:
        out["suppress_eos"] = args.flag("suppress_eos")
    return out


def _component_options(args: SpecArgs, role: str, context: dict) -> dict[str, Any]:
    """Options of one component of a composed target: ``role.key=value`` wins over ``key=value``."""
    own = SpecArgs(args.spec, args.what, options=args.prefixed(role + "."))
    fmt = _format_options(own)
    load = _load_options(own, context)
    own.done()
    return {**fmt, **{k: v for k, v in load.items() if v not in (None, False, "auto") or k == "device"}}


def _shared_load(args: SpecArgs, context: dict) -> dict[str, Any]:
    return _load_options(args, context)


def _weight(args: SpecArgs, key: str, default: float | None = None) -> float | None:
    import math

    return args.option(key, default, float, check=math.isfinite)


# -- the kinds -------------------------------------------------------------------------------


@TARGETS.register("hf", "hf:<dir or hub id>[,format=...][,system=...][,chat_template=FILE][,dtype=...]"
                        "[,stop=A|B][,top_k=N][,suppress_eos=true][,truncate=true]: a Hugging Face causal LM")
def _hf(args: SpecArgs, context: dict):
    from deepalign.decoding.hf import HFTarget

    if len(args.positional) != 1:
        raise DeepAlignError(f"target {args.spec!r}: give one model directory or hub id, hf:<path>")
    fmt = _format_options(args)
    load = _load_options(args, context)
    gen = _generation_options(args)
    args.done(1)
    if context.get("check"):
        from deepalign.models import model_source

        return model_source(args.positional[0])
    return HFTarget(args.positional[0], batch_size=context.get("batch_size", 16), generation=gen, **fmt, **load)


@TARGETS.register("openai", "openai:<model>@<base_url>[,key_env=VAR][,concurrency=N][,timeout=S][,retries=N]"
                            "[,tokenizer=<model dir or hub id>][,format=...][,system=...][,allow_http=true]: "
                            "an OpenAI-compatible server")
def _openai(args: SpecArgs, context: dict):
    from deepalign.decoding.openai import OpenAITarget

    if len(args.positional) != 1:
        raise DeepAlignError(f"target {args.spec!r}: give the model, openai:<model>@<base_url>")
    model, _, base_url = args.positional[0].rpartition("@") if "@" in args.positional[0] else (args.positional[0], "", "")
    fmt = _format_options(args)
    fmt.pop("truncate")
    options = dict(
        key_env=args.option("key_env", "OPENAI_API_KEY"),
        concurrency=args.option("concurrency", 8, int, check=lambda v: v >= 1),
        timeout=args.option("timeout", 60.0, float, check=lambda v: v > 0),
        retries=args.option("retries", 4, int, check=lambda v: v >= 0),
        tokenizer=args.option("tokenizer"), allow_http=args.flag("allow_http"), generation=_generation_options(args),
    )
    args.done(1)
    return OpenAITarget(model.strip(), base_url.strip() or None, **options, **fmt)


def _composed(args: SpecArgs, context: dict, roles: dict[str, float], build, formats: dict | None = None):
    """Load the components named by ``roles`` (role -> weight) and compose them; ``formats``:
    each role's prompt format unless the spec names one."""
    from deepalign.decoding.compose import Component, refuse_servers

    shared_fmt = {k: v for k, v in _format_options(args).items() if v not in (None, False)}
    shared_load = _shared_load(args, context)
    gen = _generation_options(args)
    comps = []
    paths = {role: args.option(role) for role in roles}
    refuse_servers(paths, f"target {label(args.spec)!r}")
    missing = [role for role, path in paths.items() if not path]
    per_role = {role: _component_options(args, role, context) for role in roles}
    args.done()
    if missing:
        raise DeepAlignError(f"target {args.spec!r}: give {', '.join(f'{r}=' for r in missing)}")
    if context.get("check"):
        from deepalign.models import model_source

        return [model_source(paths[role]) for role in roles]
    for role, weight in roles.items():
        opts = {**shared_load, **shared_fmt}
        if (formats or {}).get(role) is not None:
            opts["prompt_format"] = formats[role]
        opts.update({k: v for k, v in per_role[role].items() if v is not None})
        comps.append(Component.load(paths[role], weight, **opts))
    return build(comps, gen)


@TARGETS.register("ed", "ed:base=<model>,aligned=<model>,alpha=<a> or ed:family=<name>[,alpha=<a>]: Emulated "
                        "Disalignment, (1+alpha)*base - alpha*aligned (per-model options: base.format=..., "
                        "aligned.system=...)")
def _ed(args: SpecArgs, context: dict):
    from deepalign.decoding import presets
    from deepalign.decoding.compose import ComposedTarget

    alpha = _weight(args, "alpha")
    family = args.option("family")
    reference = args.flag("reference_decoding", True)
    fam = presets.family(family) if family is not None else None
    if fam is not None:
        alpha = fam.alpha if alpha is None else alpha
        for role, value in (("base", fam.base), ("aligned", fam.aligned)):
            if value:
                args.options.setdefault(role, value)
    if alpha is None:
        raise DeepAlignError(f"target {args.spec!r}: give alpha= (or family=)")
    presets.check_scale("alpha", alpha)
    if fam is None:
        args.options.setdefault("base.format", "text")
    formats = {"base": fam.base_format, "aligned": fam.aligned_format} if fam is not None else None

    def build(comps, gen):
        target = ComposedTarget(comps, batch_size=context.get("batch_size", 16), generation=gen)
        if fam is None or not reference:
            return target
        target.generation = {**fam.generation(), **gen}
        return presets.ReferenceDecoding(target, fam)

    return _composed(args, context, {"base": 1.0 + alpha, "aligned": -alpha}, build, formats)


@TARGETS.register("eft", "eft:large=<model>,tuned=<model>,small=<model>[,w=<w>]: emulated fine-tuning / proxy-tuning, "
                         "large + w*(tuned - small)")
def _eft(args: SpecArgs, context: dict):
    from deepalign.decoding.compose import ComposedTarget

    w = _weight(args, "w", 1.0)
    return _composed(args, context, {"large": 1.0, "tuned": w, "small": -w},
                     lambda comps, gen: ComposedTarget(comps, batch_size=context.get("batch_size", 16), generation=gen))


@TARGETS.register("w2s", "w2s:strong=<model>,weak_unsafe=<model>,weak_safe=<model>,beta=<b>: weak-to-strong "
                         "jailbreaking, strong + beta*(weak_unsafe - weak_safe)")
def _w2s(args: SpecArgs, context: dict):
    from deepalign.decoding import presets
    from deepalign.decoding.compose import ComposedTarget

    beta = _weight(args, "beta")
    if beta is None:
        raise DeepAlignError(f"target {args.spec!r}: give beta=")
    presets.check_scale("beta", beta)
    return _composed(args, context, {"strong": 1.0, "weak_unsafe": beta, "weak_safe": -beta},
                     lambda comps, gen: ComposedTarget(comps, batch_size=context.get("batch_size", 16), generation=gen))
