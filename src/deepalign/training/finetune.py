"""Safety fine-tuning with a DeRTa recipe or the DPO baseline, and fine-tuning an aligned model
on (instruction, response) pairs (the ``sft`` and ``identity-shift`` recipes, with plain MLE or
the token-wise constrained objective): :func:`train`, a short driver over one small function
per step (run plan, inputs, arguments, model, output directory, trainer, fit, record, save,
push).

Options live in two dataclasses: :class:`TrainOptions` (what to train: recipe, model, data,
LoRA, run control; model and LoRA settings keep TRL's ``ModelConfig`` names) and
:class:`~deepalign.training.trainer.DeRTaConfig` (how: every Hugging Face ``Trainer`` setting
under its own name). ``deepalign train`` parses both from flags and ``--config`` files; the
Python function takes the same objects or the same names as keyword arguments::

    >>> from deepalign import train
    >>> train(recipe="derta", model_name_or_path="runs/base", output_dir="runs/derta",
    ...       world="runs/world", max_steps=40, quiet=True)             # doctest: +SKIP
    PosixPath('runs/derta')

Multi-GPU: ``accelerate launch --config_file <ddp|deepspeed_zero2|zero3|fsdp>.yaml -m
deepalign train ...`` (configs in ``deepalign/configs/``).
"""

from __future__ import annotations

import functools
import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.trainer_callback import PrinterCallback, TrainerCallback

from deepalign import __version__
from deepalign.data.datasets import DATA_NEEDS, DataOptions, load_train_instructions, load_train_triples
from deepalign.data.recipes import (PAIR_RECIPES, PERSONAS, PREFIX_UNITS, RECIPES, RECORD_RECIPES, build_pair_records,
                                    build_records, count_kinds, load_records, persona, save_records)
from deepalign.errors import DeepAlignError, OptionError
from deepalign.models import DTYPES, load_causal_lm, load_tokenizer, model_source
from deepalign.options import Is, Off, On, build, choice, exclusive, number
from deepalign.registry import quote_arg, split_list, truth
from deepalign.tokens import Encoder
from deepalign.training import outdir
from deepalign.training.constrained import REFERENCE_FILE, ConstrainedTrainer
from deepalign.training.losses import TokenWiseConstraint
from deepalign.training.modelcard import TRAIN_INFO, card_files, push_model_dir
from deepalign.training.refusal import find_refusal_token
from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer, save_final_model
from deepalign.utils import os_error, quiet_libraries, set_seed, write_json

DEFAULT_WORLD = "runs/world"
DEFAULT_BASE = "runs/base"
DEFAULT_DPO_BASE = "runs/vanilla"
DEFAULT_PAIRS = "world:ft/harmful"
OBJECTIVES = ("mle", "constrained")
# options whose change makes --resume meaningless
_RESUME_KEYS = ("recipe", "model_name_or_path", "seed", "triples", "helpful", "records", "use_peft",
                "per_device_train_batch_size", "gradient_accumulation_steps", "rto_keep", "prefix_unit",
                "k_zero_share", "helpful_count", "safety_count", "safety_ratio", "prompt_format", "max_steps",
                "num_train_epochs", "fields", "subset", "split", "sample", "limit", "sample_seed", "dataset_name",
                "persona", "objective", "ref_model", "beta", "bias_factor", "first_token_bias_factor", "bias_length")


