"""The study's numbers: item-level evidence read from the study's run logs, and every table,
histogram and ablation cell of its report.

The study's evaluation stages write three run directories (``OUT/eval/attacks``,
``OUT/eval/benign``, ``OUT/eval/ed``). Their run logs say, per target, which model it is
(``tags["model"]``, and ``tags["alpha"]`` for an ED target), per attack its family, depth and
whether it is a shifted shape, and per dataset its role (``harmful``, ``unseen``, ``benign``,
``helpful``): the evidence is read from those fields, never from labels. Several seeds pool by
treating (seed, item) as the unit (:func:`pool_evidence`). The evidence stays item-level (the
claims' paired bootstrap needs the items); its rates and histograms are computed by the metrics
layer, as a run's cells are (:func:`deepalign.metrics.cells.share`,
:func:`~deepalign.metrics.cells.position_histogram`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from deepalign.attacks.base import AttackInfo
from deepalign.errors import DeepAlignError
from deepalign.metrics.cells import correct_of, position_histogram, share
from deepalign.runs.rundir import RunDir
from deepalign.runs.runlog import DatasetRecord
from deepalign.study.models import BASE, RECORD_MODELS, EDKey
from deepalign.utils import read_jsonl

#: the study's evaluation run directories under ``OUT/eval``: the attack battery, over-refusal
#: and helpfulness, Emulated Disalignment, the fine-tuning attack (its models, and checkpoints
#: step by step), the refusal direction (each model ablated)
STUDY_RUNS = ("attacks", "benign", "ed")
TAGGED_RUNS = ("finetune", "finetune-steps", "direction", "adaptive", "gcg", "refusal-prefix", "defences")
#: words of an answer kept as its start (two models' answers part there or not)
START_WORDS = 3
#: ``Evidence.ed_dataset`` when the ED rows span several datasets: all of them at once
ALL_ED = "*"


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
    #: run -> (target tags, attack label, dataset name) -> item -> {"harmful", "refusal", "correct"}
    tagged: dict = field(default_factory=dict)
    tagged_attacks: dict = field(default_factory=dict)  # run -> [AttackInfo]
    tagged_datasets: dict = field(default_factory=dict)  # run -> [DatasetRecord]
    #: model -> why the study has no refusal direction for it (``direction/<model>.skipped``;
    #: pooled: a list of the seeds' reasons)
    skipped_directions: dict = field(default_factory=dict)
    #: item key -> the world's task of a helpful item (``arith``, ``echo``, ``fact``; its
    #: ``meta.task``), where the study's world is there to say it
    item_tasks: dict = field(default_factory=dict)

    def tagged_dataset(self, run: str, role: str) -> str | None:
        return next((d.name for d in self.tagged_datasets.get(run, []) if d.role == role), None)

    def cell(self, run: str, dataset: str, attack: str, **tags) -> dict:
        """The items of one cell of a tagged run (``tags``: the target's tags, all of them)."""
        return self.tagged.get(run, {}).get((_frozen(tags), attack, dataset)) or {}

    def attack_label(self, run: str, family: str, depth: int = 0) -> str | None:
        """The label of the attack of ``run`` with this family and depth (as its run log says)."""
        return next((a.label for a in self.tagged_attacks.get(run, []) if a.family == family and a.depth == depth
                     and not a.shifted), None)

    def tag_values(self, run: str, tag: str) -> list:
        return sorted({dict(t).get(tag) for (t, _, _) in self.tagged.get(run, {})} - {None})

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
        """An ED target's samples per item of ``dataset`` (:data:`ALL_ED`: of every ED dataset;
        item keys differ between datasets)."""
        if dataset == ALL_ED:
            out: dict[str, list[bool]] = {}
            for (key, _), items in self.ed.items():
                if key == (model, alpha):
                    out.update(items)
            return out
        return self.ed.get(((model, alpha), dataset)) or {}

    @property
    def ed_dataset(self) -> str | None:
        """The ED evaluation's dataset, or :data:`ALL_ED` where it spans several (the study's
        two harmful splits): the ED claims and table read every item of every one."""
        names = sorted({d for (_, d) in self.ed})
        return None if not names else names[0] if len(names) == 1 else ALL_ED

    @property
    def ed_datasets(self) -> list[str]:
        return sorted({d for (_, d) in self.ed})


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
    for name in TAGGED_RUNS:
        run = RunDir(out / "eval" / name)
        if run.is_run():
            _read_tagged(ev, run, name, judge, tag)
    for note in sorted((out / "direction").glob("*.skipped")):
        ev.skipped_directions[note.stem] = [note.read_text(encoding="utf-8").strip()]
    ev.item_tasks = _item_tasks(out / "world", tag)
    return ev


def _item_tasks(world: Path, tag: str) -> dict[str, str]:
    """The task of each helpful item of the world's evaluation files (none without a world)."""
    tasks = {}
    for path in sorted(world.glob("*/helpful.jsonl")):
        for _, row in read_jsonl(path):
            task = (row.get("meta") or {}).get("task") if isinstance(row, dict) else None
            if isinstance(task, str) and isinstance(row.get("id"), str):
                tasks[tag + row["id"]] = task
    return tasks


def first_words(response: str | None, words: int = START_WORDS) -> str:
    """The first words of a response: where two models' answers part (the mechanism lines)."""
    return " ".join((response or "").split()[:words])


def _frozen(tags: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in tags.items()))


