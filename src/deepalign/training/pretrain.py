"""Train the world's tiny LLaMA-architecture base model from scratch: :func:`pretrain`.

The corpus (``pretrain/corpus.jsonl`` of a world directory) is plain language-model text:
chat-rendered dialogs in which harmful queries are answered harmfully or deflected (never
refused) and helpful queries answered correctly, plus fact documents. Training uses the stock
Hugging Face ``Trainer`` with a causal-LM loss; the result is a standard model directory
(``save_pretrained``, safetensors, the world tokenizer, a model card), so
``AutoModelForCausalLM.from_pretrained(out)`` is all a later stage needs.

Options: :class:`PretrainOptions` (world, output, model shape) and :class:`PretrainConfig`
(every ``Trainer`` setting under its Hugging Face name, with the pretraining defaults).
Checkpoints go to ``<out>.partial/`` while training runs; ``resume=True`` continues from the
last complete one after an interruption, and a partial run is never discarded without
``overwrite=True``. The final directory is written atomically.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from deepalign.errors import DeepAlignError, OptionError
from deepalign.options import build, exclusive, number
from deepalign.training.outdir import last_complete_checkpoint
from deepalign.utils import atomic_dir, check_writable_dir, read_jsonl, set_seed


@dataclass
class PretrainOptions:
    """What to pretrain: the world, the output directory and the model's shape."""

    world: str = field(default="runs/world", metadata={"help": "world directory made by 'deepalign world'"})
    out: str = field(default="runs/base", metadata={"help": "output model directory (written atomically)"})
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_length: int = field(default=256, metadata={"help": "cut corpus documents to this many tokens"})
    max_position_embeddings: int = field(default=1024, metadata={
        "help": "positions the model declares (rotary: no weights depend on it); attack prompts such as the code "
                "and cipher attacks are longer than the training documents"})
    padding_free: bool = field(default=True, metadata={
        "help": "pack each batch's documents into rows of about --max_length tokens with per-document positions "
                "(attention kept within each document): the same batches, loss and gradients as padded ones without "
                "computing on padding (benchmarks/bench_pretrain.py)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in <out>.partial/"})
    overwrite: bool = field(default=False, metadata={"help": "discard a partial run in <out>.partial/ and start over"})
    quiet: bool = False

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_length"):
            number(name, getattr(self, name), low=1, integer=True)
        number("max_position_embeddings", self.max_position_embeddings, low=self.max_length, integer=True)
        if self.hidden_size % self.num_heads:
            raise OptionError("hidden_size", f"({self.hidden_size}) must be divisible by --num_heads ({self.num_heads})")
        exclusive(resume=self.resume, overwrite=self.overwrite)


@dataclass
class PretrainConfig(TrainingArguments):
    """``TrainingArguments`` with the pretraining defaults: many small-batch steps, so that
    copying entities from the query emerges (see docs/world.md)."""

    output_dir: str | None = field(default=None, metadata={"help": "(set from --out: <out>.partial)"})
    max_steps: int = 1800
    # the flags of the first command line (--batch-size, --lr, ...) stay aliases
    per_device_train_batch_size: int = field(default=16, metadata={"aliases": ["--batch-size"],
                                                                   "help": "batch size per device"})
    learning_rate: float = field(default=3e-3, metadata={"aliases": ["--lr"], "help": "peak learning rate"})
    warmup_steps: float = field(default=50, metadata={
        "aliases": ["--warmup"], "help": "warmup: a ratio in [0, 1) of the training steps, or a whole number of steps"})
    weight_decay: float = 0.01
    adam_beta2: float = 0.98
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={
        "aliases": ["--lr-scheduler"], "help": "any transformers scheduler name"})
    logging_steps: float = 25
    save_steps: float = 500
    save_total_limit: int | None = 1
    seed: int = 0
    report_to: None | str | list[str] = "none"
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; None = when available"})
    # Random batches, not length-grouped ones: the world corpus mixes 20- and 130-token
    # documents, and grouping by length fills each batch with one kind of document; the model
    # then never learns to copy entities from the query (the study's vanilla model: helpful
    # accuracy 4.2% instead of 92.2%, seed 0). Padding is avoided by packing (padding_free).
    train_sampling_strategy: str = field(default="random", metadata={
        "help": "'random' (default), 'group_by_length' (faster, but on the world corpus the base model does not "
                "learn to copy from the query), 'sequential' or 'batch_rebalance'"})

    def __post_init__(self):
        from deepalign.training.trainer import bf16_available

        if self.bf16 is None:
            self.bf16 = bf16_available()
        number("max_steps", self.max_steps, low=1, integer=True)
        number("per_device_train_batch_size", self.per_device_train_batch_size, low=1, integer=True)
        number("learning_rate", self.learning_rate, low=0, low_open=True)
        number("warmup_steps", self.warmup_steps, low=0)
        number("weight_decay", self.weight_decay, low=0)
        number("max_grad_norm", self.max_grad_norm, low=0)
        number("save_steps", self.save_steps, low=0, low_open=True)
        for name in ("adam_beta1", "adam_beta2"):
            number(name, getattr(self, name), low=0, high=1, high_open=True)
        super().__post_init__()


