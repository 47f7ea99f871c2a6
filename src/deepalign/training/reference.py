"""The fine-tuning attack setup of Qi et al. 2025 (``deepalign train --recipe sft|identity-shift
--reference_setup``).

"Safety Alignment Should Be Made More Than Just a Few Tokens Deep" (arXiv 2406.05946), code
Unispac/shallow-vs-deep-alignment: its README's fine-tuning attack on Llama-2-7B-Chat (100
harmful examples, ``--dataset_name='pure_bad'``, plain SFT and the constrained ``soft_sft``) runs
``finetune.py`` with ``--learning_rate=2e-5 --per_device_train_batch_size=16
--gradient_accumulation_steps=1 --num_train_epochs=25 --use_warmup=True`` on 4 processes
(``accelerate launch --num_processes 4``: 64 examples per optimizer step); ``finetune.py`` sets
``training_args.adam_beta1 = 0.5`` for every run but its data-augmentation one and, with
``--use_warmup``, ``training_args.warmup_steps = 10``; its ``max_seq_length`` defaults to 512;
the rest is ``TrainingArguments``' own defaults (AdamW, linear schedule, no weight decay,
gradient clipping at 1.0). Its constrained objective's knobs (``--beta 0.1 --bias_factor 20
--first_token_bias_factor 5 --bias_length 5``) are already deepalign's defaults.

Without ``--reference_setup`` the recipes keep deepalign's Trainer defaults (``DeRTaConfig``:
2 epochs, cosine, 3% warm-up, AdamW beta1 0.9), which are not the reference's. The reference's
benign fine-tuning runs (``sql_create_context``, ``samsum``, ``gsm8k``) use the same settings
with ``--num_train_epochs=3``.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import Any

# Unispac/shallow-vs-deep-alignment README.md, "Fine-tuning Attacks", finetune.py command line
LEARNING_RATE = 2e-5  # --learning_rate=2e-5
NUM_TRAIN_EPOCHS = 25  # --num_train_epochs=25
PER_DEVICE_TRAIN_BATCH_SIZE = 16  # --per_device_train_batch_size=16
PROCESSES = 4  # accelerate launch --num_processes 4 (and --gradient_accumulation_steps=1)
TOTAL_BATCH = PER_DEVICE_TRAIN_BATCH_SIZE * PROCESSES  # 64 examples per optimizer step
# Unispac/shallow-vs-deep-alignment finetune.py
ADAM_BETA1 = 0.5  # training_args.adam_beta1 = 0.5 (the fine-tuning attack experiments)
WARMUP_STEPS = 10  # if args.use_warmup: training_args.warmup_steps = 10
MAX_LENGTH = 512  # ScriptArguments.max_seq_length default
# what finetune.py leaves to transformers' TrainingArguments defaults (its README pins 4.40.2)
LR_SCHEDULER_TYPE = "linear"
WEIGHT_DECAY = 0.0
ADAM_BETA2 = 0.999
ADAM_EPSILON = 1e-8
MAX_GRAD_NORM = 1.0

#: the Trainer settings of the setup, by their Hugging Face names (the gradient accumulation is
#: derived from the processes: :func:`reference_settings`)
SETTINGS: dict[str, Any] = {
    "learning_rate": LEARNING_RATE, "num_train_epochs": NUM_TRAIN_EPOCHS,
    "per_device_train_batch_size": PER_DEVICE_TRAIN_BATCH_SIZE, "adam_beta1": ADAM_BETA1,
    "warmup_steps": WARMUP_STEPS, "max_length": MAX_LENGTH, "lr_scheduler_type": LR_SCHEDULER_TYPE,
    "weight_decay": WEIGHT_DECAY, "adam_beta2": ADAM_BETA2, "adam_epsilon": ADAM_EPSILON,
    "max_grad_norm": MAX_GRAD_NORM,
}
#: the constrained objective's knobs in the reference (finetune.py ScriptArguments defaults and
#: the README's soft_sft command: --beta=0.1 --bias_factor=20 --first_token_bias_factor=5
#: --bias_length=5), deepalign's TrainOptions defaults too
CONSTRAINED = {"beta": 0.1, "bias_factor": 20.0, "first_token_bias_factor": 5.0, "bias_length": 5}


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)  # a SchedulerType / IntervalStrategy as its name


def world_size() -> int:
    """The processes of this launch (torchrun / ``accelerate launch`` set ``WORLD_SIZE``)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def reference_settings(processes: int = 1, per_device: int = PER_DEVICE_TRAIN_BATCH_SIZE) -> dict[str, Any]:
    """:data:`SETTINGS` plus the gradient accumulation that makes ``processes`` x
    ``per_device`` x accumulation the reference's 64 examples per step (1 when that is not a
    whole number: the caller says so)."""
    accumulation = TOTAL_BATCH // (per_device * processes) if TOTAL_BATCH % (per_device * processes) == 0 else 1
    return {**SETTINGS, "gradient_accumulation_steps": max(1, accumulation)}


def apply_reference_setup(args, processes: int | None = None):
    """``(args, applied, kept, note)``: ``args`` (a ``DeRTaConfig``) with the reference's value
    for every setting still at deepalign's default; ``applied`` the values set, ``kept`` the
    settings given with another value (they win), ``note`` a line when the batch per step is
    not the reference's 64."""
    from deepalign.training.trainer import DeRTaConfig

    processes = processes or world_size()
    defaults = {f.name: f.default for f in fields(DeRTaConfig) if f.init}
    per_device = args.per_device_train_batch_size
    wanted = reference_settings(processes, per_device)
    applied, kept = {}, {}
    for name, value in wanted.items():
        current = _plain(getattr(args, name))
        if current == _plain(defaults.get(name)):
            if current != value:
                applied[name] = value
        elif current != value:
            kept[name] = current
    new = replace(args, **applied) if applied else args
    per_step = new.per_device_train_batch_size * new.gradient_accumulation_steps * processes
    note = None
    if per_step != TOTAL_BATCH:
        note = (f"{per_step} examples per optimizer step ({processes} process(es) x {new.per_device_train_batch_size} x "
                f"{new.gradient_accumulation_steps} accumulated); the reference's is {TOTAL_BATCH} (4 x 16)")
    return new, applied, kept, note
