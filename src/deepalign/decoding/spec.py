"""Target specs, parsed once: a spec string or a :class:`TargetSpec` becomes a typed value
(:func:`parse_target`) that the rest of the code passes on; nothing is loaded here
(:func:`deepalign.decoding.registry.make_target` builds the target from the typed value).

    hf:<dir or hub id>[,option=value...]
    openai:<model>@<base_url>[,key_env=VAR][,concurrency=N][,timeout=S][,retries=N]
    ed:base=<model>,aligned=<model>,alpha=<a>[,...]      Emulated Disalignment
    ed:family=<name>[,alpha=<a>][,base=...][,aligned=...][,reference_decoding=false]
                                                        an ED family of the paper, with the
                                                        reference's prompts and decoding
    eft:large=<model>,tuned=<model>,small=<model>[,w=<w>]    emulated fine-tuning
    w2s:strong=<model>,weak_unsafe=<model>,weak_safe=<model>,beta=<b>   weak-to-strong
    ada-rk:<model>[,every=25][,lookahead=20][,refuse=A|B][,refusal=TEXT][,world=DIR]
                                                        the model defended by Any-Depth Alignment's
                                                        rethinking (decoding/ada.py)
    ada-lp:<model>:<probe dir>[,every=25][,threshold=0.5][,refusal=TEXT][,world=DIR]
                                                        ... by its linear probe (deepalign ada-probe)
    ablate:model=<model>,direction=<dir>[,...]            a model with its refusal direction
                                                        ablated (directional ablation, hooks)
    actadd:model=<model>,direction=<dir>[,coeff=<c>]      ... or added at its layer (coeff times
                                                        the difference of means; 1 induces refusal)

Options of local models (``hf:``, and per component of composed targets with a
``base.`` / ``aligned.`` / ``large.`` ... prefix, which wins over the same option unprefixed):

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

From Python, :class:`TargetSpec` names a target without writing the string by hand (its
numbers stay numbers: an ED alpha reaches the composed weights as the float given), and
carries a display ``name`` and ``tags`` (typed metadata the run log keeps, e.g.
``{"model": "vanilla", "alpha": 0.3}``)::

    >>> TargetSpec.ed("runs/base", "runs/derta", 0.3, options={"base.format": "chat"}).text
    'ed:base=runs/base,aligned=runs/derta,alpha=0.3,base.format=chat'
    >>> parse_target(TargetSpec.ed("runs/base", "runs/derta", 0.3)).weights
    (1.3, -0.3)

The typed values: :class:`HFSpec` (``hf:``, ``ablate:``, ``actadd:``: one local model),
:class:`OpenAISpec`, :class:`ComposedSpec` (``eft:``, ``w2s:``: weighted local models) and
:class:`EDSpec` (``ed:``, with its alpha and family). Every one keeps the spec ``text`` it
was parsed from: the run log records it, and results are keyed by it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from deepalign.errors import DeepAlignError
from deepalign.registry import Registry, SpecArgs

#: the kinds of target: name -> parser(args, context) returning a typed spec
TARGETS = Registry("target", sep=",")


def label(spec: str) -> str:
    """A target spec as it may be shown and stored: any ``user:password@`` in a URL removed."""
    return re.sub(r"(://)[^/@\s]*@", r"\1", spec)


# -- the spec a user writes from Python --------------------------------------------------------


def _quote(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ',"\\') or text != text.strip():
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


@dataclass(frozen=True)
class TargetSpec:
    """A target by kind and arguments: ``TargetSpec.hf("runs/derta")``,
    ``TargetSpec.ed(base, aligned, 0.3)``, ``TargetSpec.ablate(model, direction)``, or any kind
    with ``TargetSpec(kind, model, options)``. ``text`` is the spec string (what results are
    keyed and labelled by); ``name`` a short display name and ``tags`` typed metadata, both
    recorded in the run log. :func:`parse_target` reads its options as they are (an alpha
    stays the float given), never through ``text``."""

    kind: str
    model: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    name: str | None = None
    tags: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def hf(cls, model, *, name: str | None = None, tags: Mapping[str, Any] | None = None,
           options: Mapping[str, Any] | None = None) -> TargetSpec:
        return cls("hf", str(model), _pairs(options), name, tuple((tags or {}).items()))

    @classmethod
    def ed(cls, base, aligned, alpha: float, *, name: str | None = None, tags: Mapping[str, Any] | None = None,
           options: Mapping[str, Any] | None = None) -> TargetSpec:
        pairs = (("base", str(base)), ("aligned", str(aligned)), ("alpha", float(alpha))) + _pairs(options)
        return cls("ed", None, pairs, name, tuple((tags or {}).items()))

    @classmethod
    def ablate(cls, model, direction, *, name: str | None = None, tags: Mapping[str, Any] | None = None,
               options: Mapping[str, Any] | None = None) -> TargetSpec:
        """``model`` with the refusal direction saved in ``direction`` ablated."""
        pairs = (("model", str(model)), ("direction", str(direction))) + _pairs(options)
        return cls("ablate", None, pairs, name, tuple((tags or {}).items()))

    @property
    def text(self) -> str:
        args = ([_quote(self.model)] if self.model is not None else []) + [f"{k}={_quote(v)}" for k, v in self.options]
        return f"{self.kind}:" + ",".join(args)

    @property
    def tag_dict(self) -> dict[str, Any]:
        return dict(self.tags)

    def __str__(self) -> str:
        return self.text


def _pairs(options: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Options as (key, value) pairs: a Python number stays the number given, a bool becomes
    ``true`` / ``false``, anything else its string."""
    out = []
    for k, v in (options or {}).items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif not isinstance(v, (int, float)):
            v = str(v)
        out.append((str(k), v))
    return tuple(out)