@dataclass
class TrainOptions:
    """What to train (the Trainer's own settings are in ``DeRTaConfig``)."""

    recipe: str = field(default="derta", metadata={
        "help": "vanilla (q->safe), harmful-prefix (RecAug), rto, derta (prefix + RTO), dpo (safe > harmful); "
                "sft (fine-tuning on --dataset pairs: the harmful fine-tuning attack, benign fine-tuning), "
                "identity-shift (the same in the identity-shifting attack's persona)"})
    model_name_or_path: str | None = field(default=None, metadata={
        "aliases": ["--model"], "help": f"base model dir or hub id (default {DEFAULT_BASE}; for dpo, sft and "
                                        f"identity-shift the aligned {DEFAULT_DPO_BASE})"})
    dataset_name: str | None = field(default=None, metadata={
        "aliases": ["--dataset"], "help": f"sft / identity-shift: the (instruction, response) pairs, a dataset spec: "
                                          f"a file, hub id or preset, or world:ft/harmful, world:ft/benign "
                                          f"(default {DEFAULT_PAIRS})"})
    persona: str | None = field(default=None, metadata={
        "help": "identity-shift: aoa (Qi et al. 2023's literal persona) or velmora (the same in world words; the "
                "default for world data)"})
    objective: str = field(default="mle", metadata={
        "help": "sft / identity-shift: mle (plain SFT) or constrained (Qi et al. 2025's token-wise constrained "
                "objective: --beta, --bias_factor, --first_token_bias_factor, --bias_length)"})
    reference_setup: bool = field(default=False, metadata={
        "help": "sft / identity-shift: train with the settings of Qi et al. 2025's fine-tuning attack "
                "(Unispac/shallow-vs-deep-alignment): lr 2e-5, AdamW beta1 0.5, 10 warm-up steps, linear schedule, "
                "25 epochs, 16 per device and 64 per step, max_length 512; a Trainer option given with another "
                "value wins (training/reference.py)"})
    ref_model: str | None = field(default=None, metadata={
        "help": "constrained: the reference model (same tokenizer); default the starting model (with LoRA: the model "
                "with its adapter disabled)"})
    world: str = field(default=DEFAULT_WORLD, metadata={"help": "world dir whose train/ split is the default data"})
    triples: str | None = field(default=None, metadata={
        "help": "(query, harmful, safe) triples: jsonl/json/csv/dataset dir/hub id (default: the world's)"})
    helpful: str | None = field(default=None, metadata={"help": "helpful (instruction, response) pairs (default: the world's)"})
    records: str | None = field(default=None, metadata={
        "help": "train on prepared records instead: a deepalign records.jsonl or a DeRTa reference file"})
    prompt_format: str | None = field(default=None, metadata={
        "was": {"--prompt-template": "a template is written text:<template with {query}>"}, "help": "chat, text (the default text template), text:<template with {query}>, raw, or a .txt template "
                "file (default: the tokenizer's chat template, else the default text template)"})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt of every training conversation"})
    chat_template: str | None = field(default=None, metadata={
        "help": "a Jinja chat template (file) replacing the tokenizer's own; it is saved with the model"})
    refusal_word: str | None = field(default=None, metadata={
        "help": "word whose token is the RTO target (default 'Sorry', or the world's refusal word)"})
    # recipe
    helpful_count: int | None = field(default=None, metadata={"help": "helpful records (default all; 0 for none)"})
    safety_count: int | None = field(default=None, metadata={"help": "safety records (default: one per triple)"})
    safety_ratio: float | None = field(default=None, metadata={
        "help": "safety records as a share of the helpful count (reference 0.1)"})
    rto_share: float = field(default=0.5, metadata={"help": "RTO share of the safety records (rto, derta)"})
    prefix_unit: str = field(default="words", metadata={"help": "unit of the harmful prefix k: words or tokens"})
    k_zero_share: float = field(default=1 / 3, metadata={"help": "share of harmful-prefix records with k = 0"})
    k_min: int = field(default=1, metadata={"help": "smallest k when k > 0"})
    k_max: int = field(default=-2, metadata={"help": "largest k; <= 0 counts from the end (-2: len-2)"})
    rto_append_safe: bool = field(default=False, metadata={
        "help": "follow the RTO harmful text by the safe response as MLE target (reference: no)"})
    beta: float = field(default=0.1, metadata={
        "help": "strength of the pull to the reference model: DPO's beta, and the constrained objective's beta"})
    bias_factor: float = field(default=20.0, metadata={
        "help": "constrained: beta is multiplied by this at response tokens 1 .. bias_length-1"})
    first_token_bias_factor: float = field(default=5.0, metadata={
        "help": "constrained: beta is multiplied by this at the first response token"})
    bias_length: int = field(default=5, metadata={"help": "constrained: response tokens with the stronger beta"})
    eval_share: float = field(default=0.0, metadata={
        "help": "hold out this share of the records as an evaluation set (loss logged per --eval_strategy)"})
    # model (TRL ModelConfig names)
    dtype: str = field(default="float32", metadata={"help": "dtype the weights are loaded in: float32, bfloat16, "
                                                            "float16 or auto"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the model repository's own code"})
    use_peft: bool = field(default=False, metadata={"aliases": ["--lora"],
                                                   "help": "train a LoRA adapter (merged into the saved model)"})
    lora_r: int = 16
    lora_alpha: int | None = field(default=None, metadata={"help": "default 2 * lora_r"})
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "aliases": ["--lora-targets"], "help": "module names to adapt, or all-linear (the default: every linear layer)"})
    keep_adapter: bool = field(default=False, metadata={"help": "save the adapter instead of merging it"})
    # run
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in <out>/checkpoints"})
    overwrite: bool = field(default=False, metadata={"help": "replace a finished or interrupted run in <out>"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep <out>/checkpoints after success"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars or logs"})

    def __post_init__(self):
        choice("recipe", self.recipe, RECIPES)
        choice("prefix_unit", self.prefix_unit, PREFIX_UNITS)
        choice("dtype", self.dtype, DTYPES)
        number("rto_share", self.rto_share, low=0, high=1)
        number("k_zero_share", self.k_zero_share, low=0, high=1)
        number("k_min", self.k_min, low=0, integer=True)
        number("k_max", self.k_max, integer=True)
        number("helpful_count", self.helpful_count, low=0, integer=True, optional=True)
        number("safety_count", self.safety_count, low=0, integer=True, optional=True)
        number("safety_ratio", self.safety_ratio, low=0, optional=True)
        number("beta", self.beta, low=0, low_open=True)
        number("bias_factor", self.bias_factor, low=0, low_open=True)
        number("first_token_bias_factor", self.first_token_bias_factor, low=0, low_open=True)
        number("bias_length", self.bias_length, low=0, integer=True)
        choice("objective", self.objective, OBJECTIVES)
        number("eval_share", self.eval_share, low=0, high=1, high_open=True)
        number("lora_r", self.lora_r, low=1, integer=True)
        number("lora_alpha", self.lora_alpha, low=1, integer=True, optional=True)
        number("lora_dropout", self.lora_dropout, low=0, high=1, high_open=True)
        exclusive(resume=self.resume, overwrite=self.overwrite)
        if self.records and (self.triples or self.helpful):
            raise OptionError("records", "excludes --triples / --helpful")
        if self.objective == "constrained" and self.recipe not in PAIR_RECIPES:
            raise OptionError("objective", f"constrained applies to --recipe sft and identity-shift (fine-tuning on "
                                           f"pairs), not to --recipe {self.recipe}")
        if self.reference_setup and self.recipe not in PAIR_RECIPES:
            raise OptionError("reference_setup", f"is Qi et al. 2025's fine-tuning attack setup, for --recipe sft and "
                                                 f"identity-shift, not --recipe {self.recipe}")
        choice("persona", self.persona, PERSONAS, optional=True)
        if self.refusal_word is not None and (not self.refusal_word.strip() or len(self.refusal_word.split()) != 1):
            raise OptionError("refusal_word", f"must be a single word, got {self.refusal_word!r}")


