"""Judges against human labels: ``deepalign judge --validate LABELS --judges ... --out DIR``.

A labels file holds responses that people labelled. Each judge scores every response and is
compared with the labels (:mod:`deepalign.metrics.agreement`: n, agreement, Cohen's kappa,
precision, recall, F1, 95% intervals), overall and per category where the file has
categories. The verdicts a file itself carries from published judges (JailbreakBench's and
HarmBench's classifier columns, XSTest's automatic labels) are scored the same way, under
``published:<column>``. Results: ``DIR/validation.json`` and ``DIR/validation.md``.

Label presets (``preset:FILE``, or the preset name alone where a hub copy exists; recognised
from a file's columns too):

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
  (``response``, ``completion``, ``generation``, ...) and ``label`` (1/0, true/false, yes/no;
  ``field=refusal`` when the labels are refusals, default harm), optional ``category``.

A judge is compared on the field the labels are about (``harmful`` or ``refusal``); rows where
its verdict is missing (an error, or a judge that cannot tell) are counted as ``no_verdict``
and left out of its numbers. Verdicts are cached in ``DIR/judge_cache`` as they come, so an
interrupted validation resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from deepalign.data.fields import Row
from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt, Verdict

#: fewer labelled rows than this give no meaningful interval: refused
MIN_ROWS = 10
_TRUE, _FALSE = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no"}
_WORDS = {"harmful": ({"harmful", "unsafe", "jailbroken"}, {"safe", "harmless", "benign"}),
          "refusal": ({"refusal", "refused", "refuse"}, {"compliance", "complied", "comply"})}


@dataclass
class Labelled:
    """One human-labelled response."""

    item: EvalPrompt
    response: str
    label: bool
    where: str
    published: dict[str, bool | None] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelPreset:
    name: str
    title: str
    field: str  # "harmful" or "refusal": what the labels are about
    columns: frozenset[str]  # lower-case columns that identify its files
    build: Callable[[list[Row], dict[str, str]], list[Labelled]]
    hub: tuple[str, str | None, str] | None = None  # (dataset id, config, default split)
    options: tuple[str, ...] = ()


def _cell(row: Row, column: str) -> Any:
    key = next((k for k in row.data if str(k).lower() == column.lower()), None)
    return None if key is None else row.data[key]


def _text(row: Row, column: str, required: bool = True) -> str | None:
    value = _cell(row, column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise row.error(f'missing field "{column}"')
        return None
    return str(value)


def _flag(value: Any) -> bool | None:
    """1/0, true/false, yes/no (None when it is none of them or blank)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if value is not None else ""
    return True if text in _TRUE else False if text in _FALSE else None


