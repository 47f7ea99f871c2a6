"""Evaluation scaled out with ``accelerate launch``: two CPU processes (gloo) share a run's
batches and give exactly the rows of one process (sampled responses included), in the same
order; extending or resuming the run works the same way, and shard files left by a killed
multi-process run count as written and are folded in by the next run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from deepalign.runs.rundir import RunDir
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


_CHILD = """
import atexit, sys

class Finalised:
    def __del__(self):
        print("interpreter shutdown", flush=True)

keep = Finalised()
import deepalign.cli as cli

stage_main = cli.main

def main(argv=None):  # a stage that registers an exit handler (as wandb does) and leaves output buffered
    atexit.register(lambda: print("exit handler ran", flush=True))
    print("buffered", end="")
    return stage_main(argv)

cli.main = main
sys.argv = ["deepalign", *sys.argv[1:]]
cli.entry()
"""


def test_a_launched_process_leaves_before_interpreter_shutdown(tmp_path):
    """Under a launcher (WORLD_SIZE > 1) the ``deepalign`` entry point ends the process once
    Python's exit handlers have run, before the interpreter's shutdown, where a gloo thread
    dropping a finished collective aborts the process now and then (see ``cli.entry``); the
    exit status and buffered output are kept. A plain run exits normally."""
    import os
    import subprocess
    import sys

    def run(args, world_size):
        env = {**os.environ, "WORLD_SIZE": world_size}
        return subprocess.run([sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)

    launched = run(["--version"], "2")
    assert launched.returncode == 0, launched.stderr
    assert launched.stdout.startswith("buffered") and "exit handler ran" in launched.stdout
    assert "interpreter shutdown" not in launched.stdout
    failed = run(["report", str(tmp_path / "missing")], "2")
    assert failed.returncode == 2 and "deepalign: error:" in failed.stderr
    assert "interpreter shutdown" not in failed.stdout and "exit handler ran" in failed.stdout
    plain = run(["--version"], "1")
    assert plain.returncode == 0 and "interpreter shutdown" in plain.stdout
