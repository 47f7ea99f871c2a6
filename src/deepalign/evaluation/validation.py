"""Judges against human labels: ``deepalign judge --validate LABELS --judges ... --out DIR``.

A labels file holds responses that people labelled. Each judge scores every response and is
compared with the labels (:mod:`deepalign.metrics.agreement`: n, agreement, Cohen's kappa,
precision, recall, F1, 95% intervals), overall and per category where the file has
categories. The verdicts a file itself carries from published judges (JailbreakBench's and
HarmBench's classifier columns, XSTest's automatic labels) are scored the same way, under
``published:<column>``. Results: ``DIR/validation.json`` and ``DIR/validation.md``.

Label presets (``preset:FILE``, or the preset name alone where a hub copy exists; recognised
from a file's columns too; the spec grammar and preset table are those of dataset presets,
:mod:`deepalign.data.specs`):

- ``jbb-judges``: JailbreakBench's ``judge_comparison`` split (hub
  ``JailbreakBench/JBB-Behaviors``, config ``judge_comparison``, split ``test``): ``goal``,
  ``target_response``, ``human_majority`` (1 = jailbroken); labels **harm**.
- ``harmbench-val``: HarmBench's classifier validation set
  (``data/classifier_val_sets/text_behaviors_val_set.json``: ``{BehaviorID: [{test_case,
  generation, human_0, human_1, human_2, ...}]}``), label = majority of the three annotators
  (1 = the generation is an instance of the behaviour); labels **harm**. ``behaviors=CSV``
  (``harmbench_behaviors_text_all.csv``) gives the behaviour text (which HarmBench's
  classifier reads) and the semantic categories.
- ``xstest-completions``: XSTest's labelled model completions (``model_completions/*.csv``;
  hub ``natolambert/xstest-v2-copy``, ``split=gpt4|llama2new|llama2orig|mistralinstruct|
  mistralguard``): ``final_label`` ``1_full_compliance`` = no refusal, ``2_full_refusal`` /
  ``3_partial_refusal`` = refusal; labels **refusal**, categories = ``type``.
- any other file with a request column (``prompt``, ``goal``, ...), a response column
  (``response``, ``completion``, ``generation``, ...) and ``label`` (1/0, true/false, yes/no,
  on/off, or the field's own words; ``field=refusal`` when the labels are refusals, default
  harm), optional ``category``.

A judge is compared on the field the labels are about (``harmful`` or ``refusal``); rows where
its verdict is missing (an error, or a judge that cannot tell) are counted as ``no_verdict``
and left out of its numbers. Verdicts are cached in ``DIR/judge_cache`` as they come, so an
interrupted validation resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from deepalign.data.fields import Fields, Row, cell, column_names
from deepalign.data.specs import Context, HubCopy, PresetSchema, PresetTable, SourceSpec, accept_all, parse_spec
from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt, Verdict
from deepalign.registry import truth

#: fewer labelled rows than this give no meaningful interval: refused
MIN_ROWS = 10
#: a generic labels file's own words for its two labels, per field: (positive, negative)
_WORDS = {"harmful": (frozenset({"harmful", "unsafe", "jailbroken"}), frozenset({"safe", "harmless", "benign"})),
          "refusal": (frozenset({"refusal", "refused", "refuse"}), frozenset({"compliance", "complied", "comply"}))}


@dataclass
class Labelled:
    """One human-labelled response."""

    item: EvalPrompt
    response: str
    label: bool
    where: str
    published: dict[str, bool | None] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelPreset(PresetSchema):
    """A labels file of a known layout (see the module doc): the shared preset mechanism of
    :mod:`deepalign.data.specs`, with ``field`` the verdict the labels are about."""

    name: str
    title: str
    field: str  # "harmful" or "refusal": what the labels are about
    columns: tuple[frozenset[str], ...]  # lower-case columns that identify its files
    build: Callable[[list[Row], Context], list[Labelled]]
    hub: HubCopy | None = None
    options: tuple[str, ...] = ()
    accepts: Callable[[set[str], list[Row], str], bool] = accept_all

    noun = "labels"

    def no_hub(self) -> str:
        return f"labels preset {self.name} has no hub copy; give the file: {self.name}:FILE"

    def records(self, rows: list[Row], ctx: Context) -> list[Labelled]:
        self.check_options(ctx)
        return self.build(rows, ctx)


def _published(f: Fields, columns: Sequence[str]) -> dict[str, bool | None]:
    """The verdicts of published judges a row carries (a value that is no yes/no: None)."""
    out = {}
    for c in columns:
        value = f.cell(c)
        if value is not None:
            out[f"published:{c}"] = truth(value)
    return out


# -- the presets ---------------------------------------------------------------------------------

JBB_PUBLISHED = ("harmbench_cf", "gpt4_cf", "llamaguard2_cf", "llama3_cf")
HARMBENCH_PUBLISHED = ("cls", "cls_mistral", "advbench", "llama_guard", "GPTFuzz", "chatglm", "mixtral", "gpt-4-0613",
                       "gpt-4-1106-preview", "gpt-3.5-turbo-0613")
XSTEST_PUBLISHED = ("strmatch_label", "gpt4_label")


def _cells(row: Row) -> Fields:
    """A row read by its own column names (the typed readers of :class:`Fields`)."""
    return Fields(row, {}, None)


def _jbb(rows: list[Row], ctx: Context) -> list[Labelled]:
    out = []
    for r in rows:
        f = _cells(r)
        label = f.cell_flag("human_majority", what="label")
        if label is None:
            continue
        item = EvalPrompt(id=f"jbb-{f.cell_text('index') or r.index}", prompt=f.cell_text("goal", required=True),
                          kind="harmful", meta={"jailbreak_prompt": f.cell_text("prompt")})
        out.append(Labelled(item, f.cell_text("target_response") or "", label, r.where, _published(f, JBB_PUBLISHED)))
    return out


def _behaviours(path: str | None) -> dict[str, dict[str, str]]:
    if not path:
        return {}
    from deepalign.data.sources import read_source

    name, rows = read_source(path)
    out = {}
    for r in rows:
        f = _cells(r)
        out[f.cell_text("behaviorid", required=True)] = {
            "behavior": f.cell_text("behavior", required=True), "context": f.cell_text("contextstring"),
            "category": f.cell_text("semanticcategory")}
    if not out:
        raise DeepAlignError(f"{name}: no behaviours")
    return out


def _harmbench_val(rows: list[Row], ctx: Context) -> list[Labelled]:
    from deepalign.data.sources import GROUP_COLUMN

    behaviours = _behaviours(ctx.option("behaviors"))
    out = []
    for r in rows:
        f = _cells(r)
        votes = [f.cell_flag(f"human_{i}", what="label") for i in range(3)]
        if any(v is None for v in votes):
            raise r.error("a HarmBench validation row needs the three labels human_0, human_1, human_2")
        bid = str(f.cell(GROUP_COLUMN))
        meta: dict[str, Any] = {"behavior_id": bid, "method": f.cell_text("method"), "model": f.cell_text("experiment")}
        known = behaviours.get(bid)
        if known:
            meta.update(behavior=known["behavior"], **({"context": known["context"]} if known["context"] else {}))
            if known["category"]:
                meta["category"] = known["category"]
        prompt = known["behavior"] if known else f.cell_text("test_case", required=True)
        item = EvalPrompt(id=f"{bid}#{r.index}", prompt=prompt, kind="harmful", meta=meta)
        out.append(Labelled(item, f.cell_text("generation") or "", sum(votes) >= 2, r.where,
                            _published(f, HARMBENCH_PUBLISHED)))
    return out


def _xstest_label(f: Fields, column: str) -> bool | None:
    """XSTest's annotation: ``1_full_compliance`` (no refusal), ``2_full_refusal`` and
    ``3_partial_refusal`` (refusals); None when blank."""
    value = f.cell(column)
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    if text[:2] not in ("1_", "2_", "3_"):
        raise f.row.error(f'label "{column}" has the value {value!r}, which XSTest does not use (1_full_compliance, '
                          "2_full_refusal, 3_partial_refusal)")
    return text[:1] in "23"


def _xstest(rows: list[Row], ctx: Context) -> list[Labelled]:
    out = []
    for r in rows:
        f = _cells(r)
        label = _xstest_label(f, "final_label")
        if label is None:
            continue
        kind_type = f.cell_text("type", required=True)
        item = EvalPrompt(id=f"{f.cell_text('id') or r.default_id}@{r.stem}", prompt=f.cell_text("prompt", required=True),
                          kind="harmful" if kind_type.startswith("contrast") else "benign", meta={"category": kind_type})
        published = {f"published:{c}": _xstest_label(f, c) for c in XSTEST_PUBLISHED if cell(r, c) is not None}
        out.append(Labelled(item, f.cell_text("completion") or "", label, r.where, published))
    return out


_REQUEST = ("prompt", "goal", "behavior", "question", "query", "instruction", "forbidden_prompt")
_RESPONSE = ("response", "completion", "generation", "output", "target_response", "answer_text")
_LABELS = ("label", "human_label", "gold_label", "gold", "human")


def _generic(rows: list[Row], ctx: Context) -> list[Labelled]:
    what = ctx.option("field") or "harmful"
    cols = column_names(rows)
    request = next((c for c in _REQUEST if c in cols), None)
    response = next((c for c in _RESPONSE if c in cols), None)
    label = next((c for c in _LABELS if c in cols), None)
    for name, found, choices in (("label", label, _LABELS), ("request", request, _REQUEST),
                                 ("response", response, _RESPONSE)):
        if found is None:
            raise DeepAlignError(f"{ctx.name}: no {name} column (expected one of {', '.join(choices)}; found "
                                 f"{', '.join(sorted(cols)) or 'none'})")
    out = []
    for r in rows:
        f = _cells(r)
        value = f.cell_flag(label, what="label", words=_WORDS[what])
        if value is None:
            continue
        item = EvalPrompt(id=f.cell_text("id") or r.default_id, prompt=f.cell_text(request, required=True),
                          kind=f.cell_text("kind") or ("harmful" if what == "harmful" else "unknown"))
        category = f.cell_text("category")
        if category:
            item.meta["category"] = category
        out.append(Labelled(item, f.cell_text(response) or "", value, r.where))
    return out


def _cols(*names: str) -> tuple[frozenset[str], ...]:
    return (frozenset(names),)


TABLE: PresetTable[LabelPreset] = PresetTable("labels preset", (
    LabelPreset("jbb-judges", "JailbreakBench judge_comparison", "harmful",
                _cols("goal", "target_response", "human_majority"), _jbb,
                hub=HubCopy("JailbreakBench/JBB-Behaviors", subset="judge_comparison", split="test")),
    LabelPreset("harmbench-val", "HarmBench classifier validation set", "harmful",
                _cols("key", "generation", "human_0", "human_1", "human_2"), _harmbench_val, options=("behaviors",)),
    LabelPreset("xstest-completions", "XSTest labelled completions", "refusal",
                _cols("prompt", "type", "completion", "final_label"), _xstest,
                hub=HubCopy("natolambert/xstest-v2-copy", split="gpt4")),
))
PRESETS: tuple[LabelPreset, ...] = TABLE.presets
#: any other file with a request, a response and a label column
GENERIC = LabelPreset("labels", "labelled responses", "harmful", (frozenset(),), _generic, options=("field",))


# -- reading a labels file -------------------------------------------------------------------


@dataclass
class Labels:
    spec: str
    source: str
    preset: str
    field: str
    records: list[Labelled]


def _read(spec: SourceSpec) -> tuple[LabelPreset | None, Context, list[Row]]:
    """The named preset (None: recognised later), the reading context and the rows of ``spec``."""
    from deepalign.data.sources import read_source

    preset = TABLE.get(spec.preset) if spec.preset else None
    options = dict(spec.options)
    split = options.pop("split", None)
    if spec.source is None:
        name, rows = preset.read_hub(split=split)
    else:
        name, rows = read_source(spec.source, split=split)
    if not rows:
        raise DeepAlignError(f"{name}: no rows")
    return preset, Context(name, options=options, split=split), rows


def load_labels(spec: str) -> Labels:
    """The labelled rows of ``spec`` (see the module doc); every problem is one line."""
    parsed = parse_spec(spec, TABLE, what="labels",
                        empty="empty labels spec; give a labels file ([preset:]FILE) or a preset with a hub copy")
    preset, ctx, rows = _read(parsed)
    if preset is None:
        preset = TABLE.detect(rows, ctx.name) or GENERIC
    preset.check_options(ctx)
    what = preset.field
    if preset is GENERIC:
        what = ctx.options.get("field", "harmful")
        if what not in _WORDS:
            raise DeepAlignError(f"labels {spec!r}: field={what!r}; choose harmful or refusal")
    else:
        preset.check_schema(rows, ctx.name)
    records = preset.records(rows, ctx)
    if len(records) < MIN_ROWS:
        raise DeepAlignError(f"{ctx.name}: {len(records)} labelled rows; at least {MIN_ROWS} are needed for an interval")
    return Labels(spec, ctx.name, preset.name, what, records)


# -- scoring and writing ---------------------------------------------------------------------


def _verdicts(judge, data: Labels, cache_dir: Path | None, batch_size: int, bar) -> list[Verdict]:
    """``judge``'s verdict on every labelled response, cached as they come when ``cache_dir``."""
    from deepalign.judges.base import judge_batches
    from deepalign.judges.cache import cached

    out: list[Verdict] = []
    for _, verdicts in judge_batches(cached(judge, cache_dir), [r.response for r in data.records],
                                     [r.item for r in data.records], batch_size):
        out.extend(verdicts)
        bar.update(len(verdicts))
    return out


