"""Named compositions: Emulated Disalignment, emulated fine-tuning, weak-to-strong jailbreaking.

Each preset takes models as ``(model, tokenizer)`` pairs, :class:`Component` objects or
paths / hub ids (loaded with :func:`~deepalign.decoding.hf.load_model`), and returns a
:class:`~deepalign.decoding.compose.ComposedTarget`.

``ED_FAMILIES`` names the (base, aligned) pairs of the ED paper with their reference
alphas and prompt formats.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from deepalign.decoding.compose import Component, ComposedTarget
from deepalign.errors import DeepAlignError

# Reference decoding settings of ED.
ED_TEMPERATURE = 0.7
ED_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class EDFamily:
    base: str  # hub id of the pre-trained model
    aligned: str  # hub id of its safety-aligned counterpart
    alpha: float
    base_format: str = "text"
    aligned_format: str = "chat"


_VICUNA = ("text:A conversation between a user and a helpful AI assistant that answers the user's questions."
           " USER: {query} ASSISTANT:")
_PKU = "text:BEGINNING OF CONVERSATION: USER: {query} ASSISTANT:"

ED_FAMILIES: dict[str, EDFamily] = {
    "llama-2": EDFamily("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf", 0.3),
    "llama": EDFamily("huggyllama/llama-7b", "lmsys/vicuna-7b-v1.3", 0.6, aligned_format=_VICUNA),
    "vicuna": EDFamily("huggyllama/llama-7b", "lmsys/vicuna-7b-v1.3", 0.6, aligned_format=_VICUNA),
    "mistral": EDFamily("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1", 0.6),
    "alpaca": EDFamily("PKU-Alignment/alpaca-7b-reproduced", "PKU-Alignment/beaver-7b-v1.0", 2.0,
                       base_format=_PKU, aligned_format=_PKU),
    "beaver": EDFamily("PKU-Alignment/alpaca-7b-reproduced", "PKU-Alignment/beaver-7b-v1.0", 2.0,
                       base_format=_PKU, aligned_format=_PKU),
}


def family(name: str) -> EDFamily:
    key = name.strip().lower()
    if key not in ED_FAMILIES:
        raise DeepAlignError(f"unknown ED family {name!r}; known families: {', '.join(ED_FAMILIES)}")
    return ED_FAMILIES[key]


def _component(spec, weight: float, prompt_format, load_kwargs) -> Component:
    if isinstance(spec, Component):
        fmt = spec.prompt_format if prompt_format is None else prompt_format
        return Component(spec.model, spec.tokenizer, weight, fmt, spec.name, truncate=spec.truncate)
    if isinstance(spec, (str, os.PathLike)):
        return Component.load(spec, weight, prompt_format, **load_kwargs)
    if isinstance(spec, tuple) and len(spec) == 2:
        return Component(spec[0], spec[1], weight, prompt_format)
    raise DeepAlignError(f"expected a model path, a (model, tokenizer) pair or a Component, got {type(spec).__name__}")


def check_scale(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):  # also rejects NaN and inf
        raise DeepAlignError(f"{name} must be a finite number >= 0, got {value}")


def ed(base, aligned, alpha: float, *, base_format=None, aligned_format=None, batch_size: int = 16,
       **load_kwargs) -> ComposedTarget:
    """Emulated Disalignment: ``(1+alpha) * log p_base - alpha * log p_aligned``.

    The base model reads queries in the default text template, the aligned one in its own
    format (its chat template when it has one); override with ``base_format`` /
    ``aligned_format``.
    """
    check_scale("alpha", alpha)
    comps = [
        _component(base, 1.0 + alpha, base_format or "text", load_kwargs),
        _component(aligned, -alpha, aligned_format, load_kwargs),
    ]
    return ComposedTarget(comps, name=f"ed(alpha={alpha:g}; {comps[0].name} | {comps[1].name})", batch_size=batch_size)


def eft(base_large, tuned_small, base_small, w: float = 1.0, *, large_format=None, tuned_format=None,
        small_format=None, batch_size: int = 16, **load_kwargs) -> ComposedTarget:
    """Emulated fine-tuning / proxy-tuning: ``base_large + w * (tuned_small - base_small)``."""
    import math

    if not math.isfinite(w):
        raise DeepAlignError(f"w must be a finite number, got {w}")
    comps = [
        _component(base_large, 1.0, large_format, load_kwargs),
        _component(tuned_small, w, tuned_format, load_kwargs),
        _component(base_small, -w, small_format, load_kwargs),
    ]
    return ComposedTarget(comps, name=f"eft(w={w:g})", batch_size=batch_size)


def weak_to_strong(strong_safe, weak_unsafe, weak_safe, beta: float, *, strong_format=None,
                   weak_unsafe_format=None, weak_safe_format=None, batch_size: int = 16,
                   **load_kwargs) -> ComposedTarget:
    """Weak-to-strong jailbreaking: ``strong_safe + beta * (weak_unsafe - weak_safe)``."""
    check_scale("beta", beta)
    comps = [
        _component(strong_safe, 1.0, strong_format, load_kwargs),
        _component(weak_unsafe, beta, weak_unsafe_format, load_kwargs),
        _component(weak_safe, -beta, weak_safe_format, load_kwargs),
    ]
    return ComposedTarget(comps, name=f"weak_to_strong(beta={beta:g})", batch_size=batch_size)


def ed_family(name: str, alpha: float | None = None, *, batch_size: int = 16, **load_kwargs) -> ComposedTarget:
    """ED on a named family (loads its hub models; needs them reachable or cached)."""
    fam = family(name)
    return ed(fam.base, fam.aligned, fam.alpha if alpha is None else alpha, base_format=fam.base_format,
              aligned_format=fam.aligned_format, batch_size=batch_size, **load_kwargs)
