"""The plots of the reports, drawn from numbers that :mod:`deepalign.metrics`
computed: grouped bars of rates (with intervals when given), rate curves against the prefill
depth, and where refusals start. Both the evaluation report and the study report draw with
these; every figure is written atomically as PNG.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from deepalign.utils import atomic_write


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Lay out, write atomically and close a figure."""
    import warnings

    with warnings.catch_warnings():  # tight_layout cannot always fit long tick labels: fine
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write(path, buf.getvalue())


@dataclass
class Series:
    """One series of a plot: a label and a value (0..1, or None) per x, optionally with 95%
    intervals and a line style."""

    label: str
    values: list[float | None]
    ci95: list[list[float] | None] | None = None
    style: str = "-"
    color: str | None = None


@dataclass
class Panel:
    title: str
    xs: list
    series: list[Series] = field(default_factory=list)


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def plot_rate_bars(panels: Sequence[Panel], path: Path, *, ylabel: str) -> bool:
    """Grouped bars, one panel per dataset: x = attacks, one bar per series (a model), with
    error bars where a series has intervals. False (nothing drawn) without data."""
    panels = [p for p in panels if p.xs and any(v is not None for s in p.series for v in s.values)]
    if not panels:
        return False
    plt = pyplot()
    n_series = max(len(p.series) for p in panels)
    width = 0.8 / max(1, n_series)
    wide = max(len(p.xs) for p in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(7, 0.9 * wide * max(1, n_series) ** 0.5 + 3),
                                                      3.6 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        for i, s in enumerate(panel.series):
            xs, ys, err = [], [], [[], []]
            for j, v in enumerate(s.values):
                if v is None:
                    continue
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(100 * v)
                ci = s.ci95[j] if s.ci95 else None
                err[0].append(max(0.0, 100 * (v - ci[0])) if ci else 0.0)
                err[1].append(max(0.0, 100 * (ci[1] - v)) if ci else 0.0)
            if xs:
                ax.bar(xs, ys, width, yerr=err if s.ci95 else None, capsize=3 if s.ci95 else 0, label=s.label)
        ax.set_xticks(range(len(panel.xs)), panel.xs, rotation=35, ha="right", fontsize="small")
        ax.set_ylim(0, 105)
        ax.set_ylabel(ylabel)
        ax.set_title(panel.title, fontsize="small")
    axes[0][0].legend(fontsize="small", ncol=3)
    save_figure(fig, path)
    return True


def plot_prefill_profile(panels: Sequence[Panel], path: Path, *, xlabel: str, ylabel: str, title: str | None = None,
                         symlog: bool = False) -> bool:
    """Rates against the prefill depth ``k`` (the harmful answer forced so far): one panel per
    rate, one curve per series (target x dataset). False without data."""
    panels = [p for p in panels if any(v is not None for s in p.series for v in s.values)]
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 if len(panels) == 1 else 5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for s in panel.series:  # each curve on the depths it has (series of one run may use different grids)
            points = [(x, _pct(v)) for x, v in zip(panel.xs, s.values) if v is not None]
            ax.plot([x for x, _ in points], [y for _, y in points], s.style, marker="o", color=s.color, label=s.label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.title or ylabel)
        ax.set_ylim(-3, 103)
        if symlog:
            ax.set_xscale("symlog", linthresh=2)
            ax.set_xticks(list(panel.xs), [str(k) for k in panel.xs])
    axes[0][0].legend(fontsize="x-small", ncol=2)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return True


def plot_refusal_positions(hists: dict[str, dict[int, int]], path: Path, *, unit: str = "token",
                           title: str = "where refusals start") -> bool:
    """The share of refusals starting at each response position, one line per series
    (``hists``: label -> {position: count}). False without data."""
    hists = {k: v for k, v in hists.items() if v}
    if not hists:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, hist in hists.items():
        xs = sorted(hist)
        total = sum(hist.values())
        ax.step(xs, [100 * hist[x] / total for x in xs], where="mid", marker=".", label=label)
    ax.set_xlabel(f"refusal starts at {unit} index")
    ax.set_ylabel("% of refusals")
    ax.set_title(title)
    ax.legend(fontsize="small")
    save_figure(fig, path)
    return True