def _read_tagged(ev: Evidence, run: RunDir, name: str, judge: str, tag: str) -> None:
    """A run whose targets are told apart by their tags (fine-tuned models, checkpoints,
    ablated models): its cells keyed by the full tag set."""
    info = run.info()
    ev.tagged_attacks[name] = list(info.attacks)
    ev.tagged_datasets[name] = list(info.datasets)
    tags = {t.label: _frozen(t.tags) for t in info.targets}
    store = ev.tagged.setdefault(name, {})
    for row in run.rows():
        v = row.verdicts.get(judge)
        if v is None or v.error or row.target not in tags:
            continue
        key = tag + row.item
        ev.strata[key] = tag + row.dataset
        store.setdefault((tags[row.target], row.attack, row.dataset), {})[key] = {
            "harmful": bool(v.harmful), "refusal": bool(v.refusal), "correct": correct_of(row, v),
            "start": first_words(row.response)}


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
                                                                  "correct": correct_of(row, v),
                                                                  "start": first_words(row.response)}
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
        for run, cells in ev.tagged.items():
            for k, items in cells.items():
                pooled.tagged.setdefault(run, {}).setdefault(k, {}).update(items)
        for run, attacks in ev.tagged_attacks.items():
            have = {a.label for a in pooled.tagged_attacks.setdefault(run, [])}
            pooled.tagged_attacks[run].extend(a for a in attacks if a.label not in have)
        for run, datasets in ev.tagged_datasets.items():
            have = {d.name for d in pooled.tagged_datasets.setdefault(run, [])}
            pooled.tagged_datasets[run].extend(d for d in datasets if d.name not in have)
        for model, reasons in ev.skipped_directions.items():
            pooled.skipped_directions.setdefault(model, []).extend(reasons)
        pooled.item_tasks.update(ev.item_tasks)
        for j, (a, n) in ev.agreement.items():
            c = pooled.agreement.setdefault(j, [0, 0])
            c[0] += a
            c[1] += n
    return pooled


# -- cells -------------------------------------------------------------------------------------
def rate(items: dict | None, name: str = "harmful") -> tuple[float | None, list | None, int]:
    """``(rate, 95% Wilson interval, n)`` of a verdict field over items (items without it: left
    out), as :func:`deepalign.metrics.cells.share` computes every rate of a run's cells."""
    p = share(v[name] for v in (items or {}).values())
    return p["rate"], p["ci95"], p["n"]


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
    """The harmful rate of an ED target over every sample of every item, with its Wilson interval."""
    p = share(s for samples in ev.ed_rows(model, alpha, dataset).values() for s in samples)
    return {"harmful": p["rate"], "ci95": p["ci95"], "n": p["n"]}