# -- the typed values ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Direction:
    """A refusal direction applied to a model: ablated (``mode="ablate"``) or added ``coeff``
    times (``mode="add"``); ``allow_foreign``: computed from another model."""

    path: str
    mode: str = "ablate"
    coeff: float = 1.0
    allow_foreign: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """One local model of a target: where it is, the prompt format it reads queries in
    (``None``: its chat template when it has one, else the default text template), how it is
    loaded, and the refusal direction applied to it."""

    path: str
    format: Any = None  # a deepalign.tokens.PromptFormat
    system: str | None = None
    chat_template: str | None = None
    truncate: bool = False
    dtype: str = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    direction: Direction | None = None

    def load_options(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "device_map": self.device_map, "trust_remote_code": self.trust_remote_code}


@dataclass(frozen=True)
class Weighted:
    """One component of a composed target: its role (``base``, ``aligned``...), model and weight."""

    role: str
    model: ModelSpec
    weight: float


@dataclass(frozen=True, kw_only=True)
class ParsedSpec:
    """What every typed target spec has: its kind, the spec ``text`` it was parsed from (any
    password in a URL is dropped from :attr:`label`, what the run log shows), the display
    ``name`` and ``tags`` of a :class:`TargetSpec`, and the generation settings the target
    overrides (they win over the run's)."""

    kind: str
    text: str
    name: str | None = None
    tags: tuple[tuple[str, Any], ...] = ()
    generation: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def label(self) -> str:
        return label(self.text)

    @property
    def tag_dict(self) -> dict[str, Any]:
        return dict(self.tags)

    @property
    def local(self) -> bool:
        """Whether building the target loads model weights on this machine."""
        return True

    @property
    def models(self) -> dict[str, ModelSpec]:
        """The local models by role (``model`` for a single-model target)."""
        return {}