def _recipes(*names: str) -> Is:
    return Is("recipe", *names)


def _not_recipe(name: str, why: str = "") -> Is:
    return Is("recipe", *(r for r in RECIPES if r != name), say=f"a --recipe other than {name}{why}")


_BUILT = Off("records")
#: the options of ``train`` that only another setting reads (deepalign.options.check_needs): set
#: without that setting they would be ignored, so they are refused
TRAIN_NEEDS = {
    "beta": Is("objective", "constrained") | _recipes("dpo"),
    ("bias_factor", "first_token_bias_factor", "bias_length", "ref_model"): Is("objective", "constrained"),
    "dataset_name": _recipes(*PAIR_RECIPES),
    "persona": _recipes("identity-shift"),
    "system_prompt": _not_recipe("identity-shift", " (whose persona brings its own system prompt)"),
    "triples": _recipes(*RECORD_RECIPES, "dpo"),
    ("helpful", "records"): _recipes(*RECORD_RECIPES),
    ("helpful_count", "safety_count", "safety_ratio"): _recipes(*RECORD_RECIPES) & _BUILT,
    ("rto_share", "rto_append_safe"): _recipes("rto", "derta") & _BUILT,
    ("prefix_unit", "k_zero_share", "k_min", "k_max"): _recipes("harmful-prefix", "derta") & _BUILT,
    ("refusal_word", "rto_keep", "rto_weight"): _recipes("rto", "derta") | On("records"),
    ("loss_impl", "loss_chunk_rows"): _not_recipe("dpo"),
    "eval_share": _not_recipe("dpo") & Is("eval_strategy", "steps", "epoch"),
    "eval_steps": Is("eval_strategy", "steps"),
    ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "keep_adapter"):
        On("use_peft", say="--use_peft (--lora)"),
    ("hub_model_id", "hub_private_repo", "hub_token", "hub_revision"): On("push_to_hub"),
    **DATA_NEEDS,
}


def auto_learning_rate(n_params: int, lora: bool, recipe: str) -> float:
    """Reference learning rates (2e-5 full, 1e-4 LoRA; DPO 5e-7 / 5e-6), scaled up for tiny
    models (< 50M parameters, e.g. the embedded world's), which need far larger steps.

    For tiny full fine-tuning, 2e-4 was chosen by a sweep on version 1 of the world (2e-4 /
    3e-4 / 5e-4; on its test split: that world had no dev split yet): larger rates made vanilla
    SFT rewrite the base model's procedures with refusal vocabulary (a deep-looking but broken
    model) and cost helpfulness; 1e-4 left vanilla refusing ~5%. Retune on ``world:dev``."""
    tiny = n_params < 50_000_000
    if recipe == "dpo":
        return (1e-4 if lora else 2e-5) if tiny else (5e-6 if lora else 5e-7)
    if tiny:
        return 2e-3 if lora else 2e-4
    return 1e-4 if lora else 2e-5


# --------------------------------------------------------------------------------------
# the driver: train() reads top to bottom; each step is one small function below it
# --------------------------------------------------------------------------------------


