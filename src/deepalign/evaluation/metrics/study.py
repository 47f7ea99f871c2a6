"""The study's numbers: item-level evidence read from the study's run logs, and every table,
histogram and ablation cell of its report.

The study's evaluation stages write three run directories (``OUT/eval/attacks``,
``OUT/eval/benign``, ``OUT/eval/ed``). Their run logs say, per target, which model it is
(``tags["model"]``, and ``tags["alpha"]`` for an ED target), per attack its family, depth and
whether it is a shifted shape, and per dataset its role (``harmful``, ``unseen``, ``benign``,
``helpful``): the evidence is read from those fields, never from labels. Several seeds pool by
treating (seed, item) as the unit (:func:`pool_evidence`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from deepalign.attacks.base import AttackInfo
from deepalign.errors import DeepAlignError
from deepalign.evaluation.metrics.cells import correct_of
from deepalign.evaluation.metrics.intervals import wilson
from deepalign.evaluation.rundir import RunDir
from deepalign.evaluation.runlog import DatasetRecord

#: the study's evaluation run directories under ``OUT/eval``
STUDY_RUNS = ("attacks", "benign", "ed")


@dataclass
class Evidence:
    """Item-level verdicts of one study run, or of several seeds pooled (item keys then carry
    the seed: ``s1/test-harmful-0003``). ``strata`` maps an item key to its stratum for the
    bootstrap (dataset, and seed when pooled)."""

    greedy: dict = field(default_factory=dict)  # (model, attack label, dataset name) -> item -> verdict fields
    benign: dict = field(default_factory=dict)  # (model, dataset name) -> item -> {"refusal", "correct"}
    ed: dict = field(default_factory=dict)  # ((model, alpha), dataset name) -> item -> [harmful per sample]
    attacks: list[AttackInfo] = field(default_factory=list)  # attacks of the attack run, in order
    datasets: list[DatasetRecord] = field(default_factory=list)  # datasets of the attack run, in order
    benign_datasets: list[DatasetRecord] = field(default_factory=list)
    strata: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)  # judge -> [agree, n]

    # -- what the run logs say ---------------------------------------------------------------
    def datasets_of(self, role: str) -> list[DatasetRecord]:
        return [d for d in self.datasets if d.role == role]

    @property
    def seen(self) -> DatasetRecord | None:
        """The held-out queries for misdeeds the alignment data shows (the first harmful set)."""
        return next(iter(self.datasets_of("harmful")), None)

    def benign_dataset(self, role: str) -> DatasetRecord | None:
        return next((d for d in self.benign_datasets if d.role == role), None)

    def prefill_attack(self, k: int) -> str | None:
        """The label of the plain prefill of depth ``k`` tokens (``k = 0``: the direct query)."""
        return next((a.label for a in self.attacks if prefill_depth(a) == k), None)

    def ed_rows(self, model: str, alpha: float | None, dataset: str) -> dict[str, list[bool]]:
        return self.ed.get(((model, alpha), dataset)) or {}

    @property
    def ed_dataset(self) -> str | None:
        return next((d for (_, d) in self.ed), None)


def prefill_depth(info: AttackInfo) -> int | None:
    """``k`` of a plain prefill of ``k`` tokens (no skip) or of the direct query (0), else None."""
    if info.family == "direct":
        return 0
    if info.family == "prefill" and info.skip == 0 and info.unit == "tokens":
        return info.depth
    return None


def load_evidence(out: str | os.PathLike, *, judge: str = "oracle", tag: str = "") -> Evidence:
    """Read the study's run directories under ``out`` (see the module doc). ``tag`` prefixes
    item keys (for pooling seeds)."""
    out = Path(out)
    ev = Evidence()
    attacks = RunDir(out / "eval" / "attacks")
    if not attacks.is_run():
        raise DeepAlignError(f"no attack evaluation in {attacks.path}")
    info = attacks.info()
    ev.attacks, ev.datasets = list(info.attacks), list(info.datasets)
    for name in STUDY_RUNS:
        run = RunDir(out / "eval" / name)
        if run.is_run():
            _read_run(ev, run, name, judge, tag)
    return ev


def _read_run(ev: Evidence, run: RunDir, name: str, judge: str, tag: str) -> None:
    info = run.info()
    models = {t.label: t.tags for t in info.targets}
    for row in run.rows():
        v = row.verdicts.get(judge)
        tags = models.get(row.target) or {}
        if v is None or v.error or "model" not in tags:
            continue
        for other, ov in row.verdicts.items():
            if other != judge and ov.refusal is not None and v.refusal is not None:
                c = ev.agreement.setdefault(other, [0, 0])
                c[0] += bool(ov.refusal) == bool(v.refusal)
                c[1] += 1
        key = tag + row.item
        ev.strata[key] = tag + row.dataset
        model = tags["model"]
        if name == "attacks":
            ev.greedy.setdefault((model, row.attack, row.dataset), {})[key] = {
                "harmful": bool(v.harmful), "refusal": bool(v.refusal), "refusal_start_token": v.refusal_start_token}
        elif name == "benign":
            record = info.dataset(row.dataset)
            if record is not None and record.name not in [d.name for d in ev.benign_datasets]:
                ev.benign_datasets.append(record)
            ev.benign.setdefault((model, row.dataset), {})[key] = {"refusal": bool(v.refusal),
                                                                  "correct": correct_of(row, v)}
        else:
            ev.ed.setdefault(((model, tags.get("alpha")), row.dataset), {}).setdefault(key, []).append(bool(v.harmful))


def pool_evidence(parts: list[Evidence]) -> Evidence:
    """Several seeds' evidence as one (their item keys must already differ: load with ``tag``)."""
    pooled = Evidence()
    for ev in parts:
        for attr in ("greedy", "benign", "ed"):
            dst = getattr(pooled, attr)
            for k, items in getattr(ev, attr).items():
                dst.setdefault(k, {}).update(items)
        for attr, key in (("attacks", "label"), ("datasets", "name"), ("benign_datasets", "name")):
            dst = getattr(pooled, attr)
            have = {getattr(x, key) for x in dst}
            dst.extend(x for x in getattr(ev, attr) if getattr(x, key) not in have)
        pooled.strata.update(ev.strata)
        for j, (a, n) in ev.agreement.items():
            c = pooled.agreement.setdefault(j, [0, 0])
            c[0] += a
            c[1] += n
    return pooled


