"""The DPO baseline of the DeRTa paper: preference optimisation with safe > harmful pairs on
top of the vanilla-SFT model, with TRL's ``DPOTrainer`` (TRL 1.x API: ``DPOConfig`` is a
``TrainingArguments`` subclass; ``ref_model=None`` uses the initial policy as reference, or
the adapter-disabled model with LoRA).

Pairs come from :class:`~deepalign.records.HarmfulTriple`: prompt = the query,
chosen = the safe response, rejected = the harmful response. With a chat template the
pairs are given to TRL in conversational form (TRL renders them with the tokenizer's chat
template); otherwise as text with the plain prompt template (TRL appends the eos token).
"""

from __future__ import annotations

from typing import Any, Sequence

from deepalign.records import HarmfulTriple
from deepalign.errors import DeepAlignError, OptionError


def preference_rows(triples: Sequence[HarmfulTriple], encoder) -> list[dict[str, Any]]:
    """``{"prompt", "chosen", "rejected"}`` rows for TRL: conversational for chat formats (TRL
    renders them with the tokenizer's chat template), text otherwise (the prompt as the
    format writes it, the responses after the format's lead; TRL adds BOS and EOS)."""
    rows = []
    for t in triples:
        if encoder.format.kind == "chat":
            rows.append({"prompt": encoder.messages(t.query),
                         "chosen": [{"role": "assistant", "content": t.safe}],
                         "rejected": [{"role": "assistant", "content": t.harmful}]})
        else:
            prompt = encoder.prompt_text(t.query)
            lead = encoder.lead(prompt)
            rows.append({"prompt": prompt, "chosen": lead + t.safe, "rejected": lead + t.harmful})
    return rows


def dpo_config(args, *, beta: float = 0.1):
    """A ``trl.DPOConfig`` carrying every ``TrainingArguments`` setting of ``args`` (a
    :class:`~deepalign.training.trainer.DeRTaConfig`), plus ``beta`` and ``max_length``."""
    import dataclasses

    from transformers import TrainingArguments
    from trl import DPOConfig

    if not beta > 0:
        raise OptionError("beta", f"must be > 0, got {beta}")
    shared = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    shared.update(remove_unused_columns=False, prediction_loss_only=False)
    return DPOConfig(**shared, beta=beta, max_length=args.max_length)


def build_dpo_trainer(model, tokenizer, triples: Sequence[HarmfulTriple], encoder, args, *, peft_config=None,
                      callbacks=None):
    """A ready ``trl.DPOTrainer`` for the safe > harmful pairs of ``triples``; ``args``: a
    ``DPOConfig`` (see :func:`dpo_config`), ``encoder`` the model's prompt format."""
    from datasets import Dataset
    from trl import DPOTrainer

    if not triples:
        raise DeepAlignError("DPO needs at least one (query, harmful, safe) triple")
    data = Dataset.from_list(preference_rows(triples, encoder))
    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=data, processing_class=tokenizer,
                      peft_config=peft_config, callbacks=callbacks)