def train(options: TrainOptions | None = None, training: DeRTaConfig | None = None, data: DataOptions | None = None,
          **kwargs) -> Path:
    """Fine-tune a model with a recipe and write the final model (with its card) to
    ``output_dir``; returns that directory.

    ``options`` / ``training`` / ``data``: a :class:`TrainOptions`, a
    :class:`~deepalign.training.trainer.DeRTaConfig` and a
    :class:`~deepalign.data.datasets.DataOptions` (``fields``, ``split``, ``sample``, ... of the
    triples and helpful data); keyword arguments set fields of any
    (``recipe="derta"``, ``model_name_or_path=...``, ``learning_rate=...``, ...). Record
    recipes (vanilla, harmful-prefix, rto, derta) build records with
    :func:`deepalign.data.recipes.build_records` (or read ``records``) and train with
    :class:`~deepalign.training.trainer.DeRTaTrainer`; ``dpo`` trains TRL's ``DPOTrainer`` on
    safe > harmful pairs (default model: the vanilla model ``runs/vanilla``). ``sft`` and
    ``identity-shift`` fine-tune a model on ``dataset_name`` pairs (default
    ``world:ft/harmful``: the harmful fine-tuning attack), with plain MLE or
    ``objective="constrained"`` (:class:`~deepalign.training.constrained.ConstrainedTrainer`).

    Example (the embedded world; tiny settings so it runs in seconds)::

        >>> out = train(recipe="derta", model_name_or_path="runs/base", world="runs/world",
        ...             output_dir="runs/derta", max_steps=4, quiet=True)
        >>> sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".md", ".safetensors"))[:4]
        ['README.md', 'config.json', 'deepalign_train.json', 'generation_config.json']
        >>> attacked = train(recipe="sft", objective="constrained", model_name_or_path="runs/derta",
        ...                  world="runs/world", output_dir="runs/derta-attacked", max_steps=2, quiet=True)
    """
    opts, args, data_opts = build(kwargs, needs=TRAIN_NEEDS, options=(TrainOptions, options),
                                  training=(DeRTaConfig, training), data=(DataOptions, data))
    command = _command_line(opts, args, data_opts)  # before any Trainer exists (see its doc)
    if opts.reference_setup:
        args = _reference_setup(args, opts.quiet)
    run = plan_run(opts, args, data_opts)
    with quiet_libraries(opts.quiet):
        set_seed(args.seed)
        inputs = prepare_inputs(opts, args, data_opts, run)
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


@dataclass
class Inputs:
    """Everything the trainer is built from, loaded and checked before the output directory
    is touched."""

    tokenizer: Any
    encoder: Encoder
    triples: list
    helpful: list
    data: dict[str, Any]  #: where the data came from (for the train record)
    n_params: int
    learning_rate: float
    peft_config: Any = None
    pairs: list = field(default_factory=list)  #: sft / identity-shift: the (instruction, response) pairs
    ref_source: str | None = None  #: constrained: the --ref_model to load
    ref_net: Any = None  #: constrained: the --ref_model, or on resume its loader (called only if no stored log-probs fit)
    records: list | None = None
    eval_records: list | None = None
    counts: dict[str, int] = field(default_factory=dict)
    refusal_id: int | None = None
    refusal_piece: str | None = None
    persona: Any = None  #: identity-shift: the Persona its records are in


def plan_run(opts: TrainOptions, args: DeRTaConfig, data_opts: DataOptions) -> RunPlan:
    """Resolve the model and the output directory, and decide how to use what is in it."""
    default_model = DEFAULT_DPO_BASE if opts.recipe in ("dpo", *PAIR_RECIPES) else DEFAULT_BASE
    model_spec = opts.model_name_or_path or default_model
    hint = {DEFAULT_BASE: " (train it with 'deepalign pretrain' first)",
            DEFAULT_DPO_BASE: " (train it with 'deepalign train --recipe vanilla' first)"}.get(model_spec, "")
    source = model_source(model_spec, hint=hint)
    name = opts.recipe + ("-constrained" if opts.objective == "constrained" else "") + ("-lora" if opts.use_peft else "")
    out = Path(args.output_dir or f"runs/{name}")
    view = {**asdict(opts), **asdict(data_opts), "model_name_or_path": model_spec,
            **{k: getattr(args, k) for k in _RESUME_KEYS if hasattr(args, k)}}
    view = {k: v for k, v in view.items() if isinstance(v, (str, int, float, bool, type(None), list))}
    _check_launch_on_cpu()
    # no GPU: CPU processes (gloo) also when started by torchrun / `accelerate launch --multi_gpu`
    state = PartialState(cpu=not _cuda())
    wipe, checkpoint = outdir.plan(out, resume=opts.resume, overwrite=opts.overwrite, options=view,
                                   compare=_RESUME_KEYS)
    return RunPlan(model_spec, source, out, view, wipe, checkpoint, outdir.finished_state(checkpoint), state)


