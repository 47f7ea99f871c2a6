"""What ``train`` builds its trainer from, loaded and checked before the output directory is
touched: :func:`prepare_inputs` gives the data of the recipe's family (triples and helpful
pairs, prepared records, or the (instruction, response) pairs of a fine-tuning attack), the
tokenizer and prompt format, the learning rate, the LoRA config, the training records and the
RTO refusal token, or the constrained objective's reference model. Every check that can fail on
user input is made here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from deepalign.data.datasets import DataOptions, load_train_instructions, load_train_triples
from deepalign.data.recipes import (PAIR_RECIPES, RECORD_RECIPES, build_pair_records, build_records, count_kinds,
                                    load_records, persona, refusal_prefix)
from deepalign.errors import DeepAlignError, OptionError
from deepalign.models import load_tokenizer, model_source
from deepalign.registry import split_list
from deepalign.tokens import Encoder
from deepalign.training.options import BaseTrainOptions, DeRTaOptions, DPOOptions, FinetuneAttackOptions
from deepalign.training.refusal import find_refusal_token
from deepalign.training.trainer import DeRTaConfig


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


def prepare_inputs(opts: BaseTrainOptions, args: DeRTaConfig, data_opts: DataOptions, model_spec: str,
                   source: str) -> Inputs:
    """Data, tokenizer and prompt format, learning rate, LoRA config, records and the RTO
    refusal token (or the constrained objective's reference) of ``opts``' recipe; the model is
    ``model_spec`` as given, found at ``source``."""
    pairs, triples, helpful, manifest, data = [], [], [], {}, {}
    if opts.recipe in PAIR_RECIPES:
        pairs = _load_pairs(opts, data_opts, data)
    elif opts.recipe == "dpo" or opts.records is None:
        triples, helpful, manifest, data = _load_data(opts, data_opts)
    else:
        data = {"records": {"source": opts.records}}
    tokenizer = load_tokenizer(source, trust_remote_code=opts.trust_remote_code, chat_template=opts.chat_template)
    encoder = Encoder(tokenizer, opts.prompt_format, name=model_spec)
    if opts.system_prompt is not None:
        encoder = Encoder(tokenizer, replace(encoder.format, system=opts.system_prompt), name=model_spec)
    n_params, modules = _meta_model(source, opts.trust_remote_code)
    lr = args.learning_rate if args.learning_rate is not None else auto_learning_rate(n_params, opts.use_peft,
                                                                                     opts.recipe)
    peft_config = _lora_config(opts, modules) if opts.use_peft else None
    inputs = Inputs(tokenizer, encoder, triples, helpful, data, n_params, lr, peft_config, pairs)
    if opts.recipe in PAIR_RECIPES:
        _pair_records(opts, args, inputs)
        inputs.ref_source = _reference_source(opts, tokenizer, source)
    elif opts.recipe != "dpo":
        _records(opts, args, inputs, refusal_word=opts.refusal_word or manifest.get("refusal_word"))
    if getattr(args.eval_strategy, "value", args.eval_strategy) != "no" and inputs.eval_records is None:
        raise OptionError("eval_strategy", "needs evaluation data: give --eval_share (a held-out share of the records)")
    return inputs


# -- the DeRTa family and DPO: triples (and helpful pairs) --------------------------------------


def _load_data(opts: DeRTaOptions | DPOOptions, data_opts: DataOptions | None = None):
    """The triples and (for a DeRTa recipe) the helpful pairs: given, or the world's; with the
    world's manifest and where the data came from."""
    data_opts = data_opts or DataOptions()
    world = Path(opts.world)
    reads_helpful = opts.recipe in RECORD_RECIPES and opts.helpful_count != 0
    uses_world = opts.triples is None or (reads_helpful and opts.helpful is None)
    if uses_world and not (world / "train" / "triples.jsonl").exists():
        raise DeepAlignError(f"no world at {world} (expected {world / 'train' / 'triples.jsonl'}); "
                             "run 'deepalign world' first or pass --triples and --helpful")
    t_src = opts.triples or str(world / "train" / "triples.jsonl")
    notes: list[str] = []
    triples = load_train_triples(t_src, data_opts, notes, world=opts.world)
    helpful, h_src = [], None
    if reads_helpful:
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


def _records(opts: DeRTaOptions, args: DeRTaConfig, inputs: Inputs, refusal_word: str | None) -> None:
    """The training records of a DeRTa recipe (built or read), the held-out share and the RTO
    refusal token."""
    if opts.records is not None:
        recs = load_records(opts.records)
        inputs.data["records"]["rows"] = len(recs)
    else:
        recs = build_records(opts.recipe, inputs.triples, inputs.helpful, encoder=inputs.encoder,
                             n_helpful=opts.helpful_count, n_safety=opts.safety_count, safety_ratio=opts.safety_ratio,
                             rto_share=opts.rto_share, prefix_unit=opts.prefix_unit, k_zero_share=opts.k_zero_share,
                             k_min=opts.k_min, k_max=opts.k_max, rto_append_safe=opts.rto_append_safe, seed=args.seed)
    _check_presto(opts, args, recs)
    _hold_out(opts, recs, inputs)
    if inputs.counts.get("rto") or refusal_word is not None:
        inputs.refusal_id, inputs.refusal_piece = find_refusal_token(inputs.tokenizer, refusal_word)


def _check_presto(opts: DeRTaOptions, args: DeRTaConfig, recs: list) -> None:
    """PRESTO regularises the attention paid to a harmful prefix: it needs records that have one."""
    if args.presto_weight <= 0 or any(r.prefix for r in recs):
        return
    where = (f"--records {opts.records} has none" if opts.records is not None else
             f"the records built for --recipe {opts.recipe} have none (each got k = 0, or none is a safety record)")
    raise DeepAlignError(f"--presto_weight needs records with a harmful prefix (a non-empty prefix span); {where}")


def _hold_out(opts: DeRTaOptions | FinetuneAttackOptions, recs: list, inputs: Inputs) -> None:
    """Keep the records, minus the ``--eval_share`` held out for evaluation."""
    if opts.eval_share > 0:
        n_eval = max(1, int(round(opts.eval_share * len(recs))))
        if n_eval >= len(recs):
            raise OptionError("eval_share", f"leaves no training records ({len(recs)} in all)")
        recs, inputs.eval_records = recs[n_eval:], recs[:n_eval]
    inputs.records, inputs.counts = recs, count_kinds(recs)


# -- the fine-tuning attacks: (instruction, response) pairs -------------------------------------


def _load_pairs(opts: FinetuneAttackOptions, data_opts: DataOptions, data: dict[str, Any]) -> list:
    """The (instruction, response) pairs of sft / identity-shift (default: the world's
    fine-tuning attack)."""
    spec = opts.dataset_spec()
    pairs = load_train_instructions(spec, data_opts, world=opts.world)
    if not pairs:
        raise DeepAlignError(f"{spec} has no (instruction, response) pairs")
    data["pairs"] = {"source": spec, "rows": len(pairs)}
    return pairs


def _pair_records(opts: FinetuneAttackOptions, args: DeRTaConfig, inputs: Inputs) -> None:
    """sft / identity-shift / refusal-prefix: one record per pair, in the persona of
    identity-shift, or each answer after the refusal prefix."""
    chosen = None
    if opts.recipe == "identity-shift":
        chosen = persona(opts.persona_name())
        _check_persona(chosen, inputs.encoder)
        inputs.data["pairs"]["persona"] = chosen.name
        inputs.persona = chosen
    elif opts.recipe == "refusal-prefix":
        chosen = refusal_prefix(opts.refusal_prefix_text())
        _check_persona(chosen, inputs.encoder)
        inputs.data["pairs"]["refusal_prefix"] = chosen.intro
    _hold_out(opts, build_pair_records(inputs.pairs, persona=chosen, seed=args.seed), inputs)


def _check_persona(chosen, encoder: Encoder) -> None:
    """The tokenizer must be able to read the persona's words, and the prompt format must keep
    its system prompt."""
    unk = getattr(encoder.tokenizer, "unk_token_id", None)
    for text in chosen.texts():
        ids = encoder.encode_text(text)
        if unk is not None and unk in ids:
            word = next(w for w in text.split() if unk in encoder.encode_text(w))
            if chosen.name == "refusal-prefix":
                raise DeepAlignError(f"the refusal prefix {chosen.intro!r} has words this tokenizer cannot read "
                                     f"({word!r}); give another --refusal_prefix")
            raise DeepAlignError(f"the identity-shift persona {chosen.name!r} has words this tokenizer cannot read "
                                 f"({word!r}); choose another --persona")
    if chosen.system is None:
        return
    probe = chosen.query("hi")
    if encoder.prompt_ids(probe, system=chosen.system) == encoder.prompt_ids(probe, system=""):
        raise DeepAlignError(f"the prompt format of {encoder.name} drops the system prompt, which the "
                             f"identity-shift persona needs; give a chat template with a system role "
                             f"(--chat_template) or a text format with {{system}}")


def _reference_source(opts: FinetuneAttackOptions, tokenizer, source: str) -> str | None:
    """The constrained objective's --ref_model, checked to share the model's tokenizer (the
    loss compares both models' log-probabilities of the same token ids)."""
    if not opts.constrained or opts.ref_model is None:
        return None
    ref_source = model_source(opts.ref_model)
    ref_tok = load_tokenizer(ref_source, trust_remote_code=opts.trust_remote_code)
    vocab, ref_vocab = tokenizer.get_vocab(), ref_tok.get_vocab()
    if vocab != ref_vocab:
        diff = next((t for t in sorted(vocab) if ref_vocab.get(t) != vocab[t]), None) or next(iter(set(ref_vocab) - set(vocab)))
        raise DeepAlignError(f"--ref_model {opts.ref_model}: its tokenizer differs from the model's ({len(ref_vocab)} "
                             f"tokens vs {len(vocab)}; token {diff!r} is {ref_vocab.get(diff)} there, "
                             f"{vocab.get(diff)} here); the reference must share the model's tokenizer")
    sizes = [AutoConfig.from_pretrained(s, trust_remote_code=opts.trust_remote_code).get_text_config().vocab_size
             for s in (source, ref_source)]
    if sizes[0] != sizes[1]:
        raise DeepAlignError(f"--ref_model {opts.ref_model}: its vocabulary has {sizes[1]} rows, the model's {sizes[0]}; "
                             "the reference must share the model's vocabulary")
    return ref_source


# -- the model: LoRA and its size ---------------------------------------------------------------


def _lora_config(opts: BaseTrainOptions, module_names: set[str]):
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