def _label(row: Row, column: str, words: tuple[set, set] = (set(), set())) -> bool | None:
    """A label cell: None when blank; a value the preset does not know is an error."""
    value = _cell(row, column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    flag = _flag(value)
    text = str(value).strip().lower()
    if flag is None and text in words[0] | words[1]:
        flag = text in words[0]
    if flag is None:
        known = ", ".join(["1/0", "true/false", "yes/no", *sorted(words[0] | words[1])])
        raise row.error(f'label "{column}" has the value {value!r}, which this labels file does not use '
                        f"(known: {known})")
    return flag


def _published(row: Row, columns: Sequence[str]) -> dict[str, bool | None]:
    out = {}
    for c in columns:
        value = _cell(row, c)
        if value is not None:
            out[f"published:{c}"] = _flag(value)
    return out


# -- the presets ---------------------------------------------------------------------------------

JBB_PUBLISHED = ("harmbench_cf", "gpt4_cf", "llamaguard2_cf", "llama3_cf")
HARMBENCH_PUBLISHED = ("cls", "cls_mistral", "advbench", "llama_guard", "GPTFuzz", "chatglm", "mixtral", "gpt-4-0613",
                       "gpt-4-1106-preview", "gpt-3.5-turbo-0613")
XSTEST_PUBLISHED = ("strmatch_label", "gpt4_label")


def _jbb(rows: list[Row], options: dict[str, str]) -> list[Labelled]:
    out = []
    for r in rows:
        label = _label(r, "human_majority")
        if label is None:
            continue
        index = _text(r, "index", required=False) or str(r.index)
        item = EvalPrompt(id=f"jbb-{index}", prompt=_text(r, "goal"), kind="harmful",
                          meta={"jailbreak_prompt": _text(r, "prompt", required=False)})
        out.append(Labelled(item, _text(r, "target_response", required=False) or "", label, r.where,
                            _published(r, JBB_PUBLISHED)))
    return out


def _behaviours(path: str | None) -> dict[str, dict[str, str]]:
    if not path:
        return {}
    from deepalign.data.sources import read_source

    name, rows = read_source(path)
    out = {}
    for r in rows:
        bid = _text(r, "behaviorid")
        out[bid] = {"behavior": _text(r, "behavior"), "context": _text(r, "contextstring", required=False),
                    "category": _text(r, "semanticcategory", required=False)}
    if not out:
        raise DeepAlignError(f"{name}: no behaviours")
    return out


def _harmbench_val(rows: list[Row], options: dict[str, str]) -> list[Labelled]:
    from deepalign.data.sources import GROUP_COLUMN

    behaviours = _behaviours(options.get("behaviors"))
    out = []
    for r in rows:
        votes = [_label(r, f"human_{i}") for i in range(3)]
        if any(v is None for v in votes):
            raise r.error("a HarmBench validation row needs the three labels human_0, human_1, human_2")
        bid = str(_cell(r, GROUP_COLUMN))
        meta: dict[str, Any] = {"behavior_id": bid, "method": _text(r, "method", required=False),
                                "model": _text(r, "experiment", required=False)}
        known = behaviours.get(bid)
        if known:
            meta.update(behavior=known["behavior"], **({"context": known["context"]} if known["context"] else {}))
            if known["category"]:
                meta["category"] = known["category"]
        prompt = known["behavior"] if known else _text(r, "test_case")
        item = EvalPrompt(id=f"{bid}#{r.index}", prompt=prompt, kind="harmful", meta=meta)
        out.append(Labelled(item, _text(r, "generation", required=False) or "", sum(votes) >= 2, r.where,
                            _published(r, HARMBENCH_PUBLISHED)))
    return out


def _xstest_label(row: Row, column: str) -> bool | None:
    value = _cell(row, column)
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    if text[:2] not in ("1_", "2_", "3_"):
        raise row.error(f'label "{column}" has the value {value!r}, which XSTest does not use (1_full_compliance, '
                        "2_full_refusal, 3_partial_refusal)")
    return text[:1] in "23"


def _xstest(rows: list[Row], options: dict[str, str]) -> list[Labelled]:
    out = []
    for r in rows:
        label = _xstest_label(r, "final_label")
        if label is None:
            continue
        kind_type = _text(r, "type")
        item = EvalPrompt(id=f"{_text(r, 'id', required=False) or r.default_id}@{r.stem}", prompt=_text(r, "prompt"),
                          kind="harmful" if kind_type.startswith("contrast") else "benign",
                          meta={"category": kind_type})
        published = {}
        for c in XSTEST_PUBLISHED:
            if _cell(r, c) is not None:
                published[f"published:{c}"] = _xstest_label(r, c)
        out.append(Labelled(item, _text(r, "completion", required=False) or "", label, r.where, published))
    return out


_REQUEST = ("prompt", "goal", "behavior", "question", "query", "instruction", "forbidden_prompt")
_RESPONSE = ("response", "completion", "generation", "output", "target_response", "answer_text")
_LABELS = ("label", "human_label", "gold_label", "gold", "human")


def _generic(rows: list[Row], options: dict[str, str]) -> list[Labelled]:
    what = options.get("field", "harmful")
    cols = {str(k).lower() for r in rows for k in r.data}
    request = next((c for c in _REQUEST if c in cols), None)
    response = next((c for c in _RESPONSE if c in cols), None)
    label = next((c for c in _LABELS if c in cols), None)
    where = rows[0].source if rows else "labels"
    for name, found, choices in (("label", label, _LABELS), ("request", request, _REQUEST),
                                 ("response", response, _RESPONSE)):
        if found is None:
            raise DeepAlignError(f"{where}: no {name} column (expected one of {', '.join(choices)}; found "
                                 f"{', '.join(sorted(cols)) or 'none'})")
    out = []
    for r in rows:
        value = _label(r, label, _WORDS[what])
        if value is None:
            continue
        item = EvalPrompt(id=_text(r, "id", required=False) or r.default_id, prompt=_text(r, request),
                          kind=_text(r, "kind", required=False) or ("harmful" if what == "harmful" else "unknown"))
        category = _text(r, "category", required=False)
        if category:
            item.meta["category"] = category
        out.append(Labelled(item, _text(r, response, required=False) or "", value, r.where))
    return out


PRESETS: tuple[LabelPreset, ...] = (
    LabelPreset("jbb-judges", "JailbreakBench judge_comparison", "harmful",
                frozenset({"goal", "target_response", "human_majority"}), _jbb,
                hub=("JailbreakBench/JBB-Behaviors", "judge_comparison", "test")),
    LabelPreset("harmbench-val", "HarmBench classifier validation set", "harmful",
                frozenset({"key", "generation", "human_0", "human_1", "human_2"}), _harmbench_val,
                options=("behaviors",)),
    LabelPreset("xstest-completions", "XSTest labelled completions", "refusal",
                frozenset({"prompt", "type", "completion", "final_label"}), _xstest,
                hub=("natolambert/xstest-v2-copy", None, "gpt4"), options=("split",)),
)
GENERIC = LabelPreset("labels", "labelled responses", "harmful", frozenset(), _generic, options=("field",))
_BY_NAME = {p.name: p for p in PRESETS}


# -- reading a labels file -------------------------------------------------------------------


@dataclass
class Labels:
    spec: str
    source: str
    preset: str
    field: str
    records: list[Labelled]


def _parse_spec(spec: str) -> tuple[LabelPreset | None, str | None, dict[str, str]]:
    """``[preset:]SOURCE[,key=value...]`` or a preset name alone (its hub copy)."""
    from deepalign.registry import split_args

    if not isinstance(spec, str) or not spec.strip():
        raise DeepAlignError("empty labels spec; give a labels file ([preset:]FILE) or a preset with a hub copy")
    parts = split_args(spec.strip(), ",", spec)
    head, options = parts[0].strip(), {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise DeepAlignError(f"labels {spec!r}: expected key=value after the comma, got {part!r}")
        options[key.strip()] = value.strip()
    first, sep, rest = head.partition(":")
    if first in _BY_NAME and not Path(head).exists():
        return _BY_NAME[first], (rest or None) if sep else None, options
    return None, head, options


def _read(preset: LabelPreset | None, source: str | None, options: dict[str, str]) -> tuple[str, list[Row]]:
    from deepalign.data.sources import read_hub, read_source

    split = options.pop("split", None)
    if source is None:
        if preset.hub is None:
            raise DeepAlignError(f"labels preset {preset.name} has no hub copy; give the file: {preset.name}:FILE")
        hub_id, config, default_split = preset.hub
        return read_hub(hub_id, split or default_split, config, (default_split,))
    return read_source(source, split=split)


def load_labels(spec: str) -> Labels:
    """The labelled rows of ``spec`` (see the module doc); every problem is one line."""
    preset, source, options = _parse_spec(spec)
    opts = dict(options)
    name, rows = _read(preset, source, opts)
    if not rows:
        raise DeepAlignError(f"{name}: no rows")
    if preset is None:
        cols = {str(k).lower() for r in rows for k in r.data}
        preset = next((p for p in PRESETS if p.columns <= cols), GENERIC)
    unknown = sorted(set(opts) - set(preset.options))
    if unknown:
        known = ", ".join(o for o in preset.options if o != "split") or "none"
        raise DeepAlignError(f"labels {spec!r}: unknown option {unknown[0]} of the {preset.name} labels (known: "
                             f"{known})")
    what = preset.field
    if preset is GENERIC:
        what = opts.get("field", "harmful")
        if what not in _WORDS:
            raise DeepAlignError(f"labels {spec!r}: field={what!r}; choose harmful or refusal")
    elif not preset.columns <= {str(k).lower() for r in rows for k in r.data}:
        raise DeepAlignError(f"{name}: not in the {preset.title} schema (expected columns "
                             f"{', '.join(sorted(preset.columns))})")
    records = preset.build(rows, opts)
    if len(records) < MIN_ROWS:
        raise DeepAlignError(f"{name}: {len(records)} labelled rows; at least {MIN_ROWS} are needed for an interval")
    return Labels(spec, name, preset.name, what, records)


# -- scoring and writing ---------------------------------------------------------------------


def _verdicts(judge, data: Labels, cache_dir: Path | None, batch_size: int, bar) -> list[Verdict]:
    """``judge``'s verdict on every labelled response, cached as they come when ``cache_dir``."""
    from deepalign.judges.cache import CachedJudge, cache_file

    j = CachedJudge(judge, cache_file(cache_dir, judge)) if cache_dir is not None and judge.cacheable else judge
    out: list[Verdict] = []
    for start in range(0, len(data.records), batch_size):
        chunk = data.records[start:start + batch_size]
        got = j.judge([r.response for r in chunk], [r.item for r in chunk])
        if len(got) != len(chunk):
            raise DeepAlignError(f"judge {judge.name} returned {len(got)} verdicts for {len(chunk)} responses")
        out.extend(Verdict.coerce(v) for v in got)
        bar.update(len(chunk))
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
