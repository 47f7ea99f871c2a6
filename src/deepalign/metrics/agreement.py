"""How far a judge agrees with people, and two judges with each other.

Binary labels and predictions (``True`` = the positive class: *harmful* for harm labels,
*refusal* for refusal labels). From the 2x2 table of a judge against human labels:

- **agreement** (accuracy) ``(tp + tn) / n``, **precision** ``tp / (tp + fp)`` and **recall**
  ``tp / (tp + fn)``: proportions, with the 95% **Wilson score** interval
  (:func:`deepalign.metrics.wilson_interval`);
- **Cohen's kappa** ``(p_o - p_e) / (1 - p_e)`` and **F1** ``2 tp / (2 tp + fp + fn)``: not
  proportions of a fixed denominator, so their 95% interval is a **percentile bootstrap**
  over rows (2000 resamples, a fixed seed: the same table gives the same interval).

A statistic whose denominator is zero (precision when the judge never says positive, kappa
when both raters are constant) is ``None``, never 0.

:func:`pairwise_agreement` compares every two judges of a run on the rows both gave a verdict
for (kappa, share of rows where they disagree, a few disagreeing rows quoted);
:func:`read_validation` reads a validation result written by ``deepalign judge --validate``
back as ``{judge name: numbers}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Sequence

from deepalign.errors import DeepAlignError
from deepalign.metrics.intervals import BOOTSTRAP as BOOTSTRAP_SAMPLES
from deepalign.metrics.intervals import BOOTSTRAP_SEED, wilson
INTERVALS = {"agreement": "wilson", "precision": "wilson", "recall": "wilson", "kappa": "bootstrap",
             "f1": "bootstrap"}


@dataclass(frozen=True)
class Table:
    """The 2x2 table of predictions against labels."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def of(cls, pairs: Iterable[tuple[bool, bool]]) -> Table:
        """From ``(label, prediction)`` pairs."""
        tp = fp = fn = tn = 0
        for label, pred in pairs:
            if label and pred:
                tp += 1
            elif pred:
                fp += 1
            elif label:
                fn += 1
            else:
                tn += 1
        return cls(tp, fp, fn, tn)

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def kappa(t: Table) -> float | None:
    """Cohen's kappa of the table (None when chance agreement is 1: both raters constant)."""
    n = t.n
    if not n:
        return None
    p_o = (t.tp + t.tn) / n
    p_e = ((t.tp + t.fp) * (t.tp + t.fn) + (t.fn + t.tn) * (t.fp + t.tn)) / (n * n)
    return None if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def f1(t: Table) -> float | None:
    return _ratio(2 * t.tp, 2 * t.tp + t.fp + t.fn)


def _stat_arrays(which: str, c):
    """kappa or F1 of each row of ``c`` (counts tp, fp, fn, tn), NaN where undefined."""
    import numpy as np

    tp, fp, fn, tn = (c[:, i].astype(float) for i in range(4))
    with np.errstate(divide="ignore", invalid="ignore"):
        if which == "f1":
            return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        n = tp + fp + fn + tn
        p_o = (tp + tn) / n
        p_e = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
        return np.where(p_e < 1, (p_o - p_e) / (1 - p_e), np.nan)