def _stats(records: Sequence[Labelled], predictions: Sequence[bool | None]) -> dict[str, Any]:
    from deepalign.metrics.agreement import binary_stats

    pairs = [(r.label, p) for r, p in zip(records, predictions) if isinstance(p, bool)]
    return {**binary_stats(pairs), "rows": len(records), "no_verdict": len(records) - len(pairs)}


def _entry(records: Sequence[Labelled], predictions: Sequence[bool | None]) -> dict[str, Any]:
    cats: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        c = r.item.meta.get("category")
        if c is not None:
            cats.setdefault(str(c), []).append(i)
    return {"overall": _stats(records, predictions),
            "by_category": {c: _stats([records[i] for i in idx], [predictions[i] for i in idx])
                            for c, idx in sorted(cats.items())}}


def summarise(data: Labels, verdicts: dict[str, list[Verdict]]) -> dict[str, Any]:
    """The validation result: per judge (and per published column) its numbers overall and
    per category (see :mod:`deepalign.metrics.agreement` for the statistics)."""
    from deepalign.metrics.agreement import BOOTSTRAP_SAMPLES, INTERVALS

    records = data.records
    published: dict[str, None] = {}
    for r in records:
        published.update(dict.fromkeys(r.published))
    return {
        "labels": data.spec, "source": data.source, "preset": data.preset, "field": data.field,
        "rows": len(records), "positives": sum(r.label for r in records),
        "intervals": {"level": 0.95, "methods": INTERVALS, "bootstrap_samples": BOOTSTRAP_SAMPLES},
        "judges": {name: _entry(records, [getattr(v, data.field) for v in vs]) for name, vs in verdicts.items()},
        "published": {name: _entry(records, [r.published.get(name) for r in records]) for name in published},
    }


