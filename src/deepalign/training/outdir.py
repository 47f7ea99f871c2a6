"""The layout and life cycle of a training output directory.

::

    out/
      config.json, model.safetensors, tokenizer files    the final model (written last)
      deepalign_train.json, README.md                    training record and model card
      records.jsonl                                      the training records (DeRTa recipes)
      run_options.json                                   options of the run (checked on --resume)
      checkpoints/checkpoint-N/                          Trainer checkpoints while training

A finished directory has ``config.json`` (or ``adapter_config.json``). An interrupted run
leaves ``checkpoints/`` and no final model; ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from deepalign.errors import DeepAlignError

CHECKPOINTS = "checkpoints"
OPTIONS = "run_options.json"
_OURS = {"config.json", "adapter_config.json", "deepalign_train.json", "deepalign_eval.json", "README.md",
         "records.jsonl", OPTIONS, CHECKPOINTS}


def is_finished(out: Path) -> bool:
    return (out / "config.json").exists() or (out / "adapter_config.json").exists()


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that was written to the end.

    The Trainer writes a checkpoint in place and its ``trainer_state.json`` last, so a process
    killed while saving leaves a newest checkpoint without it: that one is skipped.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = []
    for d in folder.iterdir():
        step = d.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if d.name.startswith(PREFIX_CHECKPOINT_DIR + "-") and step.isdigit() and (d / "trainer_state.json").exists():
            done.append((int(step), d))
    return str(max(done)[1]) if done else None


def finished_state(checkpoint: str | None):
    """The ``TrainerState`` of ``checkpoint`` when it holds the end of training (its step is
    the run's last), else None."""
    if not checkpoint:
        return None
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    return state if state.max_steps and state.global_step >= state.max_steps else None


def last_checkpoint(out: Path) -> str | None:
    return last_complete_checkpoint(out / CHECKPOINTS)


def plan(out: Path, *, resume: bool, overwrite: bool, options: dict[str, Any], compare: tuple[str, ...]) -> tuple[bool, str | None]:
    """Decide what to do with ``out`` (read-only, so every process can call it).

    Returns ``(wipe, checkpoint)``: whether ``out`` must be emptied first, and the
    checkpoint to resume from. Raises :class:`DeepAlignError` for a finished directory
    without ``overwrite``, leftover checkpoints without ``resume``/``overwrite``, a foreign
    non-empty directory, or resuming with different data options.
    """
    if out.exists() and not out.is_dir():
        raise DeepAlignError(f"output path exists and is not a directory: {out}")
    entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
    visible = {e for e in entries if not e.startswith(".")}
    foreign = visible - _OURS
    if overwrite:
        if foreign and not (visible & _OURS):
            raise DeepAlignError(f"--overwrite refused: {out} does not look like a deepalign training directory "
                                 f"(it holds {sorted(foreign)[0]!r})")
        return bool(entries), None
    if is_finished(out):
        raise DeepAlignError(f"{out} already holds a trained model; pass --overwrite to train it again")
    if foreign:
        raise DeepAlignError(f"output directory {out} is not empty (it holds {sorted(foreign)[0]!r}); "
                             "choose another --out")
    checkpoint = last_checkpoint(out)
    if checkpoint and not resume:
        raise DeepAlignError(f"{out} has checkpoints of an unfinished run; pass --resume to continue it "
                             "or --overwrite to start over")
    if resume and (out / OPTIONS).exists():
        try:
            before = json.loads((out / OPTIONS).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = {}
        for key in compare:
            if key in before and before[key] != options.get(key):
                raise DeepAlignError(f"--resume with a different {key.replace('_', '-')} than the interrupted run "
                                     f"({before[key]!r} then, {options.get(key)!r} now); pass --overwrite to start over")
    return False, checkpoint


def wipe(out: Path) -> None:
    if out.is_dir():
        for p in out.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def remove_stale(out: Path) -> None:
    """Remove temporary final-model directories left by a run killed while saving."""
    for p in out.glob(".final-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
