"""Judging after the fact: :func:`judge_run` (``deepalign judge``).

* On a run directory, it adds the verdicts of new judges to every response without
  generating again (as Inspect's ``score`` or HarmBench's separate classifier step), appends
  them to ``verdicts.jsonl`` (resumable: a rerun judges only what is missing) and rebuilds the
  report, which then shows every judge side by side.
* On a file of published responses (JSONL / JSON / CSV with a prompt and a response column:
  a paper's result file, another tool's completions), it first imports the file into a new
  run directory (``out_dir``) and then judges it like any run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deepalign.errors import DeepAlignError, OptionError
from deepalign.evaluation.rundir import RunDir, row_key
from deepalign.options import build, number
from deepalign.records import EvalPrompt

#: columns that hold a published response, in order of preference
RESPONSE_FIELDS = ("response", "completion", "generation", "output", "model_output", "answer_text")


@dataclass
class JudgeOptions:
    run_dir: str | None = field(default=None, metadata={
        "help": "a run directory of 'deepalign eval', or a file of published responses (with --out)"})
    judges: list[str] | None = field(default=None, metadata={
        "aliases": ["--judge"], "help": "judges to add: keyword, keyword:nocase, llm[:strongreject], classifier:<model>, oracle"})
    out_dir: str | None = field(default=None, metadata={
        "aliases": ["--out"], "help": "for a file of published responses: the run directory to create"})
    world: str | None = field(default=None, metadata={"help": "the embedded world directory (oracle judge)"})
    judge_model: str | None = field(default=None, metadata={"help": "target spec of the model behind llm judges"})
    device: str | None = field(default=None, metadata={"help": "device for local judge models"})
    batch_size: int = field(default=64, metadata={"help": "responses per judge call"})
    report: bool = field(default=True, metadata={"help": "rebuild summary.json, report.md and plots"})
    quiet: bool = False

    def __post_init__(self):
        number("batch_size", self.batch_size, low=1, integer=True)


def _item_of(row: dict, items: dict) -> EvalPrompt:
    item = items.get((row.get("dataset"), row.get("item")))
    if item is not None:
        return item
    prompt = row.get("prompt") or {}
    return EvalPrompt(id=str(row.get("item", "")), prompt=prompt.get("query") or prompt.get("text") or "",
                      kind=row.get("kind", "unknown"))


def import_responses(path: str, out_dir: str, *, kind: str | None = None) -> RunDir:
    """A new run directory holding the responses of a published file (one row per record)."""
    from deepalign.data.fields import EVAL_FIELDS, Fields, Ids
    from deepalign.data.sources import read_source
    from deepalign.records import ITEM_KINDS

    run = RunDir(out_dir)
    if run.path.exists() and any(run.path.iterdir()):
        raise OptionError("out_dir", f"{run.path} is not empty; give a new directory for the imported responses")
    name, raw = read_source(path)
    if not raw:
        raise DeepAlignError("no records", path=name)
    table = {**EVAL_FIELDS, "response": RESPONSE_FIELDS}
    label = f"published:{Path(path).stem}"
    rows, items, ids = [], [], Ids()
    for r in raw:
        f = Fields(r, table, None)
        rid = f.record_id()
        prompt = f.text("prompt")
        response_key, value, _ = f.find("response")
        if response_key is None or value is None:
            raise f.missing("response")
        f.used.add(response_key)
        if not isinstance(value, str):
            raise r.error(f'field "{response_key}" must be a string')
        row_kind = kind or r.data.get("kind") or "harmful"
        if row_kind not in ITEM_KINDS:
            raise r.error(f'field "kind" must be one of {", ".join(ITEM_KINDS)}, got {row_kind!r}')
        ids.add(rid, r)
        items.append(EvalPrompt(id=rid, prompt=prompt, kind=row_kind, meta=f.extras()))
        rows.append({"key": row_key(label, "published", name, rid, 0), "target": label, "attack": "published",
                     "dataset": name, "item": rid, "kind": row_kind, "sample": 0, "prompt": {"query": prompt},
                     "response": value, "num_tokens": len(value.split()), "finish_reason": "unknown", "meta": {},
                     "correct": None, "verdicts": {}})
    run.create()
    with run.lock():
        run.add_items({name: items})
        run.write_info({"gen_config": None, "judges": [], "targets": [label], "attacks": ["published"],
                        "datasets": [name], "source": str(path)})
        run.append_rows(rows)
    return run


def judge_run(options: JudgeOptions | None = None, **kwargs) -> dict:
    """Add the verdicts of ``judges`` to a run (or to an imported file of responses) and
    rebuild its report; returns the summary.

    Example (adding a case-insensitive keyword judge to a finished run)::

        >>> summary = judge_run(run_dir="runs/eval", judges=["keyword:nocase"], quiet=True)
        >>> summary["judges"]
        ['oracle', 'keyword', 'keyword:nocase']
    """
    from deepalign.evaluation.runner import judge_outputs
    from deepalign.judges import make_judges
    from deepalign.utils import progress, quiet_libraries

    (opts,) = build(kwargs, options=(JudgeOptions, options))
    if not opts.run_dir:
        raise OptionError("run_dir", "is required: give a run directory (or a file of responses with --out)")
    if not opts.judges:
        raise OptionError("judges", "is required: name the judges to add")
    source = Path(opts.run_dir)
    if source.is_file():
        if not opts.out_dir:
            raise OptionError("out_dir", f"is required to judge a file of responses ({source}): the run directory to create")
        from deepalign.registry import split_list
        from deepalign.judges.registry import JUDGES

        for s in split_list(opts.judges):  # names before the import writes anything
            JUDGES.check_name(s)
        run = import_responses(str(source), opts.out_dir)
    else:
        if not source.exists():
            raise DeepAlignError(f"no such run directory or file: {source}")
        run = RunDir(source).require()
    run.rows()  # a malformed run is refused before anything is touched
    with quiet_libraries(opts.quiet):
        judges = make_judges(opts.judges, world=opts.world, judge_target=opts.judge_model, device=opts.device)
        with run.lock():
            rows = run.rows(repair=True)
            items = run.items()
            todo = {j.name: [r for r in rows if j.name not in (r.get("verdicts") or {})] for j in judges}
            with progress(total=sum(len(v) for v in todo.values()), quiet=opts.quiet, desc="judge", unit="resp") as bar:
                for j in judges:
                    pending = todo[j.name]
                    for start in range(0, len(pending), opts.batch_size):
                        batch = pending[start:start + opts.batch_size]
                        verdicts, _ = judge_outputs([j], [r.get("response", "") for r in batch],
                                                    [_item_of(r, items) for r in batch])
                        run.append_verdicts({"key": r["key"], "judge": j.name, "verdict": v}
                                            for r, v in zip(batch, verdicts[j.name]))
                        bar.update(len(batch))
            info = run.info()
            info["judges"] = list(info.get("judges") or []) + [j.name for j in judges if j.name not in (info.get("judges") or [])]
            run.write_info(info)
    if not opts.report:
        return {"judges": info["judges"]}
    from deepalign.evaluation.report import build_report

    return build_report(run.path, quiet=opts.quiet)