@dataclass(frozen=True, kw_only=True)
class HFSpec(ParsedSpec):
    """``hf:``, ``ablate:``, ``actadd:``: one Hugging Face causal LM (with a refusal direction
    for the last two)."""

    model: ModelSpec
    #: ``ada-rk:`` / ``ada-lp:``: the model defended by Any-Depth Alignment (an AdaSettings)
    ada: Any = None

    @property
    def models(self) -> dict[str, ModelSpec]:
        return {"model": self.model}


@dataclass(frozen=True, kw_only=True)
class OpenAISpec(ParsedSpec):
    """``openai:``: a model behind an OpenAI-compatible server."""

    model: str
    base_url: str | None
    key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 60.0
    retries: int = 4
    tokenizer: str | None = None
    format: Any = None
    system: str | None = None
    chat_template: str | None = None
    allow_http: bool = False

    @property
    def local(self) -> bool:
        return False


@dataclass(frozen=True, kw_only=True)
class ComposedSpec(ParsedSpec):
    """``eft:``, ``w2s:``: decoding from a weighted sum of local models' log-probs."""

    components: tuple[Weighted, ...]

    @property
    def models(self) -> dict[str, ModelSpec]:
        return {c.role: c.model for c in self.components}

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(c.weight for c in self.components)


@dataclass(frozen=True, kw_only=True)
class EDSpec(ComposedSpec):
    """``ed:``: Emulated Disalignment, components ``base`` (weight ``1 + alpha``) and
    ``aligned`` (``-alpha``); ``family``: the ED family (an EDFamily) whose prompts it uses,
    ``reference_decoding``: with its reference's decoding and response filters."""

    alpha: float
    family: Any = None
    reference_decoding: bool = True


# -- parsing -------------------------------------------------------------------------------------


def parse_target(spec) -> ParsedSpec:
    """The typed value of a spec string or :class:`TargetSpec` (a typed value passes through):
    every option read and checked here, once; nothing loaded."""
    if isinstance(spec, ParsedSpec):
        return spec
    if isinstance(spec, TargetSpec):
        kind = TARGETS.check_name(spec.kind)
        args = SpecArgs(spec.text, "target", positional=[spec.model] if spec.model is not None else [])
        for key, value in spec.options:
            if key in args.options:
                raise DeepAlignError(f"target {spec.text!r}: option {key} given twice")
            args.options[key] = value
        parsed = TARGETS.entries[kind][0](args, {})
        return replace(parsed, name=spec.name, tags=spec.tags)
    if not isinstance(spec, str):
        raise DeepAlignError(f"not a target spec: {spec!r}")
    if ":" not in spec or not spec.partition(":")[2].strip():
        raise DeepAlignError(f"cannot parse target {spec!r}: use hf:<dir or hub id>, openai:<model>@<url>, "
                             "ed:base=...,aligned=...,alpha=..., eft:... or w2s:...")
    return TARGETS.build(spec)


def _prompt_fields(args: SpecArgs) -> dict[str, Any]:
    """A model's prompt options as given (None: not given)."""
    from deepalign.tokens import PromptFormat

    fmt = args.option("format")
    return {"format": PromptFormat.parse(fmt) if fmt else None, "system": args.option("system"),
            "chat_template": args.option("chat_template"), "truncate": args.flag("truncate", None)}


def _load_fields(args: SpecArgs) -> dict[str, Any]:
    """A model's load options as given (None: not given)."""
    from deepalign.models import DTYPES

    return {"dtype": args.option("dtype", None, check=lambda v: v in DTYPES), "device_map": args.option("device_map"),
            "trust_remote_code": args.flag("trust_remote_code", None)}


