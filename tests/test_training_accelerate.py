"""Two DDP processes on CPU (gloo) through ``accelerate launch``: one final model written once,
equal to a single-process run on the same global batch (so gradients were synchronised and
normalised over both processes).

accelerate 1.x runs ``--cpu --num_processes N`` as a single process unless an MPI hostfile is
given; ``--multi_gpu`` starts N processes with torchrun, and on a machine without CUDA
deepalign puts them on CPU with the gloo backend."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _launch(tmp_path, out, train_args):
    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate CLI not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", "-m", "deepalign", "train",
           *train_args, "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "deepalign_train.json").read_text())
    assert info["world_size"] == 2 and (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert not (out / "checkpoints").exists() and not list(out.glob(".final-*"))
    return info


def _same_weights(a_dir, b_dir, base_dir):
    from safetensors.torch import load_file

    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    base = load_file(str(base_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], base[k]) for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


def test_two_cpu_processes_train_and_save_once(world_dir, base_model_dir, tmp_path):
    out = tmp_path / "ddp"
    info = _launch(tmp_path, out, ["--recipe", "derta", "--world", str(world_dir), "--model", str(base_model_dir),
                                   "--max-steps", "2", "--per_device_train_batch_size", "4",
                                   "--gradient_accumulation_steps", "2", "--save-steps", "1"])
    assert info["steps"] == 2
    from deepalign.training.finetune import train

    single = train(recipe="derta", world=str(world_dir), model_name_or_path=str(base_model_dir),
                   output_dir=str(tmp_path / "one"), max_steps=2, per_device_train_batch_size=8,
                   gradient_accumulation_steps=2, save_steps=10, quiet=True)
    _same_weights(out, single, base_model_dir)


def test_constrained_objective_under_two_processes(world_dir, base_model_dir, tmp_path):
    """The reference log-probs are computed by both processes (each its share) and gathered;
    the loss is normalised over both processes' response tokens: one process on the same
    global batch gives the same weights."""
    out = tmp_path / "ddp"
    _launch(tmp_path, out, ["--recipe", "sft", "--objective", "constrained", "--world", str(world_dir), "--model",
                            str(base_model_dir), "--max-steps", "2", "--per_device_train_batch_size", "4",
                            "--gradient_accumulation_steps", "2", "--save-steps", "1", "--learning_rate", "1e-3"])
    from deepalign.training.finetune import train

    single = train(recipe="sft", objective="constrained", world=str(world_dir), model_name_or_path=str(base_model_dir),
                   output_dir=str(tmp_path / "one"), max_steps=2, per_device_train_batch_size=8,
                   gradient_accumulation_steps=2, save_steps=10, learning_rate=1e-3, quiet=True)
    _same_weights(out, single, base_model_dir)
