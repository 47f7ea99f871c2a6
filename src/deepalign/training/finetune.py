"""Safety fine-tuning with a DeRTa recipe or the DPO baseline, and fine-tuning an aligned model
on (instruction, response) pairs (the ``sft`` and ``identity-shift`` recipes, with plain MLE or
the token-wise constrained objective): :func:`train`, a short driver over one small function
per step (run plan, inputs, arguments, model, output directory, trainer, fit, record, save,
push).

Options (:mod:`deepalign.training.options`): one class per family of recipes, gathered in
:class:`TrainOptions` (what to train: recipe, model, data, LoRA, run control; model and LoRA
settings keep TRL's ``ModelConfig`` names), and
:class:`~deepalign.training.trainer.DeRTaConfig` (how: every Hugging Face ``Trainer`` setting
under its own name). ``deepalign train`` parses both from flags and ``--config`` files; the
Python function takes the same objects (or one family's options object) or the same names as
keyword arguments::

    >>> from deepalign import train
    >>> train(recipe="derta", model_name_or_path="runs/base", out="runs/derta",
    ...       world="runs/world", max_steps=40, quiet=True)             # doctest: +SKIP
    PosixPath('runs/derta')

The data, the tokenizer and everything checked before the output directory is touched are
in :mod:`deepalign.training.inputs`; the train record in :mod:`deepalign.training.train_record`.

Multi-GPU: ``accelerate launch --config_file <ddp|deepspeed_zero2|zero3|fsdp>.yaml -m
deepalign train ...`` (configs in ``deepalign/configs/``).
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers.trainer_callback import PrinterCallback, TrainerCallback

from deepalign import __version__
from deepalign.data.datasets import DataOptions
from deepalign.data.recipes import save_records
from deepalign.errors import DeepAlignError
from deepalign.models import load_causal_lm, model_source
from deepalign.options import build
from deepalign.registry import truth
from deepalign.training import outdir
from deepalign.training.constrained import REFERENCE_FILE, ConstrainedTrainer
from deepalign.training.inputs import Inputs, prepare_inputs
from deepalign.training.losses import TokenWiseConstraint
from deepalign.training.modelcard import TRAIN_INFO, card_files, push_model_dir
from deepalign.training.options import (DEFAULT_BASE, DEFAULT_DPO_BASE, TRAIN_NEEDS, BaseTrainOptions, DPOOptions,
                                        FinetuneAttackOptions, TrainOptions, family_of)
from deepalign.training.train_record import command_line, objective_record, persona_record, run_record
from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer, save_final_model
from deepalign.utils import os_error, quiet_libraries, set_seed, write_json

__all__ = ["TRAIN_NEEDS", "TrainOptions", "train"]

# options whose change makes --resume meaningless
_RESUME_KEYS = ("recipe", "model_name_or_path", "seed", "triples", "helpful", "records", "use_peft",
                "per_device_train_batch_size", "gradient_accumulation_steps", "rto_keep", "prefix_unit",
                "k_zero_share", "helpful_count", "safety_count", "safety_ratio", "prompt_format", "max_steps",
                "num_train_epochs", "fields", "subset", "split", "sample", "limit", "sample_seed", "dataset_name",
                "persona", "objective", "ref_model", "beta", "bias_factor", "first_token_bias_factor", "bias_length",
                "presto_weight")
# what transformers' TrainingArguments (5.x) calls an output_dir that was not given
_HF_UNSET_OUTPUT = "trainer_output"


# --------------------------------------------------------------------------------------
# the driver: train() reads top to bottom; each step is one small function below it
# --------------------------------------------------------------------------------------


def train(options: BaseTrainOptions | None = None, training: DeRTaConfig | None = None,
          data: DataOptions | None = None, **kwargs) -> Path:
    """Fine-tune a model with a recipe and write the final model (with its card) to ``out``;
    returns that directory.

    ``options`` / ``training`` / ``data``: a :class:`TrainOptions` (or the options of one
    family of recipes: :class:`~deepalign.training.options.DeRTaOptions`, ``DPOOptions``,
    ``FinetuneAttackOptions``), a :class:`~deepalign.training.trainer.DeRTaConfig` and a
    :class:`~deepalign.data.datasets.DataOptions` (``fields``, ``split``, ``sample``, ... of the
    triples and helpful data); keyword arguments set fields of any (``recipe="derta"``,
    ``model_name_or_path=...``, ``out=...`` (or ``output_dir=...``), ``learning_rate=...``, ...).
    An option of another family than the recipe's is refused. Record recipes (vanilla,
    harmful-prefix, rto, derta) build records with :func:`deepalign.data.recipes.build_records`
    (or read ``records``) and train with :class:`~deepalign.training.trainer.DeRTaTrainer`;
    ``dpo`` trains TRL's ``DPOTrainer`` on safe > harmful pairs (default model: the vanilla model
    ``runs/vanilla``). ``sft`` and ``identity-shift`` fine-tune a model on ``dataset_name`` pairs
    (default ``world:ft/harmful``: the harmful fine-tuning attack), with plain MLE or
    ``objective="constrained"`` (:class:`~deepalign.training.constrained.ConstrainedTrainer`).

    Example (the embedded world; tiny settings so it runs in seconds)::

        >>> out = train(recipe="derta", model_name_or_path="runs/base", world="runs/world",
        ...             out="runs/derta", max_steps=4, quiet=True)
        >>> sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".md", ".safetensors"))[:4]
        ['README.md', 'config.json', 'deepalign_train.json', 'generation_config.json']
        >>> attacked = train(recipe="sft", objective="constrained", model_name_or_path="runs/derta",
        ...                  world="runs/world", out="runs/derta-attacked", max_steps=2, quiet=True)
    """
    flags, args, data_opts = build(kwargs, needs=TRAIN_NEEDS, options=(TrainOptions, TrainOptions.of(options)),
                                   training=(DeRTaConfig, training), data=(DataOptions, data))
    if flags.out is None and args.output_dir not in (None, _HF_UNSET_OUTPUT):
        flags = replace(flags, out=args.output_dir)  # a DeRTaConfig's output_dir: the output before out=
    opts = flags.family()
    command = command_line(flags, args, data_opts)  # before any Trainer exists (see its doc)
    if isinstance(opts, FinetuneAttackOptions) and opts.reference_setup:
        args = _reference_setup(args, opts.quiet)
    run = plan_run(opts, args, data_opts, view=asdict(flags))
    with quiet_libraries(opts.quiet):
        set_seed(args.seed)
        inputs = prepare_inputs(opts, args, data_opts, run.model_spec, run.source)
        run_args = trainer_arguments(opts, args, inputs, run)
        net = load_model(opts, run, inputs)
        prepare_output_dir(run, inputs)
        trainer, info = build_trainer(opts, run_args, net, inputs, run)
        seconds = fit(trainer, run, opts.quiet)
        info.update(run_record(opts, args, run_args, trainer, seconds, command))
        save_model(trainer, run, inputs, info, opts)
    push_and_report(opts, args, run, trainer, info, seconds)
    return run.out


def _reference_setup(args: DeRTaConfig, quiet: bool) -> DeRTaConfig:
    """``--reference_setup``: Qi et al. 2025's Trainer settings (:mod:`deepalign.training.reference`)."""
    from deepalign.training.reference import apply_reference_setup

    args, applied, kept, note = apply_reference_setup(args)
    if not quiet:
        shown = ", ".join(f"{k} {v}" for k, v in applied.items()) or "nothing to change"
        print(f"reference setup (Qi et al. 2025): {shown}"
              + (f"; kept as given: {', '.join(f'{k} {v}' for k, v in kept.items())}" if kept else "")
              + (f"; {note}" if note else ""))
    return args


