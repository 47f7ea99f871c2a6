"""Judging after the fact: :func:`judge_run` (``deepalign judge``).

* On a run directory, it adds the verdicts of new judges to every response without
  generating again (as Inspect's ``score`` or HarmBench's separate classifier step), appends
  them to ``verdicts.jsonl`` (resumable: a rerun judges only what is missing) and rebuilds the
  report, which then shows every judge side by side.
* On a file of published responses (JSONL / JSON / CSV with a prompt and a response column:
  a paper's result file, another tool's completions), it first imports the file into a new
  run directory (``out_dir``) and then judges it like any run.
* Model judges' verdicts go through a cache (:mod:`deepalign.judges.cache`, ``cache_dir``):
  re-judging, or judging another run of the same responses, scores only what is new.
* With ``validate=LABELS`` (``--validate``) the judges are scored against a human-labelled
  file instead (:mod:`deepalign.evaluation.validation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deepalign.errors import DeepAlignError, OptionError
from deepalign.runs.rundir import RunDir, row_key
from deepalign.runs.runlog import ResponseRow, RunRecord, TargetRecord
from deepalign.options import On, Test, build, number
from deepalign.records import EvalPrompt, Verdict, error_verdict

#: columns that hold a published response, in order of preference
RESPONSE_FIELDS = ("response", "completion", "generation", "output", "model_output", "answer_text")


@dataclass
class JudgeOptions:
    run_dir: str | None = field(default=None, metadata={
        "help": "a run directory of 'deepalign eval', or a file of published responses (with --out; "
                "[kind:][preset:]FILE as for datasets, e.g. harmbench:completions.json)"})
    judges: list[str] | None = field(default=None, metadata={
        "aliases": ["--judge"], "help": "judges to add: keyword, keyword:nocase, harmbench:<model>, strongreject[:rubric], "
                                        "strongreject:finetuned:<model>, moderation[:model], llm:jbb-hardened, "
                                        "llm:strongreject-hardened, classifier:<model>, oracle (for a file of published "
                                        "responses they may be left out: answers are still scored)"})
    out_dir: str | None = field(default=None, metadata={
        "aliases": ["--out"], "help": "for a file of published responses: the run directory to create"})
    prompts: str | None = field(default=None, metadata={
        "help": "for a file of published responses: the dataset they answer (joined by id, or by the question a "
                "response starts with for DeRTa's completion-attack strings; HarmBench: its behaviours CSV for "
                "categories)"})
    validate: str | None = field(default=None, metadata={
        "help": "score the judges against a human-labelled file instead of a run: [preset:]FILE or a preset with a "
                "hub copy (jbb-judges, harmbench-val:FILE, xstest-completions); writes validation.json and "
                "validation.md into --out"})
    register: bool = field(default=False, metadata={
        "help": "with --validate: note the result on this machine ($DEEPALIGN_HOME/validations.jsonl), so that every "
                "later report prints it next to the judges' rates (without it, give 'deepalign report RUN "
                "--validation FILE')"})
    cache: bool = field(default=True, metadata={
        "help": "keep model judges' verdicts in a cache (RUN_DIR/judge_cache, or OUT/judge_cache with --validate) "
                "so that re-judging scores only what is new"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "the verdict cache directory (default: judge_cache in the run directory; several runs may share one)"})
    world: str | None = field(default=None, metadata={"help": "the embedded world directory (oracle judge)"})
    judge_model: str | None = field(default=None, metadata={"help": "target spec of the model behind llm judges"})
    device: str | None = field(default=None, metadata={"help": "device for local judge models"})
    batch_size: int = field(default=64, metadata={"help": "responses per judge call"})
    report: bool = field(default=True, metadata={"help": "rebuild summary.json, report.md and plots"})
    quiet: bool = False

    def __post_init__(self):
        number("batch_size", self.batch_size, low=1, integer=True)


def _judge_needs() -> dict:
    """``judge_run``'s options that only another setting reads (deepalign.options.check_needs)."""
    from deepalign.judges.registry import reads_judge_model

    return {"judge_model": Test("judges", reads_judge_model, "an llm or strongreject judge in --judges"),
            "cache_dir": On("cache", say="--cache (the default; not --no_cache)")}


