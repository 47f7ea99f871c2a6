"""``deepalign pretrain``: train the world's tiny LLaMA-architecture base model from scratch.

The corpus (``pretrain/corpus.jsonl`` of a world directory) is plain language-model text:
chat-rendered dialogs in which harmful queries are answered harmfully or deflected (never
refused) and helpful queries answered correctly, plus fact documents. Training uses the stock
Hugging Face ``Trainer`` with a causal-LM loss; the result is a standard model directory
(``save_pretrained``, safetensors) with the world tokenizer inside, so
``AutoModelForCausalLM.from_pretrained(out)`` is all a later stage needs.

Checkpoints go to ``<out>.partial/`` while training runs; ``--resume`` continues from the
last one after an interruption. The final directory is written atomically.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deepalign.errors import DeepAlignError
from deepalign.training.outdir import last_complete_checkpoint
from deepalign.utils import atomic_dir, read_jsonl, set_seed, write_json


@dataclass
class PretrainConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_steps: int = 1800
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    save_steps: int = 500
    max_length: int = 256
    # batches of similar lengths: far less padding (the world corpus mixes 20- and 130-token
    # documents); 3.4x faster on 2 CPU cores for the same documents and steps
    group_by_length: bool = True

    def validate(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_steps", "batch_size", "save_steps", "max_length"):
            if getattr(self, name) < 1:
                raise DeepAlignError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise DeepAlignError(f"--hidden-size ({self.hidden_size}) must be divisible by --num-heads ({self.num_heads})")
        if self.learning_rate <= 0:
            raise DeepAlignError(f"--learning-rate must be > 0, got {self.learning_rate}")


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


def pretrain(world: str | Path = "runs/world", out: str | Path = "runs/base", *, resume: bool = False,
             quiet: bool = False, **overrides) -> Path:
    """Pretrain the world base model on ``world``'s corpus and save it to ``out``."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from deepalign.world.generator import load_manifest

    cfg = PretrainConfig(**overrides)
    cfg.validate()
    world, out = Path(world), Path(out)
    manifest = load_manifest(world)
    tokenizer = AutoTokenizer.from_pretrained(world / "tokenizer")
    texts = [row["text"] for _, row in read_jsonl(world / "pretrain" / "corpus.jsonl")]
    if not texts:
        raise DeepAlignError(f"{world / 'pretrain' / 'corpus.jsonl'}: no records")
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=cfg.max_length)["input_ids"]
    dataset = Dataset.from_dict({"input_ids": ids})

    set_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    work = out.parent / f"{out.name}.partial"
    checkpoint = last_complete_checkpoint(work) if resume else None
    if not resume and work.exists():
        shutil.rmtree(work)
    args = TrainingArguments(
        output_dir=str(work), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps, lr_scheduler_type="cosine",
        weight_decay=cfg.weight_decay, adam_beta2=0.98, max_grad_norm=1.0, logging_steps=max(1, min(25, cfg.max_steps // 10)),
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1, seed=cfg.seed, data_seed=cfg.seed,
        report_to="none", disable_tqdm=quiet, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )
    if quiet:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=_PadRight(tokenizer.pad_token_id))
    if quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    start = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.time() - start
    curve = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    with atomic_dir(out) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "loss_curve.json", curve)
        write_json(tmp / "pretrain_info.json", {
            "world": str(world), "world_seed": manifest["seed"], "world_files": manifest["files"],
            "config": asdict(cfg), "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1), "final_loss": curve[-1]["loss"] if curve else None,
        })
    shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        n = sum(p.numel() for p in model.parameters())
        print(f"base model ({n / 1e6:.2f}M parameters, {cfg.max_steps} steps, {seconds:.0f}s, final loss "
              f"{curve[-1]['loss'] if curve else float('nan'):.3f}) -> {out}")
    return out


def configure(p) -> None:
    p.add_argument("--world", default="runs/world", help="world directory made by 'deepalign world'")
    p.add_argument("--out", default="runs/base", help="output model directory (written atomically)")
    defaults = PretrainConfig()
    for name, value in asdict(defaults).items():
        if isinstance(value, bool):
            p.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=value)
        else:
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in <out>.partial/")
    p.add_argument("--no-probe", action="store_true", help="skip the held-out evaluation after training")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    overrides = {name: getattr(args, name) for name in asdict(PretrainConfig())}
    out = pretrain(args.world, args.out, resume=args.resume, quiet=args.quiet, **overrides)
    if not args.no_probe:
        from deepalign.evaluation.probe import probe

        probe(out, args.world, quiet=args.quiet)
    return 0