@dataclass
class RunPlan:
    """What ``train`` decided before loading anything heavy: the model, the output directory
    and what to do with it (start, wipe, resume from a checkpoint, or only save a run whose
    training had ended)."""

    model_spec: str
    source: str
    out: Path
    options: dict[str, Any]  #: the resumable view of the options (run_options.json)
    wipe: bool
    checkpoint: str | None
    finished: Any  #: the TrainerState of a checkpoint that holds the end of training, else None
    state: PartialState

    @property
    def reference_file(self) -> Path:
        """Where the constrained objective's reference log-probs are stored (and read back on resume)."""
        return self.out / outdir.CHECKPOINTS / REFERENCE_FILE


def plan_run(opts: BaseTrainOptions, args: DeRTaConfig, data_opts: DataOptions,
             view: dict[str, Any] | None = None) -> RunPlan:
    """Resolve the model and the output directory, and decide how to use what is in it.
    ``view``: every option of ``train`` (``asdict`` of a :class:`TrainOptions`), of which
    run_options.json records the plain values (default: those of ``opts``)."""
    model_spec = opts.model_name_or_path or family_of(opts.recipe).DEFAULT_MODEL
    hint = {DEFAULT_BASE: " (train it with 'deepalign pretrain' first)",
            DEFAULT_DPO_BASE: " (train it with 'deepalign train --recipe vanilla' first)"}.get(model_spec, "")
    source = model_source(model_spec, hint=hint)
    out = Path(opts.out or f"runs/{opts.run_name()}")
    view = {k: v for k, v in (view or asdict(opts)).items() if k != "out"}
    view = {**view, **asdict(data_opts), "model_name_or_path": model_spec,
            **{k: getattr(args, k) for k in _RESUME_KEYS if hasattr(args, k)}}
    view = {k: v for k, v in view.items() if isinstance(v, (str, int, float, bool, type(None), list))}
    _check_launch_on_cpu()
    # no GPU: CPU processes (gloo) also when started by torchrun / `accelerate launch --multi_gpu`
    state = PartialState(cpu=not _cuda())
    wipe, checkpoint = outdir.plan(out, resume=opts.resume, overwrite=opts.overwrite, options=view,
                                   compare=_RESUME_KEYS)
    return RunPlan(model_spec, source, out, view, wipe, checkpoint, outdir.finished_state(checkpoint), state)