def _model(path: str, *layers: Mapping[str, Any], direction: Direction | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from option layers, the last given value of each option winning."""
    fields: dict[str, Any] = {}
    for layer in layers:
        fields.update({k: v for k, v in layer.items() if v is not None})
    return ModelSpec(path, direction=direction, **fields)


def _finite_positive(value: float) -> bool:
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


def _direction(args: SpecArgs) -> Direction | None:
    """``ablate=<dir>`` or ``actadd=<dir>`` (with ``coeff=``), and ``allow_foreign=``: a
    refusal direction applied to one component of a composed target."""
    ablate, actadd = args.option("ablate"), args.option("actadd")
    coeff = args.option("coeff", None, float, check=math.isfinite)
    foreign = args.flag("allow_foreign")
    if ablate and actadd:
        raise DeepAlignError(f"target {args.spec!r}: give ablate= or actadd=, not both")
    if coeff is not None and not actadd:
        raise DeepAlignError(f"target {args.spec!r}: coeff= goes with actadd=")
    if not (ablate or actadd):
        return None
    return Direction(ablate or actadd, "ablate" if ablate else "add", 1.0 if coeff is None else coeff, foreign)


def _weight(args: SpecArgs, key: str, default: float | None = None) -> float | None:
    return args.option(key, default, float, check=math.isfinite)


@TARGETS.register("hf", "hf:<dir or hub id>[,format=...][,system=...][,chat_template=FILE][,dtype=...]"
                        "[,stop=A|B][,top_k=N][,suppress_eos=true][,truncate=true]: a Hugging Face causal LM")
def _hf(args: SpecArgs, context: dict) -> HFSpec:
    if len(args.positional) != 1:
        raise DeepAlignError(f"target {args.spec!r}: give one model directory or hub id, hf:<path>")
    prompt, load, gen = _prompt_fields(args), _load_fields(args), _generation_options(args)
    args.done(1)
    return HFSpec(kind="hf", text=args.spec, model=_model(args.positional[0], prompt, load), generation=gen)


@TARGETS.register("openai", "openai:<model>@<base_url>[,key_env=VAR][,concurrency=N][,timeout=S][,retries=N]"
                            "[,tokenizer=<model dir or hub id>][,format=...][,system=...][,allow_http=true]: "
                            "an OpenAI-compatible server")
def _openai(args: SpecArgs, context: dict) -> OpenAISpec:
    if len(args.positional) != 1:
        raise DeepAlignError(f"target {args.spec!r}: give the model, openai:<model>@<base_url>")
    where = args.positional[0]
    model, _, base_url = where.rpartition("@") if "@" in where else (where, "", "")
    prompt = _prompt_fields(args)
    prompt.pop("truncate")  # prompts are sent whole; the server decides
    options = dict(
        key_env=args.option("key_env", "OPENAI_API_KEY"),
        concurrency=args.option("concurrency", 8, int, check=lambda v: v >= 1),
        timeout=args.option("timeout", 60.0, float, check=lambda v: v > 0),
        retries=args.option("retries", 4, int, check=lambda v: v >= 0),
        tokenizer=args.option("tokenizer"), allow_http=args.flag("allow_http"),
    )
    gen = _generation_options(args)
    args.done(1)
    return OpenAISpec(kind="openai", text=args.spec, model=model.strip(), base_url=base_url.strip() or None,
                      generation=gen, **options, **prompt)


def _components(args: SpecArgs, roles: Mapping[str, float], *, defaults: Mapping[str, Any] | None = None,
                formats: Mapping[str, Any] | None = None) -> tuple[Weighted, ...]:
    """The weighted components named by ``roles`` (role -> weight). A component's own option
    (``base.format=``) wins over ``formats`` (the kind's format for that role), which wins over
    the option unprefixed (``format=``); ``defaults``: models of roles the spec may leave out."""
    from deepalign.decoding.compose import refuse_servers

    shared = {**_prompt_fields(args), **_load_fields(args)}
    paths = {role: args.option(role, (defaults or {}).get(role)) for role in roles}
    refuse_servers(paths, f"target {label(args.spec)!r}")
    missing = [role for role, path in paths.items() if not path]
    own = {role: SpecArgs(args.spec, args.what, options=args.prefixed(role + ".")) for role in roles}
    per_role = {}
    for role, role_args in own.items():
        per_role[role] = ({**_prompt_fields(role_args), **_load_fields(role_args)}, _direction(role_args))
        role_args.done()
    args.done()
    if missing:
        raise DeepAlignError(f"target {args.spec!r}: give {', '.join(f'{r}=' for r in missing)}")
    return tuple(Weighted(role, _model(paths[role], shared, {"format": (formats or {}).get(role)}, per_role[role][0],
                                       direction=per_role[role][1]), weight) for role, weight in roles.items())


@TARGETS.register("ed", "ed:base=<model>,aligned=<model>,alpha=<a> or ed:family=<name>[,alpha=<a>]: Emulated "
                        "Disalignment, (1+alpha)*base - alpha*aligned (per-model options: base.format=..., "
                        "aligned.system=...)")
def _ed(args: SpecArgs, context: dict) -> EDSpec:
    from deepalign.decoding import presets
    from deepalign.tokens import PromptFormat

    name = args.option("family")
    reference = args.flag("reference_decoding", True)
    fam = presets.family(name) if name is not None else None
    alpha = presets.ed_alpha(_weight(args, "alpha"), fam, what=f"target {args.spec!r}")
    if fam is None:
        defaults, formats, preset = None, {"base": PromptFormat.text()}, {}
    else:  # the spec's own models and formats win over the family's
        defaults, formats = {"base": fam.base, "aligned": fam.aligned}, {"base": fam.base_format,
                                                                           "aligned": fam.aligned_format}
        preset = presets.reference_generation(fam) if reference else {}
    gen = _generation_options(args)
    components = _components(args, {"base": 1.0 + alpha, "aligned": -alpha}, defaults=defaults, formats=formats)
    return EDSpec(kind="ed", text=args.spec, components=components, generation={**preset, **gen}, alpha=alpha,
                  family=fam, reference_decoding=reference)


@TARGETS.register("eft", "eft:large=<model>,tuned=<model>,small=<model>[,w=<w>]: emulated fine-tuning / proxy-tuning, "
                         "large + w*(tuned - small)")
def _eft(args: SpecArgs, context: dict) -> ComposedSpec:
    w = _weight(args, "w", 1.0)
    gen = _generation_options(args)
    components = _components(args, {"large": 1.0, "tuned": w, "small": -w})
    return ComposedSpec(kind="eft", text=args.spec, components=components, generation=gen)


@TARGETS.register("w2s", "w2s:strong=<model>,weak_unsafe=<model>,weak_safe=<model>,beta=<b>: weak-to-strong "
                         "jailbreaking, strong + beta*(weak_unsafe - weak_safe)")
def _w2s(args: SpecArgs, context: dict) -> ComposedSpec:
    from deepalign.decoding import presets

    beta = _weight(args, "beta")
    if beta is None:
        raise DeepAlignError(f"target {args.spec!r}: give beta=")
    presets.check_scale("beta", beta)
    gen = _generation_options(args)
    components = _components(args, {"strong": 1.0, "weak_unsafe": beta, "weak_safe": -beta})
    return ComposedSpec(kind="w2s", text=args.spec, components=components, generation=gen)


def _direction_target(args: SpecArgs, kind: str) -> HFSpec:
    model, direction = args.option("model"), args.option("direction")
    coeff = args.option("coeff", 1.0, float, check=math.isfinite) if kind == "actadd" else 1.0
    foreign = args.flag("allow_foreign")
    prompt, load, gen = _prompt_fields(args), _load_fields(args), _generation_options(args)
    args.done()
    if not model or not direction:
        raise DeepAlignError(f"target {args.spec!r}: give model=<dir or hub id> and direction=<direction dir>")
    d = Direction(direction, "add" if kind == "actadd" else "ablate", coeff, foreign)
    return HFSpec(kind=kind, text=args.spec, model=_model(model, prompt, load, direction=d), generation=gen)


@TARGETS.register("ablate", "ablate:model=<model>,direction=<dir>[,allow_foreign=true][,hf: options]: a model with "
                            "its refusal direction ablated at every layer and position (forward hooks)")
def _ablate(args: SpecArgs, context: dict) -> HFSpec:
    return _direction_target(args, "ablate")


@TARGETS.register("actadd", "actadd:model=<model>,direction=<dir>[,coeff=<c>][,hf: options]: a model with its "
                            "refusal direction added at its layer, coeff times the difference of means (1: induce "
                            "refusal, -1: the reference's subtraction)")
def _actadd(args: SpecArgs, context: dict) -> HFSpec:
    return _direction_target(args, "actadd")


def _ada(args: SpecArgs, mode: str) -> HFSpec:
    """``ada-rk:`` / ``ada-lp:``: one local model (with the ``hf:`` options, and a refusal
    direction by ``ablate=`` / ``actadd=``) defended by Any-Depth Alignment."""
    from deepalign.decoding.ada import AdaSettings
    from deepalign.decoding.compose import refuse_servers

    kind = args.spec.partition(":")[2].partition(":")[0].strip().lower()
    if kind in ("ed", "eft", "w2s", "ablate", "actadd", "ada-rk", "ada-lp"):
        raise DeepAlignError(f"target {args.spec!r}: ADA wraps one local model, given as a directory or hub id "
                             "(ablate=<dir> / actadd=<dir> add a refusal direction to it); a composed target "
                             f"({kind}:) is not wrapped: logit arithmetic has no one model whose cache ADA rewinds")
    if len(args.positional) != 1:
        raise DeepAlignError(f"target {args.spec!r}: give one model, ada-{mode}:<model>"
                             + (":<probe dir>" if mode == "lp" else ""))
    model, probe = args.positional[0], args.option("probe")
    if kind == "hf":
        model = model.partition(":")[2]
    if mode == "lp" and probe is None and ":" in model:
        model, _, probe = model.rpartition(":")
    refuse_servers({"model": model}, f"target {label(args.spec)!r}: ADA reads and rewinds the model's own KV cache"
                   + (" and hidden states" if mode == "lp" else ""))
    refuse = args.option("refuse")
    settings = dict(mode=mode, every=args.option("every", 25, int, check=lambda v: v >= 1),
                    refusal=args.option("refusal"), world=args.option("world"), probe=probe)
    if mode == "rk":
        settings.update(lookahead=args.option("lookahead", 20, int, check=lambda v: v >= 1),
                        refuse=tuple(refuse.split("|")) if refuse is not None else None)
    else:
        settings["threshold"] = args.option("threshold", 0.5, float, check=lambda v: 0 < v < 1)
    direction = _direction(args)
    prompt, load, gen = _prompt_fields(args), _load_fields(args), _generation_options(args)
    args.done(1)
    return HFSpec(kind=f"ada-{mode}", text=args.spec, model=_model(model, prompt, load, direction=direction),
                  generation=gen, ada=AdaSettings(**settings))


@TARGETS.register("ada-rk", "ada-rk:<model>[,every=25][,lookahead=20][,refuse=A|B][,refusal=TEXT][,world=DIR]"
                            "[,ablate=<dir>][,hf: options]: the model defended by Any-Depth Alignment's rethinking "
                            "(the assistant header re-inserted every N tokens; a refusal after it stops the answer)")
def _ada_rk(args: SpecArgs, context: dict) -> HFSpec:
    return _ada(args, "rk")


@TARGETS.register("ada-lp", "ada-lp:<model>:<probe dir>[,every=25][,threshold=0.5][,refusal=TEXT][,world=DIR]"
                            "[,ablate=<dir>][,hf: options]: the model defended by Any-Depth Alignment's linear probe "
                            "(read at the re-inserted header every N tokens; fit it with deepalign ada-probe)")
def _ada_lp(args: SpecArgs, context: dict) -> HFSpec:
    return _ada(args, "lp")
