"""``DeRTaConfig`` + ``DeRTaTrainer``: the DeRTa objective on a stock Hugging Face ``Trainer``.

As in TRL, the config is a ``TrainingArguments`` subclass and the trainer only replaces
``compute_loss``: one forward pass of the wrapped model that stops before the output head
(``logits_to_keep`` selects no position), the final hidden states captured from the
decoder, and :func:`deepalign.training.losses.derta_loss` on MLE labels and RTO labels of
the same sequence. Everything else (optimizer, schedules, gradient accumulation, mixed
precision, DDP / DeepSpeed / FSDP through ``accelerate launch``, checkpoints, resuming) is
stock. The loss is normalised by the number of labelled pairs (MLE + RTO) of the whole
accumulated batch across devices, so gradient accumulation and multi-process runs give the
same gradient as one large batch.

With ``presto_weight > 0`` (PRESTO, Vega & Singh, arXiv 2512.05518) the model is switched to
eager attention before training, the forward pass also returns the attention probabilities,
and ``presto_weight x`` :func:`deepalign.training.losses.presto_term` (the attention that the
positions from a harmful prefill onward pay to the prefill) joins the CE sum over the same
denominator.

:func:`save_final_model` writes the final model (``save_pretrained``, safetensors) plus
the tokenizer into a directory without ever leaving a half-written model there.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import SchedulerType

from deepalign.errors import DeepAlignError, OptionError
from deepalign.utils import current_umask
from deepalign.training.collator import DeRTaCollator, FeatureDataset, encode_records
from deepalign.training.losses import count_label_tokens, derta_loss, normaliser, presto_term

# reference RTO keep ratios: a random 5% of RTO positions for full fine-tuning, all for LoRA
RTO_KEEP_FULL = 0.05
RTO_KEEP_LORA = 1.0


def bf16_available() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@dataclass
class DeRTaConfig(TrainingArguments):
    """``TrainingArguments`` plus the DeRTa knobs. Every Trainer setting keeps its Hugging Face
    name and passes straight through (``--learning_rate``, ``--report_to``, ``--push_to_hub``,
    ``--eval_strategy``, ``--gradient_checkpointing``, ...). Defaults follow the reference
    recipe (2 epochs, cosine, 3% warmup) with bf16 whenever the hardware has it; this class is
    the one place they are written."""

    # the Trainer's own directory (checkpoints); deepalign train sets it to <out>/checkpoints, <out>
    # being its --out (TrainOptions.out), so it is no option of the command
    output_dir: str | None = field(default=None, metadata={
        "internal": True, "help": "the Trainer's checkpoint directory (deepalign train: <out>/checkpoints)"})
    learning_rate: float | None = field(default=None, metadata={
        "aliases": ["--lr"], "help": "peak learning rate; default: the reference's 2e-5 full / 1e-4 LoRA (DPO 5e-7 / 5e-6), "
                "larger for models under 50M parameters (see training/inputs.py)"})
    rto_keep: float | None = field(default=None, metadata={
        "help": "share of RTO positions kept per sequence; None = 0.05 for full fine-tuning, 1.0 with LoRA"})
    rto_weight: float = field(default=1.0, metadata={"help": "weight of an RTO pair relative to an MLE pair"})
    presto_weight: float = field(default=0.0, metadata={
        "help": "weight of PRESTO's regulariser (Vega & Singh, arXiv 2512.05518) on the attention paid to a harmful "
                "prefix, added to the CE sum; 1 is the authors' weight, 0 is off. Trains with eager attention"})
    loss_chunk_rows: int | None = field(default=None, metadata={
        "help": "rows per head chunk on the module path of the loss (wrapped or sharded heads); None = about 2**26 logits per chunk. The fused path of a plain head tiles the vocabulary on its own"})
    loss_impl: str = field(default="auto", metadata={"help": "auto, fused or module (see losses.py)"})
    max_length: int = field(default=1024, metadata={"help": "cut sequences to this many tokens"})
    padding_free: bool = field(default=False, metadata={
        "help": "pack each batch's sequences into a few rows, positions restarting at every sequence, instead of "
                "padding them: the same loss without computing on padding, for a model that keeps packed sequences "
                "apart by their positions (checked when training starts)"})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; None = when available"})
    # the flags of the first command line (--epochs, --lr-scheduler, ...) stay aliases
    num_train_epochs: float = field(default=2.0, metadata={"aliases": ["--epochs"], "help": "training epochs"})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={
        "aliases": ["--lr-scheduler"], "help": "any transformers scheduler name"})
    warmup_steps: float = field(default=0.03, metadata={
        "aliases": ["--warmup"], "help": "warmup: a ratio in [0, 1) of the training steps, or a whole number of steps"})
    per_device_train_batch_size: int = field(default=16, metadata={"aliases": ["--batch-size"],
                                                                   "help": "batch size per device"})
    gradient_accumulation_steps: int = field(default=1, metadata={"aliases": ["--grad-accum"],
                                                                  "help": "gradient accumulation steps"})
    logging_steps: float = 10
    save_steps: float = 500
    save_total_limit: int | None = 2
    seed: int = 0
    remove_unused_columns: bool = False
    prediction_loss_only: bool = True
    report_to: None | str | list[str] = "none"
    # every parameter is reached (the output head through the loss): no unused-parameter search
    ddp_find_unused_parameters: bool | None = False

    def __post_init__(self):
        from deepalign.options import choice, number

        if self.bf16 is None:
            self.bf16 = bf16_available()
        elif self.bf16 and not bf16_available():
            raise OptionError("bf16", "asked for, but this machine has no bf16-capable GPU")
        number("learning_rate", self.learning_rate, low=0, low_open=True, optional=True)
        number("rto_keep", self.rto_keep, low=0, high=1, optional=True)
        number("rto_weight", self.rto_weight, low=0)
        number("presto_weight", self.presto_weight, low=0)
        number("max_length", self.max_length, low=2, integer=True)
        number("loss_chunk_rows", self.loss_chunk_rows, low=1, integer=True, optional=True)
        choice("loss_impl", self.loss_impl, ("auto", "fused", "module"))
        number("num_train_epochs", self.num_train_epochs, low=0)
        number("max_steps", self.max_steps, low=-1, integer=True)
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise OptionError("num_train_epochs", "must be > 0 unless --max_steps is > 0")
        number("per_device_train_batch_size", self.per_device_train_batch_size, low=1, integer=True)
        number("gradient_accumulation_steps", self.gradient_accumulation_steps, low=1, integer=True)
        number("warmup_steps", self.warmup_steps, low=0)
        if self.warmup_steps >= 1 and not float(self.warmup_steps).is_integer():
            raise OptionError("warmup_steps", f"must be a ratio in [0, 1) or a whole number of steps, got {self.warmup_steps}")
        number("weight_decay", self.weight_decay, low=0)
        number("max_grad_norm", self.max_grad_norm, low=0)
        number("save_steps", self.save_steps, low=0, low_open=True)
        number("logging_steps", self.logging_steps, low=0, low_open=True)
        for name in ("adam_beta1", "adam_beta2"):
            number(name, getattr(self, name), low=0, high=1, high_open=True)
        number("adam_epsilon", self.adam_epsilon, low=0, low_open=True)
        super().__post_init__()


class _CollatorEpoch(TrainerCallback):
    """Tell the collator the epoch, so RTO keep masks are redrawn each epoch (and resumable)."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