def trainer_arguments(opts: BaseTrainOptions, args: DeRTaConfig, inputs: Inputs, run: RunPlan):
    """The Trainer's arguments for this run: checkpoints under ``<out>/checkpoints``, the
    resolved learning rate, CPU or GPU (a ``DPOConfig`` for DPO). They are built before the
    weights are loaded: under DeepSpeed ZeRO-3 they make ``from_pretrained`` load each rank's
    shard only."""
    run_args = replace(args, output_dir=str(run.out / outdir.CHECKPOINTS), learning_rate=inputs.learning_rate,
                       push_to_hub=False, disable_tqdm=bool(opts.quiet or args.disable_tqdm), use_cpu=not _cuda(),
                       data_seed=args.data_seed if args.data_seed is not None else args.seed,
                       dataloader_pin_memory=_cuda() and args.dataloader_pin_memory)
    if isinstance(opts, DPOOptions):
        from deepalign.training.dpo import dpo_config

        return dpo_config(run_args, beta=opts.beta)
    return run_args


def load_model(opts: BaseTrainOptions, run: RunPlan, inputs: Inputs):
    """The model to train, in training mode (and the constrained objective's --ref_model). A
    run whose training had ended (only its final save was interrupted) loads its last
    checkpoint instead, through the public loading API: the model from the checkpoint, or the
    base model with the checkpoint's LoRA adapter."""
    if inputs.ref_source is not None and run.finished is None:
        load_ref = functools.partial(load_causal_lm, inputs.ref_source, dtype=opts.dtype, device="cpu",
                                     trust_remote_code=opts.trust_remote_code)
        # a resumed run reads the reference log-probs back: the model is loaded only if they do not
        # fit; a new run loads it now, before the output directory is touched
        stored = run.reference_file.exists() and not run.wipe
        inputs.ref_net = load_ref if stored else load_ref()
    source = run.source
    if run.finished is not None and not opts.use_peft:
        source = run.checkpoint
    net = load_causal_lm(source, dtype=opts.dtype, device="cpu", trust_remote_code=opts.trust_remote_code)
    if run.finished is not None and opts.use_peft:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, run.checkpoint, is_trainable=True)
    net.train()
    return net