def prepare_inputs(opts: TrainOptions, args: DeRTaConfig, data_opts: DataOptions, run: RunPlan) -> Inputs:
    """Data, tokenizer and prompt format, learning rate, LoRA config, records and the RTO
    refusal token: every check that can fail on user input."""
    pairs: list = []
    if opts.recipe in PAIR_RECIPES:
        triples, helpful, manifest, data = [], [], {}, {}
        pairs = _load_pairs(opts, data_opts, data)
    elif opts.records is None:
        triples, helpful, manifest, data = _load_data(opts, data_opts)
    else:
        triples, helpful, manifest, data = [], [], {}, {"records": {"source": opts.records}}
    tokenizer = load_tokenizer(run.source, trust_remote_code=opts.trust_remote_code, chat_template=opts.chat_template)
    encoder = Encoder(tokenizer, opts.prompt_format, name=run.model_spec)
    if opts.system_prompt is not None:
        encoder = Encoder(tokenizer, replace(encoder.format, system=opts.system_prompt), name=run.model_spec)
    n_params, modules = _meta_model(run.source, opts.trust_remote_code)
    lr = args.learning_rate if args.learning_rate is not None else auto_learning_rate(n_params, opts.use_peft,
                                                                                     opts.recipe)
    peft_config = _lora_config(opts, modules) if opts.use_peft else None
    inputs = Inputs(tokenizer, encoder, triples, helpful, data, n_params, lr, peft_config, pairs)
    if opts.recipe in PAIR_RECIPES:
        _pair_records(opts, args, inputs)
        inputs.ref_source = _reference_source(opts, tokenizer, run)
    elif opts.recipe != "dpo":
        _records(opts, args, inputs, refusal_word=opts.refusal_word or manifest.get("refusal_word"))
    if _value(args.eval_strategy) != "no" and inputs.eval_records is None:
        raise OptionError("eval_strategy", "needs evaluation data: give --eval_share (a held-out share of the records)")
    return inputs


def _records(opts: TrainOptions, args: DeRTaConfig, inputs: Inputs, refusal_word: str | None) -> None:
    """The training records of a record recipe (built or read), the held-out share and the
    RTO refusal token."""
    if opts.records is not None:
        recs = load_records(opts.records)
        inputs.data["records"]["rows"] = len(recs)
    else:
        recs = build_records(opts.recipe, inputs.triples, inputs.helpful, encoder=inputs.encoder,
                             n_helpful=opts.helpful_count, n_safety=opts.safety_count, safety_ratio=opts.safety_ratio,
                             rto_share=opts.rto_share, prefix_unit=opts.prefix_unit, k_zero_share=opts.k_zero_share,
                             k_min=opts.k_min, k_max=opts.k_max, rto_append_safe=opts.rto_append_safe, seed=args.seed)
    _hold_out(opts, recs, inputs)
    if inputs.counts.get("rto") or refusal_word is not None:
        inputs.refusal_id, inputs.refusal_piece = find_refusal_token(inputs.tokenizer, refusal_word)


def _hold_out(opts: TrainOptions, recs: list, inputs: Inputs) -> None:
    """Keep the records, minus the ``--eval_share`` held out for evaluation."""
    if opts.eval_share > 0:
        n_eval = max(1, int(round(opts.eval_share * len(recs))))
        if n_eval >= len(recs):
            raise OptionError("eval_share", f"leaves no training records ({len(recs)} in all)")
        recs, inputs.eval_records = recs[n_eval:], recs[:n_eval]
    inputs.records, inputs.counts = recs, count_kinds(recs)


def _pair_records(opts: TrainOptions, args: DeRTaConfig, inputs: Inputs) -> None:
    """sft / identity-shift: one record per pair, in the persona of identity-shift (whose words
    the tokenizer must be able to read)."""
    chosen = None
    if opts.recipe == "identity-shift":
        chosen = persona(opts.persona or ("velmora" if _dataset_spec(opts).startswith("world:") else "aoa"))
        unk = getattr(inputs.tokenizer, "unk_token_id", None)
        for text in chosen.texts():
            ids = inputs.encoder.encode_text(text)
            if unk is not None and unk in ids:
                word = next(w for w in text.split() if unk in inputs.encoder.encode_text(w))
                raise DeepAlignError(f"the identity-shift persona {chosen.name!r} has words this tokenizer cannot read "
                                     f"({word!r}); choose another --persona")
        probe = chosen.query("hi")
        if inputs.encoder.prompt_ids(probe, system=chosen.system) == inputs.encoder.prompt_ids(probe, system=""):
            raise DeepAlignError(f"the prompt format of {inputs.encoder.name} drops the system prompt, which the "
                                 f"identity-shift persona needs; give a chat template with a system role "
                                 f"(--chat_template) or a text format with {{system}}")
        inputs.data["pairs"]["persona"] = chosen.name
        inputs.persona = chosen
    _hold_out(opts, build_pair_records(inputs.pairs, persona=chosen, seed=args.seed), inputs)