def _bootstrap(t: Table, which: str, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """The 95% percentile bootstrap interval of kappa or F1 over rows resampled with
    replacement (a resample of the rows of a 2x2 table is a multinomial draw of its counts)."""
    import numpy as np

    n = t.n
    if not n or samples <= 0:
        return None
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.array([t.tp, t.fp, t.fn, t.tn], dtype=float) / n, size=samples)
    values = _stat_arrays(which, counts)
    values = values[~np.isnan(values)]
    if len(values) < samples // 2:  # undefined in most resamples: no honest interval
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def binary_stats(pairs: Sequence[tuple[bool, bool]], *, bootstrap: int = BOOTSTRAP_SAMPLES) -> dict[str, Any]:
    """n, the table, agreement, kappa, precision, recall and F1 of ``(label, prediction)``
    pairs, each with its 95% interval (``<name>_ci95``; see the module doc for which kind)."""
    pairs = [(bool(a), bool(b)) for a, b in pairs]
    t = Table.of(pairs)
    out: dict[str, Any] = {"n": t.n, "tp": t.tp, "fp": t.fp, "fn": t.fn, "tn": t.tn,
                           "positives": t.tp + t.fn, "predicted_positives": t.tp + t.fp}
    out["agreement"], out["agreement_ci95"] = _ratio(t.tp + t.tn, t.n), wilson(t.tp + t.tn, t.n)
    out["precision"], out["precision_ci95"] = _ratio(t.tp, t.tp + t.fp), wilson(t.tp, t.tp + t.fp)
    out["recall"], out["recall_ci95"] = _ratio(t.tp, t.tp + t.fn), wilson(t.tp, t.tp + t.fn)
    out["kappa"] = kappa(t)
    out["kappa_ci95"] = _bootstrap(t, "kappa", bootstrap) if out["kappa"] is not None else None
    out["f1"] = f1(t)
    out["f1_ci95"] = _bootstrap(t, "f1", bootstrap) if out["f1"] is not None else None
    return out


# -- agreement between judges (for reports with two or more judges) ----------------------------

def _excerpt(text: Any, limit: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pairwise_agreement(rows: Sequence, judges: Sequence[str] | None = None, *, field: str = "harmful",
                       quote: int = 3) -> list[dict[str, Any]]:
    """Every pair of judges compared on ``field`` over run rows (:class:`ResponseRow` records):
    the rows where both said True or False (errors and None left out), Cohen's kappa, the
    share of those rows where they disagree, and up to ``quote`` disagreeing rows
    (``key``, the target, attack, dataset and item, an excerpt of the response, both verdicts). ``judges``: the judges to
    compare (default: every judge with a verdict on some row, in order of appearance)."""
    if judges is None:
        seen: dict[str, None] = {}
        for r in rows:
            for name in r.verdicts:
                seen.setdefault(name, None)
        judges = list(seen)
    out = []
    for a, b in combinations(judges, 2):
        pairs, quoted = [], []
        for r in rows:
            x, y = (getattr(r.verdicts.get(j), field, None) for j in (a, b))
            if not isinstance(x, bool) or not isinstance(y, bool):
                continue
            pairs.append((x, y))
            if x != y and len(quoted) < quote:
                quoted.append({"key": r.key, "target": r.target, "attack": r.attack, "dataset": r.dataset,
                               "item": r.item, "response": _excerpt(r.response), a: x, b: y})
        t = Table.of(pairs)
        disagree = t.fp + t.fn
        out.append({"a": a, "b": b, "field": field, "n": t.n, "kappa": kappa(t),
                    "disagree": disagree, "disagree_share": _ratio(disagree, t.n),
                    "disagree_ci95": wilson(disagree, t.n), "examples": quoted})
    return out


# -- reading a validation result back --------------------------------------------------------

def read_validation(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{judge name: its overall numbers}`` from a ``validation.json`` written by
    ``deepalign judge --validate`` (a directory holding one is accepted too). Each entry also
    says what it was measured on (``labels``, ``field``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "validation.json"
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeepAlignError(f"no validation result at {p}") from None
    except (OSError, ValueError) as exc:
        raise DeepAlignError(f"cannot read the validation result {p}: {exc}") from None
    judges = obj.get("judges") if isinstance(obj, dict) else None
    if not isinstance(judges, dict) or not all(isinstance(v, dict) and isinstance(v.get("overall"), dict)
                                               for v in judges.values()):
        raise DeepAlignError(f"{p}: not a validation result (needs \"judges\": {{name: {{\"overall\": ...}}}})")
    labels, field = obj.get("labels"), obj.get("field")
    return {name: {**entry["overall"], "labels": labels, "field": field} for name, entry in judges.items()}