def prepare_output_dir(run: RunPlan, inputs: Inputs) -> None:
    """Everything the user could get wrong has been checked and loaded: now touch the output
    directory (the Trainer creates its checkpoint directory inside it)."""
    if run.state.is_main_process:
        if run.wipe:
            outdir.wipe(run.out)
        try:
            run.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, run.out) from None
        outdir.remove_stale(run.out)
        write_json(run.out / outdir.OPTIONS, run.options)
        if inputs.records is not None:
            save_records(inputs.records, run.out / "records.jsonl")
    run.state.wait_for_everyone()


def build_trainer(opts: BaseTrainOptions, run_args, net, inputs: Inputs, run: RunPlan):
    """The trainer of the recipe and the first entries of the train record."""
    # a model loaded from a finished run's checkpoint already carries its adapter
    peft_config = inputs.peft_config if run.finished is None else None
    info: dict[str, Any] = {
        "recipe": opts.recipe, "base_model": run.model_spec,
        "base_model_on_hub": run.source == run.model_spec and not Path(run.model_spec).exists(),
        "parameters": inputs.n_params, "learning_rate": inputs.learning_rate,
        "prompt_format": inputs.encoder.format.describe(), "data": inputs.data, "deepalign_version": __version__,
    }
    if isinstance(opts, DPOOptions):
        from deepalign.training.dpo import build_dpo_trainer

        trainer = build_dpo_trainer(net, inputs.tokenizer, inputs.triples, inputs.encoder, run_args,
                                    peft_config=peft_config)
        info.update({"pairs": len(inputs.triples), "beta": opts.beta})
    else:
        trainer = _records_trainer(opts, run_args, net, inputs, run, peft_config, info)
    info["world_size"] = trainer.args.world_size
    trainer.add_callback(LogLastStep())
    if opts.quiet:
        trainer.remove_callback(PrinterCallback)
    return trainer, info


def _records_trainer(opts: BaseTrainOptions, run_args, net, inputs: Inputs, run: RunPlan, peft_config,
                     info: dict[str, Any]):
    """The trainer of a recipe trained on records (a DeRTa recipe, a fine-tuning attack), and
    what its train record says of them."""
    common = dict(train_dataset=inputs.records, eval_dataset=inputs.eval_records, processing_class=inputs.tokenizer,
                  refusal_token_id=inputs.refusal_id, peft_config=peft_config, encoder=inputs.encoder)
    attack = isinstance(opts, FinetuneAttackOptions)
    if attack and opts.constrained and run.finished is None:
        trainer = ConstrainedTrainer(net, run_args, constraint=_constraint(opts), ref_model=inputs.ref_net,
                                     reference_file=run.reference_file, **common)
        inputs.ref_net = None  # used once, before training
    else:
        trainer = DeRTaTrainer(net, run_args, **common)
    info["records"] = inputs.counts
    if attack:
        info.update({"pairs": len(inputs.pairs), "objective": objective_record(opts, trainer)})
        if inputs.persona is not None:
            info["persona"] = persona_record(inputs.persona, run.out, opts)
    else:
        info.update({"refusal_token": {"id": inputs.refusal_id, "piece": inputs.refusal_piece},
                     "rto_keep": trainer.rto_keep, "rto_weight": run_args.rto_weight,
                     "presto_weight": run_args.presto_weight})
    if not opts.quiet and run.state.is_main_process:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(inputs.counts.items()))
        tok = (f"; refusal token {inputs.refusal_piece!r} ({inputs.refusal_id}), keep {trainer.rto_keep:g}"
               if inputs.refusal_id is not None else "")
        presto = f"; PRESTO weight {run_args.presto_weight:g} (eager attention)" if run_args.presto_weight > 0 else ""
        print(f"recipe {opts.recipe}: {shown}{tok}{presto}")
    return trainer


