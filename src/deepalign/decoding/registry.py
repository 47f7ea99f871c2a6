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
    ablate:model=<model>,direction=<dir>[,...]            a model with its refusal direction
                                                        ablated (directional ablation, hooks)
    actadd:model=<model>,direction=<dir>[,coeff=<c>]      ... or added at its layer (coeff times
                                                        the difference of means; 1 induces refusal)

Options of local models (``hf:``, and per component of composed targets with a
``base.`` / ``aligned.`` / ``large.`` ... prefix):

    format=chat|text|text:<template>|raw|<file.txt>   prompt format (default: the chat template
                                                      when the tokenizer has one, else text)
    system=<text>            default system prompt
    chat_template=<file>     a Jinja chat template replacing the tokenizer's
    truncate=true            keep the end of prompts longer than the model's positions
    dtype=auto|float32|bfloat16|float16   device_map=auto   trust_remote_code=true

Generation overrides for the target: ``stop=A|B`` (stop strings, ``|``-separated),
``top_k=N``, ``top_p=P``, ``temperature=T``, ``max_new_tokens=N``, ``num_samples=N``,
``do_sample=true``, ``suppress_eos=true``. One precedence rule decides what a target really
uses: an explicit spec option > the ED family's reference decoding (``ed:family=...``) > the
run's settings (``--temperature`` ...). The run log records the result per target.

A component of a composed target can have a refusal direction ablated or added:
``aligned.ablate=<dir>``, or ``aligned.actadd=<dir>`` with ``aligned.coeff=<c>``. A direction
computed from another model is refused unless ``allow_foreign=true`` (``aligned.allow_foreign``).

A value holding a comma is written in double quotes: ``system="Be brief, be kind."``.

From Python, :class:`TargetSpec` names a target without writing the string by hand, and
carries a display ``name`` and ``tags`` (typed metadata the run log keeps, e.g.
``{"model": "vanilla", "alpha": 0.3}``)::

    >>> TargetSpec.ed("runs/base", "runs/derta", 0.3, options={"base.format": "chat"}).text
    'ed:base=runs/base,aligned=runs/derta,alpha=0.3,base.format=chat'
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from deepalign.errors import DeepAlignError
from deepalign.registry import Registry, SpecArgs

TARGETS = Registry("target", sep=",")


def _quote(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ',"\\') or text != text.strip():
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


@dataclass(frozen=True)
class TargetSpec:
    """A target by kind and arguments: ``TargetSpec.hf("runs/derta")``,
    ``TargetSpec.ed(base, aligned, 0.3)``, or any kind with ``TargetSpec(kind, model,
    options)``. ``text`` is the spec string (what results are keyed and labelled by); ``name``
    a short display name and ``tags`` typed metadata, both recorded in the run log."""

    kind: str
    model: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    name: str | None = None
    tags: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def hf(cls, model, *, name: str | None = None, tags: Mapping[str, Any] | None = None,
           options: Mapping[str, Any] | None = None) -> TargetSpec:
        return cls("hf", str(model), _pairs(options), name, tuple((tags or {}).items()))

    @classmethod
    def ed(cls, base, aligned, alpha: float, *, name: str | None = None, tags: Mapping[str, Any] | None = None,
           options: Mapping[str, Any] | None = None) -> TargetSpec:
        pairs = (("base", str(base)), ("aligned", str(aligned)), ("alpha", str(alpha))) + _pairs(options)
        return cls("ed", None, pairs, name, tuple((tags or {}).items()))

    @property
    def text(self) -> str:
        args = ([_quote(self.model)] if self.model is not None else []) + [f"{k}={_quote(v)}" for k, v in self.options]
        return f"{self.kind}:" + ",".join(args)

    @property
    def tag_dict(self) -> dict[str, Any]:
        return dict(self.tags)

    def __str__(self) -> str:
        return self.text


