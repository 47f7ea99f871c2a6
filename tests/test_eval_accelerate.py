"""Evaluation scaled out with ``accelerate launch``: two CPU processes (gloo) share a run's
batches and give exactly the rows of one process (sampled responses included), in the same
order; extending or resuming the run works the same way, and shard files left by a killed
multi-process run count as written and are folded in by the next run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from deepalign.evaluation.rundir import RunDir
from launch import explain, launch


def _rows(path: Path) -> list[dict]:
    """The rows as written, without their timings (the only field that may differ)."""
    rows = [json.loads(line) for line in (path / "responses.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("timing")
    return rows


def _results(path: Path) -> list[dict]:
    return json.loads((path / "summary.json").read_text())["results"]


def test_two_processes_give_the_rows_of_one(world_dir, base_model_dir, tmp_path):
    from deepalign.evaluation.runner import run_eval

    common = ["--target", f"hf:{base_model_dir}", "--world", str(world_dir), "--dataset", "world:harmful",
              "--limit", "5", "--batch_size", "2", "--max_new_tokens", "6", "--do_sample", "--num_samples", "2",
              "--quiet"]
    two = tmp_path / "two"
    proc = launch(["eval", *common, "--attacks", "direct", "--out", str(two)], tmp_path)
    assert proc.returncode == 0, explain(proc)
    # extend the run with another attack, again with two processes
    proc = launch(["eval", *common, "--attacks", "direct", "prefill:3", "--out", str(two)], tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert not RunDir(two).shards() and not list(two.glob("*.tmp*"))

    one = tmp_path / "one"
    kw = dict(targets=[f"hf:{base_model_dir}"], world=str(world_dir), datasets=["world:harmful"], limit=5, batch_size=2,
              max_new_tokens=6, do_sample=True, num_samples=2, quiet=True, out_dir=str(one))
    run_eval(attacks=["direct"], **kw)
    run_eval(attacks=["direct", "prefill:3"], **kw)
    assert len(_rows(one)) == 2 * 5 * 2
    assert _rows(two) == _rows(one)  # same responses and verdicts, in the same order
    assert _results(two) == _results(one)
    info2, info1 = (json.loads((p / "run.json").read_text()) for p in (two, one))
    assert info2["examples"] == info1["examples"] and len(info1["examples"]) == 2


def test_shards_of_a_killed_run_count_as_written(world_dir, base_model_dir, tmp_path):
    from deepalign.evaluation.runner import run_eval

    kw = dict(targets=[f"hf:{base_model_dir}"], world=str(world_dir), datasets=["world:harmful"], limit=6,
              batch_size=2, max_new_tokens=5, attacks=["direct"], quiet=True)
    run_eval(out_dir=str(tmp_path / "ref"), **kw)
    ref = _rows(tmp_path / "ref")
    # what two processes leave when killed: rows in shard files, one of them cut mid-line
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "ref", run)
    lines = (run / "responses.jsonl").read_text().splitlines(keepends=True)
    (run / "responses.jsonl").write_text("".join(lines[:2]))
    (run / "responses.shard-0.jsonl").write_text(lines[4])
    (run / "responses.shard-1.jsonl").write_text(lines[2] + lines[3][:40])
    for name in ("summary.json", "report.md"):
        (run / name).unlink()
    assert len(RunDir(run).rows()) == 4 and RunDir(run).is_run()
    summary = run_eval(out_dir=str(run), **kw)
    assert not RunDir(run).shards()
    rows = _rows(run)
    assert len(rows) == len(ref) == 6  # nothing generated twice, the torn row and the missing one redone
    assert sorted(rows, key=lambda r: r["key"]) == sorted(ref, key=lambda r: r["key"])
    assert summary["results"] == _results(tmp_path / "ref")


def test_a_stage_ends_its_process_group(tmp_path):
    """A stage started by ``accelerate launch`` ends its process group before the interpreter
    shuts down. Left to shutdown, gloo's threads abort a finished process now and then
    ("terminate called without an active exception", SIGABRT: 2 launches in 60 here), and the
    launcher fails the run: what failed test_two_processes_give_the_rows_of_one once."""
    import torch.distributed as dist

    from deepalign.cli import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert main(["world", "--out", str(tmp_path / "world"), "--quiet"]) == 0
        assert not dist.is_initialized()
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous2'}", rank=0, world_size=1)
        assert main(["report", str(tmp_path / "missing")]) == 2  # a failed stage too
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