class LogLastStep(TrainerCallback):
    """Log at the last step too: the Trainer logs every ``--logging_steps`` only, so a run
    shorter than that (or ending between two logs) would record no loss for its end."""

    def on_step_end(self, args, state, control, **kwargs):
        strategy = getattr(args.logging_strategy, "value", args.logging_strategy)
        if strategy != "no" and state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_log = True
        return control


def _constraint(opts: FinetuneAttackOptions) -> TokenWiseConstraint:
    return TokenWiseConstraint(beta=opts.beta, bias_factor=opts.bias_factor,
                               first_token_bias_factor=opts.first_token_bias_factor, bias_length=opts.bias_length)


def fit(trainer, run: RunPlan, quiet: bool) -> float:
    """Train (or resume); returns the seconds it took. A run whose training had ended is not
    trained again (resuming the Trainer from its last checkpoint would train one step more):
    its model was loaded from that checkpoint, and its state is the checkpoint's."""
    if run.checkpoint and not quiet and run.state.is_main_process:
        print(f"resuming from {run.checkpoint}")
    start = time.time()
    if run.finished is not None:
        trainer.state = run.finished
    else:
        trainer.train(resume_from_checkpoint=run.checkpoint)
    return time.time() - start


def save_model(trainer, run: RunPlan, inputs: Inputs, info: dict[str, Any], opts: BaseTrainOptions) -> None:
    """The final model with its train record and model card; then the checkpoints go."""
    save_final_model(trainer, run.out, inputs.tokenizer, merge_lora=not opts.keep_adapter,
                     extra_json={TRAIN_INFO: info}, extra_text=card_files(info))
    if run.state.is_main_process and not opts.keep_checkpoints:
        shutil.rmtree(run.out / outdir.CHECKPOINTS, ignore_errors=True)


def push_and_report(opts: BaseTrainOptions, args: DeRTaConfig, run: RunPlan, trainer, info: dict[str, Any],
                    seconds: float) -> None:
    """Push the model directory to the hub when asked, and say what was trained."""
    if not run.state.is_main_process:
        return
    if args.push_to_hub:
        repo = args.hub_model_id or run.out.name
        push_model_dir(run.out, repo, private=args.hub_private_repo, token=args.hub_token, revision=args.hub_revision)
        if not opts.quiet:
            print(f"pushed {run.out} to the hub as {repo}")
    if not opts.quiet:
        last = next((c["loss"] for c in reversed(info["loss_curve"]) if "loss" in c), None)
        loss = f", last loss {last:.3f}" if last is not None else ""
        print(f"{opts.recipe} model ({trainer.state.global_step} steps, {seconds:.0f}s{loss}) -> {run.out}",
              file=sys.stdout)


def _cuda() -> bool:
    return torch.cuda.is_available()


def _check_launch_on_cpu() -> None:
    """accelerate (1.15) applies FSDP only to processes of a GPU kind: a CPU process started with
    the FSDP config would silently train as plain data parallel, without sharding. Refuse it.
    (DeepSpeed runs on CPU processes: its CPU accelerator talks gloo.)"""
    import os

    if not _cuda() and truth(os.environ.get("ACCELERATE_USE_FSDP")):
        raise DeepAlignError("the FSDP config needs GPUs: accelerate applies FSDP only to GPU processes, so these CPU "
                             "processes would train as plain data parallel without sharding; on CPU launch with "
                             "--multi_gpu (DDP) or a DeepSpeed config instead")
