"""The evaluation runner: targets x attacks x datasets, judged, written resumably.

``run_eval`` writes ``RUN_DIR/responses.jsonl``, one row per target x attack x dataset x item
x sample, keyed by ``key`` (a JSON list of those five values, stable across runs). Rows are
appended one batch at a time, flushed and fsync-ed, and each row is complete (response *and*
verdicts) when written. A rerun of the same command reads the finished keys and does only the
rest: a ``kill -9`` loses nothing that was written and duplicates nothing (a half-written last
line is cut off on resume). The run's settings (generation config, judges) are kept in
``run.json``; resuming with different ones is refused, while adding targets, attacks or
datasets to a run is fine. At the end :func:`deepalign.evaluation.report.build_report`
writes ``summary.json``, ``report.md`` and the plots.

Generation is batched: each ``target.generate`` call gets ``batch_size`` items at once. Batches
keep fixed boundaries over each dataset, so a resumed run regenerates an unfinished batch with
the same batch-mates; with the same ``batch_size`` a resumed *sampled* run then draws the
same samples as an uninterrupted one (Hugging Face targets seed each batch from its request
ids, composed targets each row).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from deepalign.data.records import EvalPrompt
from deepalign.decoding.base import GenConfig
from deepalign.errors import DeepAlignError
from deepalign.utils import dumps, progress, write_json

RESPONSES = "responses.jsonl"
RUN_INFO = "run.json"


def row_key(target: str, attack: str, dataset: str, item_id: str, sample: int) -> str:
    return json.dumps([target, attack, dataset, item_id, sample], ensure_ascii=False)


def read_rows(path: str | os.PathLike, *, repair: bool = False) -> list[dict]:
    """The rows of a ``responses.jsonl``. A last line without its newline is the trace of an
    interrupted write: it is ignored (and cut off from the file when ``repair``)."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes up to and including the last newline
    if end < len(data) and repair:
        with open(path, "r+b") as fh:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
    rows = []
    for lineno, raw in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DeepAlignError(f"malformed row ({exc.msg}); remove the line or start a new run directory", path=path, line=lineno) from None
        if not isinstance(row, dict) or "key" not in row:
            raise DeepAlignError("row without a key; not a deepalign responses file", path=path, line=lineno)
        rows.append(row)
    return rows


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Append ``rows`` in one write, then flush and fsync."""
    if not rows:
        return
    blob = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
    with open(path, "ab") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Refuse a second writer on the same run directory (POSIX advisory lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    fh = open(out / ".lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DeepAlignError(f"another evaluation is writing {out}; wait for it or use another --out") from None
        yield
    finally:
        fh.close()


def _label(target) -> str:
    return target if isinstance(target, str) else getattr(target, "name", type(target).__name__)


def _request_dict(req) -> dict:
    return {k: v for k, v in (("query", req.query), ("text", req.text), ("prefill", req.prefill), ("system", req.system)) if v}


def _merge(old: list, new: list) -> list:
    return old + [x for x in new if x not in old]


def check_run_info(out: Path, info: dict) -> dict:
    """Create ``run.json`` or check a resumed run against it; returns the merged info."""
    path = out / RUN_INFO
    if not path.exists():
        return info
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise DeepAlignError(f"cannot read {path}; start a new run directory") from None
    for field, what in (("gen_config", "generation settings"), ("judges", "judges")):
        if old.get(field) != info[field]:
            raise DeepAlignError(
                f"{out} holds a run with other {what} ({json.dumps(old.get(field))}); "
                "resume it with the same ones or use a new --out"
            )
    merged = dict(old)
    for field in ("targets", "attacks", "datasets"):
        merged[field] = _merge(old.get(field, []), info[field])
    return merged


def run_eval(
    targets: Sequence,
    attacks: Sequence | str,
    datasets: Mapping[str, Sequence[EvalPrompt]] | Sequence[str] | str,
    judges: Sequence | str,
    out_dir: str | os.PathLike,
    gen_config: GenConfig | None = None,
    *,
    world: str | os.PathLike | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    attacker=None,
    attacker_config: GenConfig | None = None,
    judge_model=None,
    device: str | None = None,
    quiet: bool = False,
    report: bool = True,
) -> dict:
    """Evaluate every target on every (attack, dataset) pair; returns the summary.

    ``targets``: Target objects or specs (``hf:...``, ``openai:...``, ``ed:...``; built one at a
    time, only when they have work left). ``attacks``: Attack objects or specs
    (``"direct,prefill:8"``). ``datasets``: ``{name: items}`` or specs (``world:test``, a
    file). ``judges``: judge objects or names (``"oracle,keyword"``); the first one also
    guides PAIR. ``attacker``: the PAIR attacker (a Target or spec). ``judge_model``: the
    model behind LLM judges (a Target or spec).
    """
    from deepalign.attacks import make_attacks
    from deepalign.attacks.base import Attack
    from deepalign.evaluation.datasets import load_dataset
    from deepalign.evaluation.targets import make_target
    from deepalign.judges import make_judges

    gen_config = gen_config or GenConfig()
    if batch_size < 1:
        raise DeepAlignError(f"batch size must be >= 1, got {batch_size}")
    if not targets:
        raise DeepAlignError("no targets given")
    target_labels = [_label(t) for t in targets]
    if len(set(target_labels)) != len(target_labels):
        raise DeepAlignError(f"targets given twice: {', '.join(sorted({x for x in target_labels if target_labels.count(x) > 1}))}")

    # cheap checks first: spec syntax and API keys, then datasets (a malformed row should
    # fail before any model is loaded); local models are loaded only when they have work
    targets = [make_target(t) if isinstance(t, str) and not t.startswith(("hf:", "ed:")) else t for t in targets]
    # datasets first: a malformed row should fail before any model is loaded
    if isinstance(datasets, str):
        datasets = [datasets]
    if isinstance(datasets, Mapping):
        data = {name: list(items) for name, items in datasets.items()}
    else:
        data = {spec: load_dataset(spec, world=world, limit=limit) for spec in datasets}
    if not data:
        raise DeepAlignError("no datasets given")

    judge_objs = judges if judges and not isinstance(judges, str) and not isinstance(judges[0], str) else make_judges(
        judges, world=world, judge_target=judge_model, device=device
    )
    judge_names = [j.name for j in judge_objs]
    if isinstance(attacker, str):
        attacker = make_target(attacker, batch_size=batch_size, device=device)
    if isinstance(attacks, str) or (attacks and isinstance(attacks[0], str)):
        attack_objs = make_attacks(attacks, attacker=attacker, attacker_config=attacker_config, pair_judge=judge_objs[0])
    else:
        attack_objs = list(attacks)
        if not all(isinstance(a, Attack) for a in attack_objs):
            raise DeepAlignError("attacks must be Attack objects or specs")
    for a in attack_objs:
        if not any(a.applies(it) for items in data.values() for it in items):
            raise DeepAlignError(
                f"attack {a.label} applies to no item of the datasets (it needs reference harmful responses, "
                "e.g. world:harmful or an AdvBench CSV with a target column)"
            )

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DeepAlignError(f"output path exists and is not a directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "gen_config": json.loads(json.dumps(asdict(gen_config))),
        "judges": judge_names,
        "targets": target_labels,
        "attacks": [a.label for a in attack_objs],
        "datasets": list(data),
    }
    with run_lock(out):
        info = check_run_info(out, info)
        write_json(out / RUN_INFO, info)
        path = out / RESPONSES
        done = {r["key"] for r in read_rows(path, repair=True)}
        n = gen_config.num_samples

        # the plan: per (target, dataset, attack), the items with a sample still missing
        plan, total = [], 0
        for t, tl in zip(targets, target_labels):
            work = []
            for dname, items in data.items():
                for a in attack_objs:
                    # batches have fixed boundaries over the dataset (not over what is left),
                    # so a resumed run regenerates an unfinished batch exactly as it was: with
                    # the same batch-mates, a sampled target draws the same samples
                    todo = [it for it in items if a.applies(it)]
                    batches = []
                    for i in range(0, len(todo), batch_size):
                        batch = todo[i : i + batch_size]
                        missing = sum(row_key(tl, a.label, dname, it.id, s) not in done for it in batch for s in range(n))
                        if missing:
                            batches.append(batch)
                            total += missing
                    if batches:
                        work.append((dname, a, batches))
            if work:
                plan.append((t, tl, work))
        bar = progress(total=total, quiet=quiet, desc="eval", unit="resp")
        try:
            for t, tl, work in plan:
                target = make_target(t, batch_size=batch_size, device=device) if isinstance(t, str) else t
                for dname, attack, batches in work:
                    bar.set_description(f"{tl} | {attack.label} | {dname}"[-60:])
                    for batch in batches:
                        rows = _run_batch(target, tl, attack, dname, batch, gen_config, judge_objs, done)
                        append_rows(path, rows)
                        done.update(r["key"] for r in rows)
                        bar.update(len(rows))
                del target
        finally:
            bar.close()

    if report:
        from deepalign.evaluation.report import build_report

        return build_report(out, quiet=quiet)
    return {}


def _run_batch(target, tl: str, attack, dname: str, batch: list[EvalPrompt], config: GenConfig, judges, done: set) -> list[dict]:
    from deepalign.evaluation.metrics import check_answer

    t0 = time.perf_counter()
    outputs = attack.run(target, batch, config)
    gen_s = time.perf_counter() - t0
    if len(outputs) != len(batch):
        raise DeepAlignError(f"attack {attack.label} returned {len(outputs)} results for {len(batch)} items")
    flat = [(it, s, o) for it, outs in zip(batch, outputs) for s, o in enumerate(outs)]
    flat = [(it, s, o) for it, s, o in flat if row_key(tl, attack.label, dname, it.id, s) not in done]
    verdicts: dict[str, list[dict]] = {}
    judge_s = {}
    for j in judges:
        t1 = time.perf_counter()
        vs = j.judge([o.response for _, _, o in flat], [it for it, _, _ in flat])
        judge_s[j.name] = time.perf_counter() - t1
        if len(vs) != len(flat):
            raise DeepAlignError(f"judge {j.name} returned {len(vs)} verdicts for {len(flat)} responses")
        verdicts[j.name] = vs
    rows = []
    share = 1 / max(1, sum(len(o) for o in outputs))
    for idx, (it, s, o) in enumerate(flat):
        row = {
            "key": row_key(tl, attack.label, dname, it.id, s),
            "target": tl,
            "attack": attack.label,
            "dataset": dname,
            "item": it.id,
            "kind": it.kind,
            "sample": s,
            "prompt": _request_dict(o.request),
            "response": o.response,
        }
        if o.raw != o.response:
            row["raw"] = o.raw
        row.update(num_tokens=o.num_tokens, finish_reason=o.finish_reason, meta=o.meta)
        row["correct"] = check_answer(it, o.response)
        row["verdicts"] = {name: vs[idx] for name, vs in verdicts.items()}
        row["timing"] = {"generate_s": round(gen_s * share, 6), **{f"judge_{k}_s": round(v / max(1, len(flat)), 6) for k, v in judge_s.items()}}
        rows.append(row)
    return rows
