"""The plots of the reports, drawn from numbers that :mod:`deepalign.metrics`
computed: grouped bars of rates (with intervals when given), rate curves against the prefill
depth, and where refusals start. Both the evaluation report and the study report draw with
these; every figure is written atomically as PNG.

A figure of curves is a row of :class:`Frame` panels (:func:`plot_frames`): each holds
:class:`Curve` lines (with an optional 95% band) and :class:`Level` reference lines; the
depth figures (:mod:`deepalign.reports.depth_plots`) are drawn the same way.
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


@dataclass
class Curve:
    """One line of a :class:`Frame`: a y (or None: no point) per x, drawn through the xs that
    have one; ``band``: a (low, high) per x (or None) shaded around it; ``step``: drawn as
    steps centred on each x."""

    label: str | None
    xs: Sequence
    ys: Sequence[float | None]
    band: Sequence[Sequence[float] | None] | None = None
    style: str = "-"
    color: str | None = None
    marker: str | None = None
    step: bool = False


@dataclass
class Level:
    """A horizontal reference line across a frame (a mean the curves are read against)."""

    y: float
    color: str | None = None
    style: str = "--"


@dataclass
class Frame:
    """One panel of a figure: its curves, reference levels, labels and y range; ``legend``:
    the legend's keyword arguments (None: no legend); ``symlog``: a symmetric log x axis with
    a tick at each x of the first curve; ``integer_x``: whole-number x ticks only (positions)."""

    curves: list[Curve]
    xlabel: str = ""
    ylabel: str = ""
    title: str | None = None
    ylim: tuple[float, float] | None = None
    levels: list[Level] = field(default_factory=list)
    legend: dict | None = field(default_factory=lambda: {"fontsize": "small"})
    symlog: bool = False
    integer_x: bool = False


def _draw_frame(ax, frame: Frame) -> None:
    import numpy as np

    for level in frame.levels:  # first: the y range makes room for them as for the curves
        ax.axhline(level.y, color=level.color, linestyle=level.style, linewidth=0.8)
    for c in frame.curves:
        points = [(x, y, b) for x, y, b in zip(c.xs, c.ys, c.band or [None] * len(c.xs)) if y is not None]
        if not points:
            continue
        xs, ys = [x for x, _, _ in points], [y for _, y, _ in points]
        if c.step:
            ax.step(xs, ys, where="mid", marker=c.marker, color=c.color, label=c.label)
        else:
            ax.plot(xs, ys, c.style, marker=c.marker, color=c.color, label=c.label)
        if c.band is not None and any(b is not None for _, _, b in points):
            lo = np.array([np.nan if b is None else b[0] for _, _, b in points], dtype=float)
            hi = np.array([np.nan if b is None else b[1] for _, _, b in points], dtype=float)
            ax.fill_between(xs, lo, hi, color=ax.get_lines()[-1].get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel(frame.xlabel)
    ax.set_ylabel(frame.ylabel)
    if frame.title:
        ax.set_title(frame.title, fontsize="medium")
    if frame.ylim is not None:
        ax.set_ylim(*frame.ylim)
    if frame.symlog:
        ax.set_xscale("symlog", linthresh=2)
        xs = list(frame.curves[0].xs) if frame.curves else []
        ax.set_xticks(xs, [str(x) for x in xs])
    if frame.integer_x:
        from matplotlib.ticker import MaxNLocator

        xs = [int(x) for c in frame.curves for x, y in zip(c.xs, c.ys) if y is not None]
        if xs and max(xs) - min(xs) < 4:  # a few positions: a tick at each, not fractions between them
            ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
            ax.set_xticks(range(min(xs), max(xs) + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if frame.legend is not None and ax.get_legend_handles_labels()[0]:
        ax.legend(**frame.legend)


def plot_frames(frames: Sequence[Frame], path: Path, *, title: str | None = None,
                size: tuple[float, float] | None = None) -> bool:
    """Frames side by side in one figure (``size``: inches; default about 5.3 wide a frame);
    False (nothing drawn) when no curve has a point."""
    if not any(y is not None for f in frames for c in f.curves for y in c.ys):
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(frames), figsize=size or (6.5 if len(frames) == 1 else 5.3 * len(frames), 4),
                             squeeze=False)
    for ax, frame in zip(axes[0], frames):
        _draw_frame(ax, frame)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return True


def plot_prefill_profile(panels: Sequence[Panel], path: Path, *, xlabel: str, ylabel: str, title: str | None = None,
                         symlog: bool = False, percent: bool = True) -> bool:
    """Rates against the prefill depth ``k`` (the harmful answer forced so far): one panel per
    rate, one curve per series (target x dataset; each through the depths it has); ``percent``
    False: values drawn as they are (ranks, counts). False without data."""
    panels = [p for p in panels if any(v is not None for s in p.series for v in s.values)]
    scale = _pct if percent else (lambda v: v)
    frames = [Frame([Curve(s.label, p.xs, [scale(v) for v in s.values], style=s.style, color=s.color, marker="o")
                     for s in p.series], xlabel=xlabel, ylabel=p.title or ylabel,
                    ylim=(-3, 103) if percent else None, symlog=symlog,
                    legend={"fontsize": "x-small", "ncol": 2} if i == 0 else None) for i, p in enumerate(panels)]
    return plot_frames(frames, path, title=title, size=(6.5 if len(frames) == 1 else 5 * len(frames), 4))


def plot_refusal_positions(hists: dict[str, dict[int, int]], path: Path, *, unit: str = "token",
                           title: str = "where refusals start") -> bool:
    """The share of refusals starting at each response position, one line per series
    (``hists``: label -> {position: count}). False without data."""
    curves = []
    for label, hist in hists.items():
        if hist:
            xs, total = sorted(hist), sum(hist.values())
            curves.append(Curve(label, xs, [100 * hist[x] / total for x in xs], marker=".", step=True))
    frame = Frame(curves, xlabel=f"refusal starts at {unit} index", ylabel="% of refusals", title=title, integer_x=True)
    return plot_frames([frame], path, size=(7, 3.6))
