"""The run log: the typed, versioned records of an evaluation run directory.

Every stage that generates (``eval``, ``ed``, ``probe``, the study) writes a run directory
(:mod:`deepalign.runs.rundir`) made of these records; :mod:`deepalign.metrics`
is the only place that aggregates them, and reports only format what metrics computed. What
an upstream object knew travels as a field, so nothing downstream parses a label:

- :class:`RunRecord` (``run.json``): the format version, the run's own generation settings,
  the judges and what they see, and per target a :class:`TargetRecord` (its spec, display
  name, tags and the generation settings it *really* used), per attack an
  :class:`~deepalign.attacks.base.AttackInfo` (family, shifted shape or not, depth and unit,
  what the judge sees), per dataset a :class:`DatasetRecord` (role, preset, identity);
- :class:`ResponseRow` (one line of ``responses.jsonl``): one response with its
  :class:`~deepalign.records.Verdict` per judge.

Every record round-trips JSON exactly (``from_dict(to_dict(x)) == x``; fields that are unset
are left out of the JSON). Run directories written before the format carried a version
(format 1) are read through :func:`upgrade_info` and :func:`upgrade_row`, the one converter;
writing to one is refused until ``deepalign report DIR --upgrade`` has rewritten it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from deepalign.attacks.base import AttackInfo
from deepalign.errors import DeepAlignError
from deepalign.records import HARMFUL_KINDS, Verdict

FORMAT = "deepalign-run"
#: the run directory format written by this version (1: run.json without a version, before typed records)
FORMAT_VERSION = 2
#: what a judge sees of a reply: what the model wrote after any forced start, or the forced start too
JUDGE_SCOPES = ("continuation", "full")


def _compact(obj: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """``obj`` without unset fields (None, empty containers), except those in ``keep``."""
    return {k: v for k, v in obj.items() if k in keep or (v is not None and v != {} and v != [])}


def _build(cls, obj: dict[str, Any], what: str):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(obj) - names)
    if unknown:
        raise ValueError(f"unknown {what} field {unknown[0]!r}")
    return cls(**obj)


@dataclass
class TargetRecord:
    """One target of a run: ``label`` keys its rows (the spec with credentials removed),
    ``name`` / ``tags`` are what the caller called it (e.g. ``vanilla``, ``{"model": "vanilla",
    "alpha": 0.3}``), ``generation`` the settings it really decoded with (the run's, under a
    family preset, under the spec's own options), ``models`` the model of each role."""

    label: str
    spec: str
    kind: str
    generation: dict[str, Any] | None = None
    name: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _compact(asdict(self), keep=("label", "spec", "kind"))

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> TargetRecord:
        return _build(cls, obj, "target")


@dataclass
class DatasetRecord:
    """One dataset of a run: ``name`` keys its rows; ``role`` says what it is for the run
    (harmful, unseen: harmful requests for misdeeds no alignment data shows, benign, helpful,
    mixed); ``title`` a short display name; ``identity`` a hash of its content."""

    name: str
    spec: str
    role: str
    title: str
    preset: str | None = None
    identity: str | None = None
    items: int = 0
    total: int = 0
    selection: str = "all"
    kinds: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _compact(asdict(self), keep=("name", "spec", "role", "title", "items", "total", "selection"))

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> DatasetRecord:
        return _build(cls, obj, "dataset")


def role_of(kinds: dict[str, int]) -> str:
    """A dataset's role from the kinds of its items (when its loader does not say)."""
    present = {k for k, n in kinds.items() if n}
    if present and present <= set(HARMFUL_KINDS):
        return "harmful"
    if len(present) == 1:
        return next(iter(present))
    return "mixed"


@dataclass
class RunRecord:
    """``run.json``: what was run. Lists keep their display order and grow when a run is
    extended; ``generation`` and ``judges`` must be repeated exactly by a resumed run."""

    version: int = FORMAT_VERSION
    generation: dict[str, Any] | None = None
    judges: list[str] = field(default_factory=list)
    judge_scope: str = "continuation"
    targets: list[TargetRecord] = field(default_factory=list)
    attacks: list[AttackInfo] = field(default_factory=list)
    datasets: list[DatasetRecord] = field(default_factory=list)
    not_applied: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    # -- look-ups ----------------------------------------------------------------------------
    def target(self, label: str) -> TargetRecord | None:
        return next((t for t in self.targets if t.label == label), None)

    def attack(self, label: str) -> AttackInfo | None:
        return next((a for a in self.attacks if a.label == label), None)

    def dataset(self, name: str) -> DatasetRecord | None:
        return next((d for d in self.datasets if d.name == name), None)

    @property
    def target_labels(self) -> list[str]:
        return [t.label for t in self.targets]

    @property
    def attack_labels(self) -> list[str]:
        return [a.label for a in self.attacks]

    @property
    def dataset_names(self) -> list[str]:
        return [d.name for d in self.datasets]

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "version": self.version, "generation": self.generation,
                               "judges": list(self.judges), "judge_scope": self.judge_scope,
                               "targets": [t.to_dict() for t in self.targets],
                               "attacks": [a.to_dict() for a in self.attacks],
                               "datasets": [d.to_dict() for d in self.datasets]}
        if self.not_applied:
            out["not_applied"] = [dict(x) for x in self.not_applied]
        if self.examples:
            out["examples"] = dict(self.examples)
        if self.source is not None:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> RunRecord:
        obj = dict(obj)
        if obj.pop("format", FORMAT) != FORMAT:
            raise ValueError("not a deepalign run description")
        rec = _build(cls, obj, "run")
        rec.targets = [TargetRecord.from_dict(t) for t in rec.targets]
        rec.attacks = [AttackInfo.from_dict(a) for a in rec.attacks]
        rec.datasets = [DatasetRecord.from_dict(d) for d in rec.datasets]
        return rec

    # -- extending a run ---------------------------------------------------------------------
    def merge(self, new: RunRecord, where: str) -> RunRecord:
        """This run extended by ``new`` (the settings of a rerun): the run's generation
        settings, judges and judge scope must match, as must the generation settings of a
        target both name; targets, attacks and datasets grow; examples add up."""
        restart = "resume it with the same ones or use a new --out"
        for name, what in (("generation", "generation settings"), ("judges", "judges"),
                           ("judge_scope", "judge scope")):
            if getattr(self, name) != getattr(new, name):
                hint = (" (add judges to a finished run with 'deepalign judge RUN_DIR --judges ...')"
                        if name == "judges" else "")
                raise RunMismatch(f"{where} holds a run with other {what}: "
                                     f"{differences(getattr(self, name), getattr(new, name))}; {restart}{hint}")
        for t in new.targets:
            old = self.target(t.label)
            if old is not None and old.generation != t.generation:
                raise RunMismatch(f"{where}: target {t.label} decoded with other settings in this run: "
                                     f"{differences(old.generation, t.generation)}; {restart}")
        merged = RunRecord(self.version, self.generation, list(self.judges), self.judge_scope,
                           _grow(self.targets, new.targets, "label"), _grow(self.attacks, new.attacks, "label"),
                           _grow(self.datasets, new.datasets, "name"),
                           _grow(self.not_applied, new.not_applied, None), {**self.examples, **new.examples},
                           new.source if new.source is not None else self.source)
        return merged


