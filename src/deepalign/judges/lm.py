"""What the published fine-tuned judges share: a local causal LM read at the last position of
a plain-text prompt (HarmBench's classifiers answer with one greedy token, StrongREJECT's
scorer is read as the probabilities of the tokens ``1``-``5``), the tokens they answer with,
and the clipping of the judged text with the judge's own tokenizer."""

from __future__ import annotations

from typing import Sequence

from deepalign.errors import DeepAlignError


def load_judge_model(spec: str, device: str | None, what: str):
    """``(model, tokenizer)`` of a local judge model (directory or hub id)."""
    from deepalign.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(spec, hint=f" (the {what} model)")
    model = load_causal_lm(spec, dtype="auto", device=device or "auto")
    return model, tokenizer


def single_token(tokenizer, word: str, source: str) -> int:
    """The id of a single token that decodes to ``word`` (any case, any leading space), or a
    one-line error: a judge that answers with one token needs its tokenizer to have one."""
    for variant in (word, word.capitalize(), word.upper(), " " + word, " " + word.capitalize()):
        ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and tokenizer.decode(ids).strip().lower() == word.lower():
            return ids[0]
    raise DeepAlignError(f"{source}: its tokenizer has no single token for {word!r}; this judge answers with one "
                         "token, so the model cannot be this judge")


def vocab_tokens(tokenizer, pieces: Sequence[str], source: str) -> list[int]:
    """The vocabulary ids of ``pieces`` as written (``tokenizer.vocab[piece]``), or a one-line error."""
    vocab = tokenizer.get_vocab()
    missing = [p for p in pieces if p not in vocab]
    if missing:
        raise DeepAlignError(f"{source}: its tokenizer has no token {missing[0]!r} in its vocabulary (this judge reads "
                             f"the probabilities of the tokens {', '.join(pieces)})")
    return [vocab[p] for p in pieces]


def clip(tokenizer, text: str, max_tokens: int, *, side: str, skip_special_tokens: bool) -> str:
    """``text`` cut to ``max_tokens`` tokens of ``tokenizer`` (special tokens it adds counted,
    as ``tokenizer(text, max_length=..., truncation=True)`` counts them) and decoded back."""
    saved = tokenizer.truncation_side
    tokenizer.truncation_side = side
    try:
        ids = tokenizer(text, max_length=max_tokens, truncation=True)["input_ids"]
    finally:
        tokenizer.truncation_side = saved
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def last_logits(model, sequences: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 8):
    """The next-token logits after each id sequence (a float32 CPU tensor ``[n, vocab]``).
    Batches are left-padded with an attention mask and position ids counted from each
    sequence's own first token, so a sequence's logits do not depend on its batch; only the
    last position's logits are computed where the model can (``logits_to_keep``)."""
    import inspect

    import torch

    from deepalign.models import left_pad

    device = next(model.parameters()).device
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out = []
    for start in range(0, len(sequences), batch_size):
        ids, mask = left_pad([list(s) for s in sequences[start:start + batch_size]], pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, **keep).logits[:, -1]
        out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.empty(0)
