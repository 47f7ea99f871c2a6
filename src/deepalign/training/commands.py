"""``deepalign train``: safety fine-tuning with a DeRTa recipe (or the DPO baseline).

    deepalign train --recipe derta                       # the embedded world: runs/base -> runs/derta
    deepalign train --model meta-llama/Meta-Llama-3-8B --recipe derta \\
        --triples beaver.jsonl --helpful wizardlm.jsonl --out runs/llama-derta --lora
    accelerate launch --num_processes 2 -m deepalign train --recipe derta ...

The same stage as a Python function: :func:`train` (same arguments as the options).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from deepalign.errors import DeepAlignError

RECIPE_CHOICES = ("vanilla", "harmful-prefix", "rto", "derta", "dpo")
DEFAULT_WORLD = "runs/world"
DEFAULT_BASE = "runs/base"
DEFAULT_DPO_BASE = "runs/vanilla"
# options whose change makes --resume meaningless
_RESUME_KEYS = ("recipe", "model", "seed", "triples", "helpful", "records", "lora", "batch_size", "grad_accum",
                "rto_keep", "prefix_unit", "k_zero_share", "helpful_count", "safety_count", "safety_ratio")


def _auto_lr(n_params: int, lora: bool, recipe: str) -> float:
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


def _load_data(recipe, world, triples, helpful, helpful_count):
    from deepalign.data.loaders import load_instructions, load_triples

    world = Path(world)
    uses_world = triples is None or (helpful is None and helpful_count != 0 and recipe != "dpo")
    if uses_world and not (world / "train" / "triples.jsonl").exists():
        raise DeepAlignError(f"no world at {world} (expected {world / 'train' / 'triples.jsonl'}); "
                             "run 'deepalign world' first or pass --triples and --helpful")
    t_path = triples or world / "train" / "triples.jsonl"
    trip = load_triples(str(t_path))
    help_ = []
    if recipe != "dpo" and helpful_count != 0:
        help_ = load_instructions(str(helpful or world / "train" / "helpful.jsonl"))
    manifest = {}
    if uses_world and (world / "manifest.json").exists():
        try:
            manifest = json.loads((world / "manifest.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            manifest = {}
    return trip, help_, manifest


def _check_model_path(path: str, default: str) -> None:
    if not Path(path).exists() and (path == default or path.startswith((".", "/", "~")) or path.count("/") != 1):
        hint = " (train it with 'deepalign pretrain' first)" if path == DEFAULT_BASE else ""
        hint = " (train it with 'deepalign train --recipe vanilla' first)" if path == DEFAULT_DPO_BASE else hint
        raise DeepAlignError(f"no model directory at {path}{hint}")


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise DeepAlignError(f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise DeepAlignError(f"the tokenizer of {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _count_params(path: str) -> int:
    """Parameter count from the config alone (the model built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            net = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as exc:
        raise DeepAlignError(f"cannot load a causal LM config from {path}: {str(exc).splitlines()[0]}") from None
    return sum(p.numel() for p in net.parameters())


_DTYPES = ("float32", "bfloat16", "float16", "auto")


def _load_weights(path: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[dtype]
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    except (OSError, ValueError) as exc:
        raise DeepAlignError(f"cannot load a causal LM from {path}: {str(exc).splitlines()[0]}") from None


def train(
    *,
    recipe: str = "derta",
    model: str | None = None,
    out: str | None = None,
    world: str = DEFAULT_WORLD,
    triples: str | None = None,
    helpful: str | None = None,
    records: str | None = None,
    lora: bool = False,
    lora_r: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.05,
    lora_targets: str = "all-linear",
    keep_adapter: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    keep_checkpoints: bool = False,
    seed: int = 0,
    epochs: float = 2.0,
    max_steps: int | None = -1,
    lr: float | None = None,
    batch_size: int = 16,
    grad_accum: int = 1,
    lr_scheduler: str = "cosine",
    warmup: float = 0.03,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    max_length: int = 1024,
    rto_keep: float | None = None,
    rto_weight: float = 1.0,
    rto_append_safe: bool = False,
    rto_share: float = 0.5,
    prefix_unit: str = "words",
    k_zero_share: float = 1 / 3,
    k_min: int = 1,
    k_max: int = -2,
    helpful_count: int | None = None,
    safety_count: int | None = None,
    safety_ratio: float | None = None,
    refusal_word: str | None = None,
    prompt_template: str | None = None,
    save_steps: int = 500,
    logging_steps: int = 10,
    dtype: str = "float32",
    bf16: bool | None = None,
    gradient_checkpointing: bool = False,
    beta: float = 0.1,
    quiet: bool = False,
) -> Path:
    """Fine-tune ``model`` with ``recipe`` and write the final model to ``out``.

    DeRTa recipes (vanilla, harmful-prefix, rto, derta) build records with
    :func:`deepalign.data.recipes.build_records` (or read ``records``: our JSONL or a
    reference ``{"prefix","text","safe"}`` file) and train with :class:`DeRTaTrainer`;
    ``dpo`` trains TRL's ``DPOTrainer`` on safe > harmful pairs (default model: the vanilla
    model ``runs/vanilla``). Returns ``out``.
    """
    from accelerate import PartialState

    from deepalign.training import outdir

    max_steps = -1 if max_steps is None else max_steps
    _validate(locals())
    default_model = DEFAULT_DPO_BASE if recipe == "dpo" else DEFAULT_BASE
    model = model or default_model
    out = Path(out or f"runs/{recipe}{'-lora' if lora else ''}")
    options = {k: v for k, v in locals().items() if isinstance(v, (str, int, float, bool, type(None)))}
    options["out"], options["model"] = str(out), str(model)
    # no GPU: CPU processes (gloo) also when started by torchrun / `accelerate launch --multi_gpu`
    state = PartialState(cpu=not _cuda())
    wipe, checkpoint = outdir.plan(out, resume=resume, overwrite=overwrite, options=options, compare=_RESUME_KEYS)
    if quiet:
        _silence()

    # data and model (every process builds the same records from the same seed)
    from deepalign.utils import set_seed

    set_seed(seed)
    if records is None:
        trip, help_, manifest = _load_data(recipe, world, triples, helpful, helpful_count)
    else:
        trip, help_, manifest = [], [], {}
    if refusal_word is None and manifest.get("refusal_word"):
        refusal_word = manifest["refusal_word"]
    _check_model_path(str(model), default_model)
    tokenizer = _load_tokenizer(str(model))
    from deepalign.data.recipes import build_records, load_records, prompt_format, save_records, summarize

    fmt = prompt_format(tokenizer, prompt_template)
    n_params = _count_params(str(model))
    lr = lr if lr is not None else _auto_lr(n_params, lora, recipe)

    recs, counts, refusal_id, piece = None, {}, None, None
    if recipe != "dpo":
        from deepalign.training.refusal import refusal_token

        if records is not None:
            recs = load_records(records, fmt)
        else:
            recs = build_records(recipe, trip, help_, fmt, tokenizer=tokenizer, n_helpful=helpful_count,
                                 n_safety=safety_count, safety_ratio=safety_ratio, rto_share=rto_share,
                                 prefix_unit=prefix_unit, k_zero_share=k_zero_share, k_min=k_min, k_max=k_max,
                                 rto_append_safe=rto_append_safe, seed=seed)
        counts = summarize(recs)
        if counts.get("rto") or refusal_word is not None:
            refusal_id, piece = refusal_token(tokenizer, refusal_word)

    # everything the user could get wrong has been checked: now touch the output directory
    if state.is_main_process:
        if wipe:
            outdir.wipe(out)
        out.mkdir(parents=True, exist_ok=True)
        outdir.remove_stale(out)
        (out / outdir.OPTIONS).write_text(json.dumps(options, indent=2) + "\n", encoding="utf-8")
        if recs is not None:
            save_records(recs, out / "records.jsonl")
            os.chmod(out / "records.jsonl", 0o644)
    state.wait_for_everyone()

    peft_config = None
    if lora:
        from peft import LoraConfig

        targets = lora_targets if lora_targets == "all-linear" else [t.strip() for t in lora_targets.split(",") if t.strip()]
        peft_config = LoraConfig(r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, lora_dropout=lora_dropout,
                                 target_modules=targets, task_type="CAUSAL_LM")
    common = dict(per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
                  num_train_epochs=epochs, max_steps=max_steps, learning_rate=lr, lr_scheduler_type=lr_scheduler,
                  warmup_steps=warmup, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                  logging_steps=logging_steps, save_strategy="steps", save_steps=save_steps, save_total_limit=2,
                  seed=seed, data_seed=seed, disable_tqdm=quiet, activation_checkpointing=gradient_checkpointing,
                  dataloader_num_workers=0, dataloader_pin_memory=_cuda(), use_cpu=not _cuda(), bf16=_bf16(bf16))
    ckpt_dir = str(out / outdir.CHECKPOINTS)
    info: dict[str, Any] = {"recipe": recipe, "model": str(model), "parameters": n_params, "learning_rate": lr,
                            "prompt_format": {"kind": fmt.kind, "template": fmt.template, "lead": fmt.lead,
                                              "end": fmt.end}}
    # the training arguments come before the weights: under DeepSpeed ZeRO-3 they make
    # from_pretrained load each rank's shard only
    if recipe == "dpo":
        from deepalign.training.dpo import build_dpo_trainer, dpo_config

        args = dpo_config(output_dir=ckpt_dir, beta=beta, max_length=max_length, **common)
        net = _load_weights(str(model), dtype)
        trainer = build_dpo_trainer(net, tokenizer, trip, fmt, args, peft_config=peft_config)
        info.update({"pairs": len(trip), "beta": beta})
    else:
        from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer

        args = DeRTaConfig(output_dir=ckpt_dir, rto_keep=rto_keep, rto_weight=rto_weight, max_length=max_length,
                           **common)
        net = _load_weights(str(model), dtype)
        trainer = DeRTaTrainer(net, args, train_dataset=recs, processing_class=tokenizer,
                               refusal_token_id=refusal_id, peft_config=peft_config)
        info.update({"records": counts, "refusal_token": {"id": refusal_id, "piece": piece},
                     "rto_keep": trainer.rto_keep, "rto_weight": rto_weight})
        if not quiet and state.is_main_process:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            tok = f"; refusal token {piece!r} ({refusal_id}), keep {trainer.rto_keep:g}" if refusal_id is not None else ""
            print(f"recipe {recipe}: {shown}{tok}")
    info["world_size"] = trainer.args.world_size
    if quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)

    if checkpoint and not quiet and state.is_main_process:
        print(f"resuming from {checkpoint}")
    start = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.time() - start
    curve = [{k: h[k] for k in ("step", "loss", "mle_loss", "rto_loss") if k in h}
             for h in trainer.state.log_history if "loss" in h]
    info.update({"steps": trainer.state.global_step, "train_seconds": round(seconds, 1), "loss_curve": curve,
                 "lora": lora, "adapter_kept": bool(lora and keep_adapter), "seed": seed})
    from deepalign.training.trainer import save_final_model

    save_final_model(trainer, out, tokenizer, merge_lora=not keep_adapter,
                     extra_json={"deepalign_train.json": info})
    if state.is_main_process and not keep_checkpoints:
        shutil.rmtree(out / outdir.CHECKPOINTS, ignore_errors=True)
    if not quiet and state.is_main_process:
        last = curve[-1]["loss"] if curve else float("nan")
        print(f"{recipe} model ({trainer.state.global_step} steps, {seconds:.0f}s, last loss {last:.3f}) -> {out}")
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _bf16(flag: bool | None) -> bool:
    from deepalign.training.trainer import bf16_available

    if flag is None:
        return bf16_available()
    if flag and not bf16_available():
        raise DeepAlignError("--bf16 asked for but this machine has no bf16-capable GPU")
    return flag


def _silence() -> None:
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in ("trl", "peft", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def _validate(o: dict[str, Any]) -> None:
    def need(cond, msg):
        if not cond:
            raise DeepAlignError(msg)

    need(o["recipe"] in RECIPE_CHOICES, f"unknown recipe {o['recipe']!r}; choose from {', '.join(RECIPE_CHOICES)}")
    need(o["batch_size"] >= 1, f"--batch-size must be >= 1, got {o['batch_size']}")
    need(o["grad_accum"] >= 1, f"--grad-accum must be >= 1, got {o['grad_accum']}")
    need(o["max_length"] >= 2, f"--max-length must be >= 2, got {o['max_length']}")
    need(o["epochs"] > 0 or o["max_steps"] > 0, "give --epochs > 0 or --max-steps > 0")
    need(o["lr"] is None or o["lr"] > 0, f"--lr must be > 0, got {o['lr']}")
    need(o["rto_keep"] is None or 0.0 <= o["rto_keep"] <= 1.0, f"--rto-keep must be in [0, 1], got {o['rto_keep']}")
    need(o["rto_weight"] >= 0, f"--rto-weight must be >= 0, got {o['rto_weight']}")
    need(0.0 <= o["warmup"] < 1 or (o["warmup"] >= 1 and float(o["warmup"]).is_integer()),
         f"--warmup must be a ratio in [0, 1) or a whole number of steps, got {o['warmup']}")
    need(o["dtype"] in _DTYPES, f"--dtype must be one of {', '.join(_DTYPES)}, got {o['dtype']!r}")
    need(o["lora_r"] >= 1, f"--lora-r must be >= 1, got {o['lora_r']}")
    need(o["save_steps"] >= 1, f"--save-steps must be >= 1, got {o['save_steps']}")
    need(not (o["resume"] and o["overwrite"]), "--resume and --overwrite exclude each other")
    need(not (o["records"] and (o["triples"] or o["helpful"])), "--records excludes --triples / --helpful")
    need(not (o["records"] and o["recipe"] == "dpo"), "--recipe dpo trains on triples, not --records")
    need(not (o["keep_adapter"] and not o["lora"]), "--keep-adapter needs --lora")
    for name in ("triples", "helpful", "records"):
        if o[name] is not None and not Path(o[name]).exists() and not (name != "records" and o[name].count("/") == 1):
            raise DeepAlignError(f"no such file: {o[name]}")


# -- CLI -------------------------------------------------------------------------------------


def configure(p) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument("--recipe", choices=RECIPE_CHOICES, default="derta",
                   help="vanilla (q->safe), harmful-prefix (RecAug), rto, derta (prefix + RTO), dpo (safe > harmful)")
    g.add_argument("--model", default=None,
                   help=f"base model dir or hub id (default {DEFAULT_BASE}; for dpo {DEFAULT_DPO_BASE})")
    g.add_argument("--out", default=None, help="output dir (default runs/<recipe>[-lora])")
    g.add_argument("--world", default=DEFAULT_WORLD, help="world dir whose train/ split is the default data")
    g.add_argument("--triples", default=None, help="HarmfulTriple data (jsonl/json/csv/dataset; default: the world's)")
    g.add_argument("--helpful", default=None, help="InstructionPair data (default: the world's)")
    g.add_argument("--records", default=None,
                   help="train on prepared records instead: deepalign records.jsonl or a DeRTa reference file")
    g = p.add_argument_group("recipe")
    g.add_argument("--helpful-count", type=int, default=None, help="helpful records (default all; 0 for none)")
    g.add_argument("--safety-count", type=int, default=None, help="safety records (default: one per triple)")
    g.add_argument("--safety-ratio", type=float, default=None,
                   help="safety records as a share of the helpful count (reference 0.1)")
    g.add_argument("--rto-share", type=float, default=0.5, help="RTO share of the safety records (rto, derta)")
    g.add_argument("--prefix-unit", choices=("words", "tokens"), default="words", help="unit of the harmful prefix k")
    g.add_argument("--k-zero-share", type=float, default=1 / 3, help="share of harmful-prefix records with k = 0")
    g.add_argument("--k-min", type=int, default=1, help="smallest k when k > 0")
    g.add_argument("--k-max", type=int, default=-2, help="largest k; <= 0 counts from the end (-2: len-2)")
    g.add_argument("--rto-keep", type=float, default=None,
                   help="share of RTO positions kept (default 0.05 full fine-tuning, 1.0 LoRA, as the reference)")
    g.add_argument("--rto-weight", type=float, default=1.0, help="weight of an RTO token relative to an MLE token")
    g.add_argument("--rto-append-safe", action="store_true",
                   help="follow the RTO harmful text by the safe response as MLE target (reference: no)")
    g.add_argument("--refusal-word", default=None,
                   help="word whose token is the RTO target (default 'Sorry', or the world's refusal word)")
    g.add_argument("--prompt-template", default=None,
                   help="plain prompt template with {query} (and {bos}); default: the chat template")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=float, default=2.0)
    g.add_argument("--max-steps", type=int, default=-1, help="optimizer steps; > 0 overrides --epochs")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 2e-5 full / 1e-4 LoRA as the reference; larger for tiny models)")
    g.add_argument("--batch-size", type=int, default=16, help="per-device batch size")
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--lr-scheduler", default="cosine", help="any transformers scheduler name")
    g.add_argument("--warmup", type=float, default=0.03, help="warmup: ratio in [0,1) or steps")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--max-length", type=int, default=1024, help="cut sequences to this many tokens")
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "auto"),
                   help="dtype the weights are loaded in")
    g.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                   help="bf16 mixed precision (default: when a GPU supports it)")
    g.add_argument("--no-bf16", dest="bf16", action="store_false")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora", action="store_true", help="train a LoRA adapter (merged into the saved model)")
    g.add_argument("--lora-r", type=int, default=16)
    g.add_argument("--lora-alpha", type=int, default=None, help="default 2 * r")
    g.add_argument("--lora-dropout", type=float, default=0.05)
    g.add_argument("--lora-targets", default="all-linear", help="'all-linear' or comma-separated module names")
    g.add_argument("--keep-adapter", action="store_true", help="save the adapter instead of merging it")
    g = p.add_argument_group("run")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in <out>/checkpoints")
    g.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted run in <out>")
    g.add_argument("--keep-checkpoints", action="store_true", help="keep <out>/checkpoints after success")
    g.add_argument("--save-steps", type=int, default=500, help="checkpoint every N optimizer steps")
    g.add_argument("--logging-steps", type=int, default=10)
    g.add_argument("--quiet", action="store_true", help="no progress bars or logs")


def run(args) -> int:
    kwargs = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    if kwargs.get("prompt_template"):
        kwargs["prompt_template"] = kwargs["prompt_template"].replace("\\n", "\n")
    train(**kwargs)
    return 0