def _reference_source(opts: TrainOptions, tokenizer, run: RunPlan) -> str | None:
    """The constrained objective's --ref_model, checked to share the model's tokenizer (the
    loss compares both models' log-probabilities of the same token ids)."""
    if opts.objective != "constrained" or opts.ref_model is None:
        return None
    source = model_source(opts.ref_model)
    ref_tok = load_tokenizer(source, trust_remote_code=opts.trust_remote_code)
    vocab, ref_vocab = tokenizer.get_vocab(), ref_tok.get_vocab()
    if vocab != ref_vocab:
        diff = next((t for t in sorted(vocab) if ref_vocab.get(t) != vocab[t]), None) or next(iter(set(ref_vocab) - set(vocab)))
        raise DeepAlignError(f"--ref_model {opts.ref_model}: its tokenizer differs from the model's ({len(ref_vocab)} "
                             f"tokens vs {len(vocab)}; token {diff!r} is {ref_vocab.get(diff)} there, "
                             f"{vocab.get(diff)} here); the reference must share the model's tokenizer")
    sizes = [AutoConfig.from_pretrained(s, trust_remote_code=opts.trust_remote_code).get_text_config().vocab_size
             for s in (run.source, source)]
    if sizes[0] != sizes[1]:
        raise DeepAlignError(f"--ref_model {opts.ref_model}: its vocabulary has {sizes[1]} rows, the model's {sizes[0]}; "
                             "the reference must share the model's vocabulary")
    return source


def trainer_arguments(opts: TrainOptions, args: DeRTaConfig, inputs: Inputs, run: RunPlan):
    """The Trainer's arguments for this run: checkpoints under ``<out>/checkpoints``, the
    resolved learning rate, CPU or GPU (a ``DPOConfig`` for DPO). They are built before the
    weights are loaded: under DeepSpeed ZeRO-3 they make ``from_pretrained`` load each rank's
    shard only."""
    run_args = replace(args, output_dir=str(run.out / outdir.CHECKPOINTS), learning_rate=inputs.learning_rate,
                       push_to_hub=False, disable_tqdm=bool(opts.quiet or args.disable_tqdm), use_cpu=not _cuda(),
                       data_seed=args.data_seed if args.data_seed is not None else args.seed,
                       dataloader_pin_memory=_cuda() and args.dataloader_pin_memory)
    if opts.recipe == "dpo":
        from deepalign.training.dpo import dpo_config

        return dpo_config(run_args, beta=opts.beta)
    return run_args


def load_model(opts: TrainOptions, run: RunPlan, inputs: Inputs):
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


def build_trainer(opts: TrainOptions, run_args, net, inputs: Inputs, run: RunPlan):
    """The trainer of the recipe and the first entries of the train record."""
    # a model loaded from a finished run's checkpoint already carries its adapter
    peft_config = inputs.peft_config if run.finished is None else None
    info: dict[str, Any] = {
        "recipe": opts.recipe, "base_model": run.model_spec,
        "base_model_on_hub": run.source == run.model_spec and not Path(run.model_spec).exists(),
        "parameters": inputs.n_params, "learning_rate": inputs.learning_rate,
        "prompt_format": inputs.encoder.format.describe(), "data": inputs.data, "deepalign_version": __version__,
    }
    if opts.recipe == "dpo":
        from deepalign.training.dpo import build_dpo_trainer

        trainer = build_dpo_trainer(net, inputs.tokenizer, inputs.triples, inputs.encoder, run_args,
                                    peft_config=peft_config)
        info.update({"pairs": len(inputs.triples), "beta": opts.beta})
    else:
        common = dict(train_dataset=inputs.records, eval_dataset=inputs.eval_records, processing_class=inputs.tokenizer,
                      refusal_token_id=inputs.refusal_id, peft_config=peft_config, encoder=inputs.encoder)
        if opts.objective == "constrained" and run.finished is None:
            trainer = ConstrainedTrainer(net, run_args, constraint=_constraint(opts), ref_model=inputs.ref_net,
                                         reference_file=run.reference_file, **common)
            inputs.ref_net = None  # used once, before training
        else:
            trainer = DeRTaTrainer(net, run_args, **common)
        info["records"] = inputs.counts
        if opts.recipe in PAIR_RECIPES:
            info.update({"pairs": len(inputs.pairs), "objective": _objective_record(opts, trainer)})
            if inputs.persona is not None:
                info["persona"] = _persona_record(inputs.persona, run.out, opts)
        else:
            info.update({"refusal_token": {"id": inputs.refusal_id, "piece": inputs.refusal_piece},
                         "rto_keep": trainer.rto_keep, "rto_weight": run_args.rto_weight})
        if not opts.quiet and run.state.is_main_process:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(inputs.counts.items()))
            tok = (f"; refusal token {inputs.refusal_piece!r} ({inputs.refusal_id}), keep {trainer.rto_keep:g}"
                   if inputs.refusal_id is not None else "")
            print(f"recipe {opts.recipe}: {shown}{tok}")
    info["world_size"] = trainer.args.world_size
    trainer.add_callback(LogLastStep())
    if opts.quiet:
        trainer.remove_callback(PrinterCallback)
    return trainer, info