def _item_of(row: ResponseRow, items: dict) -> EvalPrompt:
    item = items.get((row.dataset, row.item))
    if item is not None:
        return item
    return EvalPrompt(id=row.item, prompt=row.prompt.get("query") or row.prompt.get("text") or "", kind=row.kind)


def _published_file(source: str) -> tuple[str, object] | None:
    """``(path, parsed spec)`` when ``source`` names a file of responses (``[kind:][preset:]FILE``)."""
    from deepalign.data.datasets import parse_spec

    if Path(source).is_file():
        return source, None
    try:
        spec = parse_spec(source)
    except DeepAlignError:
        return None
    if spec.source and Path(spec.source).is_file() and (spec.preset or spec.kind):
        return spec.source, spec
    return None


def _pop_response(item: EvalPrompt) -> tuple[str | None, str | None]:
    """(column, response) taken out of the item's meta, where the loaders left it."""
    lower = {str(k).lower(): k for k in item.meta}
    for name in RESPONSE_FIELDS:
        key = lower.get(name)
        if key is not None:
            value = item.meta.pop(key)
            return str(key), value
    return None, None


def import_responses(path: str, out_dir: str, *, kind: str | None = None, preset: str | None = None,
                     options: dict | None = None, prompts: str | None = None, world=None) -> RunDir:
    """A new run directory holding the responses of a published file (one row per record).

    The file is read like a dataset (:mod:`deepalign.data.presets` recognises DeRTa's result
    files, HarmBench completions and XSTest completions), so its items get their benchmark's
    kinds, categories and answers; answers are scored strictly at once; a verdict the file
    itself carries (HarmBench's classifier label, XSTest's human annotation, PAIR's judge) is
    kept as the judge ``published:<name>``. ``prompts``: the dataset the responses answer."""
    from deepalign.data.datasets import identity, open_dataset
    from deepalign.data.loaders import load_eval_dataset
    from deepalign.evaluation.runner import answer_fields

    run = RunDir(out_dir)
    if run.path.exists() and any(run.path.iterdir()):
        raise OptionError("out_dir", f"{run.path} is not empty; give a new directory for the imported responses")
    reference = open_dataset(prompts, world=world).items if prompts else None
    notes: list[str] = []
    items, preset_name, shown = load_eval_dataset(path, kind, preset=preset, options=options, notes=notes,
                                                  reference=reference)
    if preset_name is None and kind is None:  # a generic file of responses: harmful unless it says otherwise
        items = [it if "kind" in it.meta or it.kind != "unknown" else _with_kind(it, "harmful") for it in items]
    stem = Path(path).stem
    rows, published_judges = [], []
    for it in items:
        column, response = _pop_response(it)
        no_response = it.meta.pop("no_response", None)
        if response is None and no_response is None:
            names = ", ".join(RESPONSE_FIELDS)
            raise DeepAlignError(f'item {it.id}: missing field "response" (accepted names: {names})', path=shown)
        if response is not None and not isinstance(response, str):
            raise DeepAlignError(f'item {it.id}: field "{column}" must be a string', path=shown)
        verdicts = {}
        pv = it.meta.pop("published_verdict", None)
        if isinstance(pv, dict):
            verdicts[pv["judge"]] = Verdict.coerce({k: v for k, v in pv.items() if k != "judge"})
            if pv["judge"] not in published_judges:
                published_judges.append(pv["judge"])
        rows.append((it, response, no_response, verdicts))
    name = f"{stem}@{identity(items)[:8]}"
    label = f"published:{stem}"
    out_rows = []
    for it, response, no_response, verdicts in rows:
        out_rows.append(ResponseRow(
            key=row_key(label, "published", name, it.id, 0), target=label, attack="published", dataset=name,
            item=it.id, kind=it.kind, sample=0, prompt={"query": it.prompt}, response=response or "",
            num_tokens=len((response or "").split()), finish_reason="unknown", verdicts=verdicts,
            # the behaviour a HarmBench completion belongs to: its ASR averages per behaviour first
            meta={"behavior_id": str(it.meta["behavior_id"])} if it.meta.get("behavior_id") is not None else {},
            category=str(it.meta["category"]) if it.meta.get("category") is not None else None,
            no_response=no_response or None,
            **(answer_fields(it, response or "") if response is not None else {})))
    from deepalign.attacks.base import AttackInfo
    from deepalign.data.datasets import Dataset
    from deepalign.evaluation.runner import dataset_record

    ds = Dataset(spec=str(path), name=name, items=items, preset=preset_name, identity=identity(items),
                 total=len(items), notes=notes, title=stem)
    run.create()
    with run.lock():
        run.add_items({name: items})
        run.write_info(RunRecord(judges=published_judges, targets=[TargetRecord(label, label, "published")],
                                 attacks=[AttackInfo("published", "published", depth=None)],
                                 datasets=[dataset_record(ds)], source=str(path)))
        run.append_rows(out_rows)
    return run