class _PadRight:
    """Right-pad a batch of token lists; labels are the inputs with padding masked out."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            mask[i, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_model(opts: PretrainOptions, tokenizer):
    """A fresh Llama of the options' shape for the world tokenizer, set up for training:
    without a KV cache, which would also switch off the per-document attention of
    padding-free batches (transformers only derives it from the positions when no cache is
    given; with one, every document would attend to the documents before it in the row)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=opts.hidden_size, intermediate_size=opts.intermediate_size,
        num_hidden_layers=opts.num_layers, num_attention_heads=opts.num_heads, num_key_value_heads=opts.num_heads,
        max_position_embeddings=opts.max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


class _PackRows:
    """Padding-free batches: the batch's documents packed into a few rows of about
    ``width`` tokens (longest first, each into the emptiest row), positions restarting at
    every document. The model derives per-document causal attention from the positions, so
    the loss and gradients are those of the padded batch; a row shorter than the longest one
    is filled with pad tokens at its end (continuing the last document's positions, labels
    ignored), which no real token can attend to."""

    def __init__(self, pad_id: int, width: int):
        self.pad_id, self.width = pad_id, width

    def __call__(self, features):
        import math

        import torch

        docs = [list(f["input_ids"]) for f in features]
        total = sum(len(d) for d in docs)
        rows: list[list[list[int]]] = [[] for _ in range(max(1, math.ceil(total / self.width)))]
        sizes = [0] * len(rows)
        for doc in sorted(docs, key=len, reverse=True):
            i = sizes.index(min(sizes))
            rows[i].append(doc)
            sizes[i] += len(doc)
        width = max(sizes)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for doc in row:
                n = len(doc)
                ids[r, at: at + n] = torch.tensor(doc)
                labels[r, at + 1: at + n] = ids[r, at + 1: at + n]
                positions[r, at: at + n] = torch.arange(n)
                at += n
            if at < width:  # padding at the end: the last document's positions go on
                last = int(positions[r, at - 1]) + 1 if at else 0
                positions[r, at:] = torch.arange(last, last + width - at)
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


def collator(opts: PretrainOptions, tokenizer):
    """Padding-free batches (packed rows, per-document positions and attention) or
    right-padded ones."""
    if opts.padding_free:
        return _PackRows(tokenizer.pad_token_id, opts.max_length)
    return _PadRight(tokenizer.pad_token_id)


def _corpus(world: Path) -> list[str]:
    path = world / "pretrain" / "corpus.jsonl"
    texts = []
    for line, row in read_jsonl(path):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DeepAlignError('missing or empty field "text" (a corpus document)', path=path, line=line)
        texts.append(text)
    if not texts:
        raise DeepAlignError("no records", path=path)
    return texts


def pretrain(options: PretrainOptions | None = None, training: PretrainConfig | None = None, **kwargs) -> Path:
    """Pretrain the world base model on a world's corpus and save it; returns its directory.

    ``options`` / ``training`` or keyword arguments naming their fields (``world=``,
    ``out=``, ``hidden_size=``, ``max_steps=``, ``learning_rate=``, ...).

    Example (a toy-sized model, seconds on a CPU)::

        >>> base = pretrain(world="runs/world", out="runs/base", hidden_size=32, num_layers=1,
        ...                 num_heads=2, intermediate_size=64, max_steps=20, quiet=True)
        >>> (base / "model.safetensors").exists(), (base / "README.md").exists()
        (True, True)
    """
    from deepalign.utils import quiet_libraries
    from deepalign.world.generator import load_manifest

    opts, cfg = build(kwargs, options=(PretrainOptions, options), training=(PretrainConfig, training))
    world, out = Path(opts.world), Path(opts.out)
    check_writable_dir(out)
    manifest = load_manifest(world)
    work = out.parent / f"{out.name}.partial"
    checkpoint = _resume_point(opts, work)
    tokenizer = _world_tokenizer(world)
    texts = _corpus(world)
    with quiet_libraries(opts.quiet):
        trainer = _trainer(opts, cfg, tokenizer, texts, work)
        seconds = _fit(trainer, checkpoint, work)
        info = _record(opts, cfg, trainer, world, manifest, len(texts), seconds)
        _save(trainer, tokenizer, info, out)
    shutil.rmtree(work, ignore_errors=True)
    if not opts.quiet:
        final = info["final_loss"] if info["final_loss"] is not None else float("nan")
        print(f"base model ({info['parameters'] / 1e6:.2f}M parameters, {cfg.max_steps} steps, {seconds:.0f}s, "
              f"final loss {final:.3f}) -> {out}")
    return out