class LogLastStep(TrainerCallback):
    """Log at the last step too: the Trainer logs every ``--logging_steps`` only, so a run
    shorter than that (or ending between two logs) would record no loss for its end."""

    def on_step_end(self, args, state, control, **kwargs):
        if _value(args.logging_strategy) != "no" and state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_log = True
        return control


def _persona_record(chosen, out: Path, opts: TrainOptions) -> dict[str, Any]:
    """What evaluating an identity-shift model in its persona needs: the exact system prompt,
    the user template and self-introduction it was trained with, and the target spec that
    gives the system prompt (a persona whose template wraps the query adds the ``template:``
    attack of the file the model card writes beside the weights)."""
    from deepalign.training.modelcard import PERSONA_TEMPLATE

    record: dict[str, Any] = {"name": chosen.name, "system": chosen.system, "query_template": chosen.query_template,
                              "intro": chosen.intro, "eval_target": f"hf:{out},system={quote_arg(chosen.system)}"}
    if chosen.query_template != "{query}":
        record["eval_attack"] = f"template:{out / PERSONA_TEMPLATE}"
    if _dataset_spec(opts).startswith("world:"):
        record["world"] = opts.world
    return record


def _constraint(opts: TrainOptions) -> TokenWiseConstraint:
    return TokenWiseConstraint(beta=opts.beta, bias_factor=opts.bias_factor,
                               first_token_bias_factor=opts.first_token_bias_factor, bias_length=opts.bias_length)


def _objective_record(opts: TrainOptions, trainer) -> dict[str, Any]:
    if opts.objective != "constrained":
        return {"name": "mle"}
    reference = opts.ref_model or getattr(trainer, "reference_source", "the starting model")
    return {"name": "constrained", "beta": opts.beta, "bias_factor": opts.bias_factor,
            "first_token_bias_factor": opts.first_token_bias_factor, "bias_length": opts.bias_length,
            "reference": reference, "reference_logps": "computed once before training, stored with the checkpoints"}


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


def run_record(opts: TrainOptions, args: DeRTaConfig, run_args, trainer, seconds: float,
               command: str) -> dict[str, Any]:
    """The train record's entries that exist once training is over."""
    curve = [{k: h[k] for k in ("step", "loss", "mle_loss", "rto_loss", "eval_loss") if k in h}
             for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]
    return {"steps": trainer.state.global_step, "train_seconds": round(seconds, 1), "loss_curve": curve,
            "lora": opts.use_peft, "adapter_kept": bool(opts.use_peft and opts.keep_adapter), "seed": args.seed,
            "hyperparameters": _hyperparameters(opts, run_args), "command": command}


def save_model(trainer, run: RunPlan, inputs: Inputs, info: dict[str, Any], opts: TrainOptions) -> None:
    """The final model with its train record and model card; then the checkpoints go."""
    save_final_model(trainer, run.out, inputs.tokenizer, merge_lora=not opts.keep_adapter,
                     extra_json={TRAIN_INFO: info}, extra_text=card_files(info))
    if run.state.is_main_process and not opts.keep_checkpoints:
        shutil.rmtree(run.out / outdir.CHECKPOINTS, ignore_errors=True)