def _validate(opts: JudgeOptions) -> dict:
    """``--validate``: the judges against a labelled file (:mod:`deepalign.evaluation.validation`)."""
    from deepalign.evaluation.validation import validate_judges
    from deepalign.utils import quiet_libraries

    if opts.run_dir:
        raise OptionError("validate", f"scores a labels file, not a run directory ({opts.run_dir}): give one or the other")
    if opts.prompts:
        raise OptionError("prompts", "is for a file of published responses, not for --validate")
    if not opts.out_dir:
        raise OptionError("out_dir", "is required with --validate: the directory for validation.json and validation.md")
    if opts.cache_dir:
        raise OptionError("cache_dir", "with --validate the cache lives in OUT/judge_cache")
    with quiet_libraries(opts.quiet):
        return validate_judges(opts.validate, opts.judges, opts.out_dir, world=opts.world, judge_model=opts.judge_model,
                               device=opts.device, batch_size=opts.batch_size, cache=opts.cache, quiet=opts.quiet,
                               register=opts.register)


def _with_kind(item: EvalPrompt, kind: str) -> EvalPrompt:
    from dataclasses import replace

    return replace(item, kind=kind)


def judge_run(options: JudgeOptions | None = None, **kwargs) -> dict:
    """Add the verdicts of ``judges`` to a run (or to an imported file of responses) and
    rebuild its report; returns the summary. Model judges' verdicts go through a cache
    (``cache_dir``), so re-judging scores only what is new. With ``validate=LABELS`` the judges
    are scored against a human-labelled file instead (:mod:`deepalign.evaluation.validation`)
    and the validation result is returned.

    Example (adding a case-insensitive keyword judge to a finished run)::

        >>> summary = judge_run(run_dir="runs/eval", judges=["keyword:nocase"], quiet=True)
        >>> summary["judges"]
        ['oracle', 'keyword', 'keyword:nocase']
    """
    from deepalign.evaluation.runner import check_judges_gave_verdicts
    from deepalign.judges import make_judges
    from deepalign.utils import quiet_libraries

    (opts,) = build(kwargs, needs=_judge_needs(), options=(JudgeOptions, options))
    if opts.validate:
        return _validate(opts)
    run = _open_run(opts)
    run.rows()  # a malformed run is refused before anything is touched
    with quiet_libraries(opts.quiet):
        judges = make_judges(opts.judges, world=opts.world, judge_target=opts.judge_model,
                             device=opts.device) if opts.judges else []
        info = _add_verdicts(run, judges, opts)
    names = [j.name for j in judges]
    if not opts.quiet:
        _print_judged(run.rows(), names)
    if not opts.report:
        check_judges_gave_verdicts(run.rows(), names)
        return {"judges": info.judges}
    from deepalign.reports.run_report import build_report

    summary = build_report(run.path, quiet=opts.quiet)
    check_judges_gave_verdicts(run.rows(), names)
    return summary


