"""Turning generated token ids into :class:`Generation` objects, shared by every local target:
end-of-sequence ids, continuation text, stop strings and finish reasons."""

from __future__ import annotations

import torch
from transformers import StoppingCriteria

from deepalign.decoding.base import Generation
from deepalign.models import eos_ids, pad_id  # noqa: F401  (decoding's names for them)

_CONTEXT = 8  # prompt tokens decoded with the continuation, so its first space survives


def continuation_text(tokenizer, context: list[int], new: list[int]) -> str:
    """Decode ``new`` as it reads after ``context``: tokenizers that drop a leading space
    when a sequence starts with a word (SentencePiece) keep it here."""
    if not new:
        return ""
    ctx = context[-_CONTEXT:]
    if ctx:
        head = tokenizer.decode(ctx, skip_special_tokens=True)
        full = tokenizer.decode(ctx + list(new), skip_special_tokens=True)
        if full.startswith(head):
            return full[len(head):]
    return tokenizer.decode(list(new), skip_special_tokens=True)


def find_stop(text: str, stops) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def make_generation(
    tokenizer,
    request_id: str,
    sample: int,
    context: list[int],
    new: list[int],
    eos: set[int],
    stops=(),
    logprobs: list[float] | None = None,
) -> Generation:
    """Cut ``new`` at its first EOS or stop string and build the :class:`Generation`.

    The text excludes the EOS token and the stop string; ``num_tokens`` counts the tokens
    the model produced up to that point (the EOS excluded, the token completing a stop
    string included), and ``token_logprobs`` has one entry per counted token.
    """
    tokens = list(new)
    reason = "length"
    for i, t in enumerate(tokens):
        if t in eos:
            tokens, reason = tokens[:i], "eos"
            break
    text = continuation_text(tokenizer, context, tokens)
    cut = find_stop(text, stops)
    if cut >= 0:
        # the fewest tokens whose text already holds a stop string
        lo, hi = 1, len(tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if find_stop(continuation_text(tokenizer, context, tokens[:mid]), stops) >= 0:
                hi = mid
            else:
                lo = mid + 1
        tokens, text, reason = tokens[:lo], text[:cut], "stop"
    lps = None if logprobs is None else [float(x) for x in logprobs[: len(tokens)]]
    return Generation(request_id, sample, text, len(tokens), reason, lps, token_ids=tokens)


class StopOnText(StoppingCriteria):
    """Stop a row once the decoded continuation (tokens after ``prompt_len``) holds a stop
    string. Works on text, so it does not depend on how a tokenizer spells spaces."""

    def __init__(self, tokenizer, stops, prompt_len: int, contexts: list[list[int]]):
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.prompt_len = prompt_len
        self.contexts = contexts

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, self.prompt_len:].tolist()
        n_ctx = len(self.contexts)
        for row, toks in enumerate(new):
            ctx = self.contexts[row * n_ctx // len(new)] if n_ctx else []
            if find_stop(continuation_text(self.tokenizer, ctx, toks), self.stops) >= 0:
                done[row] = True
        return done


def group_generations(tokenizer, requests, config, contexts, rows, eos, logprobs=None) -> list[list[Generation]]:
    """Per request, ``config.num_samples`` generations from the decoded ``rows``.

    ``rows`` holds ``num_samples`` rows per request when sampling, one when greedy (greedy
    decoding is deterministic: the single row stands for every sample).
    """
    copies = config.num_samples if config.do_sample else 1
    out = []
    for i, req in enumerate(requests):
        gens = []
        for s in range(config.num_samples):
            row = i * copies + (s if copies > 1 else 0)
            gens.append(make_generation(tokenizer, req.id, s, contexts[i], rows[row], eos, config.stop_strings,
                                        None if logprobs is None else logprobs[row]))
        out.append(gens)
    return out