class RunMismatch(DeepAlignError):
    """A rerun into a run directory asks for other fixed settings than the run has."""


def differences(old, new) -> str:
    """What a rerun asks that differs from the run: ``temperature 0.7 in the run, 0.9 asked``
    for each differing key of two settings dicts, else both values whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in {**old, **new} if old.get(k) != new.get(k)]
        return ", ".join(f"{k} {old.get(k)!r} in the run, {new.get(k)!r} asked" for k in keys)
    return f"{old!r} in the run, {new!r} asked"


def _grow(old: list, new: list, key: str | None) -> list:
    """``old`` plus the entries of ``new`` it lacks; an entry of both takes ``new``'s value
    (a target's notes from the latest probe, a dataset's latest selection)."""
    ident = (lambda x: getattr(x, key)) if key else (lambda x: (x["attack"], x["dataset"]))
    fresh = {ident(x): x for x in new}
    out = [fresh.pop(ident(x), x) for x in old]
    return out + [x for x in new if ident(x) in fresh]


@dataclass
class ResponseRow:
    """One line of ``responses.jsonl``: a response of ``target`` to ``item`` of ``dataset``
    under ``attack`` (sample ``sample``), keyed by ``key``, with each judge's verdict.
    ``prompt`` is the request (query / text, the forced start, the system prompt, and the
    rendered prompt with ``--log_prompts``); ``raw`` the reply before postprocessing when it
    differs; ``meta`` what the attack and the target recorded (depth, forced tokens and text);
    ``correct`` / ``extracted`` / ``answer_status`` the strict answer check of items with an
    answer; ``no_response`` why an imported record has no response."""

    key: str
    target: str
    attack: str
    dataset: str
    item: str
    kind: str = "unknown"
    sample: int = 0
    prompt: dict[str, Any] = field(default_factory=dict)
    response: str = ""
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    raw: str | None = None
    num_tokens: int | None = None
    finish_reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    category: str | None = None
    correct: bool | None = None
    extracted: str | None = None
    answer_status: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    no_response: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "verdicts"}
        out["verdicts"] = {j: v.to_dict() for j, v in self.verdicts.items()}
        return _compact(out, keep=("key", "target", "attack", "dataset", "item", "kind", "sample", "prompt",
                                   "response", "verdicts"))

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ResponseRow:
        obj = dict(obj)
        verdicts = obj.pop("verdicts", None) or {}
        row = _build(cls, obj, "row")
        row.verdicts = {j: Verdict.from_dict(v) for j, v in verdicts.items()}
        return row


# -- format 1: the one converter ---------------------------------------------------------------
def format_version(info: dict[str, Any]) -> int:
    """The format of a ``run.json`` object (1: written before the format carried a version)."""
    if not info:
        return FORMAT_VERSION
    return int(info.get("version", 1)) if info.get("format", FORMAT) == FORMAT else -1


def upgrade_info(info: dict[str, Any]) -> RunRecord:
    """A format-1 ``run.json`` as a :class:`RunRecord`. Format 1 kept only labels: targets
    become records of their spec with the run's generation settings, attacks are rebuilt from
    their specs by the attack registry (an attack it cannot rebuild, e.g. a template whose file
    is gone, keeps its label as family), datasets take their role from their items' kinds."""
    gen = info.get("gen_config")
    notes = info.get("target_notes") or {}
    targets = [TargetRecord(label=t, spec=t, kind=t.partition(":")[0], generation=gen, notes=list(notes.get(t, [])))
               for t in info.get("targets", [])]
    attacks = [_attack_info(a) for a in info.get("attacks", [])]
    ds_info = info.get("dataset_info") or {}
    datasets = []
    for name in info.get("datasets", []):
        d = ds_info.get(name) or {}
        kinds = dict(d.get("kinds") or {})
        datasets.append(DatasetRecord(name=name, spec=d.get("spec", name), role=role_of(kinds), title=name,
                                      preset=d.get("preset"), identity=d.get("identity"), items=d.get("items", 0),
                                      total=d.get("total", 0), selection=d.get("selection", "all"), kinds=kinds,
                                      notes=list(d.get("notes") or [])))
    return RunRecord(generation=gen, judges=list(info.get("judges") or []), targets=targets, attacks=attacks,
                     datasets=datasets, not_applied=list((info.get("not_applied") or {}).values()),
                     examples=dict(info.get("examples") or {}), source=info.get("source"))


