"""Targets by spec: every target (a Hugging Face model, a composed decoder, an
OpenAI-compatible server) is built from one short string or a :class:`TargetSpec`, parsed
once into a typed value (:mod:`deepalign.decoding.spec`, where the grammar and the options
are described) that :func:`make_target` builds and :func:`check_target` checks without
loading anything.

    >>> target = make_target("ed:base=runs/base,aligned=runs/derta,alpha=0.3")  # doctest: +SKIP
    >>> [c.weight for c in target.components]                                    # doctest: +SKIP
    [1.3, -0.3]
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

from deepalign.decoding.spec import (TARGETS, ComposedSpec, Direction, EDSpec, HFSpec, ModelSpec, OpenAISpec,
                                     ParsedSpec, TargetSpec, Weighted, label, parse_target)
from deepalign.errors import DeepAlignError

__all__ = ["TARGETS", "TargetSpec", "TargetPlan", "ParsedSpec", "parse_target", "make_target", "check_target",
           "check_model", "label", "shared_models", "keep_models"]


def make_target(spec, *, batch_size: int = 16, device: str | None = None):
    """Build a target from a spec string, a :class:`TargetSpec` or a parsed spec (parsed here
    only when it is not already); Target objects pass through."""
    if not isinstance(spec, (str, TargetSpec, ParsedSpec)):
        if not callable(getattr(spec, "generate", None)):
            raise DeepAlignError(f"not a target: {spec!r}")
        return spec
    parsed = parse_target(spec)
    if isinstance(parsed, ComposedSpec):
        target = _composed(parsed, batch_size, device)
    elif isinstance(parsed, HFSpec):
        target = _hf(parsed, batch_size, device)
    elif isinstance(parsed, OpenAISpec):
        target = _openai(parsed)
    else:
        raise DeepAlignError(f"not a target spec: {parsed!r}")
    target.name = parsed.label
    return target


@dataclass
class TargetPlan:
    """What a local target will be, known from its spec alone (nothing loaded): the model of
    each role and the generation settings the target overrides."""

    kind: str
    models: dict[str, str]
    generation: dict[str, Any]


def check_target(spec) -> TargetPlan:
    """Check a target's spec (kind, options, model paths, direction files) without loading any
    model or contacting any server, and return its :class:`TargetPlan`."""
    parsed = parse_target(spec)
    models = {role: check_model(m.path, m.direction) for role, m in parsed.models.items()}
    ada = getattr(parsed, "ada", None)
    if ada is not None and ada.probe is not None:
        from deepalign.decoding.ada_probe import PROBE_FILE

        if not (Path(ada.probe) / PROBE_FILE).is_file():
            raise DeepAlignError(f"target {parsed.label!r}: {ada.probe} is not an ADA-LP probe directory (no "
                                 f"{PROBE_FILE}); fit one with deepalign ada-probe")
    if ada is not None and ada.world is not None:
        from deepalign.world.generator import load_manifest

        load_manifest(ada.world)
    return TargetPlan(parsed.kind, models, dict(parsed.generation))


def check_model(path: str, direction: Direction | None = None) -> str:
    """The model's source (a local directory or a hub id), and the direction file with what
    it can check before loading the model."""
    import os

    from deepalign.models import model_source

    source = model_source(path)
    if direction is not None:
        from deepalign.direction.store import load_direction

        d = load_direction(direction.path)
        if os.path.isdir(source):
            d.check_checkpoint(source, allow_foreign=direction.allow_foreign)
    return source


# -- building --------------------------------------------------------------------------------


def _prompt_options(m: ModelSpec) -> dict[str, Any]:
    return {"prompt_format": m.format, "system": m.system, "chat_template": m.chat_template, "truncate": m.truncate}


def _hf(spec: HFSpec, batch_size: int, device: str | None):
    m = spec.model
    load = {**m.load_options(), **({"device": device} if device else {})}
    options = dict(batch_size=batch_size, generation=dict(spec.generation), **_prompt_options(m), **load)
    if m.direction is None:
        from deepalign.decoding.hf import HFTarget

        target = HFTarget(m.path, **options)
    else:
        from deepalign.decoding.hf import direction_target

        d = m.direction
        target = direction_target(m.path, d.path, mode=d.mode, coeff=d.coeff, allow_foreign=d.allow_foreign, **options)
    if spec.ada is None:
        return target
    from deepalign.decoding.ada import AdaTarget

    return AdaTarget(target, spec.ada)


def _openai(spec: OpenAISpec):
    from deepalign.decoding.openai import OpenAITarget

    return OpenAITarget(spec.model, spec.base_url, key_env=spec.key_env, concurrency=spec.concurrency,
                        timeout=spec.timeout, retries=spec.retries, tokenizer=spec.tokenizer, prompt_format=spec.format,
                        system=spec.system, chat_template=spec.chat_template, allow_http=spec.allow_http,
                        generation=dict(spec.generation))


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


def _component(part: Weighted, device: str | None):
    """One loaded component; a model that gets hooks of its own is loaded for this target
    alone, never shared."""
    from deepalign.decoding.compose import Component
    from deepalign.models import load_causal_lm, load_tokenizer, model_source

    m = part.model
    load = {k: v for k, v in m.load_options().items() if v not in (None, False)}
    if device:
        load["device"] = device
    key = (model_source(m.path), tuple(sorted((k, str(v)) for k, v in load.items())), m.chat_template)
    pool = _SHARED if m.direction is None else None
    pair = pool.get(key) if pool is not None else None
    if pair is None:
        tokenizer = load_tokenizer(m.path, trust_remote_code=m.trust_remote_code, chat_template=m.chat_template)
        pair = (load_causal_lm(m.path, **load), tokenizer)
        if pool is not None:
            pool[key] = pair
    comp = Component(pair[0], pair[1], part.weight, m.format, str(m.path), system=m.system, truncate=m.truncate)
    if m.direction is not None:
        from deepalign.direction.apply import apply_direction

        d = m.direction
        apply_direction(comp.model, d.path, mode=d.mode, coeff=d.coeff, name=comp.name, allow_foreign=d.allow_foreign)
    return comp


def _composed(spec: ComposedSpec, batch_size: int, device: str | None):
    comps = [_component(part, device) for part in spec.components]
    generation = dict(spec.generation)
    if isinstance(spec, EDSpec):
        from deepalign.decoding import presets

        fam = spec.family if spec.reference_decoding else None
        return presets.ed_target(comps[0], comps[1], fam=fam, generation=generation, batch_size=batch_size)
    from deepalign.decoding.compose import ComposedTarget

    return ComposedTarget(comps, batch_size=batch_size, generation=generation)