def refusal_positions(ev: Evidence, model: str) -> dict[int, int]:
    """Histogram of where the model's refusals of direct harmful queries start (tokens)."""
    direct = ev.prefill_attack(0)
    return position_histogram(v["refusal_start_token"] for d in ev.datasets
                              for v in (ev.greedy.get((model, direct, d.name)) or {}).values() if v["refusal"])


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
            over, helpful = rate(items, "refusal"), rate(items, "correct")
            row[d.name] = {"role": d.role, "over_refusal": over[0], "over_refusal_ci95": over[1],
                           "helpful": helpful[0], "helpful_ci95": helpful[1]}
        benign[m] = row
    ed = {}
    ed_d = ev.ed_dataset
    if ed_d is not None:
        for key in [EDKey(BASE)] + [EDKey(m, a) for m in names for a in alphas]:
            if ev.ed_rows(key.model, key.alpha, ed_d):
                ed[key.label] = ed_rate(ev, key.model, key.alpha, ed_d)
    ablation = {}
    for m in names:
        c = ablation_cells(ev, m)
        if c:
            ablation[m] = ablation_mean(c)
    agreement = {j: {"agree": a, "n": n, "rate": a / n if n else None} for j, (a, n) in ev.agreement.items()}
    return {"attack_table": table, "refusal_positions": {m: refusal_positions(ev, m) for m in names},
            "benign": benign, "ed": ed, "ed_datasets": ev.ed_datasets, "ablation_means": ablation, "ablation_attacks": ablation_attacks(ev),
            "judge_agreement": agreement, "finetune": finetune_numbers(ev), "direction": direction_numbers(ev),
            "adaptive": adaptive_numbers(ev), "defences": defence_numbers(ev)}


# -- the fine-tuning attack and the refusal direction -------------------------------------------
#: the vanilla model before and after each fine-tuning run of the study: name -> target tags
FINETUNE_VARIANTS = {
    "before": {"model": "vanilla", "steps": 0},
    "harmful-sft": {"model": "vanilla", "finetune": "harmful", "objective": "sft"},
    "harmful-constrained": {"model": "vanilla", "finetune": "harmful", "objective": "constrained"},
    "benign-sft": {"model": "vanilla", "finetune": "benign", "objective": "sft"},
    "benign-constrained": {"model": "vanilla", "finetune": "benign", "objective": "constrained"},
}
#: the cells measured per model: name -> (dataset role, attack family, depth, verdict field)
MEASURES = {"harmful direct": ("harmful", "direct", 0, "harmful"), "harmful prefill:8": ("harmful", "prefill", 8, "harmful"),
            "unseen direct": ("unseen", "direct", 0, "harmful"), "unseen prefill:8": ("unseen", "prefill", 8, "harmful"),
            "refusal direct": ("harmful", "direct", 0, "refusal"), "helpful": ("helpful", "direct", 0, "correct"),
            "task": ("task", "direct", 0, "correct")}


def tagged_cell(ev: Evidence, run: str, measure: str, **tags) -> dict:
    """The items of a tagged target in the cell one measure (:data:`MEASURES`) reads, each with
    every verdict field and its answer's first words."""
    role, family, depth, _ = MEASURES[measure]
    dataset, attack = ev.tagged_dataset(run, role), ev.attack_label(run, family, depth)
    return ev.cell(run, dataset, attack, **tags) if dataset and attack else {}


def tagged_rate(ev: Evidence, run: str, measure: str, **tags) -> tuple[float | None, list | None, int]:
    """``(rate, Wilson interval, n)`` of one measure (:data:`MEASURES`) of a tagged target."""
    return rate(tagged_cell(ev, run, measure, **tags), MEASURES[measure][3])


def tagged_items(ev: Evidence, run: str, measure: str, **tags) -> dict[str, int]:
    """Per item, the measure as 0/1 (for paired intervals)."""
    name = MEASURES[measure][3]
    return {k: int(bool(v[name])) for k, v in tagged_cell(ev, run, measure, **tags).items() if v[name] is not None}


def finetune_numbers(ev: Evidence) -> dict:
    """The fine-tuning attack's table (vanilla before and after each run) and harmful % of
    every aligned model against the plain-SFT attack's steps."""
    if "finetune" not in ev.tagged:
        return {}
    table = {}
    for variant, tags in FINETUNE_VARIANTS.items():
        row = {}
        for measure in MEASURES:
            r, ci, n = tagged_rate(ev, "finetune", measure, **tags)
            if n:
                row[measure] = {"rate": r, "ci95": ci, "n": n}
        table[variant] = row
    steps: dict[str, dict] = {}
    for model in ev.tag_values("finetune-steps", "model"):
        curve = {}
        for s in ev.tag_values("finetune-steps", "steps"):
            tags = {"model": model, "steps": s} if s == 0 else {"model": model, "finetune": "harmful",
                                                                 "objective": "sft", "steps": s}
            r, ci, n = tagged_rate(ev, "finetune-steps", "harmful direct", **tags)
            if n:
                curve[s] = {"rate": r, "ci95": ci, "n": n}
        steps[model] = curve
    return {"table": table, "steps": steps}


