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


def _killed_evaluation(args: list[str], tmp_path, rows: int):
    """Evaluate ``args`` to the end in ``ref``, and in ``run`` until ``rows`` rows exist, then kill."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run(_deepalign(*args, "--out", str(ref)))
    responses = run / "responses.jsonl"

    def some_rows_written():
        return responses.exists() and responses.read_bytes().count(b"\n") >= rows

    _kill_when(_deepalign(*args, "--out", str(run)), some_rows_written)
    return ref, run, responses


def test_kill9_during_evaluation_then_rerun(world_dir, base_model_dir, tmp_path):
    args = ["eval", "--target", f"hf:{base_model_dir}", "--attacks", "direct,prefill:4,completion",
            "--dataset", "world:harmful", "--world", str(world_dir), "--judge", "oracle,keyword:nocase",
            "--batch-size", "2", "--max-new-tokens", "24", "--quiet"]
    ref, run, responses = _killed_evaluation(args, tmp_path, 6)
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


def test_kill9_during_gcg_then_rerun(world_dir, base_model_dir, tmp_path):
    """A killed GCG run resumes from its finished items: their suffixes are not searched again,
    and the rerun ends with the suffixes and replies of an uninterrupted run."""
    args = ["eval", "--target", f"hf:{base_model_dir}", "--attacks", "gcg:steps=4:width=16:topk=16",
            "--dataset", "world:harmful", "--world", str(world_dir), "--judge", "oracle", "--limit", "6",
            "--batch-size", "2", "--max-new-tokens", "8", "--quiet"]
    ref, run, responses = _killed_evaluation(args, tmp_path, 2)
    kept = {json.loads(x)["key"]: x for x in responses.read_text().splitlines()}
    assert 2 <= len(kept) < 6
    _run(_deepalign(*args, "--out", str(run)))
    rows = [json.loads(x) for x in responses.read_text().splitlines()]
    assert len(rows) == len({r["key"] for r in rows}) == 6
    for r in rows:  # finished items kept as they were written
        if r["key"] in kept:
            assert json.loads(kept[r["key"]]) == r
    ref_rows = {r["key"]: r for r in map(json.loads, ref.joinpath("responses.jsonl").read_text().splitlines())}
    assert {r["key"]: (r["meta"]["gcg"]["suffix_ids"], r["response"]) for r in rows} == \
        {k: (r["meta"]["gcg"]["suffix_ids"], r["response"]) for k, r in ref_rows.items()}


def _uninterrupted_and_killed(args: list[str], tmp_path):
    """Train ``args`` to the end in ``ref``, and in ``run`` until two checkpoints exist, then kill."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run(_deepalign(*args, "--out", str(ref)))
    checkpoints = run / "checkpoints"

    def two_checkpoints():
        return checkpoints.is_dir() and len([d for d in checkpoints.iterdir() if d.name.startswith("checkpoint-")]) >= 2

    _kill_when(_deepalign(*args, "--out", str(run)), two_checkpoints)
    assert not (run / "model.safetensors").exists()  # no half-written final model
    return ref, run


def _same_final_weights(ref, run, steps: int) -> None:
    assert json.loads((run / "deepalign_train.json").read_text())["steps"] == steps
    from safetensors.torch import load_file

    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


def test_kill9_during_training_then_resume(world_dir, base_model_dir, tmp_path):
    args = ["train", "--recipe", "derta", "--world", str(world_dir), "--model", str(base_model_dir),
            "--max-steps", "30", "--per_device_train_batch_size", "4", "--save-steps", "3", "--quiet"]
    ref, run = _uninterrupted_and_killed(args, tmp_path)
    _run(_deepalign(*args, "--out", str(run), "--resume"))
    _same_final_weights(ref, run, 30)


KILL_IN_FINAL_SAVE = """
import os, signal, sys
import deepalign.training.trainer as T

def install(tmp, out, last=("config.json", "adapter_config.json")):
    name = sorted(p.name for p in tmp.iterdir())[0]
    os.replace(tmp / name, out / name)  # one file of the final model is in place...
    os.kill(os.getpid(), signal.SIGKILL)  # ...when the process dies

T._install = install
from deepalign.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill9_during_the_final_save_then_resume(world_dir, base_model_dir, tmp_path):
    """A kill while the final model is being moved into place: no loadable model is left, and
    --resume ends with exactly the uninterrupted run's weights and steps (it used to train one
    step more)."""
    args = ["train", "--recipe", "vanilla", "--world", str(world_dir), "--model", str(base_model_dir),
            "--max_steps", "6", "--per_device_train_batch_size", "4", "--save_steps", "2",
            "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--quiet"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run(_deepalign(*args, "--out", str(ref)))
    killed = subprocess.run([sys.executable, "-c", KILL_IN_FINAL_SAVE, *args, "--out", str(run)], env=ENV,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-1000:]
    assert not (run / "config.json").exists()  # not loadable: the run is not finished
    _run(_deepalign(*args, "--out", str(run), "--resume"))
    assert json.loads((run / "deepalign_train.json").read_text())["steps"] == 6
    from safetensors.torch import load_file

    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(run.glob(".final-*"))


def test_kill9_during_pretraining_then_resume(world_dir, tmp_path):
    args = ["pretrain", "--world", str(world_dir), "--hidden_size", "32", "--num_layers", "1", "--num_heads", "2",
            "--intermediate_size", "64", "--max_steps", "40", "--per_device_train_batch_size", "4", "--save_steps", "8",
            "--no_probe", "--quiet"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run(_deepalign(*args, "--out", str(ref)))
    partial = tmp_path / "run.partial"

    def checkpoint_16():  # pretraining keeps only its last checkpoint
        return partial.is_dir() and any(d.name.startswith("checkpoint-") and int(d.name.split("-")[1]) >= 16
                                        and (d / "trainer_state.json").exists() for d in partial.iterdir())

    _kill_when(_deepalign(*args, "--out", str(run)), checkpoint_16)
    assert not run.exists()  # written atomically: nothing until the end
    again = subprocess.run(_deepalign(*args, "--out", str(run)), env=ENV, capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume" in again.stderr and partial.is_dir()  # never discarded silently
    _run(_deepalign(*args, "--out", str(run), "--resume"))
    a = json.loads((ref / "deepalign_train.json").read_text())["loss_curve"]
    b = json.loads((run / "deepalign_train.json").read_text())["loss_curve"]
    assert a == b
    from safetensors.torch import load_file

    wa, wb = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


RESUME_WITHOUT_RECOMPUTING = """
import sys
from deepalign.training.constrained import ConstrainedTrainer

def refuse(self, *a, **k):
    raise AssertionError("the reference log-probs were recomputed on resume")

ConstrainedTrainer._compute_reference = refuse
from deepalign.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill9_during_constrained_training_then_resume(world_dir, base_model_dir, tmp_path):
    """The constrained objective: a run killed mid-way and resumed ends with the uninterrupted
    run's weights; the reference log-probs are stored with the checkpoints and read back (the
    resumed process is not allowed to recompute them)."""
    args = ["train", "--recipe", "sft", "--objective", "constrained", "--world", str(world_dir), "--model",
            str(base_model_dir), "--max-steps", "12", "--per_device_train_batch_size", "4", "--save-steps", "3",
            "--quiet"]
    ref, run = _uninterrupted_and_killed(args, tmp_path)
    assert (run / "checkpoints" / "reference_logps.safetensors").is_file()
    done = subprocess.run([sys.executable, "-c", RESUME_WITHOUT_RECOMPUTING, *args, "--out", str(run), "--resume"],
                          env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    _same_final_weights(ref, run, 12)