def _pairs(options: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    out = []
    for k, v in (options or {}).items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        out.append((str(k), str(v)))
    return tuple(out)


def spec_text(spec) -> str:
    """The spec string of a :class:`TargetSpec` or a string."""
    return spec.text if isinstance(spec, TargetSpec) else spec


def label(spec: str) -> str:
    """A target spec as it may be shown and stored: any ``user:password@`` in a URL removed."""
    import re

    return re.sub(r"(://)[^/@\s]*@", r"\1", spec)


def make_target(spec, *, batch_size: int = 16, device: str | None = None):
    """Build a target from a spec string or :class:`TargetSpec` (see the module doc); Target
    objects pass through."""
    spec = spec_text(spec)
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


@dataclass
class TargetPlan:
    """What a local target will be, known from its spec alone (nothing loaded): the model of
    each role and the generation settings the target overrides."""

    kind: str
    models: dict[str, str]
    generation: dict[str, Any]


def check_target(spec) -> TargetPlan:
    """Check a local target's spec (kind, options, model paths) without loading anything, and
    return its :class:`TargetPlan`."""
    spec = spec_text(spec)
    if ":" not in spec or not spec.partition(":")[2].strip():
        make_target(spec)  # the same one-line error
    return TARGETS.build(spec, check=True)


def is_local(spec) -> bool:
    """Whether building ``spec`` loads model weights on this machine (loaded lazily, when the
    target has work)."""
    spec = spec_text(spec)
    return isinstance(spec, str) and spec.partition(":")[0].strip() in ("hf", "ed", "eft", "w2s", "ablate", "actadd")


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


def _finite_positive(value: float) -> bool:
    import math

    return math.isfinite(value) and value > 0


#: generation settings a spec may override: name -> (type, check)
_GEN_OPTIONS = {
    "top_k": (int, lambda v: v >= 0),
    "top_p": (float, lambda v: 0 < v <= 1),
    "temperature": (float, _finite_positive),
    "max_new_tokens": (int, lambda v: v >= 1),
    "num_samples": (int, lambda v: v >= 1),
}


def _generation_options(args: SpecArgs) -> dict[str, Any]:
    """The spec's own generation settings (they win over a family preset and the run's)."""
    out: dict[str, Any] = {}
    stop = args.option("stop")
    if stop is not None:
        stops = [s for s in stop.split("|") if s]
        if not stops:
            raise DeepAlignError(f"target {args.spec!r}: stop= needs at least one string")
        out["stop_strings"] = stops
    for name, (type_, check) in _GEN_OPTIONS.items():
        value = args.option(name, None, type_, check=check)
        if value is not None:
            out[name] = value
    for name in ("suppress_eos", "do_sample"):
        if name in args.options or name in args.positional:
            out[name] = args.flag(name)
    return out


def _component_options(args: SpecArgs, role: str, context: dict) -> dict[str, Any]:
    """Options of one component of a composed target: ``role.key=value`` wins over ``key=value``."""
    own = SpecArgs(args.spec, args.what, options=args.prefixed(role + "."))
    fmt = _format_options(own)
    load = _load_options(own, context)
    direction = _direction_options(own)
    own.done()
    return {**fmt, **{k: v for k, v in load.items() if v not in (None, False, "auto") or k == "device"},
            "direction": direction}


def _direction_options(args: SpecArgs) -> dict[str, Any] | None:
    """``ablate=<dir>`` or ``actadd=<dir>`` (with ``coeff=``), and ``allow_foreign=``: a
    refusal direction applied to one component of a composed target."""
    import math

    ablate, actadd = args.option("ablate"), args.option("actadd")
    coeff = args.option("coeff", None, float, check=math.isfinite)
    foreign = args.flag("allow_foreign")
    if ablate and actadd:
        raise DeepAlignError(f"target {args.spec!r}: give ablate= or actadd=, not both")
    if coeff is not None and not actadd:
        raise DeepAlignError(f"target {args.spec!r}: coeff= goes with actadd=")
    if not (ablate or actadd):
        return None
    return {"direction": ablate or actadd, "mode": "ablate" if ablate else "add",
            "coeff": 1.0 if coeff is None else coeff, "allow_foreign": foreign}


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

        return TargetPlan("hf", {"model": model_source(args.positional[0])}, gen)
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


#: models loaded for composed targets during a run, shared by the targets that name them (an ED
#: sweep over alphas loads its two models once): (source, load options) -> (model, tokenizer)
_SHARED: dict | None = None


@contextlib.contextmanager
def shared_models() -> Iterator[None]:
    """Within this block, composed targets that name the same model with the same load options
    share one loaded copy (see :func:`keep_models`)."""
    global _SHARED
    previous, _SHARED = _SHARED, {}
    try:
        yield
    finally:
        _SHARED = previous


def keep_models(sources) -> None:
    """Drop the shared models none of ``sources`` names (before building a target that needs
    others, so that at most one target's models are in memory)."""
    if _SHARED is not None:
        for key in [k for k in _SHARED if k[0] not in set(sources)]:
            del _SHARED[key]


def _component(path: str, weight: float, opts: dict, *, shared: bool = True):
    from deepalign.decoding.compose import Component
    from deepalign.models import load_causal_lm, load_tokenizer, model_source

    load = {k: opts.pop(k) for k in ("dtype", "device", "device_map", "trust_remote_code") if k in opts}
    key = (model_source(path), tuple(sorted((k, str(v)) for k, v in load.items())), opts.get("chat_template"))
    pool = _SHARED if shared else None
    pair = pool.get(key) if pool is not None else None
    if pair is None:
        tokenizer = load_tokenizer(path, trust_remote_code=bool(load.get("trust_remote_code")),
                                   chat_template=opts.get("chat_template"))
        pair = (load_causal_lm(path, **load), tokenizer)
        if pool is not None:
            pool[key] = pair
    opts.pop("chat_template", None)
    return Component(pair[0], pair[1], weight, opts.pop("prompt_format", None), str(path), **opts)


def _composed(args: SpecArgs, context: dict, roles: dict[str, float], build, formats: dict | None = None,
              preset: dict | None = None):
    """Load the components named by ``roles`` (role -> weight) and compose them; ``formats``:
    each role's prompt format unless the spec names one; ``preset``: generation settings of a
    family preset (the spec's own win over them). ``build(components, generation)``."""
    shared_fmt = {k: v for k, v in _format_options(args).items() if v not in (None, False)}
    shared_load = _shared_load(args, context)
    gen = {**(preset or {}), **_generation_options(args)}
    comps = []
    paths = {role: args.option(role) for role in roles}
    from deepalign.decoding.compose import refuse_servers

    refuse_servers(paths, f"target {label(args.spec)!r}")
    missing = [role for role, path in paths.items() if not path]
    per_role = {role: _component_options(args, role, context) for role in roles}
    args.done()
    if missing:
        raise DeepAlignError(f"target {args.spec!r}: give {', '.join(f'{r}=' for r in missing)}")
    directions = {role: per_role[role].pop("direction") for role in roles}
    if context.get("check"):
        return TargetPlan(args.spec.partition(":")[0], {role: _check_model(paths[role], directions[role])
                                                         for role in roles}, gen)
    for role, weight in roles.items():
        opts = {**shared_load, **shared_fmt}
        if (formats or {}).get(role) is not None:
            opts["prompt_format"] = formats[role]
        opts.update({k: v for k, v in per_role[role].items() if v is not None})
        # a model that gets hooks of its own is loaded for this target alone, never shared
        comp = _component(paths[role], weight, opts, shared=directions[role] is None)
        if directions[role] is not None:
            from deepalign.direction.apply import apply_direction

            d = directions[role]
            apply_direction(comp.model, d["direction"], mode=d["mode"], coeff=d["coeff"], name=comp.name,
                            allow_foreign=d["allow_foreign"])
        comps.append(comp)
    return build(comps, gen)


def _check_model(path: str, direction: dict | None) -> str:
    """Check mode: the model path, and the direction file with what it can check before
    loading the model."""
    import os

    from deepalign.models import model_source

    source = model_source(path)
    if direction is not None:
        from deepalign.direction.store import load_direction

        d = load_direction(direction["direction"])
        if os.path.isdir(source):
            d.check_checkpoint(source, allow_foreign=direction["allow_foreign"])
    return source


@TARGETS.register("ed", "ed:base=<model>,aligned=<model>,alpha=<a> or ed:family=<name>[,alpha=<a>]: Emulated "
                        "Disalignment, (1+alpha)*base - alpha*aligned (per-model options: base.format=..., "
                        "aligned.system=...)")
def _ed(args: SpecArgs, context: dict):
    from deepalign.decoding import presets

    family = args.option("family")
    reference = args.flag("reference_decoding", True)
    fam = presets.family(family) if family is not None else None
    alpha = presets.ed_alpha(_weight(args, "alpha"), fam, what=f"target {args.spec!r}")
    for role, value in (("base", fam.base if fam else None), ("aligned", fam.aligned if fam else None)):
        if value:
            args.options.setdefault(role, value)  # the spec's own models win over the family's
    if fam is None:
        args.options.setdefault("base.format", "text")
    formats = {"base": fam.base_format, "aligned": fam.aligned_format} if fam is not None else None
    preset = presets.reference_generation(fam) if fam is not None and reference else None

    def build(comps, gen):
        return presets.ed_target(comps[0], comps[1], fam=fam if reference else None, generation=gen,
                                 batch_size=context.get("batch_size", 16))

    return _composed(args, context, {"base": 1.0 + alpha, "aligned": -alpha}, build, formats, preset)


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


def _direction_target(args: SpecArgs, context: dict, mode: str):
    import math

    model, direction = args.option("model"), args.option("direction")
    coeff = args.option("coeff", 1.0, float, check=math.isfinite) if mode == "add" else 1.0
    foreign = args.flag("allow_foreign")
    fmt = _format_options(args)
    load = _load_options(args, context)
    gen = _generation_options(args)
    args.done()
    if not model or not direction:
        raise DeepAlignError(f"target {args.spec!r}: give model=<dir or hub id> and direction=<direction dir>")
    spec = {"direction": direction, "mode": mode, "coeff": coeff, "allow_foreign": foreign}
    if context.get("check"):
        return TargetPlan(args.spec.partition(":")[0], {"model": _check_model(model, spec)}, gen)
    from deepalign.decoding.hf import direction_target

    return direction_target(model, direction, mode=mode, coeff=coeff, allow_foreign=foreign,
                            batch_size=context.get("batch_size", 16), generation=gen, **fmt, **load)


@TARGETS.register("ablate", "ablate:model=<model>,direction=<dir>[,allow_foreign=true][,hf: options]: a model with "
                            "its refusal direction ablated at every layer and position (forward hooks)")
def _ablate(args: SpecArgs, context: dict):
    return _direction_target(args, context, "ablate")


@TARGETS.register("actadd", "actadd:model=<model>,direction=<dir>[,coeff=<c>][,hf: options]: a model with its "
                            "refusal direction added at its layer, coeff times the difference of means (1: induce "
                            "refusal, -1: the reference's subtraction)")
def _actadd(args: SpecArgs, context: dict):
    return _direction_target(args, context, "add")
