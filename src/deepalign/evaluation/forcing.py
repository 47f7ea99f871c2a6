"""Teacher-forced harmful responses, the common ground of the depth diagnostics
(:mod:`deepalign.evaluation.depth`) and the projection on a refusal direction
(:mod:`deepalign.evaluation.projection`): the items (a query and the harmful response to
force), the model components that read them, and per-position means with 95% intervals."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from deepalign.errors import DeepAlignError
from deepalign.metrics.intervals import Z95


@dataclass
class DepthItem:
    """One harmful item: the query and the harmful response to force."""

    id: str
    query: str
    response: str


def as_items(items: Sequence[Any]) -> list[DepthItem]:
    """``DepthItem``s from EvalPrompts with a ``harmful`` reference, HarmfulTriples, dicts with
    ``query``/``prompt`` and ``harmful``/``response``, or ``(query, response)`` pairs. Items
    without a harmful response are skipped; none left raises :class:`DeepAlignError`."""
    out = []
    for i, it in enumerate(items):
        if isinstance(it, DepthItem):
            out.append(it)
            continue
        if isinstance(it, (tuple, list)) and len(it) == 2:
            query, response, ident = it[0], it[1], f"item-{i}"
        else:
            get = it.get if isinstance(it, dict) else lambda k, d=None, o=it: getattr(o, k, d)
            query = get("query") or get("prompt")
            response = get("harmful") or get("response")
            ident = get("id") or f"item-{i}"
        if isinstance(query, str) and query.strip() and isinstance(response, str) and response.strip():
            out.append(DepthItem(str(ident), query, response))
    if not out:
        raise DeepAlignError("no item has both a query and a harmful response (depth diagnostics force harmful responses)")
    return out


def load_component(spec, fmt, device):
    """A :class:`~deepalign.decoding.compose.Component` (model, tokenizer, prompt format) from a
    model directory / hub id or a ``(model, tokenizer)`` pair."""
    from deepalign.decoding.compose import Component

    if isinstance(spec, (str, os.PathLike)):
        return Component.load(spec, 1.0, fmt, dtype="float32" if device in (None, "cpu") else "auto",
                              device=device or "auto")
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return Component(spec[0], spec[1], 1.0, fmt)
    raise DeepAlignError(f"expected a model directory, a hub id or a (model, tokenizer) pair, got {type(spec).__name__}")


def mean_ci(matrix) -> tuple[list[float | None], list[list[float] | None], list[int]]:
    """Column means of an ``[items, positions]`` tensor with NaN for missing cells, their 95%
    intervals (normal approximation over items) and the counts."""
    import torch

    ok = ~torch.isnan(matrix)
    n = ok.sum(0)
    x = torch.where(ok, matrix, torch.zeros_like(matrix)).double()
    mean = x.sum(0) / n.clamp_min(1)
    var = (torch.where(ok, x - mean, torch.zeros_like(x)) ** 2).sum(0) / (n - 1).clamp_min(1)
    half = Z95 * var.sqrt() / n.clamp_min(1).sqrt()
    means, cis, ns = [], [], []
    for m, h, k in zip(mean.tolist(), half.tolist(), n.tolist()):
        ns.append(int(k))
        means.append(m if k else None)
        cis.append([m - h, m + h] if k else None)
    return means, cis, ns