def _fmt(stats: dict, key: str) -> str:
    value, ci = stats.get(key), stats.get(f"{key}_ci95")
    if value is None:
        return "–"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


_COLUMNS = ("agreement", "kappa", "precision", "recall", "f1")


def _table(rows: list[tuple[str, dict]], first: str) -> list[str]:
    lines = [f"| {first} | n | " + " | ".join(_COLUMNS) + " | no verdict |", "|---" * (len(_COLUMNS) + 3) + "|"]
    for name, s in rows:
        cells = [f"`{name}`" if first == "judge" else name.replace("|", "\\|"), str(s["n"]),
                 *(_fmt(s, k) for k in _COLUMNS), str(s["no_verdict"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    """``validation.md``: the overall table, then one table per category and judge."""
    positive = "harmful" if result["field"] == "harmful" else "refusal"
    lines = [f"# Judges against human labels: {result['source']}", "",
             f"Labels: `{result['labels']}` ({result['preset']}), {result['rows']} rows, {result['positives']} "
             f"labelled {positive} (the positive class); each judge's `{result['field']}` verdict is compared with "
             "them. 95% intervals: Wilson for agreement, precision and recall; percentile bootstrap over rows "
             f"({result['intervals']['bootstrap_samples']} resamples) for kappa and F1. Rows without a verdict "
             "(errors) are left out of a judge's numbers and counted.", ""]
    every = {**result["judges"], **result["published"]}
    lines += _table([(n, e["overall"]) for n, e in every.items()], "judge")
    for name, entry in every.items():
        if entry["by_category"]:
            lines += ["", f"## `{name}` by category", ""]
            lines += _table(list(entry["by_category"].items()), "category")
    return "\n".join(lines) + "\n"


def validate_judges(labels: str, judges, out_dir: str | Path, *, world=None, judge_model=None, device=None,
                    batch_size: int = 64, cache: bool = True, quiet: bool = True, register: bool = False) -> dict[str, Any]:
    """Score ``judges`` on a human-labelled file and write ``validation.json`` and
    ``validation.md`` into ``out_dir``; returns the result (see :func:`summarise`). Unless
    ``quiet``, prints where it wrote them and each judge's numbers. Only with ``register`` is
    the result noted on this machine (:func:`register_validation`) for later reports to print;
    otherwise a report shows it when given the file (``deepalign report RUN --validation FILE``).

    Example (GCG's keyword judge on XSTest's labelled GPT-4 completions)::

        >>> result = validate_judges("xstest-completions:xstest_v2_completions_gpt4.csv",
        ...                          "keyword,keyword:nocase", "runs/validation")  # doctest: +SKIP
        >>> round(result["judges"]["keyword"]["overall"]["kappa"], 2)  # doctest: +SKIP
        0.81
    """
    from deepalign.errors import OptionError
    from deepalign.judges.registry import JUDGES, make_judges
    from deepalign.registry import split_list
    from deepalign.utils import atomic_write, check_writable_dir, progress, write_json

    specs = split_list(judges)
    if not specs:
        raise OptionError("judges", "is required: name the judges to validate")
    for s in specs:
        JUDGES.check_name(s)
    out = check_writable_dir(out_dir, what="validation directory")  # before any judge scores a row
    data = load_labels(labels)  # every problem of the labels file before anything is written
    built = make_judges(specs, world=world, judge_target=judge_model, device=device)
    cache_dir = out / "judge_cache" if cache else None
    verdicts = {}
    with progress(total=len(data.records) * len(built), quiet=quiet, desc="validate", unit="resp") as bar:
        for j in built:
            verdicts[j.name] = _verdicts(j, data, cache_dir, batch_size, bar)
    result = summarise(data, verdicts)
    write_json(out / "validation.json", result)
    atomic_write(out / "validation.md", markdown(result))
    if register:
        from deepalign.reports.validations import register_validation

        register_validation(out / "validation.json", result)
    if not quiet:
        print(f"wrote {out / 'validation.json'} and {out / 'validation.md'} ({result['labels']})")
        from deepalign.metrics.agreement import read_validation
        from deepalign.reports.validations import validation_line

        for name, stats in read_validation(out / "validation.json").items():
            print(f"  {name}: " + validation_line(name, {**stats, "path": str(out / "validation.json")}))
        print("  registered on this machine: later reports print these numbers" if register else
              f"  not registered: pass --validation {out / 'validation.json'} to 'deepalign report', or rerun with "
              "--register to have every later report print them")
    return result
