"""Depth in the representation: how far along its refusal direction a model's residual stream
sits while a harmful response is forced into it (:func:`projection_profiles`).

The harmful responses are the ones ``deepalign depth`` forces (:mod:`deepalign.evaluation.depth`:
``Encoder.response_ids(query, response, end=False)``, the first ``max_tokens``). At forced
depth ``k`` (``k`` response tokens read, the position that predicts response token ``k``) the
projection is ``r^T h``, with ``h`` the activation at the direction's own layer
(``hidden_states[layer]``) and ``r`` the unit direction, so that ``k = 0`` is the last prompt
token, where a direction at position -1 was found. A shallowly aligned model's projection falls
from the harmful prompts' mean towards the harmless prompts' mean (both in ``direction.json``)
as the harmful answer goes on; a deeply aligned one keeps it up.

:func:`deepalign.reports.depth_plots.plot_refusal_projection` draws the projections next to
``deepalign depth``'s per-token KL and refusal probability.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from deepalign.errors import DeepAlignError
from deepalign.reports.depth_plots import plot_refusal_projection  # noqa: F401  (drawn by deepalign depth)



def _projections(model, rows: list[list[int]], starts: list[int], lengths: list[int], pad: int, layer: int,
                 vector: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Per row, ``r^T hidden_states[layer]`` at the ``lengths[i]`` positions from
    ``starts[i] - 1`` on (right padding: positions are plain ``0 .. len-1``)."""
    from deepalign.direction.residual import residual_stream

    stream = residual_stream(model)
    device = next(model.parameters()).device
    r = vector.to(device=device, dtype=torch.float32)
    seen: list[torch.Tensor] = []

    def capture(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach())

    handle = stream.layers[layer].register_forward_pre_hook(capture, with_kwargs=True)
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = list(range(start, min(start + batch_size, len(rows))))
            width = max(len(rows[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, i in enumerate(batch):
                ids[j, : len(rows[i])] = torch.tensor(rows[i])
                mask[j, : len(rows[i])] = 1
            seen.clear()
            with torch.inference_mode():
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            proj = seen[0].to(torch.float32) @ r
            for j, i in enumerate(batch):
                s, n = starts[i], lengths[i]
                out.append(proj[j, s - 1: s - 1 + n].cpu())
    finally:
        handle.remove()
    return out


def projection_profiles(models: Mapping[str, Any], directions: Mapping[str, Any], items: Sequence[Any], *,
                        prompt_format=None, max_tokens: int = 64, batch_size: int = 16, device: str | None = None,
                        allow_foreign: bool = False) -> dict[str, dict]:
    """Per model (``models``: label -> model directory / hub id or ``(model, tokenizer)``;
    ``directions``: label -> its direction, a directory or a loaded Direction), the mean
    projection on the refusal direction at each forced depth of the harmful responses of
    ``items`` (see :func:`deepalign.evaluation.forcing.as_items`), with 95% intervals (normal
    approximation over items) and the counts. Returns label -> JSON-ready result:
    ``positions``, ``projection``, ``projection_ci95``, ``n``, and the direction's ``layer``,
    ``position`` and ``harmful_mean`` / ``harmless_mean`` (the mean projections of the
    prompts it was computed from)."""
    from deepalign.models import eos_ids, pad_id
    from deepalign.direction.store import load_direction
    from deepalign.evaluation.forcing import as_items, load_component, mean_ci

    if max_tokens < 1 or batch_size < 1:
        raise DeepAlignError("max_tokens and batch_size must be >= 1")
    missing = [label for label in models if label not in directions]
    if missing:
        raise DeepAlignError(f"no refusal direction given for {', '.join(missing)}")
    data = as_items(items)
    results = {}
    for label, spec in models.items():
        d = load_direction(directions[label])
        comp = load_component(spec, prompt_format, device)
        d.check_model(comp.model, comp.name, allow_foreign=allow_foreign)
        prompts = [comp.encoder.prompt_ids(it.query) for it in data]
        responses = [comp.encoder.response_ids(it.query, it.response, end=False)[:max_tokens] for it in data]
        if any(not r for r in responses):
            raise DeepAlignError("a harmful response tokenizes to nothing")
        proj = _projections(comp.model, [p + r for p, r in zip(prompts, responses)], [len(p) for p in prompts],
                            [len(r) for r in responses], pad_id(comp.tokenizer, eos_ids(comp.model, comp.tokenizer)),
                            d.layer, d.vector, batch_size)
        horizon = max(len(r) for r in responses)
        matrix = torch.full((len(data), horizon), float("nan"))
        for i, p in enumerate(proj):
            matrix[i, : p.shape[0]] = p
        mean, ci, ns = mean_ci(matrix)
        means = d.info.get("mean_projection") or {}
        results[label] = {"model": comp.name, "direction": str(d.path) if d.path else None, "layer": d.layer,
                          "position": d.position, "items": len(data), "positions": list(range(horizon)), "n": ns,
                          "projection": mean, "projection_ci95": ci, "harmful_mean": means.get("harmful"),
                          "harmless_mean": means.get("harmless")}
        del comp
    return results
