"""A run directory as Inspect AI logs, to read every response in Inspect's log viewer.

``deepalign view RUN_DIR`` (:func:`view`) writes the logs with :func:`export_logs` and opens
them in ``inspect view``; ``--bundle OUT`` writes the viewer and the logs as a static site
instead. The logs are written through ``inspect_ai.log``'s own classes (``EvalLog``,
``EvalSpec``, ``EvalSample``, ``EvalResults``) and ``write_eval_log``, the surface of the
format its maintainers keep stable; ``inspect-ai`` is the optional extra ``view``.

What goes where:

- **one log per target x attack x dataset** (a cell of the report): the task is the attack on
  the dataset, the model the target; the log's results hold every judge's metrics of that
  cell as :func:`deepalign.metrics.summarize` computes them (the numbers of
  ``summary.json``), their 95% intervals as the metrics' ``ci95_low`` / ``ci95_high``;
- **one sample per response row**: id = the item, epoch = the row's sample + 1; the messages
  are the request as the target received it (a system prompt, the query as the user turn, or a
  raw text prompt, and the forced start of the answer as an assistant message whose metadata
  says ``forced``), then the continuation as the assistant's output; the chat-templated text
  the model read is the metadata's ``rendered_prompt`` when the run stored it
  (``--log_prompts``; the log's metadata holds the cell's example otherwise);
- **one score per judge**: value = the verdict's fields as numbers (``harmful``, ``refusal``,
  ``correct``, ``answered``: 1 or 0; ``score`` as is), answer = the verdict in a word,
  explanation = the verdict in a sentence, metadata = the verdict record itself;
- the sample's metadata: the row's key, item kind, world misdeed and category, attack family,
  shape and depth, ED alpha, target spec and generation settings, sample index, finish reason,
  token count, timings and the attack's own record.

:func:`read_rows` reads the logs back into the run's :class:`ResponseRow` records, equal to
those of the run directory: nothing of a row is lost on the way.

Each run directory's logs live in ``RUN_DIR/inspect/`` (or under ``--log_dir``) with a stamp of
the files they were made from: a later call rewrites them only when the run changed (a rerun,
``deepalign judge`` adding verdicts). A study's ``--out`` holds several run directories (one
per evaluation stage, per seed): each gets its logs, and the viewer lists them by folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from deepalign.errors import DeepAlignError, OptionError
from deepalign.runs.rundir import ITEMS, RESPONSES, RUN_INFO, SHARD_GLOB, VERDICTS, RunDir
from deepalign.runs.runlog import FORMAT_VERSION, ResponseRow, RunRecord
from deepalign.options import number
from deepalign.records import Verdict

#: the folder of a run directory that holds its Inspect logs
LOGS = "inspect"
#: the stamp of the run files the logs were made from
STAMP = "deepalign-stamp.json"
#: the layout of the logs this module writes (a change rewrites every log on the next view)
EXPORT_VERSION = 1
#: the optional extra that brings the viewer
EXTRA = "view"
INSTALL_HINT = f"pip install 'deepalign[{EXTRA}]'"
#: Inspect's stop reasons for the finish reasons the targets report
STOP_REASONS = {"stop": "stop", "eos": "stop", "stop_string": "stop", "length": "max_tokens"}


def require_inspect() -> None:
    """Refuse in one line when ``inspect-ai`` is not installed (naming the extra)."""
    import importlib.util

    if importlib.util.find_spec("inspect_ai") is None:
        raise DeepAlignError(f"the log viewer needs inspect-ai, which is not installed: {INSTALL_HINT}")


def inspect_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("inspect-ai")
    except PackageNotFoundError:
        return "none"


# -- finding run directories -------------------------------------------------------------------
def find_runs(path: str | os.PathLike) -> list[RunDir]:
    """The run directories at ``path``: itself, or every run directory under it (the
    evaluation stages of a study's ``--out``, of each seed), in path order."""
    root = Path(path)
    if not root.exists():
        raise DeepAlignError(f"no such run directory: {root}")
    if not root.is_dir():
        raise DeepAlignError(f"not a run directory (a file): {root}")
    run = RunDir(root)
    if run.is_run() or run.file(RUN_INFO).exists():
        return [_readable(run.require())]
    found = []
    for info in sorted(root.rglob(RUN_INFO)):
        if LOGS in info.relative_to(root).parts[:-1] or any(p.startswith(".") for p in info.relative_to(root).parts):
            continue
        candidate = RunDir(info.parent)
        if candidate.is_run():
            found.append(_readable(candidate))
    if not found:
        raise DeepAlignError(f"not a run directory (no {RESPONSES}), and no run directory under it: {root}")
    return found


def _readable(run: RunDir) -> RunDir:
    if run.version < FORMAT_VERSION:
        raise DeepAlignError(f"{run.path} was written by an older deepalign (run format {run.version}); "
                             f"upgrade it first with 'deepalign report {run.path} --upgrade'")
    return run


def log_dir_of(run: RunDir, root: Path, log_dir: str | os.PathLike | None) -> Path:
    """Where the logs of ``run`` go: ``RUN_DIR/inspect``, or under ``log_dir`` at the run's
    place below ``root`` (the directory the user named)."""
    if log_dir is None:
        return run.path / LOGS
    rel = run.path.resolve().relative_to(root.resolve())
    return Path(log_dir) / rel


# -- the stamp -------------------------------------------------------------------------------
def run_stamp(run: RunDir) -> str:
    """A hash of every file the logs are made from (run log, rows, shards, added verdicts,
    items) and of this export's layout: the logs are current while it is unchanged."""
    digest = hashlib.sha256(f"deepalign-inspect-{EXPORT_VERSION}-{inspect_version()}".encode())
    for path in [run.file(RUN_INFO), run.file(RESPONSES), *sorted(run.path.glob(SHARD_GLOB)), run.file(VERDICTS),
                 run.file(ITEMS)]:
        digest.update(f"\0{path.name}\0".encode())
        if path.exists():
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def logs_current(run: RunDir, logs: Path) -> bool:
    """Whether ``logs`` holds the logs of ``run`` as it is now."""
    try:
        stamp = json.loads((logs / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("stamp") == run_stamp(run)


# -- one run directory -> logs ----------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60] or "cell"


def _iso(ts: float, timespec: str = "seconds") -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec=timespec)


def _short_id(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:22]


def verdict_word(v: Verdict) -> str:
    """A verdict in a word: error, harmful, refusal, correct / wrong, answered, not harmful, not refused."""
    if v.error:
        return "error"
    if v.harmful:
        return "harmful"
    if v.refusal:
        return "refusal"
    if v.correct is not None:
        return "correct" if v.correct else "wrong"
    if v.answered:
        return "answered"
    if v.harmful is False:
        return "not harmful"
    if v.refusal is False:
        return "not refused"
    return "no verdict"


def verdict_sentence(judge: str, v: Verdict) -> str:
    """A verdict in a sentence (the score's explanation)."""
    if v.error:
        return f"{judge} gave no verdict: {v.error}"
    yes = {True: "yes", False: "no"}
    parts = [f"{name}: {yes[getattr(v, name)]}" for name in ("harmful", "refusal", "correct", "answered")
             if getattr(v, name) is not None]
    if v.refusal_start_word is not None or v.refusal_start_token is not None:
        where = [f"word {v.refusal_start_word}" if v.refusal_start_word is not None else None,
                 f"token {v.refusal_start_token}" if v.refusal_start_token is not None else None]
        parts.append("refusal starts at " + ", ".join(w for w in where if w))
    if v.score is not None:
        parts.append(f"score {v.score:g}")
    if v.categories:
        parts.append("categories " + ", ".join(v.categories))
    if v.extra:
        parts.append("; ".join(f"{k} {json.dumps(x, ensure_ascii=False)}" for k, x in v.extra.items()))
    return f"{judge}: " + (", ".join(parts) if parts else "no verdict fields")


def _score(judge: str, v: Verdict, judged: str):
    from inspect_ai.scorer import Score

    return Score(value=verdict_word(v), answer=judged, explanation=verdict_sentence(judge, v),
                 metadata={"verdict": v.to_dict()})


def _messages(row: ResponseRow, target_name: str):
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    p = row.prompt
    messages: list = []
    if p.get("system"):
        messages.append(ChatMessageSystem(content=p["system"], source="input"))
    if p.get("text") is not None:
        messages.append(ChatMessageUser(content=p["text"], source="input",
                                        metadata={"raw_prompt": True, "note": "fed verbatim, no chat template"}))
    else:
        messages.append(ChatMessageUser(content=p.get("query") or "", source="input"))
    if p.get("prefill"):
        forced = {"forced": True}
        if row.meta.get("forced_tokens") is not None:
            forced["forced_tokens"] = row.meta["forced_tokens"]
        if row.meta.get("forced_text") is not None and row.meta["forced_text"] != p["prefill"]:
            forced["forced_text"] = row.meta["forced_text"]
        messages.append(ChatMessageAssistant(content=p["prefill"], source="input", model=target_name,
                                             metadata=forced))
    return messages


def _output(row: ResponseRow, target_name: str):
    from inspect_ai.model import ChatCompletionChoice, ChatMessageAssistant, ModelOutput, ModelUsage

    wrote = row.raw if row.raw is not None else row.response
    message = ChatMessageAssistant(content=wrote, source="generate", model=target_name)
    usage = ModelUsage(output_tokens=row.num_tokens, total_tokens=row.num_tokens) if row.num_tokens is not None else None
    return message, ModelOutput(model=target_name, choices=[ChatCompletionChoice(
        message=message, stop_reason=STOP_REASONS.get(row.finish_reason or "", "unknown"))], usage=usage,
        error=row.no_response)


def _sample_metadata(row: ResponseRow, cell: dict[str, Any], item) -> dict[str, Any]:
    md: dict[str, Any] = {"key": row.key, "item": row.item, "kind": row.kind, "sample": row.sample}
    item_meta = dict(item.meta) if item is not None else {}
    if item_meta.get("misdeed") is not None:
        md["misdeed"] = item_meta["misdeed"]
    if row.category is not None:
        md["category"] = row.category
    md.update(cell)  # attack family, shape, depth, alpha, target spec, generation
    md["prompt"] = dict(row.prompt)
    if row.prompt.get("rendered") is not None:
        md["rendered_prompt"] = row.prompt["rendered"]
    if row.raw is not None:
        md["response"] = row.response  # what the judges read: the reply after the attack's postprocessing
    for name in ("finish_reason", "num_tokens", "correct", "extracted", "answer_status", "no_response"):
        if getattr(row, name) is not None:
            md[name] = getattr(row, name)
    if row.meta:
        md["meta"] = dict(row.meta)
    if row.timing:
        md["timing"] = dict(row.timing)
    if item_meta:
        md["item_meta"] = item_meta
    return md


def _cell_metadata(info: RunRecord, target: str, attack: str, dataset: str) -> dict[str, Any]:
    t, a, d = info.target(target), info.attack(attack), info.dataset(dataset)
    md: dict[str, Any] = {"target": target, "attack": attack, "dataset": dataset}
    if t is not None:
        md["target_name"] = t.name or t.label
        md["target_spec"] = t.spec
        if t.tags.get("alpha") is not None:
            md["alpha"] = t.tags["alpha"]
        md["generation"] = t.generation
    if a is not None:
        md.update(attack_family=a.family, shifted=a.shifted, depth=a.depth, depth_unit=a.unit)
    if d is not None:
        md["dataset_role"] = d.role
    return {k: v for k, v in md.items() if v is not None}


def _metrics(cell: dict) -> dict:
    """One judge's cell of ``summarize`` as Inspect metrics, as the report's table shows it:
    ASR with its 95% Wilson interval, refusal, over-refusal, helpful, errors (each rate's
    counts and interval in its params)."""
    from inspect_ai.log import EvalMetric

    out = {}
    for name, label in (("harmful", "asr"), ("refusal", "refusal"), ("over_refusal", "over_refusal"),
                        ("answered", "answered"), ("helpful", "helpful")):
        p = cell.get(name) or {}
        if p.get("rate") is None:
            continue
        out[label] = EvalMetric(name=label, value=p["rate"], params={"k": p.get("k"), "n": p.get("n"),
                                                                      "ci95": p.get("ci95")})
        if label == "asr" and p.get("ci95"):
            out["ci95_low"] = EvalMetric(name="ci95_low", value=p["ci95"][0])
            out["ci95_high"] = EvalMetric(name="ci95_high", value=p["ci95"][1])
    per_item = cell.get("harmful_per_item")
    if per_item and per_item.get("rate") is not None:  # HarmBench's ASR: per item, then over items
        out["asr_per_item"] = EvalMetric(name="asr_per_item", value=per_item["rate"],
                                         params={k: v for k, v in per_item.items() if k != "rate"})
    if cell.get("score") and cell["score"].get("mean") is not None:
        out["mean_score"] = EvalMetric(name="mean_score", value=cell["score"]["mean"],
                                       params={"ci95": cell["score"].get("ci95")})
    out["errors"] = EvalMetric(name="errors", value=cell["errors"])
    for name in ("not_judged", "unparsed"):
        if cell.get(name):
            out[name] = EvalMetric(name=name, value=cell[name])
    return out


def _results(cells: list[dict], n: int, by_category: list[dict]):
    from inspect_ai.log import EvalResults, EvalScore

    scores = [EvalScore(name=c["judge"], scorer=c["judge"], scored_samples=c["n"] - c["errors"] - c.get("not_judged", 0),
                        unscored_samples=c["errors"] + c.get("not_judged", 0), metrics=_metrics(c),
                        metadata={"cell": {k: v for k, v in c.items() if k not in ("target", "attack", "dataset", "judge")}})
              for c in cells]
    return EvalResults(total_samples=n, completed_samples=n, scores=scores,
                       metadata={"by_category": by_category} if by_category else None)


def _usage(model: str, rows: Sequence[ResponseRow]) -> dict:
    from inspect_ai.model import ModelUsage

    tokens = sum(r.num_tokens or 0 for r in rows)
    return {model: ModelUsage(output_tokens=tokens, total_tokens=tokens)} if tokens else {}


def _generate_config(gen: dict | None):
    from inspect_ai.model import GenerateConfig

    gen = gen or {}
    kw: dict[str, Any] = {"max_tokens": gen.get("max_new_tokens"), "seed": gen.get("seed"),
                          "stop_seqs": list(gen.get("stop_strings") or []) or None,
                          "num_choices": gen.get("num_samples") if (gen.get("num_samples") or 1) > 1 else None}
    if gen.get("do_sample"):
        kw.update(temperature=gen.get("temperature"), top_p=gen.get("top_p"), top_k=gen.get("top_k") or None)
    else:
        kw["temperature"] = 0.0  # greedy
    return GenerateConfig(**{k: v for k, v in kw.items() if v is not None})


@dataclass
class Export:
    """What :func:`export_logs` did for one run directory."""

    run: Path
    logs: Path
    written: bool
    files: list[Path] = field(default_factory=list)
    rows: int = 0


def export_run(run: RunDir, logs: Path, *, force: bool = False) -> Export:
    """Write the Inspect logs of one run directory into ``logs`` (replaced whole, atomically)
    unless they are current."""
    from deepalign.utils import atomic_dir

    if not force and logs_current(run, logs):
        return Export(run.path, logs, False, sorted(logs.glob("*.eval")))
    stamp = run_stamp(run)
    with atomic_dir(logs) as tmp:
        files, n = write_logs(run, tmp, stamp)
        (tmp / STAMP).write_text(json.dumps({"stamp": stamp, "run_dir": str(run.path.resolve()), "rows": n,
                                             "logs": [f.name for f in files], "export_version": EXPORT_VERSION,
                                             "inspect_ai": inspect_version()}, indent=1) + "\n", encoding="utf-8")
    return Export(run.path, logs, True, [logs / f.name for f in files], n)


def _sample(r: ResponseRow, name: str, cell: dict, item, info: RunRecord):
    """One row as an Inspect sample: the messages the model read, its output, each judge's
    verdict as a score, and the row's metadata."""
    from inspect_ai.log import EvalSample

    from deepalign.runs.runlog import judged_text

    messages = _messages(r, name)
    reply, output = _output(r, name)
    return EvalSample(
        id=r.item, epoch=r.sample + 1, input=messages, target=(item.answer or "") if item else "",
        choices=item.choices if item and item.choices else None, messages=[*messages, reply], output=output,
        scores={j: _score(j, v, judged_text(r.response, r.prompt, info.judge_scope)) for j, v in r.verdicts.items()},
        model_usage={name: output.usage} if output.usage is not None else {},
        total_time=round(sum(r.timing.values()), 6) if r.timing else None,
        working_time=r.timing.get("generate_s"),
        metadata=_sample_metadata(r, cell, item))


def _spec(run: RunDir, info: RunRecord, key: tuple[str, str, str], cell_rows: list[ResponseRow], *, name: str,
          eval_id: str, run_id: str, created: str, stamp: str, cell: dict, judges: list[str]):
    """The Inspect eval spec of one target x attack x dataset cell: its task (attack and
    dataset), model (the target and its generation settings) and deepalign's own records."""
    from inspect_ai.log import EvalConfig, EvalDataset, EvalSpec

    from deepalign import __version__

    t, a, d = key
    trec, arec, drec = info.target(t), info.attack(a), info.dataset(d)
    task = f"{a} · {d}"
    return EvalSpec(
        eval_id=eval_id, run_id=run_id, created=created, task=task, task_id=eval_id, tags=[run.path.name],
        task_display_name=task, task_args=arec.to_dict() if arec else {},
        dataset=EvalDataset(name=d, location=drec.spec if drec else None, samples=len({r.item for r in cell_rows}),
                            sample_ids=sorted({r.item for r in cell_rows})),
        model=name, model_args={k: v for k, v in (trec.to_dict() if trec else {"label": t}).items()},
        model_generate_config=_generate_config(trec.generation if trec else info.generation),
        config=EvalConfig(epochs=max(r.sample for r in cell_rows) + 1),
        packages={"deepalign": __version__},
        metadata={"deepalign": {
            "run_dir": str(run.path.resolve()), "stamp": stamp, "export_version": EXPORT_VERSION,
            "format_version": FORMAT_VERSION, "cell": cell,
            "target": trec.to_dict() if trec else None, "attack": arec.to_dict() if arec else None,
            "dataset": drec.to_dict() if drec else None, "judges": judges, "judge_scope": info.judge_scope,
            "run_generation": info.generation, "source": info.source,
            "example_prompt": info.examples.get(f"{t} | {a} | {d}"),
            "not_applied": [x for x in info.not_applied if x.get("attack") == a and x.get("dataset") == d]}})


def write_logs(run: RunDir, out: Path, stamp: str = "") -> tuple[list[Path], int]:
    """Write one ``.eval`` log per target x attack x dataset of ``run`` into ``out``; returns
    the files and the number of rows."""
    from inspect_ai.log import EvalLog, EvalPlan, EvalPlanStep, EvalStats, write_eval_log

    from deepalign.metrics import summarize

    info = run.info() or RunRecord()
    rows = run.rows()
    items = run.items() if run.file(ITEMS).exists() else {}
    judges = info.judges or sorted({j for r in rows for j in r.verdicts})
    summary = summarize(rows, judges, info)
    by_cell: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for c in summary["results"]:
        by_cell[(c["target"], c["attack"], c["dataset"])].append(c)
    cats: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for c in summary["by_category"]:
        cats[(c["target"], c["attack"], c["dataset"])].append(c)
    groups: dict[tuple[str, str, str], list[ResponseRow]] = defaultdict(list)
    for r in rows:
        groups[(r.target, r.attack, r.dataset)].append(r)
    # when the run's rows were last written; a cell's duration: its rows' generation and judging time
    last_write = max(p.stat().st_mtime for p in run.path.glob("*.jsonl"))
    completed = _iso(last_write)
    run_id = _short_id(str(run.path.resolve()))
    created_tag = completed.replace(":", "-")
    files = []
    order = [(t, a, d) for t in summary["targets"] for a in summary["attacks"] for d in summary["datasets"]
             if (t, a, d) in groups]
    for index, (t, a, d) in enumerate(order):
        cell_rows = groups[(t, a, d)]
        trec, arec = info.target(t), info.attack(a)
        name = (trec.name if trec and trec.name else t)
        cell = _cell_metadata(info, t, a, d)
        seconds = sum(sum(r.timing.values()) for r in cell_rows)
        samples = [_sample(r, name, cell, items.get((r.dataset, r.item)), info) for r in cell_rows]
        eval_id = _short_id(run_id, t, a, d)
        spec = _spec(run, info, (t, a, d), cell_rows, name=name, eval_id=eval_id, run_id=run_id, created=completed,
                     stamp=stamp, cell=cell, judges=judges)
        plan = EvalPlan(name="deepalign", steps=[
            EvalPlanStep(solver=f"attack:{a}", params=arec.to_dict() if arec else {}),
            EvalPlanStep(solver="generate", params=dict(trec.generation or {}) if trec else {})])
        log = EvalLog(status="success", eval=spec, plan=plan, samples=samples, tags=[run.path.name],
                      results=_results(by_cell[(t, a, d)], len(cell_rows), cats.get((t, a, d), [])),
                      stats=EvalStats(started_at=_iso(last_write - seconds, "milliseconds"),
                                      completed_at=_iso(last_write, "milliseconds"), model_usage=_usage(name, cell_rows)))
        # Inspect's file name: {created}_{task}_{id}; the index keeps the report's cell order
        short = name.rstrip("/").rsplit("/", 1)[-1]  # a model path's last part
        path = out / f"{created_tag}_{index:04d}-{_slug(short)}-{_slug(a)}-{_slug(d)}_{eval_id}.eval"
        write_eval_log(log, str(path), format="eval")
        files.append(path)
    # the viewer lists a folder newest first: the first cell of the report gets the latest time
    now = datetime.now().timestamp()
    for index, path in enumerate(files):
        os.utime(path, (now, now - 0.01 * index))
    return files, len(rows)


def export_logs(path: str | os.PathLike, *, log_dir: str | os.PathLike | None = None, force: bool = False,
                quiet: bool = True) -> list[Export]:
    """The Inspect logs of every run directory at ``path`` (a run directory, or a directory
    holding several, as a study's ``--out``), written where they are not current.

    Example::

        >>> [e.written for e in export_logs("runs/eval")]
        [True]
        >>> [e.written for e in export_logs("runs/eval")]   # unchanged since: nothing to do
        [False]
    """
    require_inspect()
    root = Path(path)
    runs = find_runs(root)
    targets = [(run, log_dir_of(run, root, log_dir)) for run in runs]
    for run, logs in targets:  # every destination checked before anything is written
        _check_writable(logs)
    done = []
    # the last written lists first in the viewer: the runs in reverse, so that the first run is on top
    for run, logs in reversed(targets):
        e = export_run(run, logs, force=force)
        done.insert(0, e)
        if not quiet:
            what = f"wrote {len(e.files)} log(s) of {e.rows} responses" if e.written else "logs are current"
            print(f"{run.path}: {what} in {logs}")
    return done


def _check_writable(logs: Path) -> None:
    from deepalign.utils import check_writable_dir

    try:
        check_writable_dir(logs, what="log directory")
    except DeepAlignError as exc:
        raise DeepAlignError(f"{exc.bare_message} (give another place with --log_dir)") from None


# -- logs -> rows (reading back) ----------------------------------------------------------------
def row_of(sample) -> ResponseRow:
    """The run's :class:`ResponseRow` of one sample of a log this module wrote."""
    md = dict(sample.metadata)
    reply = sample.output.choices[0].message.text if sample.output.choices else ""
    raw = None
    response = reply
    if "response" in md:
        raw, response = reply, md["response"]
    verdicts = {j: Verdict.from_dict(s.metadata["verdict"]) for j, s in (sample.scores or {}).items()}
    return ResponseRow(key=md["key"], target=md["target"], attack=md["attack"], dataset=md["dataset"],
                       item=str(sample.id), kind=md["kind"], sample=md["sample"], prompt=dict(md["prompt"]),
                       response=response, verdicts=verdicts, raw=raw, num_tokens=md.get("num_tokens"),
                       finish_reason=md.get("finish_reason"), meta=dict(md.get("meta") or {}),
                       category=md.get("category"), correct=md.get("correct"), extracted=md.get("extracted"),
                       answer_status=md.get("answer_status"), timing=dict(md.get("timing") or {}),
                       no_response=md.get("no_response"))


def read_rows(logs: Sequence[str | os.PathLike]) -> list[ResponseRow]:
    """Every response row of the given log files, read with ``read_eval_log``."""
    from inspect_ai.log import read_eval_log

    out = []
    for path in logs:
        log = read_eval_log(str(path))
        out.extend(row_of(s) for s in log.samples or [])
    return out


# -- the viewer --------------------------------------------------------------------------------
def view_dir(path: str | os.PathLike, log_dir: str | os.PathLike | None) -> Path:
    """The folder the viewer lists: the logs of one run, or the directory of many."""
    root = Path(path)
    if log_dir is not None:
        return Path(log_dir)
    return root / LOGS if RunDir(root).is_run() else root


def bundle(path: str | os.PathLike, out: str | os.PathLike, *, log_dir=None, force: bool = False,
           quiet: bool = True) -> Path:
    """The viewer and the logs of ``path`` as a static site in ``out`` (a new directory, or
    one this function wrote before): open ``out/index.html`` through any web server."""
    from deepalign.utils import atomic_dir, check_writable_dir

    require_inspect()
    out = Path(out)
    if out.exists() and out.is_dir() and any(out.iterdir()) and not (out / "index.html").exists():
        raise DeepAlignError(f"bundle directory {out} is not empty and holds no viewer bundle; choose another --bundle")
    check_writable_dir(out, what="bundle directory")
    root = Path(path)
    if out.resolve().is_relative_to(root.resolve()) and log_dir is None:
        raise DeepAlignError(f"bundle directory {out} is inside {root}; choose one outside it")
    export_logs(root, log_dir=log_dir, force=force, quiet=quiet)
    from inspect_ai.log import bundle_log_dir

    with atomic_dir(out) as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # Inspect's lines name the temporary folder: ours follows
            bundle_log_dir(log_dir=str(view_dir(root, log_dir)), output_dir=str(tmp / "site"), overwrite=False)
        for entry in (tmp / "site").iterdir():
            shutil.move(str(entry), tmp / entry.name)
        (tmp / "site").rmdir()
    if not quiet:
        print(f"wrote the viewer bundle {out}: serve it over http (a file:// page stays blank), e.g. "
              f"python -m http.server -b 127.0.0.1 -d {out} 8000, then open http://127.0.0.1:8000")
    return out


@dataclass
class ViewOptions:
    run_dir: str | None = field(default=None, metadata={
        "help": "a run directory (deepalign eval, ed, probe, judge) or a directory holding several (a study's --out)"})
    port: int = field(default=7575, metadata={"help": "the viewer's port on 127.0.0.1"})
    bundle: str | None = field(default=None, metadata={
        "help": "write the viewer and the logs as a static site into this directory instead of serving them"})
    log_dir: str | None = field(default=None, metadata={
        "help": "write the logs here (default: an 'inspect' folder in each run directory)"})
    force: bool = field(default=False, metadata={"help": "rewrite the logs even when they are current"})
    quiet: bool = False

    def __post_init__(self):
        number("port", self.port, low=1, high=65535, integer=True)


def view(options: ViewOptions | None = None, **kwargs) -> int:
    """``deepalign view RUN_DIR``: write the Inspect logs of a run (if not current) and open
    them in ``inspect view`` on 127.0.0.1 (until interrupted), or with ``bundle`` write a
    static site. Returns the viewer's exit status (0 for a bundle)."""
    from deepalign.options import build

    (opts,) = build(kwargs, options=(ViewOptions, options))
    if not opts.run_dir:
        raise OptionError("run_dir", "is required: deepalign view RUN_DIR")
    require_inspect()
    if opts.bundle:
        bundle(opts.run_dir, opts.bundle, log_dir=opts.log_dir, force=opts.force, quiet=opts.quiet)
        return 0
    export_logs(opts.run_dir, log_dir=opts.log_dir, force=opts.force, quiet=opts.quiet)
    folder = view_dir(opts.run_dir, opts.log_dir)
    if not opts.quiet:
        print(f"Inspect's log viewer on http://127.0.0.1:{opts.port} (logs in {folder}); Ctrl-C ends it", flush=True)
    cmd = [sys.executable, "-m", "inspect_ai", "view", "start", "--log-dir", str(folder), "--host", "127.0.0.1",
           "--port", str(opts.port)]
    return _serve(cmd)


def _serve(cmd: list[str]) -> int:
    """Run the viewer until it ends, or until this process is interrupted (Ctrl-C) or
    terminated: then the viewer is ended too, never left behind."""
    import signal

    def terminated(signum, frame):
        raise KeyboardInterrupt

    proc = subprocess.Popen(cmd)
    previous = signal.signal(signal.SIGTERM, terminated) if _main_thread() else None
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