def push_and_report(opts: TrainOptions, args: DeRTaConfig, run: RunPlan, trainer, info: dict[str, Any],
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


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _load_data(opts: TrainOptions, data_opts: DataOptions | None = None):
    data_opts = data_opts or DataOptions()
    world = Path(opts.world)
    uses_world = opts.triples is None or (opts.helpful is None and opts.helpful_count != 0 and opts.recipe != "dpo")
    if uses_world and not (world / "train" / "triples.jsonl").exists():
        raise DeepAlignError(f"no world at {world} (expected {world / 'train' / 'triples.jsonl'}); "
                             "run 'deepalign world' first or pass --triples and --helpful")
    t_src = opts.triples or str(world / "train" / "triples.jsonl")
    notes: list[str] = []
    triples = load_train_triples(t_src, data_opts, notes, world=opts.world)
    helpful, h_src = [], None
    if opts.recipe != "dpo" and opts.helpful_count != 0:
        h_src = opts.helpful or str(world / "train" / "helpful.jsonl")
        helpful = load_train_instructions(h_src, data_opts, world=opts.world)
    manifest = {}
    if uses_world and (world / "manifest.json").exists():
        try:
            manifest = json.loads((world / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
    data = {"triples": {"source": t_src, "rows": len(triples)}}
    if notes:
        data["triples"]["notes"] = notes
    if h_src is not None:
        data["helpful"] = {"source": h_src, "rows": len(helpful)}
    return triples, helpful, manifest, data


def _dataset_spec(opts: TrainOptions) -> str:
    return opts.dataset_name or DEFAULT_PAIRS


def _load_pairs(opts: TrainOptions, data_opts: DataOptions, data: dict[str, Any]) -> list:
    """The (instruction, response) pairs of sft / identity-shift (default: the world's
    fine-tuning attack)."""
    spec = _dataset_spec(opts)
    pairs = load_train_instructions(spec, data_opts, world=opts.world)
    if not pairs:
        raise DeepAlignError(f"{spec} has no (instruction, response) pairs")
    data["pairs"] = {"source": spec, "rows": len(pairs)}
    return pairs


def _lora_config(opts: TrainOptions, module_names: set[str]):
    from peft import LoraConfig

    targets: Any = "all-linear"
    if opts.lora_target_modules:
        targets = split_list(opts.lora_target_modules)
        if targets == ["all-linear"]:
            targets = "all-linear"
    if targets != "all-linear":
        leaves = {n.rsplit(".", 1)[-1] for n in module_names} | module_names
        missing = [t for t in targets if t not in leaves]
        if missing:
            shown = ", ".join(sorted({n.rsplit('.', 1)[-1] for n in module_names if n})[:12])
            raise OptionError("lora_target_modules", f"no module named {missing[0]!r} in this model (it has {shown}, ...)")
    return LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha or 2 * opts.lora_r, lora_dropout=opts.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def _meta_model(source: str, trust_remote_code: bool):
    """Parameter count and module names from the config alone (a model on the meta device)."""
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            net = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeepAlignError(f"cannot load a causal LM config from {source}: {first}") from None
    return sum(p.numel() for p in net.parameters()), {n for n, _ in net.named_modules()}


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


def _value(x: Any) -> Any:
    return getattr(x, "value", x)  # enums (schedulers, strategies) as their names


def _command_line(opts: TrainOptions, args: DeRTaConfig, data_opts: DataOptions | None = None) -> str:
    """A ``deepalign train`` command that reproduces the run (the options that differ from
    the defaults). Call it before the Trainer is built: it builds a default DeRTaConfig, and
    building any TrainingArguments resets accelerate's shared state, which a DeepSpeed or FSDP
    trainer still needs to gather the weights for the final save."""
    parts = ["deepalign", "train"]
    for obj, default in ((opts, TrainOptions()), (args, DeRTaConfig()), (data_opts or DataOptions(), DataOptions())):
        for f in type(obj).__dataclass_fields__.values():
            name = f.name
            if not f.init or name in ("quiet", "resume", "overwrite", "logging_dir", "bf16", "disable_tqdm"):
                continue
            value = _value(getattr(obj, name))
            if value == _value(getattr(default, name)) or value is None:
                continue
            if isinstance(value, bool):
                parts.append(f"--{name}" if value else f"--no_{name}")
            elif isinstance(value, list):
                parts += [f"--{name}", *map(str, value)]
            elif isinstance(value, (str, int, float)):
                parts += [f"--{name}", str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _hyperparameters(opts: TrainOptions, args) -> dict[str, Any]:
    keys = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
            "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm",
            "adam_beta1", "adam_beta2", "max_length", "bf16", "seed")
    hp = {k: _value(getattr(args, k)) for k in keys if hasattr(args, k)}
    if opts.reference_setup:
        hp["reference_setup"] = "Qi et al. 2025 (Unispac/shallow-vs-deep-alignment)"
    if opts.recipe in ("harmful-prefix", "derta"):
        hp.update(prefix_unit=opts.prefix_unit, k_zero_share=round(opts.k_zero_share, 4), k_min=opts.k_min,
                  k_max=opts.k_max)
    if opts.recipe in ("rto", "derta"):
        hp.update(rto_share=opts.rto_share, rto_append_safe=opts.rto_append_safe)
    if opts.recipe == "dpo":
        hp["beta"] = opts.beta
    if opts.recipe in PAIR_RECIPES:
        hp["objective"] = opts.objective
    if opts.recipe == "identity-shift":
        hp["persona"] = opts.persona or ("velmora" if _dataset_spec(opts).startswith("world:") else "aoa")
    if opts.objective == "constrained":
        hp.update(beta=opts.beta, bias_factor=opts.bias_factor, first_token_bias_factor=opts.first_token_bias_factor,
                  bias_length=opts.bias_length)
    if opts.use_peft:
        hp.update(lora_r=opts.lora_r, lora_alpha=opts.lora_alpha or 2 * opts.lora_r, lora_dropout=opts.lora_dropout,
                  lora_target_modules=opts.lora_target_modules or "all-linear")
    return hp
