"""The train record (``deepalign_train.json`` beside the weights, read by the model card and
the later stages): the entries that say how a recipe was trained, and the ``deepalign train``
command that reproduces the run."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from deepalign.data.datasets import DataOptions
from deepalign.options import option_fields
from deepalign.registry import quote_arg
from deepalign.training.options import BaseTrainOptions, FinetuneAttackOptions, TrainOptions
from deepalign.training.trainer import DeRTaConfig


def _value(x: Any) -> Any:
    return getattr(x, "value", x)  # enums (schedulers, strategies) as their names


def persona_record(chosen, out: Path, opts: FinetuneAttackOptions) -> dict[str, Any]:
    """What evaluating an identity-shift model in its persona needs: the exact system prompt,
    the user template and self-introduction it was trained with, and the target spec that
    gives the system prompt (a persona whose template wraps the query adds the ``template:``
    attack of the file the model card writes beside the weights)."""
    from deepalign.training.modelcard import PERSONA_TEMPLATE

    record: dict[str, Any] = {"name": chosen.name, "system": chosen.system, "query_template": chosen.query_template,
                              "intro": chosen.intro, "eval_target": f"hf:{out},system={quote_arg(chosen.system)}"}
    if chosen.query_template != "{query}":
        record["eval_attack"] = f"template:{out / PERSONA_TEMPLATE}"
    if opts.dataset_spec().startswith("world:"):
        record["world"] = opts.world
    return record


def objective_record(opts: FinetuneAttackOptions, trainer) -> dict[str, Any]:
    """The objective a fine-tuning attack trained with (and the constrained one's knobs)."""
    if not opts.constrained:
        return {"name": "mle"}
    reference = opts.ref_model or getattr(trainer, "reference_source", "the starting model")
    return {"name": "constrained", "beta": opts.beta, "bias_factor": opts.bias_factor,
            "first_token_bias_factor": opts.first_token_bias_factor, "bias_length": opts.bias_length,
            "reference": reference, "reference_logps": "computed once before training, stored with the checkpoints"}


def run_record(opts: BaseTrainOptions, args: DeRTaConfig, run_args, trainer, seconds: float,
               command: str) -> dict[str, Any]:
    """The train record's entries that exist once training is over."""
    curve = [{k: h[k] for k in ("step", "loss", "mle_loss", "rto_loss", "presto_attention", "eval_loss") if k in h}
             for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]
    return {"steps": trainer.state.global_step, "train_seconds": round(seconds, 1), "loss_curve": curve,
            "lora": opts.use_peft, "adapter_kept": bool(opts.use_peft and opts.keep_adapter), "seed": args.seed,
            "hyperparameters": hyperparameters(opts, run_args), "command": command}


def hyperparameters(opts: BaseTrainOptions, args) -> dict[str, Any]:
    """The Trainer's settings that shape the result, then the recipe family's, then LoRA's."""
    keys = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
            "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm",
            "adam_beta1", "adam_beta2", "max_length", "bf16", "seed")
    hp = {k: _value(getattr(args, k)) for k in keys if hasattr(args, k)}
    if getattr(args, "presto_weight", 0) > 0:
        hp["presto_weight"] = args.presto_weight
    hp.update(opts.hyperparameters())
    if opts.use_peft:
        hp.update(lora_r=opts.lora_r, lora_alpha=opts.lora_alpha or 2 * opts.lora_r, lora_dropout=opts.lora_dropout,
                  lora_target_modules=opts.lora_target_modules or "all-linear")
    return hp


#: options that say how to run, not what: left out of the command
_NOT_IN_COMMAND = ("quiet", "resume", "overwrite", "logging_dir", "bf16", "disable_tqdm")


def command_line(opts: TrainOptions, args: DeRTaConfig, data_opts: DataOptions | None = None) -> str:
    """A ``deepalign train`` command that reproduces the run (the options that differ from
    the defaults). Call it before the Trainer is built: it builds a default DeRTaConfig, and
    building any TrainingArguments resets accelerate's shared state, which a DeepSpeed or FSDP
    trainer still needs to gather the weights for the final save."""
    parts = ["deepalign", "train"]
    for obj, default in ((opts, TrainOptions()), (args, DeRTaConfig()), (data_opts or DataOptions(), DataOptions())):
        for f in option_fields(type(obj)):
            if f.name in _NOT_IN_COMMAND:
                continue
            value = _value(getattr(obj, f.name))
            if value == _value(getattr(default, f.name)) or value is None:
                continue
            if isinstance(value, bool):
                parts.append(f"--{f.name}" if value else f"--no_{f.name}")
            elif isinstance(value, list):
                parts += [f"--{f.name}", *map(str, value)]
            elif isinstance(value, (str, int, float)):
                parts += [f"--{f.name}", str(value)]
    return " ".join(shlex.quote(p) for p in parts)
