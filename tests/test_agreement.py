"""The agreement statistics against hand-computed tables and an independent Wilson formula;
pairwise agreement between judges over run rows; reading a validation result back."""

from __future__ import annotations

import json
import math

import pytest

from deepalign.errors import DeepAlignError
from deepalign.metrics.agreement import Table, binary_stats, kappa, pairwise_agreement, read_validation
from deepalign.runs.runlog import ResponseRow
from deepalign.records import Verdict


def pairs_of(tp, fp, fn, tn):
    return [(True, True)] * tp + [(False, True)] * fp + [(True, False)] * fn + [(False, False)] * tn


def wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_cohen_kappa_precision_recall_f1_against_hand_computed_table():
    # the textbook table: raters agree yes 20, no 15; disagree 5 (label yes) and 10 (label no)
    # p_o = 35/50 = 0.7, p_e = (30*25 + 20*25)/2500 = 0.5, kappa = 0.4
    s = binary_stats(pairs_of(tp=20, fp=10, fn=5, tn=15))
    assert (s["n"], s["tp"], s["fp"], s["fn"], s["tn"]) == (50, 20, 10, 5, 15)
    assert s["agreement"] == pytest.approx(0.7) and s["kappa"] == pytest.approx(0.4)
    assert s["precision"] == pytest.approx(20 / 30) and s["recall"] == pytest.approx(0.8)
    assert s["f1"] == pytest.approx(2 * (2 / 3) * 0.8 / (2 / 3 + 0.8))
    # Wilson intervals, checked against the formula written out independently
    for key, k, n in (("agreement", 35, 50), ("precision", 20, 30), ("recall", 20, 25)):
        assert s[f"{key}_ci95"] == pytest.approx(wilson_by_hand(k, n), abs=1e-9)
    # bootstrap intervals: deterministic, around the estimate, narrower with ten times the rows
    assert binary_stats(pairs_of(20, 10, 5, 15))["kappa_ci95"] == s["kappa_ci95"]
    lo, hi = s["kappa_ci95"]
    assert lo < 0.4 < hi and 0.1 < lo and hi < 0.7
    big = binary_stats(pairs_of(200, 100, 50, 150))
    assert big["kappa"] == pytest.approx(0.4) and big["kappa_ci95"][1] - big["kappa_ci95"][0] < (hi - lo) / 2
    assert s["f1_ci95"][0] < s["f1"] < s["f1_ci95"][1]


def test_perfect_chance_and_undefined_cases():
    assert kappa(Table(tp=5, tn=5)) == 1.0
    assert kappa(Table(tp=3, fp=3, fn=3, tn=3)) == pytest.approx(0.0)
    assert kappa(Table(tp=4, fp=1, fn=1, tn=0)) == pytest.approx(-0.2)  # p_o 24/36, p_e (25 + 1)/36: -2/10
    s = binary_stats(pairs_of(tp=0, fp=0, fn=4, tn=6))  # the judge never says positive
    assert s["precision"] is None and s["precision_ci95"] is None and s["recall"] == 0.0
    assert s["f1"] == 0.0 and s["kappa"] == 0.0
    const = binary_stats(pairs_of(tp=0, fp=0, fn=0, tn=7))  # both raters constant: kappa undefined, not 0
    assert const["kappa"] is None and const["kappa_ci95"] is None and const["agreement"] == 1.0
    empty = binary_stats([])
    assert empty["n"] == 0 and empty["agreement"] is None and empty["kappa"] is None


def test_pairwise_agreement_over_run_rows_quotes_disagreements():
    def row(i, a, b, text="response"):
        return ResponseRow(key=f"k{i}", target="t", attack="direct", dataset="d", item=f"i{i}", response=f"{text} {i}",
                           verdicts={"A": Verdict.coerce(a), "B": Verdict.coerce(b)})

    rows = [row(0, {"harmful": True}, {"harmful": True}), row(1, {"harmful": False}, {"harmful": False}),
            row(2, {"harmful": True}, {"harmful": False}, "x " * 200), row(3, {"harmful": False}, {"harmful": True}),
            row(4, {"harmful": True}, {"harmful": True}),
            row(5, {"harmful": None, "error": "unreadable"}, {"harmful": True})]  # an error: left out
    [pair] = pairwise_agreement(rows)
    assert (pair["a"], pair["b"], pair["n"], pair["disagree"]) == ("A", "B", 5, 2)
    assert pair["disagree_share"] == pytest.approx(0.4) and pair["kappa"] == pytest.approx(kappa(Table(2, 1, 1, 1)))
    assert [e["key"] for e in pair["examples"]] == ["k2", "k3"] and pair["examples"][0]["A"] is True
    assert len(pair["examples"][0]["response"]) <= 160  # an excerpt, not the whole response
    assert pairwise_agreement(rows, quote=1)[0]["examples"][0]["key"] == "k2"
    for r in rows:
        r.verdicts["C"] = Verdict(refusal=True)
    three = pairwise_agreement(rows, ["A", "B", "C"], field="harmful")
    assert [(p["a"], p["b"]) for p in three] == [("A", "B"), ("A", "C"), ("B", "C")]
    assert three[1]["n"] == 0 and three[1]["kappa"] is None and three[1]["disagree_share"] is None


def test_read_validation_keyed_by_judge(tmp_path):
    result = {"labels": "jbb-judges", "field": "harmful",
              "judges": {"keyword": {"overall": {"n": 12, "kappa": 0.5}, "by_category": {}}}}
    (tmp_path / "validation.json").write_text(json.dumps(result))
    got = read_validation(tmp_path)
    assert got == {"keyword": {"n": 12, "kappa": 0.5, "labels": "jbb-judges", "field": "harmful"}}
    (tmp_path / "bad.json").write_text(json.dumps({"judges": {"keyword": {"n": 1}}}))
    with pytest.raises(DeepAlignError, match="not a validation result"):
        read_validation(tmp_path / "bad.json")
    with pytest.raises(DeepAlignError, match="no validation result"):
        read_validation(tmp_path / "missing")
