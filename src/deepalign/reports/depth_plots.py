"""The figures of ``deepalign depth``, drawn with the frames of :mod:`deepalign.reports.plots`
from the results of :mod:`deepalign.evaluation.depth` (per-token KL, refusal-token
probability) and :mod:`deepalign.evaluation.projection` (projection on the refusal direction):

- ``depth.png`` (:func:`plot_token_profile`): the per-token KL(aligned || base) with its 95%
  band, and the refusal-token probability after k forced tokens (with several refusal words
  also the first word alone), one line per aligned model, the base model dotted;
- ``projection.png`` (:func:`plot_refusal_projection`): the projection on each model's refusal
  direction at each forced depth (dashed: its harmful prompts' mean, dotted: its harmless
  prompts' mean), beside the KL and refusal-token panels of the same models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from deepalign.reports.plots import Curve, Frame, Level, plot_frames

_FORCED = "forced depth k (tokens of the harmful response)"


def _any_of(pieces: list[str]) -> str:
    return "P(" + " or ".join(repr(p) for p in pieces) + ")"


def _colors(results: Mapping[str, dict], colors: Mapping[str, str] | None) -> dict[str, str]:
    """A colour per model: the given ones, else matplotlib's cycle in the results' order."""
    return dict(colors) if colors else {label: f"C{i}" for i, label in enumerate(results)}


def kl_frame(results: Mapping[str, dict], *, colors: Mapping[str, str] | None = None,
             xlabel: str = "response position t (tokens of the harmful response forced)") -> Frame:
    """KL(aligned || base) at each response position, one line per model, with its 95% band."""
    colors = _colors(results, colors)
    return Frame([Curve(label, r["positions"], r["kl"], band=r.get("kl_ci95"), color=colors[label])
                  for label, r in results.items()],
                 xlabel=xlabel, ylabel="KL(aligned || base) at t (nats)", title="Per-token KL along harmful responses")


def refusal_frames(results: Mapping[str, dict], *, colors: Mapping[str, str] | None = None,
                   each_word: bool = True) -> list[Frame]:
    """The refusal-token probability after k forced tokens, one line per model and the base
    model dotted: any refusal word, and before it (with several words and ``each_word``) the
    first word alone."""
    first = next(iter(results.values()))
    pieces = [t["piece"] for t in first["refusal_tokens"]]
    several = each_word and len(pieces) > 1 and "refusal_by_token" in first
    panels = [(f"P({pieces[0]!r})", "Refusal token", lambda r: r["refusal_by_token"][pieces[0]])] if several else []
    panels.append((_any_of(pieces), "Refusal openers" if several else "Refusal token", lambda r: r["refusal"]))
    colors, frames = _colors(results, colors), []
    for name, what, curve in panels:
        curves = [Curve(label, r["positions"], curve(r), color=colors[label]) for label, r in results.items()]
        frames.append(Frame(curves, xlabel=_FORCED, ylabel=f"{name} after k forced tokens", title=f"{what}: {name}",
                            ylim=(-0.03, 1.03)))
    frames[-1].curves.append(Curve("base", first["positions"], first["base_refusal"], style=":", color="black"))
    return frames


def plot_token_profile(results: dict[str, dict], path: str | os.PathLike, *, title: str | None = None) -> None:
    """``depth.png``: per-token KL(aligned || base) and the refusal-token probability at each
    forced depth, one line per aligned model (``results``: label -> result of
    :func:`~deepalign.evaluation.depth.depth_profiles`)."""
    frames = [kl_frame(results), *refusal_frames(results)]
    plot_frames(frames, Path(path), title=title, size=(16 if len(frames) == 3 else 11, 4))


def projection_frame(projections: Mapping[str, dict]) -> Frame:
    """The projection on each model's refusal direction at each forced depth, with its 95%
    band; dashed and dotted: the means of its harmful and harmless prompts."""
    curves, levels = [], []
    for i, (label, r) in enumerate(projections.items()):
        curves.append(Curve(f"{label} (layer {r['layer']})", r["positions"], r["projection"],
                            band=r["projection_ci95"], color=f"C{i}"))
        levels += [Level(r[key], f"C{i}", style) for key, style in (("harmful_mean", "--"), ("harmless_mean", ":"))
                   if r.get(key) is not None]
    return Frame(curves, xlabel=_FORCED, ylabel="projection on the refusal direction", levels=levels,
                 title="Refusal direction along harmful responses\n(dashed: harmful prompts' mean, dotted: harmless)")


def plot_refusal_projection(projections: Mapping[str, dict], path: str | os.PathLike, *,
                            depth: Mapping[str, dict] | None = None, title: str | None = None) -> None:
    """``projection.png``: the projection on each model's refusal direction at each forced
    depth (:func:`projection_frame`), with, when ``depth`` (label -> result of
    :func:`~deepalign.evaluation.depth.depth_profiles`) is given, the per-token KL and the
    refusal-token probability of the same models beside it."""
    depth = {k: v for k, v in (depth or {}).items() if k in projections}
    colors = {label: f"C{i}" for i, label in enumerate(projections)}  # a model's colour in every panel
    frames = [kl_frame(depth, colors=colors, xlabel="response position t"),
              *refusal_frames(depth, colors=colors, each_word=False)] if depth else []
    plot_frames([*frames, projection_frame(projections)], Path(path), title=title, size=(16 if depth else 6, 4))
