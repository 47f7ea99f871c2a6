"""A real ``kill -9`` in the middle of long jobs: rerunning the same command loses no
finished work, duplicates nothing, and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _deepalign(*args: str) -> list[str]:
    return [sys.executable, "-m", "deepalign", *args]


def _kill_when(cmd: list[str], ready, timeout: float = 120.0) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true (it must not finish first)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"finished before it could be killed: {proc.stderr.read().decode()[-500:]}")
            if time.time() > deadline:
                raise AssertionError("never reached the point to kill it")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_kill9_during_evaluation_then_rerun(world_dir, base_model_dir, tmp_path):
    args = ["eval", "--target", f"hf:{base_model_dir}", "--attacks", "direct,prefill:4,completion",
            "--dataset", "world:harmful", "--world", str(world_dir), "--judge", "oracle,keyword:nocase",
            "--batch-size", "2", "--max-new-tokens", "24", "--quiet"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run(_deepalign(*args, "--out", str(ref)))
    responses = run / "responses.jsonl"

    def some_rows_written():
        return responses.exists() and responses.read_bytes().count(b"\n") >= 6

    _kill_when(_deepalign(*args, "--out", str(run)), some_rows_written)
    killed_at = responses.read_bytes().count(b"\n")
    expected = ref.joinpath("responses.jsonl").read_bytes().count(b"\n")
    assert 6 <= killed_at < expected
    _run(_deepalign(*args, "--out", str(run)))
    rows = [json.loads(x) for x in responses.read_text().splitlines()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == expected  # none lost, none duplicated
    ref_rows = {r["key"]: r for r in map(json.loads, ref.joinpath("responses.jsonl").read_text().splitlines())}
    assert {k: r["response"] for k, r in ((r["key"], r) for r in rows)} == {k: r["response"] for k, r in ref_rows.items()}
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, run))
    a.pop("run", None), b.pop("run", None)
    assert a == b


def test_kill9_during_training_then_resume(world_dir, base_model_dir, tmp_path):
    args = ["train", "--recipe", "derta", "--world", str(world_dir), "--model", str(base_model_dir),
            "--max-steps", "30", "--per_device_train_batch_size", "4", "--save-steps", "3", "--quiet"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run(_deepalign(*args, "--out", str(ref)))
    checkpoints = run / "checkpoints"

    def two_checkpoints():
        return checkpoints.is_dir() and len([d for d in checkpoints.iterdir() if d.name.startswith("checkpoint-")]) >= 2

    _kill_when(_deepalign(*args, "--out", str(run)), two_checkpoints)
    assert not (run / "model.safetensors").exists()  # no half-written final model
    _run(_deepalign(*args, "--out", str(run), "--resume"))
    info = json.loads((run / "deepalign_train.json").read_text())
    assert info["steps"] == 30
    from safetensors.torch import load_file

    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