def _attack_info(label: str) -> AttackInfo:
    from deepalign.attacks import make_attacks

    if label == "published":
        return AttackInfo(label, "published", depth=None)
    try:
        built = make_attacks([label], attacker=object(), pair_judge=object())
    except DeepAlignError:
        return AttackInfo(label, label.partition(":")[0], depth=None)
    return built[0].info() if len(built) == 1 else AttackInfo(label, label.partition(":")[0], depth=None)


def upgrade_row(row: dict[str, Any]) -> ResponseRow:
    """A format-1 row as a :class:`ResponseRow` (verdicts: :meth:`Verdict.coerce`; fields
    format 1 wrote as null are left out)."""
    obj = {k: v for k, v in row.items() if v is not None and k != "verdicts"}
    verdicts = {j: Verdict.coerce(v) for j, v in (row.get("verdicts") or {}).items()}
    known = {f.name for f in fields(ResponseRow)}
    extra = {k: obj.pop(k) for k in list(obj) if k not in known}
    if extra:
        obj["meta"] = {**(obj.get("meta") or {}), **extra}
    out = ResponseRow.from_dict(obj)
    out.verdicts = verdicts
    return out


def judged_text(response: str, prompt: dict, scope: str) -> str:
    """What the judges see of a reply: the reply as the attack reads it, preceded with
    ``scope == "full"`` by the start the target forced (``prompt["prefill"]``, as a row stores
    it; DeRTa's result files and Qi et al. 2025's judge score the forced prefix and the
    continuation together)."""
    forced = prompt.get("prefill") or ""
    if scope != "full" or not forced:
        return response
    glue = "" if not response or forced[-1:].isspace() or response[:1].isspace() else " "
    return forced + glue + response
