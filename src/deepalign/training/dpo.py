"""The DPO baseline of the DeRTa paper: preference optimisation with safe > harmful pairs on
top of the vanilla-SFT model, with TRL's ``DPOTrainer`` (TRL 1.x API: ``DPOConfig`` is a
``TrainingArguments`` subclass; ``ref_model=None`` uses the initial policy as reference, or
the adapter-disabled model with LoRA).

Pairs come from :class:`~deepalign.data.records.HarmfulTriple`: prompt = the query,
chosen = the safe response, rejected = the harmful response. With a chat template the
pairs are given to TRL in conversational form (TRL renders them with the tokenizer's chat
template); otherwise as text with the plain prompt template (TRL appends the eos token).
"""

from __future__ import annotations

from typing import Any, Sequence

from deepalign.data.records import HarmfulTriple
from deepalign.errors import DeepAlignError


def preference_rows(triples: Sequence[HarmfulTriple], fmt, tokenizer=None) -> list[dict[str, Any]]:
    """``{"prompt", "chosen", "rejected"}`` rows for TRL (conversational for chat formats)."""
    rows = []
    adds_bos = False
    if fmt.kind == "plain" and tokenizer is not None and tokenizer.bos_token_id is not None:
        ids = tokenizer("a")["input_ids"]  # TRL tokenizes text with special tokens
        adds_bos = bool(ids) and ids[0] == tokenizer.bos_token_id
    for t in triples:
        if fmt.kind == "chat":
            rows.append({"prompt": [{"role": "user", "content": t.query}],
                         "chosen": [{"role": "assistant", "content": t.safe}],
                         "rejected": [{"role": "assistant", "content": t.harmful}]})
        else:
            prompt = fmt.prompt(t.query)
            if adds_bos and fmt.bos and prompt.startswith(fmt.bos):
                prompt = prompt[len(fmt.bos):]
            rows.append({"prompt": prompt, "chosen": fmt.lead + t.safe, "rejected": fmt.lead + t.harmful})
    return rows


def dpo_config(*, output_dir: str, beta: float = 0.1, **kwargs):
    """A ``trl.DPOConfig`` (``kwargs``: any ``TrainingArguments`` / ``DPOConfig`` field)."""
    from trl import DPOConfig

    if beta <= 0:
        raise DeepAlignError(f"--beta must be > 0, got {beta}")
    kwargs.setdefault("report_to", "none")
    return DPOConfig(output_dir=output_dir, beta=beta, remove_unused_columns=False, **kwargs)


def build_dpo_trainer(model, tokenizer, triples: Sequence[HarmfulTriple], fmt, args, *, peft_config=None,
                      callbacks=None):
    """A ready ``trl.DPOTrainer`` for the safe > harmful pairs of ``triples``; ``args``: a
    ``DPOConfig`` (see :func:`dpo_config`)."""
    from datasets import Dataset
    from trl import DPOTrainer

    if not triples:
        raise DeepAlignError("DPO needs at least one (query, harmful, safe) triple")
    data = Dataset.from_list(preference_rows(triples, fmt, tokenizer))
    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=data, processing_class=tokenizer,
                      peft_config=peft_config, callbacks=callbacks)