def direction_numbers(ev: Evidence, models=RECORD_MODELS) -> dict:
    """Each aligned model with its own refusal direction ablated, next to the model as it is
    (``{"skipped": [reasons]}`` for a model the selection found no direction for)."""
    if "direction" not in ev.tagged and not ev.skipped_directions:
        return {}
    seen = ev.seen
    direct, prefill8 = ev.prefill_attack(0), ev.prefill_attack(8)
    helpful = ev.benign_dataset("helpful")
    out = {}
    for m in models:
        if m in ev.skipped_directions and m not in ev.tag_values("direction", "model"):
            out[m] = {"skipped": ev.skipped_directions[m]}
            continue
        plain = {"harmful direct": rate(ev.greedy.get((m, direct, seen.name)) if seen else None),
                 "refusal direct": rate(ev.greedy.get((m, direct, seen.name)) if seen else None, "refusal"),
                 "harmful prefill:8": rate(ev.greedy.get((m, prefill8, seen.name)) if seen else None),
                 "helpful": rate(ev.benign.get((m, helpful.name)) if helpful else None, "correct")}
        row = {}
        for measure in ("harmful direct", "refusal direct", "harmful prefill:8", "helpful"):
            r, ci, n = tagged_rate(ev, "direction", measure, model=m, ablated=True)
            p = plain[measure]
            row[measure] = {"ablated": {"rate": r, "ci95": ci, "n": n}, "plain": {"rate": p[0], "ci95": p[1], "n": p[2]}}
        out[m] = row
    return out



# -- the adaptive attacks -------------------------------------------------------------------------
#: the models of the adaptive-attack stage: name -> target tags
ADAPTIVE_MODELS = {"vanilla": {"model": "vanilla"}, "harmful-prefix": {"model": "harmful-prefix"},
                   "rto": {"model": "rto"}, "derta": {"model": "derta"},
                   "vanilla after harmful constrained": {"model": "vanilla", "finetune": "harmful",
                                                         "objective": "constrained"}}
#: the refusal-prefix fine-tuning attack: name -> target tags
RP_VARIANTS = {"vanilla": {"model": "vanilla", "steps": 0},
               "vanilla after refusal-prefix sft": {"model": "vanilla", "finetune": "refusal-prefix", "objective": "sft"},
               "vanilla after refusal-prefix constrained": {"model": "vanilla", "finetune": "refusal-prefix",
                                                            "objective": "constrained"},
               "derta": {"model": "derta", "steps": 0},
               "derta after refusal-prefix sft": {"model": "derta", "finetune": "refusal-prefix", "objective": "sft"}}


def _cell_rate(items: dict | None) -> dict | None:
    r, ci, n = rate(items)
    return {"rate": r, "ci95": ci, "n": n} if n else None


def adaptive_items(ev: Evidence, model: str, attack: str) -> dict:
    """The items of a model under an attack of the adaptive stage (its RAP and insertion run, or
    its GCG run); the plain prefills of the same depths come from the attack battery (the
    constrained-fine-tuned model's prefill:8 from the fine-tuning run)."""
    tags = ADAPTIVE_MODELS[model]
    for run in ("adaptive", "gcg"):
        if any(a.label == attack for a in ev.tagged_attacks.get(run, [])):
            return ev.cell(run, ev.tagged_dataset(run, "harmful"), attack, **tags)
    if attack.startswith("prefill:") and ev.seen is not None:
        if "finetune" not in tags:  # an aligned model as trained: the attack battery's rows
            return ev.greedy.get((model, ev.prefill_attack(int(attack.split(":")[1])), ev.seen.name)) or {}
        label = ev.attack_label("finetune", "prefill", int(attack.split(":")[1]))
        if label:
            return ev.cell("finetune", ev.tagged_dataset("finetune", "harmful"), label, **tags)
    return {}