def _peft_base(model):
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return model, False
    if isinstance(model, PeftModel):
        return model.get_base_model(), True
    return model, False


class DeRTaTrainer(Trainer):
    """A ``Trainer`` whose loss is next-token CE on ``labels`` plus ``rto_labels``.

    ``train_dataset`` may be a list of :class:`~deepalign.data.recipes.TrainingRecord`
    (tokenized here with ``encoder``, a :class:`deepalign.tokens.Encoder`; by default the
    tokenizer's own prompt format) or already-encoded features.
    ``refusal_token_id`` is required when records have RTO spans. ``peft_config`` wraps the
    model with PEFT (LoRA) first, as TRL does.
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the whole accumulated batch's count

    def __init__(self, model, args: DeRTaConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, *, refusal_token_id: int | None = None,
                 peft_config=None, callbacks=None, encoder=None, **kwargs):
        if args is None:
            args = DeRTaConfig(output_dir="derta-output")
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model)
        if processing_class is None:
            raise ValueError("DeRTaTrainer needs processing_class (the tokenizer)")
        if peft_config is not None:
            from peft import get_peft_model

            if getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False):
                model.enable_input_require_grads()
            model = get_peft_model(model, peft_config)
        _, is_peft = _peft_base(model)
        keep = args.rto_keep if args.rto_keep is not None else (RTO_KEEP_LORA if is_peft else RTO_KEEP_FULL)
        self.rto_keep = keep
        self.refusal_token_id = refusal_token_id
        if encoder is None:
            from deepalign.tokens import Encoder

            encoder = Encoder(processing_class)
        train_dataset = self._encode(train_dataset, encoder, args.max_length)
        eval_dataset = self._encode(eval_dataset, encoder, args.max_length)
        if data_collator is None:
            pad = processing_class.pad_token_id
            if pad is None:
                pad = processing_class.eos_token_id
            data_collator = DeRTaCollator(pad_token_id=pad, refusal_token_id=refusal_token_id, rto_keep=keep,
                                          seed=args.seed, padding_free=bool(args.padding_free),
                                          presto=self._presto(args))
        if self._presto(args):
            use_eager_attention(model)
        if getattr(args, "padding_free", False):
            check_packing(model)
        callbacks = list(callbacks or [])
        if hasattr(data_collator, "epoch"):
            callbacks.append(_CollatorEpoch(data_collator))
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks, **kwargs)
        self._stats: dict[str, float] = defaultdict(float)
        self._keep_arg: dict[type, bool] = {}  # model class -> whether its forward takes logits_to_keep

    @staticmethod
    def _encode(dataset, encoder, max_length):
        if dataset is None or isinstance(dataset, FeatureDataset):
            return dataset
        items = list(dataset) if not hasattr(dataset, "__getitem__") else dataset
        if len(items) and hasattr(items[0], "parts") and hasattr(items[0], "rto"):
            return FeatureDataset(encode_records(list(items), encoder, max_length=max_length))
        return dataset

    @staticmethod
    def _presto(args) -> bool:
        return getattr(args, "presto_weight", 0) > 0

    # -- the loss ------------------------------------------------------------------------

    def _lm_parts(self, model):
        base, _ = _peft_base(self.accelerator.unwrap_model(model))
        head = base.get_output_embeddings()
        decoder = base.get_decoder()
        if head is None or decoder is None or decoder is base:
            raise ValueError(f"{type(base).__name__}: cannot find the decoder and output head of this model")
        if type(base) not in self._keep_arg:
            self._keep_arg[type(base)] = "logits_to_keep" in inspect.signature(type(base).forward).parameters
        softcap = getattr(getattr(base, "config", None), "final_logit_softcapping", None)
        return decoder, head, softcap, self._keep_arg[type(base)]

    def final_hidden(self, model, inputs: dict[str, Any]):
        """One forward pass of ``model`` that stops before the output head: ``(final hidden
        states [B, T, H], output head, logit soft-capping, model outputs)``."""
        decoder, head, softcap, keep_arg = self._lm_parts(model)
        captured: list[torch.Tensor] = []

        def grab(_module, _args, output):
            captured.append(output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state)

        handle = decoder.register_forward_hook(grab)
        try:
            extra = {"use_cache": False}
            if keep_arg:
                extra["logits_to_keep"] = torch.zeros(0, dtype=torch.long, device=_input_device(inputs, head))
            outputs = model(**inputs, **extra)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("the decoder's forward hook did not fire; cannot read the final hidden states")
        return captured[-1], head, softcap, outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        rto_labels = inputs.pop("rto_labels", None)
        spans = self._presto_spans(inputs)
        if spans is not None:
            inputs["output_attentions"] = True
        hidden, head, softcap, outputs = self.final_hidden(model, inputs)
        loss, stats = derta_loss(hidden, head, labels, rto_labels, num_items=num_items_in_batch,
                                 rto_weight=self.args.rto_weight, chunk_rows=self.args.loss_chunk_rows,
                                 softcap=softcap, impl=self.args.loss_impl)
        if spans is not None:
            n = normaliser(count_label_tokens(labels, rto_labels) if num_items_in_batch is None else num_items_in_batch,
                           loss.device)
            loss = loss + self._presto_loss(model, outputs, spans, stats) / n
        return self._finish_loss(model, loss, stats, outputs, return_outputs, num_items_in_batch)

    def _presto_spans(self, inputs: dict[str, Any]) -> torch.Tensor | None:
        """The batch's PRESTO spans (taken out of ``inputs``), or None when PRESTO is off or the
        batch has no harmful prefix."""
        spans = inputs.pop("presto_spans", None)
        if not self._presto(self.args):
            return None
        if spans is None:
            raise ValueError("presto_weight > 0 needs batches with presto_spans (DeRTaCollator(presto=True))")
        return spans if spans.numel() else None

    def _presto_loss(self, model, outputs, spans: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
        """``presto_weight x`` PRESTO's term of this batch (to be divided by the loss's ``N``);
        the term and its query positions go to ``stats`` for the log."""
        attentions = getattr(outputs, "attentions", None)
        if not attentions or any(a is None for a in attentions):
            name = type(_peft_base(self.accelerator.unwrap_model(model))[0]).__name__
            raise DeepAlignError(f"--presto_weight: {name} returned no attention probabilities "
                                 "(PRESTO needs eager attention)")
        if torch.is_grad_enabled() and model.training and not any(a.requires_grad for a in attentions):
            raise DeepAlignError("--presto_weight: no attention probability carries a gradient (reentrant activation "
                                 "checkpointing does that), so PRESTO would change nothing; use non-reentrant "
                                 "checkpointing (the default) or none")
        term, n_queries = presto_term(attentions, spans)
        stats["presto_sum"], stats["presto_queries"] = term.detach(), n_queries
        return self.args.presto_weight * term

    def _finish_loss(self, model, loss, stats, outputs, return_outputs, num_items_in_batch):
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        if model.training:
            for k, v in stats.items():
                self._stats[k] += float(v)
        return (loss, outputs) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples, device):
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        n = sum(count_label_tokens(b["labels"], b.get("rto_labels")) for b in batch_samples)
        n = torch.as_tensor(n, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            n = self.accelerator.gather(n).sum()
        return n

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        s = self._stats
        if "loss" in logs and (s["n_mle"] or s["n_rto"]):
            if s["n_mle"]:
                logs["mle_loss"] = round(s["mle_sum"] / s["n_mle"], 4)
            if s["n_rto"]:
                logs["rto_loss"] = round(s["rto_sum"] / s["n_rto"], 4)
            logs["rto_share"] = round(s["n_rto"] / (s["n_mle"] + s["n_rto"]), 4)
            if s["weight_sum"] and s["n_mle"]:  # the constrained objective's mean token weight
                logs["weight"] = round(s["weight_sum"] / s["n_mle"], 4)
            if s["presto_queries"]:  # PRESTO: the mean term per prefill query position
                logs["presto_attention"] = round(s["presto_sum"] / s["presto_queries"], 4)
            self._stats = defaultdict(float)
        super().log(logs, start_time)


def use_eager_attention(model) -> None:
    """Switch ``model`` (the base model of a PEFT model) to eager attention, the one
    implementation that returns the attention probabilities PRESTO reads; a model that
    cannot switch is a one-line error."""
    base, _ = _peft_base(model)
    config = getattr(base, "config", None)
    if getattr(config, "_attn_implementation", None) != "eager":
        try:
            base.set_attn_implementation("eager")
        except (AttributeError, ValueError, ImportError):
            pass
    if getattr(config, "_attn_implementation", None) != "eager":
        raise DeepAlignError(f"--presto_weight: {type(base).__name__} cannot switch to eager attention, which PRESTO "
                             "needs to read the attention probabilities")


def check_packing(model) -> None:
    """``--padding_free`` needs a model that keeps packed sequences apart by their positions
    (transformers derives per-sequence attention from restarting positions for most decoder
    architectures, not for all): two short sequences in one row must give the logits each
    gives alone, else a one-line error."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = (torch.arange(6, device=device) * 7 + 3) % vocab
    packed_ids, positions = ids[None], torch.tensor([[0, 1, 2, 0, 1, 2]], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits[0, 3:].float()
            alone = model(input_ids=packed_ids[:, 3:], use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    scale = max(1.0, float(alone.abs().max()))
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2
    if not torch.allclose(packed, alone, atol=tol * scale, rtol=0):
        name = type(_peft_base(model)[0]).__name__
        raise DeepAlignError(f"--padding_free: {name} lets packed sequences attend to each other (its logits for a "
                             "sequence change when another is packed before it); train it without --padding_free")


def _input_device(inputs: dict[str, Any], head) -> torch.device:
    """The device of the batch: its ``input_ids``, else its ``inputs_embeds`` (a caller that
    embeds the tokens itself), else any other tensor in it, else the output head's."""
    for key in ("input_ids", "inputs_embeds"):
        if isinstance(inputs.get(key), torch.Tensor):
            return inputs[key].device
    for value in inputs.values():
        if isinstance(value, torch.Tensor):
            return value.device
    return next(head.parameters()).device


# -- saving ------------------------------------------------------------------------------


def _install(tmp: Path, out: Path, last: tuple[str, ...] = ("config.json", "adapter_config.json")) -> None:
    """Move the files of ``tmp`` into ``out`` one atomic rename at a time, the files that
    make the directory loadable (``config.json``) last; then remove ``tmp``."""
    names = sorted(p.name for p in tmp.iterdir())
    mode = 0o666 & ~current_umask()
    for p in tmp.iterdir():
        if p.is_file():
            os.chmod(p, mode)  # temp files are created private; the model is not
    for name in [n for n in names if n not in last] + [n for n in names if n in last]:
        dst = out / name
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        os.replace(tmp / name, dst)
    shutil.rmtree(tmp, ignore_errors=True)


def save_final_model(trainer: Trainer, out: str | os.PathLike, tokenizer, *, merge_lora: bool = True,
                     extra_json: dict[str, Any] | None = None, extra_text: dict[str, str] | None = None) -> None:
    """Save the trained model + tokenizer into ``out`` (safetensors).

    Files are first written to a temporary directory inside ``out`` and then moved in with
    ``config.json`` last, so an interruption never leaves a loadable half-written model. A
    LoRA model is merged into its base by default (``AutoModelForCausalLM`` loads the
    result); ``merge_lora=False`` writes the adapter instead. Call it on every process: the
    distributed state dict is gathered by ``Trainer.save_model`` where needed, and only the
    main process writes.
    """
    from deepalign.utils import atomic_write, write_json

    out = Path(out)
    acc = trainer.accelerator
    base, is_peft = _peft_base(acc.unwrap_model(trainer.model))
    # training may switch the KV cache off (gradient checkpointing does); the saved model
    # must decode with it, also under a plain model.generate
    for model in (base, acc.unwrap_model(trainer.model)):
        for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
            if getattr(config, "use_cache", None) is False:
                config.use_cache = True
    tmp: Path | None = None
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".final-", suffix=".tmp"))
    try:
        if is_peft and merge_lora:
            if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
                raise DeepAlignError("merging LoRA under DeepSpeed/FSDP is not supported; pass --keep-adapter "
                                     "and merge the adapter afterwards")
            if acc.is_main_process:
                peft_model = acc.unwrap_model(trainer.model)
                merged = peft_model.merge_and_unload(safe_merge=True)
                merged.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
        else:
            # save_model gathers ZeRO-3 / FSDP weights on every process; the main one writes.
            target = str(tmp) if tmp is not None else str(out / ".final-nonmain.tmp")
            trainer.save_model(target)
            if acc.is_main_process:
                tokenizer.save_pretrained(tmp)
        if acc.is_main_process:
            for junk in ("training_args.bin",):
                (tmp / junk).unlink(missing_ok=True)
            for name, obj in (extra_json or {}).items():
                write_json(tmp / name, obj)
            for name, text in (extra_text or {}).items():
                atomic_write(tmp / name, text)
            _install(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    acc.wait_for_everyone()
