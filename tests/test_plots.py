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
