"""Totals over a run's cells and rows, for the lines of its report that are not a cell: what a
judge's rates leave out, where refusals start (per target, and how many early), answer
accuracy, and generation time per target. The report (:mod:`deepalign.reports.run_report`)
only formats these.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from deepalign.metrics.intervals import proportion
from deepalign.runs.runlog import ResponseRow

#: a refusal that starts within this many units (tokens or words) of the response starts
#: early: DeRTa (arXiv 2407.09121) finds 99.5% of LLaMA-3-70B-Instruct's refusals in its first 5 tokens
EARLY_UNITS = 5


def left_out(cell: dict) -> int:
    """Rows a cell's rates leave out of their denominators: verdicts that are errors and rows
    the judge does not judge by design."""
    return cell["errors"] + cell.get("not_judged", 0)


def judge_totals(cells: Sequence[dict]) -> dict[str, int]:
    """Per judge (``cells``: its cells), the rows over all cells that its verdicts could not
    give (``errors``), that it does not judge (``not_judged``), whose answer it could not read
    (``unparsed``) and that were run with unknown words (``unknown_tokens``)."""
    return {k: sum(c.get(k, 0) for c in cells) for k in ("errors", "not_judged", "unparsed", "unknown_tokens")}


def refusal_histograms(results: Sequence[dict], judge: str) -> tuple[dict[str, dict[int, int]], str]:
    """Where ``judge``'s refusals start, per target, summed over every attack and dataset of
    the summary's ``results``: in tokens when the judge gives them, else in words."""
    per_target: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    unit = None
    for r in results:
        if r["judge"] != judge:
            continue
        pos = r["refusal_position"]
        use = unit or ("token" if pos["token"] else ("word" if pos["word"] else None))
        if use is None:
            continue
        unit = use
        for k, v in pos[unit].items():
            per_target[r["target"]][int(k)] += v
    return {t: dict(h) for t, h in per_target.items()}, unit or "token"


def early_refusals(cell: dict, within: int = EARLY_UNITS) -> dict[str, Any] | None:
    """Of a cell's refusals with a known start (tokens, else words), the share that starts in
    the first ``within`` units, with its Wilson interval; None without such refusals."""
    pos = cell["refusal_position"]["token"] or cell["refusal_position"]["word"]
    total = sum(pos.values())
    if not total:
        return None
    return proportion(sum(v for k, v in pos.items() if int(k) < within), total)


def answer_accuracy(answers: dict[str, int]) -> dict[str, Any]:
    """The share of correct answers among a cell's checked answers (``answers``: outcome ->
    count, as :func:`deepalign.metrics.cells.judge_cell` gives them)."""
    return proportion(answers.get("correct", 0), sum(answers.values()))


def generation_time(rows: Sequence[ResponseRow]) -> dict[str, dict[str, float]]:
    """Per target, in the order the rows first name it: responses, seconds spent generating,
    new tokens, and tokens per second."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        t = out.setdefault(r.target, {"responses": 0, "generate_s": 0.0, "new_tokens": 0})
        t["responses"] += 1
        t["generate_s"] += float(r.timing.get("generate_s", 0.0))
        t["new_tokens"] += int(r.num_tokens or 0)
    for t in out.values():
        t["tokens_per_s"] = t["new_tokens"] / t["generate_s"] if t["generate_s"] > 0 else 0.0
    return out