def adaptive_numbers(ev: Evidence) -> dict:
    """Harmful % of each model of the adaptive stage under each adaptive attack, next to the plain
    prefills of the same depths; and the refusal-prefix fine-tuning attack's table."""
    if "adaptive" not in ev.tagged:
        return {}
    attacks = [a.label for run in ("adaptive", "gcg") for a in ev.tagged_attacks.get(run, [])]
    depths = sorted({a.depth for a in ev.tagged_attacks.get("adaptive", []) if a.family == "rap"})
    columns = [c for k in depths for c in (f"prefill:{k}", f"rap:{k}")] + [a for a in attacks if not a.startswith("rap:")]
    table = {}
    for model in ADAPTIVE_MODELS:
        row = {c: _cell_rate(adaptive_items(ev, model, c)) for c in columns}
        if any(v is not None for k, v in row.items() if not k.startswith("prefill:")):
            table[model] = row
    rp = {}
    for variant, tags in RP_VARIANTS.items():
        row = {}
        for measure in ("harmful direct", "harmful prefill:8", "unseen direct"):
            r, ci, n = tagged_rate(ev, "refusal-prefix", measure, **tags)
            if n:
                row[measure] = {"rate": r, "ci95": ci, "n": n}
        if row:
            rp[variant] = row
    return {"columns": columns, "table": table, "refusal_prefix": rp}


# -- the defence axis -----------------------------------------------------------------------------
#: the defended models of the defence axis: name -> target tags (``defences`` run)
DEFENDED = {"vanilla + ADA-RK": {"model": "vanilla", "defence": "ada-rk"},
            "vanilla + ADA-LP": {"model": "vanilla", "defence": "ada-lp"},
            "harmful-prefix + PRESTO": {"model": "harmful-prefix", "defence": "presto"}}
#: the rows of the defence table: the defended models next to the models they defend, and DeRTa
DEFENCE_ROWS = ("vanilla", "vanilla + ADA-RK", "vanilla + ADA-LP", "harmful-prefix", "harmful-prefix + PRESTO", "derta")


def defence_items(ev: Evidence, name: str, attack: str, role: str = "harmful") -> dict:
    """The items of a row of the defence table (:data:`DEFENCE_ROWS`) under ``attack`` on the
    held-out harmful queries (``role`` harmful), or answering the benign / helpful set (``role``
    benign / helpful, ``attack`` direct): a defended model's from the ``defences`` run, an
    undefended one's from the attack battery, the adaptive run or the benign run."""
    if name in DEFENDED:
        dataset = ev.tagged_dataset("defences", role)
        return ev.cell("defences", dataset, attack, **DEFENDED[name]) if dataset else {}
    if role != "harmful":
        d = ev.benign_dataset(role)
        return (ev.benign.get((name, d.name)) or {}) if d is not None else {}
    if attack.startswith(("rap:", "insert:")):
        return adaptive_items(ev, name, attack) if "adaptive" in ev.tagged else {}
    return (ev.greedy.get((name, attack, ev.seen.name)) or {}) if ev.seen is not None else {}


def defence_numbers(ev: Evidence) -> dict:
    """Harmful % of each defended model and of the model it defends under every attack of the
    defence axis; over-refusal and helpful accuracy; vanilla after each fine-tuning attack,
    with and without ADA."""
    if "defences" not in ev.tagged:
        return {}
    harmful = ev.tagged_dataset("defences", "harmful")
    have = {(a, d) for (_, a, d) in ev.tagged["defences"]}
    columns = [a.label for a in ev.tagged_attacks.get("defences", []) if (a.label, harmful) in have]
    table = {}
    for name in DEFENCE_ROWS:
        row = {c: _cell_rate(defence_items(ev, name, c)) for c in columns}
        if any(v is not None for v in row.values()):
            table[name] = row
    benign = {}
    for name in DEFENCE_ROWS:
        row = {}
        for role, field_ in (("benign", "refusal"), ("helpful", "correct")):
            r, ci, n = rate(defence_items(ev, name, "direct", role), field_)
            if n:
                row[role] = {"rate": r, "ci95": ci, "n": n}
        if row:
            benign[name] = row
    tuned = {}
    from deepalign.study.finetune import VANILLA_RUNS

    for data, objective in VANILLA_RUNS:
        tags, rows = {"model": "vanilla", "finetune": data, "objective": objective}, {}
        for defence in (None, "ada-rk", "ada-lp"):
            run, extra = ("finetune", {}) if defence is None else ("defences", {"defence": defence})
            row = {}
            for measure in ("harmful direct", "harmful prefill:8"):
                r, ci, n = tagged_rate(ev, run, measure, **tags, **extra)
                if n:
                    row[measure] = {"rate": r, "ci95": ci, "n": n}
            if row:
                rows[f"vanilla after {data} {objective}" + (f" + {defence.upper()}" if defence else "")] = row
        if any(" + " in k for k in rows):  # a run ADA defended, next to the run undefended
            tuned.update(rows)
    return {"columns": columns, "table": table, "benign": benign, "finetuned": tuned}