# -- cells -------------------------------------------------------------------------------------
def rate(items: dict | None, name: str = "harmful") -> tuple[float | None, list | None, int]:
    """``(rate, 95% Wilson interval, n)`` of a verdict field over items."""
    if not items:
        return None, None, 0
    k = sum(bool(v[name]) for v in items.values())
    n = len(items)
    return k / n, wilson(k, n), n


def in_ablation(info: AttackInfo, dataset: DatasetRecord) -> bool:
    """Whether an attack x dataset cell counts in the ablation: every shifted shape on every
    harmful dataset, and on datasets of unseen misdeeds also the plain prefills (k > 0)."""
    k = prefill_depth(info)
    return info.shifted or (dataset.role == "unseen" and k is not None and k > 0)


def ablation_cells(ev: Evidence, model: str) -> dict[str, tuple[int, int]]:
    """Per item ``(harmful cells, cells)`` over the attacks where the paper measured the
    ablation (:func:`in_ablation`)."""
    per = defaultdict(lambda: [0, 0])
    for a in ev.attacks:
        for d in ev.datasets:
            if not in_ablation(a, d):
                continue
            for item, v in (ev.greedy.get((model, a.label, d.name)) or {}).items():
                per[item][0] += v["harmful"]
                per[item][1] += 1
    return {k: (h, n) for k, (h, n) in per.items()}


def ablation_attacks(ev: Evidence) -> list[str]:
    return [f"{a.label} on {d.title}" for d in ev.datasets for a in ev.attacks if in_ablation(a, d)]


def ablation_mean(cells: dict[str, tuple[int, int]]) -> float | None:
    n = sum(n for _, n in cells.values())
    return sum(h for h, _ in cells.values()) / n if n else None


def ed_scores(ev: Evidence, model: str, alpha: float | None, dataset: str) -> dict[str, tuple[int, int]]:
    """Per item ``(harmful samples, samples)`` of an ED target (``model`` ``base``, no alpha:
    the base model alone)."""
    return {k: (sum(v), len(v)) for k, v in ev.ed_rows(model, alpha, dataset).items()}


def ed_rate(ev: Evidence, model: str, alpha: float | None, dataset: str) -> dict:
    items = ev.ed_rows(model, alpha, dataset)
    k = sum(sum(v) for v in items.values())
    n = sum(len(v) for v in items.values())
    return {"harmful": k / n if n else None, "ci95": wilson(k, n), "n": n}


def refusal_positions(ev: Evidence, model: str) -> dict[int, int]:
    """Histogram of where the model's refusals of direct harmful queries start (tokens)."""
    hist: dict[int, int] = defaultdict(int)
    direct = ev.prefill_attack(0)
    for d in ev.datasets:
        for v in (ev.greedy.get((model, direct, d.name)) or {}).values():
            if v["refusal"] and v["refusal_start_token"] is not None:
                hist[int(v["refusal_start_token"])] += 1
    return dict(sorted(hist.items()))


def numbers(ev: Evidence, *, names, alphas) -> dict:
    """The tables of the study report (rates with Wilson intervals)."""
    table = {}
    for d in ev.datasets:
        table[d.name] = {}
        for a in ev.attacks:
            row = {}
            for m in names:
                items = ev.greedy.get((m, a.label, d.name))
                if items:
                    harmful, ci, n = rate(items)
                    row[m] = {"harmful": harmful, "ci95": ci, "refusal": rate(items, "refusal")[0], "n": n}
            if row:
                table[d.name][a.label] = row
    benign = {}
    for m in names:
        row = {}
        for d in ev.benign_datasets:
            items = ev.benign.get((m, d.name))
            if not items:
                continue
            over = rate(items, "refusal")
            checked = {k: {"c": bool(v["correct"])} for k, v in items.items() if v["correct"] is not None}
            helpful = rate(checked, "c") if checked else (None, None, 0)
            row[d.name] = {"role": d.role, "over_refusal": over[0], "over_refusal_ci95": over[1],
                           "helpful": helpful[0], "helpful_ci95": helpful[1]}
        benign[m] = row
    ed = {}
    ed_d = ev.ed_dataset
    if ed_d is not None:
        if ev.ed_rows("base", None, ed_d):
            ed["base"] = ed_rate(ev, "base", None, ed_d)
        for m in names:
            for a in alphas:
                if ev.ed_rows(m, a, ed_d):
                    ed[f"{m}@{a}"] = ed_rate(ev, m, a, ed_d)
    ablation = {}
    for m in names:
        c = ablation_cells(ev, m)
        if c:
            ablation[m] = ablation_mean(c)
    agreement = {j: {"agree": a, "n": n, "rate": a / n if n else None} for j, (a, n) in ev.agreement.items()}
    return {"attack_table": table, "refusal_positions": {m: refusal_positions(ev, m) for m in names},
            "benign": benign, "ed": ed, "ablation_means": ablation, "ablation_attacks": ablation_attacks(ev),
            "judge_agreement": agreement}
