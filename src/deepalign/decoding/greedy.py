"""Greedy decoding of a Hugging Face causal LM: ``model.generate``'s rows, bit for bit, with
less work around each forward.

On a small model a decoding step of ``generate`` spends a fifth of its time outside the model
(on the world's model, batch 64: 1.5 ms of 7.7 ms; ``benchmarks/bench_study.py``): logits
processors and stopping criteria run over the whole batch, inputs are prepared anew. This loop
runs the same forwards and applies only what a greedy row needs:

* positions from the attention mask (padding's set to 0, as ``generate`` does), the prompt's
  forward keeping only the last position's logits where the model allows it, then one token a
  step with the KV cache (:mod:`deepalign.decoding.cache`); a finished row stays in the batch,
  fed the padding id, as in ``generate``, so every forward has ``generate``'s shapes and every
  running row its bits (a row's logits can change in the last bits when the batch around it
  shrinks, so finished rows are not dropped);
* float32 logits, the suppressed ids and (before ``min_new_tokens``) the end-of-sequence ids set
  to minus infinity, the first index of the maximum chosen;
* a row ends at an end-of-sequence id, or when ``stop(row, tokens)`` says so (stop strings);
  log-probs are the raw logits' log-softmax over the first ``vocab`` ids.

It is used only where ``generate`` would apply nothing else: a model whose generation config
asks for no processor of its own (:func:`plain_greedy`). ``tests/test_decoding.py`` compares its
rows (text, token count, finish reason, log-probs) with ``generate``'s.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from deepalign.decoding.cache import cache_kwarg

# generation-config fields that change nothing in greedy decoding (sampling settings, ids,
# lengths, output switches; HFTarget passes its own num_return_sequences); any other field set on
# a model sends it to ``generate``
_HARMLESS = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version",
             "_from_model_config", "use_cache", "do_sample", "temperature", "top_k", "top_p", "typical_p", "min_p",
             "max_length", "max_new_tokens", "output_attentions", "output_hidden_states", "output_scores",
             "output_logits", "return_dict_in_generate", "num_return_sequences"}


def plain_greedy(model) -> bool:
    """Whether ``generate``'s greedy decoding of ``model`` applies only what this loop applies:
    no logits processor, beam or cache setting from the model's generation config."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return False
    diff = config.to_diff_dict()
    return all(key in _HARMLESS or _neutral(key, value) for key, value in diff.items())


def _neutral(key: str, value) -> bool:
    """A generation setting at the value that does nothing (a config may spell the default out)."""
    if value in (None, False) or value == [] or value == {}:
        return True
    if key.endswith("penalty"):
        return value == 1.0
    if key in ("num_beams", "num_beam_groups"):
        return value == 1
    return key in ("no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "min_length", "min_new_tokens") and value == 0


@torch.inference_mode()
def greedy_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache, *, max_new_tokens: int,
                  eos: set[int], suppress: list[int], pad: int, min_new_tokens: int = 0,
                  stop: Callable[[int, list[int]], bool] | None = None,
                  vocab: int | None = None) -> tuple[list[list[int]], list[list[float]] | None]:
    """Greedy rows for a left-padded batch (see the module doc): per row its new tokens (the
    end-of-sequence id included where it ended so), and with ``vocab`` its log-probs."""
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    extra = {cache_kwarg(model): cache, **({"logits_to_keep": 1} if keep else {})}
    mask = attention_mask
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
    logits = out.logits[:, -1, :].to(dtype=torch.float32)
    last = pos[:, -1:]
    device = logits.device
    # ids past the logits are ignored, as generate's processors ignore them (they mask by isin)
    width = logits.shape[-1]
    suppress = sorted(i for i in suppress if 0 <= i < width)
    masked_ends = sorted(i for i in eos if 0 <= i < width)
    banned = torch.tensor(suppress, dtype=torch.long, device=device) if suppress else None
    ends = torch.tensor(masked_ends, dtype=torch.long, device=device) if masked_ends else None
    n = input_ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] | None = [[] for _ in range(n)] if vocab else None
    running = [True] * n
    for step in range(max_new_tokens):
        scores = logits
        if banned is not None or (ends is not None and step < min_new_tokens):
            scores = logits.clone()
            if banned is not None:
                scores[:, banned] = float("-inf")
            if ends is not None and step < min_new_tokens:
                scores[:, ends] = float("-inf")
        nxt = scores.argmax(-1)
        chosen = nxt.tolist()
        if logprobs is not None:
            lps = logits[:, :vocab].log_softmax(-1).gather(-1, nxt[:, None]).squeeze(-1).tolist()
        for row in range(n):
            if not running[row]:
                continue
            tokens[row].append(chosen[row])
            if logprobs is not None:
                logprobs[row].append(lps[row])
            if chosen[row] in eos or (stop is not None and stop(row, tokens[row])):
                running[row] = False
        if step + 1 == max_new_tokens or not any(running):
            break
        # finished rows stay in the batch, fed padding, as generate() feeds them: every forward
        # has generate's shapes, so every running row gets generate's bits
        if not all(running):
            nxt = torch.where(torch.tensor(running, device=device), nxt, torch.full_like(nxt, pad))
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=-1)
        last = last + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last, use_cache=True, **extra)
        logits = out.logits[:, -1, :].to(dtype=torch.float32)
    return tokens, logprobs
