"""Several training processes on CPU through ``accelerate launch``, each against one process on
the same global batch (so gradients were synchronised and normalised over both processes):

- DDP: two processes (gloo), one final model written once, equal to one process.
- DeepSpeed ZeRO-3 with the shipped config (``src/deepalign/configs/deepspeed_zero3.yaml``):
  DeepSpeed's CPU accelerator talks gloo, so ZeRO runs on CPU processes; same loss per step and
  same weights as one process (the parameters are gathered for the final save). Runs where
  DeepSpeed is installed (``pip install -e '.[deepspeed]'``), skips otherwise.
- FSDP with the shipped config: accelerate applies FSDP only to GPU processes, so on CPU it is
  refused in one line instead of silently training as DDP.

accelerate 1.x runs ``--cpu --num_processes N`` as a single process unless an MPI hostfile is
given; ``--multi_gpu`` starts N processes with torchrun, and on a machine without CUDA
deepalign puts them on CPU with the gloo backend."""

from __future__ import annotations

import json

import pytest
import torch

from launch import CONFIGS, explain, launch

TRAIN = ["train", "--recipe", "derta", "--max-steps", "2", "--per_device_train_batch_size", "4",
         "--gradient_accumulation_steps", "2", "--save-steps", "1", "--logging_steps", "1", "--quiet"]


@pytest.fixture(scope="module")
def one_process(world_dir, base_model_dir, tmp_path_factory):
    """The reference: one process on the same global batch (8 sequences x 2 accumulation steps)."""
    from deepalign.training.finetune import train

    return train(recipe="derta", world=str(world_dir), model_name_or_path=str(base_model_dir),
                 output_dir=str(tmp_path_factory.mktemp("one") / "one"), max_steps=2, per_device_train_batch_size=8,
                 gradient_accumulation_steps=2, save_steps=10, logging_steps=1, quiet=True)


def _same_model_as_one_process(out, one_process, base_model_dir, proc) -> None:
    from safetensors.torch import load_file

    info = json.loads((out / "deepalign_train.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 2, explain(proc)
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert not (out / "checkpoints").exists() and not list(out.glob(".final-*"))
    one_info = json.loads((one_process / "deepalign_train.json").read_text())
    losses = [[h["loss"] for h in i["loss_curve"] if "loss" in h] for i in (info, one_info)]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-4), losses
    a, b = load_file(str(out / "model.safetensors")), load_file(str(one_process / "model.safetensors"))
    base = load_file(str(base_model_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], base[k]) for k in b)
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    for k in set(a) - set(b):  # a tied output layer that a gathered state dict names again
        assert k == "lm_head.weight" and torch.equal(a[k], b["model.embed_tokens.weight"])


def test_two_cpu_processes_train_and_save_once(world_dir, base_model_dir, one_process, tmp_path):
    out = tmp_path / "ddp"
    proc = launch([*TRAIN, "--world", str(world_dir), "--model", str(base_model_dir), "--out", str(out)], tmp_path,
                  timeout=300)
    assert proc.returncode == 0, explain(proc)
    _same_model_as_one_process(out, one_process, base_model_dir, proc)


def test_deepspeed_zero3_config_on_two_cpu_processes(world_dir, base_model_dir, one_process, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install -e '.[deepspeed]'")
    out = tmp_path / "zero3"
    proc = launch([*TRAIN, "--world", str(world_dir), "--model", str(base_model_dir), "--out", str(out)], tmp_path,
                  launcher=["--config_file", str(CONFIGS / "deepspeed_zero3.yaml")], timeout=300)
    assert proc.returncode == 0, explain(proc)
    _same_model_as_one_process(out, one_process, base_model_dir, proc)


def test_fsdp_config_on_cpu_processes_is_refused(world_dir, base_model_dir, tmp_path):
    out = tmp_path / "fsdp"
    proc = launch([*TRAIN, "--world", str(world_dir), "--model", str(base_model_dir), "--out", str(out)], tmp_path,
                  launcher=["--config_file", str(CONFIGS / "fsdp.yaml")], timeout=300)
    assert proc.returncode != 0 and not out.exists(), explain(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("deepalign: error: ")]
    assert errors and set(errors) == {"deepalign: error: the FSDP config needs GPUs: accelerate applies FSDP only to "
                                      "GPU processes, so these CPU processes would train as plain data parallel "
                                      "without sharding; on CPU launch with --multi_gpu (DDP) or a DeepSpeed config "
                                      "instead"}, explain(proc)


def test_constrained_objective_under_two_processes(world_dir, base_model_dir, tmp_path):
    """The constrained objective: the reference log-probs are computed by both processes (each
    its share) and gathered, the loss is normalised over both processes' response tokens: one
    process on the same global batch gives the same weights."""
    from safetensors.torch import load_file

    from deepalign.training.finetune import train

    args = ["train", "--recipe", "sft", "--objective", "constrained", "--world", str(world_dir), "--model",
            str(base_model_dir), "--max-steps", "2", "--per_device_train_batch_size", "4",
            "--gradient_accumulation_steps", "2", "--save-steps", "1", "--learning_rate", "1e-3", "--quiet"]
    out = tmp_path / "ddp"
    proc = launch([*args, "--out", str(out)], tmp_path, timeout=300)
    assert proc.returncode == 0, explain(proc)
    assert json.loads((out / "deepalign_train.json").read_text())["world_size"] == 2, explain(proc)
    one = train(recipe="sft", objective="constrained", world=str(world_dir), model_name_or_path=str(base_model_dir),
                output_dir=str(tmp_path / "one"), max_steps=2, per_device_train_batch_size=8,
                gradient_accumulation_steps=2, save_steps=10, learning_rate=1e-3, quiet=True)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(one / "model.safetensors"))
    assert any(not torch.equal(b[k], v) for k, v in load_file(str(base_model_dir / "model.safetensors")).items())
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