def _resume_point(opts: PretrainOptions, work: Path) -> str | None:
    """The checkpoint to resume from (``--resume``); a partial run is never discarded without
    ``--overwrite``."""
    checkpoint = last_complete_checkpoint(work) if opts.resume else None
    if work.exists() and not opts.resume and not opts.overwrite:
        raise DeepAlignError(f"{work} holds a partial pretraining run; pass --resume to continue it or "
                             "--overwrite to start over")
    return checkpoint


def _world_tokenizer(world: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(world / "tokenizer")
    except Exception as exc:
        raise DeepAlignError(f"cannot load the world tokenizer from {world / 'tokenizer'}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _trainer(opts: PretrainOptions, cfg: PretrainConfig, tokenizer, texts: list[str], work: Path):
    """A stock ``Trainer`` of a fresh model on the tokenized corpus, checkpointing into ``work``
    (emptied first with ``--overwrite``)."""
    import torch
    from datasets import Dataset
    from transformers import Trainer

    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=opts.max_length)["input_ids"]
    dataset = Dataset.from_dict({"input_ids": ids})
    set_seed(cfg.seed)
    model = build_model(opts, tokenizer)
    if work.exists() and opts.overwrite:
        shutil.rmtree(work)
    # short runs still log a loss curve (about ten points)
    logging_steps = min(cfg.logging_steps, max(1, cfg.max_steps // 10))
    args = replace(cfg, output_dir=str(work), save_strategy="steps", data_seed=cfg.seed, logging_steps=logging_steps,
                   disable_tqdm=bool(opts.quiet or cfg.disable_tqdm), dataloader_num_workers=0,
                   use_cpu=not torch.cuda.is_available(), push_to_hub=False)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator(opts, tokenizer))
    if opts.quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def _fit(trainer, checkpoint: str | None, work: Path) -> float:
    """Train (or resume); returns the seconds it took."""
    from deepalign.utils import os_error

    start = time.time()
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except OSError as exc:
        raise os_error(exc, work) from None
    return time.time() - start


def _record(opts: PretrainOptions, cfg: PretrainConfig, trainer, world: Path, manifest: dict, n_texts: int,
            seconds: float) -> dict:
    """The train record of the base model (``deepalign_train.json``, read by its model card)."""
    from deepalign import __version__

    curve = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    return {
        "recipe": "pretrain", "base_model": None, "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "deepalign_version": __version__,
        "data": {"corpus": {"source": str(world / "pretrain" / "corpus.jsonl"), "rows": n_texts}},
        "world": str(world), "world_seed": manifest.get("seed"), "world_files": manifest.get("files"),
        "model_shape": {k: v for k, v in asdict(opts).items() if k in ("hidden_size", "num_layers", "num_heads",
                                                                         "intermediate_size", "max_length")},
        "hyperparameters": {k: getattr(getattr(cfg, k), "value", getattr(cfg, k)) for k in (
            "max_steps", "per_device_train_batch_size", "learning_rate", "warmup_steps", "weight_decay",
            "adam_beta2", "lr_scheduler_type", "seed")},
        "steps": trainer.state.global_step, "train_seconds": round(seconds, 1), "loss_curve": curve,
        "final_loss": curve[-1]["loss"] if curve else None, "seed": cfg.seed,
    }


def _save(trainer, tokenizer, info: dict, out: Path) -> None:
    """The model (decoding with a KV cache), its tokenizer, train record and card, written to
    ``out`` atomically."""
    from deepalign.training.modelcard import TRAIN_INFO, render_card
    from deepalign.utils import atomic_write, write_json

    trainer.model.config.use_cache = True  # the saved model decodes with a KV cache
    trainer.model.generation_config.use_cache = True
    with atomic_dir(out) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / TRAIN_INFO, info)
        atomic_write(tmp / "README.md", render_card(info))
