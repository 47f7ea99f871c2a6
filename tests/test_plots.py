"""The report's plots draw what the numbers say."""

from __future__ import annotations

import deepalign.reports.plots as plots
from deepalign.reports.plots import Panel, Series, plot_prefill_profile


def test_curves_on_different_depth_grids_stay_lines(tmp_path, monkeypatch):
    """Series of one run can have different depths (prefill:0/8/16 next to completion:5): each
    curve is drawn through the depths it has, not broken into loose markers at the others'."""
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig))
    panel = Panel("harmful %", [0, 5, 8, 16], [Series("prefill", [0.1, None, 0.5, 0.9]), Series("completion", [None, 0.4, None, None])])
    assert plot_prefill_profile([panel], tmp_path / "p.png", xlabel="k", ylabel="%")
    lines = drawn[0].axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[0, 8, 16], [5]]
    assert [list(line.get_ydata()) for line in lines] == [[10.0, 50.0, 90.0], [40.0]]


def _depth_result(scale: float) -> dict:
    xs = list(range(6))
    kl = [scale / (t + 1) for t in xs]
    return {"positions": xs, "kl": kl, "kl_ci95": [[v * 0.8, v * 1.2] for v in kl],
            "refusal": [0.9 / (t + 1) for t in xs], "base_refusal": [0.05] * 6, "n": [4] * 6,
            "refusal_tokens": [{"id": 1, "piece": "Sorry"}]}


def test_depth_figures_are_drawn_with_the_plot_helpers(tmp_path, monkeypatch):
    """``deepalign depth``'s figures are frames of reports.plots: the KL panel has its 95% band
    in both figures, a model keeps its colour in every panel, and the projection's reference
    means are levels."""
    from deepalign.evaluation.depth import plot_token_profile
    from deepalign.evaluation.projection import plot_refusal_projection

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig))
    depth = {"vanilla": _depth_result(1.0), "derta": _depth_result(2.0)}
    projections = {name: {"positions": list(range(6)), "projection": [1.0 - 0.1 * t * (i + 1) for t in range(6)],
                          "projection_ci95": [None] * 6, "layer": 3, "harmful_mean": 1.2, "harmless_mean": 0.1}
                   for i, name in enumerate(("derta", "vanilla"))}
    plot_token_profile(depth, tmp_path / "depth.png")
    plot_refusal_projection(projections, tmp_path / "projection.png", depth=depth)
    for fig in drawn:
        kl = fig.axes[0]
        assert kl.get_title() == "Per-token KL along harmful responses" and len(kl.collections) == 2  # the bands
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in drawn[1].axes]
    assert colours[0]["vanilla"] == colours[1]["vanilla"] == colours[2]["vanilla (layer 3)"] != colours[0]["derta"]
    assert [line.get_linestyle() for line in drawn[1].axes[2].get_lines()][:4] == ["--", ":", "--", ":"]