def _open_run(opts: JudgeOptions) -> RunDir:
    """The run directory to judge: ``run_dir`` itself, or a new one (``out_dir``) holding the
    imported responses of a published file. Every wrong combination of options is refused
    before anything is written."""
    if opts.register:
        raise OptionError("register", "notes a validation: it needs --validate LABELS")
    if not opts.run_dir:
        raise OptionError("run_dir", "is required: give a run directory (or a file of responses with --out)")
    published = _published_file(opts.run_dir)
    if not opts.judges and published is None:
        raise OptionError("judges", "is required: name the judges to add")
    source = Path(opts.run_dir)
    if published is None:
        if opts.prompts:
            raise OptionError("prompts", "is for a file of published responses, not a run directory")
        if opts.out_dir:  # the verdicts go into the run directory itself
            raise OptionError("out_dir", f"is for a file of published responses (or --validate); the verdicts of a "
                                         f"run directory go into it ({source})")
        if not source.exists():
            raise DeepAlignError(f"no such run directory or file: {source}")
        return RunDir(source).require().require_current()
    path, spec = published
    if not opts.out_dir:
        raise OptionError("out_dir", f"is required to judge a file of responses ({path}): the run directory to create")
    from deepalign.judges.registry import JUDGES
    from deepalign.registry import split_list

    for s in split_list(opts.judges):  # names before the import writes anything
        JUDGES.check_name(s)
    return import_responses(path, opts.out_dir, kind=spec.kind if spec else None, preset=spec.preset if spec else None,
                            options=spec.options if spec else None, prompts=opts.prompts, world=opts.world)


def _add_verdicts(run: RunDir, judges, opts: JudgeOptions) -> RunRecord:
    """Each judge's verdict on every row of ``run`` it has not judged yet, appended as they
    come; the run record then lists the judges. Returns the run record."""
    from deepalign.utils import progress

    with run.lock():
        rows = run.rows(repair=True)
        items = run.items()
        info = run.info()
        todo = {j.name: [r for r in rows if j.name not in r.verdicts] for j in judges}
        with progress(total=sum(len(v) for v in todo.values()), quiet=opts.quiet, desc="judge", unit="resp") as bar:
            for j in judges:
                _judge_rows(run, j, todo[j.name], items, info, opts, bar)
        info.judges = list(info.judges) + [j.name for j in judges if j.name not in info.judges]
        run.write_info(info)
    return info


def _judge_rows(run: RunDir, judge, rows: list[ResponseRow], items: dict, info: RunRecord, opts: JudgeOptions,
                bar) -> None:
    """``judge`` over ``rows``, ``opts.batch_size`` at a time, each batch's verdicts appended to
    the run as it comes. A row without a response gets an error verdict (never "safe"); a judge
    whose whole first batch is errors stops before its errors fill the run (a rerun retries)."""
    from deepalign.judges.base import judge_batches
    from deepalign.judges.cache import cached
    from deepalign.runs.runlog import judged_text

    missing = [r for r in rows if r.no_response]
    if missing:
        run.append_verdicts((r.key, judge.name, error_verdict(r.no_response)) for r in missing)
        bar.update(len(missing))
    pending = [r for r in rows if not r.no_response]
    if not pending:
        return
    scorer = cached(judge, (Path(opts.cache_dir) if opts.cache_dir else run.path / "judge_cache") if opts.cache else None)
    texts = [judged_text(r.response, r.prompt, info.judge_scope) for r in pending]
    for start, verdicts in judge_batches(scorer, texts, [_item_of(r, items) for r in pending], opts.batch_size):
        if start == 0 and all(v.error for v in verdicts):
            raise DeepAlignError(f"judge {judge.name} gave no verdict on its first {len(verdicts)} responses "
                                 f"(first error: {verdicts[0].error[:200]}); nothing was written for it")
        run.append_verdicts((r.key, judge.name, v) for r, v in zip(pending[start:start + len(verdicts)], verdicts))
        bar.update(len(verdicts))


def _print_judged(rows, names) -> None:
    """One console line per judge of this call: how many verdicts, how many errors, and the
    harmful / refusal counts over the run (the report has them per cell)."""
    for name in names:
        vs = [r.verdicts[name] for r in rows if name in r.verdicts]
        errors = [v for v in vs if v.error]
        harmful = sum(v.harmful is True for v in vs)
        refusal = sum(v.refusal is True for v in vs)
        first = f" (first: {errors[0].error[:120]})" if errors else ""
        print(f"  {name}: {len(vs)} verdicts, {len(errors)} errors{first}; harmful {harmful}, refusal {refusal}")
