"""Logit arithmetic: decode from a weighted sum of several models' next-token log-probs.

    log p(y_t) = log_softmax( sum_i w_i * log_softmax(logits_i(y_t | x_i, y_<t)) )

Each model ``i`` sees the query in its **own** prompt format ``x_i`` and all of them continue
the **same** response tokens ``y_<t``, so they must share a vocabulary (checked up front). A
forced start of the response (a prefill) is tokenised once, as the first component's format
places it (:mod:`deepalign.tokens`), and those ids are forced on every component.
Emulated Disalignment, emulated fine-tuning / proxy-tuning and weak-to-strong jailbreaking
are all instances (see :mod:`deepalign.decoding.presets`).

The loop is compact and cached: every model is prefilled once on its left-padded batch of
prompts and then advanced one token per step with its own KV cache (a ``DynamicCache`` growing in place,
:mod:`deepalign.decoding.cache`),
attention mask and position ids; nothing is re-tokenised. Rows that finish leave the batch.
Sampling draws each row's uniforms from its own generator, seeded by (seed, request id,
sample index), so a row's sample does not depend on what else is in the batch.
"""

from __future__ import annotations

import inspect
import os
import warnings
import zlib
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from deepalign.decoding.base import GenConfig, Generation, Request
from deepalign.decoding.cache import cache_kwarg, reserved_cache
from deepalign.decoding.hf import Batched, PromptIds, left_pad, mark_forced
from deepalign.decoding.output import continuation_text, eos_ids, find_stop, group_generations, pad_id
from deepalign.errors import DeepAlignError
from deepalign.models import load_causal_lm, load_tokenizer, logits_width
from deepalign.tokens import Encoder, PromptFormat

_FLOOR = -1e4  # log-probs are clamped here so that -inf times a negative weight stays finite


def refuse_servers(models: dict[str, str], where: str) -> None:
    """Refuse, in one line and before anything loads, a component given as a server
    (``openai:...`` or a URL): logit arithmetic combines every model's *full* next-token
    distribution at every step, and an OpenAI-compatible server returns sampled tokens with at
    most a few top log-probs. ``models``: role -> spec; ``where``: what to name in the message."""
    import re

    for role, spec in models.items():
        text = str(spec or "").strip()
        if text.partition(":")[0].strip().lower() == "openai" or "://" in text:
            shown = re.sub(r"(://)[^/@\s]*@", r"\1", text)  # never a user:password from the URL
            raise DeepAlignError(
                f"{where}: {role}={shown} is a server, but composed decoding (ED, EFT, W2S) needs each model's full "
                "next-token distribution at every step, which an OpenAI-compatible server does not return (at most "
                f"a few top log-probs); give {role} as a local model directory or hub id")


@dataclass
class Component:
    """One model of a composition: its weight and the prompt format it reads queries in
    (``None``: its chat template when it has one, else the default text template), with an
    optional default system prompt."""

    model: object
    tokenizer: object
    weight: float
    prompt_format: PromptFormat | str | None = None
    name: str = ""
    system: str | None = None
    truncate: bool = False

    def __post_init__(self):
        if not self.name:
            self.name = getattr(self.model, "name_or_path", "") or type(self.model).__name__
        fmt = PromptFormat.for_tokenizer(self.tokenizer, self.prompt_format)
        if self.system is not None:
            fmt = replace(fmt, system=self.system)
        self.prompt_format = fmt
        self.encoder = Encoder(self.tokenizer, fmt, name=self.name)
        self.ids = PromptIds(self.encoder, self.model, truncate=self.truncate)

    @classmethod
    def load(cls, path_or_id, weight: float, prompt_format=None, *, system: str | None = None,
             chat_template: str | None = None, truncate: bool = False, dtype: str = "auto",
             device: str | None = "auto", device_map: str | None = None, trust_remote_code: bool = False) -> Component:
        tokenizer = load_tokenizer(path_or_id, trust_remote_code=trust_remote_code, chat_template=chat_template)
        model = load_causal_lm(path_or_id, dtype=dtype, device=device, device_map=device_map,
                               trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, weight, prompt_format, os.fspath(path_or_id), system, truncate)


def _id_to_token(tokenizer, size: int) -> list[str | None]:
    table: list[str | None] = [None] * size
    for token, idx in tokenizer.get_vocab().items():
        if idx < size:
            table[idx] = token
    return table


def check_vocabularies(components: Sequence[Component]) -> int:
    """Check that all components spell every shared id the same way; return the shared size.

    The shared size is the smallest tokenizer size and logits width (models often pad their
    output layer beyond the tokenizer); ids at or above it are never generated. A mismatch
    raises :class:`DeepAlignError` naming the first differing id and its tokens.
    """
    size = min(min(len(c.tokenizer) for c in components), min(logits_width(c.model) for c in components))
    first = components[0]
    ref = None
    for other in components[1:]:
        if other.tokenizer is first.tokenizer:
            continue
        if ref is None:
            ref = _id_to_token(first.tokenizer, size)
        table = _id_to_token(other.tokenizer, size)
        if table != ref:
            i = next(i for i in range(size) if table[i] != ref[i])
            raise DeepAlignError(
                f"vocabularies differ at id {i}: {first.name} has {ref[i]!r}, {other.name} has {table[i]!r}; "
                "composed models must share one tokenizer"
            )
    return size


def row_seed(seed: int, request_id: str, sample: int) -> int:
    return zlib.crc32(f"{seed}:{request_id}:{sample}".encode("utf-8"))


@dataclass
class _State:
    """One component's running batch: KV cache, attention mask, last position, last logits."""

    cache: object
    mask: torch.Tensor
    pos: torch.Tensor
    logits: torch.Tensor

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep.to(self.mask.device))
        k = keep.to(self.mask.device)
        self.mask, self.pos = self.mask[k], self.pos[k]


@dataclass
class Decoded:
    """Raw decoding result, one entry per row (request x sample)."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    dists: list[list[torch.Tensor]] | None = None  # per row, per step: composed log-probs


class ComposedTarget(Batched):
    """A :class:`~deepalign.decoding.base.Target` decoding from a weighted sum of models."""

    def __init__(self, components: Sequence[Component], *, name: str | None = None, batch_size: int = 16,
                 generation: dict | None = None):
        components = list(components)
        if not components:
            raise DeepAlignError("a composition needs at least one model")
        if batch_size < 1:
            raise DeepAlignError(f"batch_size must be >= 1, got {batch_size}")
        import math

        if any(not math.isfinite(c.weight) for c in components):
            raise DeepAlignError(f"composition weights must be finite numbers, got {[c.weight for c in components]}")
        if all(c.weight == 0 for c in components):
            raise DeepAlignError("all composition weights are zero")
        self.components = components
        self.name = name or " + ".join(f"{c.weight:g}*{c.name}" for c in components)
        self.batch_size = batch_size
        self.generation = dict(generation or {})
        self.vocab_size = check_vocabularies(components)
        # a zero-weight model contributes nothing: it is not run
        self.active = [c for c in components if c.weight != 0]
        self.decoder = components[0]  # its tokenizer turns the shared response tokens into text
        eos: set[int] = set()
        for c in components:
            eos |= eos_ids(c.model, c.tokenizer)
        self.eos = {e for e in eos if e < self.vocab_size}
        self._eos_tensor = torch.tensor(sorted(self.eos), dtype=torch.long)
        params = [inspect.signature(c.model.forward).parameters for c in self.active]
        self._keep_arg = ["logits_to_keep" in p for p in params]
        self._cache_arg = [cache_kwarg(c.model) for c in self.active]
        self._warned = False

    @property
    def device(self) -> torch.device:
        return next(self.active[0].model.parameters()).device

    # -- Target protocol ----------------------------------------------------------------
    def render(self, request: Request) -> str:
        return self.decoder.encoder.decode(self.decoder.ids(request)[0])

    def forced(self, requests: Sequence[Request]) -> list[list[int]]:
        """The forced ids of each request: the first component's tokenisation of the prefill,
        shared by every component (which all continue the same response tokens)."""
        out = []
        for r in requests:
            ids = self.decoder.ids.forced_ids(r)
            if r.prefill_ids is not None:  # the target's own ids: no tokenisation to differ
                bad = [i for i in ids if i >= self.vocab_size]
                if bad:
                    raise DeepAlignError(f"request {r.id!r}: prefill_ids {bad[:5]} are outside the {self.vocab_size} "
                                         f"ids the models of {self.name} share")
            elif ids and not self._warned:
                for c in self.active:
                    if c is not self.decoder and c.ids.forced_ids(r) != ids:
                        warnings.warn(f"{c.name} tokenises the forced start of request {r.id!r} differently in its "
                                      f"own format; the ids of {self.decoder.name} are forced on every model",
                                      stacklevel=3)
                        self._warned = True
                        break
            out.append(ids)
        return out

    def _generate_batch(self, requests: list[Request], config: GenConfig) -> list[list[Generation]]:
        copies = config.num_samples if config.do_sample else 1
        seeds = [row_seed(config.seed, r.id, s) for r in requests for s in range(copies)]
        forced = self.forced(requests)
        decoded = self.decode(requests, config, copies=copies, seeds=seeds, forced=forced)
        context = [self.decoder.ids(r, config.max_new_tokens, forced=f)[0] for r, f in zip(requests, forced)]
        gens = group_generations(self.decoder.tokenizer, requests, config, context, decoded.tokens, self.eos,
                                 decoded.logprobs if config.return_logprobs else None)
        return mark_forced(gens, forced, self.decoder.tokenizer)

    @torch.inference_mode()
    def next_logprobs(self, requests: Sequence[Request]) -> torch.Tensor:
        """Per request, the composed log-probabilities (over the shared vocabulary, float32, on
        the CPU) of the token that follows the prompt and its forced start: the distribution the
        first step of :meth:`decode` draws from."""
        out = []
        for start in range(0, len(requests), self.batch_size):
            batch = list(requests[start:start + self.batch_size])
            forced = self.forced(batch)
            prompts = [[c.ids(r, 1, forced=f)[0] for r, f in zip(batch, forced)] for c in self.active]
            states = [self._prefill(k, prompts[k], 1, 1) for k in range(len(self.active))]
            out.append(self._compose(states).cpu())
        return torch.cat(out) if out else torch.empty(0, self.vocab_size)

    # -- the cached loop ----------------------------------------------------------------
    def _forward(self, k: int, ids, mask, pos, cache) -> torch.Tensor:
        c = self.active[k]
        extra = {"logits_to_keep": 1} if self._keep_arg[k] else {}
        extra[self._cache_arg[k]] = cache
        out = c.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
        return out.logits[:, -1, : self.vocab_size].float()

    def _prefill(self, k: int, prompts: list[list[int]], copies: int, reserve: int) -> _State:
        c = self.active[k]
        device = next(c.model.parameters()).device
        ids, mask = left_pad(prompts, pad_id(c.tokenizer, eos_ids(c.model, c.tokenizer)), device)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = reserved_cache(c.model, reserve)
        logits = self._forward(k, ids, mask, pos, cache)
        last = pos[:, -1]
        if copies > 1:
            cache.batch_repeat_interleave(copies)
            mask = mask.repeat_interleave(copies, dim=0)
            last = last.repeat_interleave(copies, dim=0)
            logits = logits.repeat_interleave(copies, dim=0)
        return _State(cache, mask, last, logits)

    def _compose(self, states: list[_State]) -> torch.Tensor:
        device = self.device
        total = None
        for c, st in zip(self.active, states):
            term = c.weight * st.logits.to(device).log_softmax(-1).clamp_min(_FLOOR)
            total = term if total is None else total + term
        return total.log_softmax(-1)

    def _warpers(self, config: GenConfig):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        procs = LogitsProcessorList()
        if config.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            procs.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            procs.append(TopPLogitsWarper(config.top_p))
        return procs

    @torch.inference_mode()
    def decode(self, requests: Sequence[Request], config: GenConfig, *, copies: int = 1,
               seeds: Sequence[int] | None = None, record: bool = False,
               forced: Sequence[list[int]] | None = None) -> Decoded:
        """Decode ``copies`` rows per request (rows ordered request-major); return the raw
        token ids and composed log-probs. ``record`` keeps every step's full composed
        distribution (for analysis and tests)."""
        n_rows = len(requests) * copies
        device = self.device
        forced = self.forced(requests) if forced is None else forced
        prompts = [[c.ids(r, config.max_new_tokens, forced=f)[0] for r, f in zip(requests, forced)]
                   for c in self.active]
        states = [self._prefill(k, prompts[k], copies, config.max_new_tokens) for k in range(len(self.active))]

        uniforms = None
        warpers = None
        if config.do_sample:
            seeds = list(seeds) if seeds is not None else [row_seed(config.seed, r.id, s) for r in requests
                                                           for s in range(copies)]
            gens = [torch.Generator().manual_seed(s) for s in seeds]
            uniforms = torch.stack([torch.rand(config.max_new_tokens, generator=g, dtype=torch.float64)
                                    for g in gens]).to(device)
            warpers = self._warpers(config)

        eos = self._eos_tensor.to(device)
        stops = tuple(s for s in config.stop_strings if s)
        contexts = prompts[0] if stops and self.active[0] is self.decoder else None
        if stops and contexts is None:
            contexts = [self.decoder.ids(r, config.max_new_tokens, forced=f)[0] for r, f in zip(requests, forced)]

        tokens: list[list[int]] = [[] for _ in range(n_rows)]
        logprobs: list[list[float]] = [[] for _ in range(n_rows)]
        dists = [[] for _ in range(n_rows)] if record else None
        alive = torch.arange(n_rows, device=device)  # original row index of each batch row

        for t in range(config.max_new_tokens):
            lp = self._compose(states)
            scores = lp
            if len(eos) and (config.suppress_eos or t < config.min_new_tokens):
                scores = lp.clone()
                scores[:, eos] = float("-inf")
            if config.do_sample:
                scores = warpers(None, scores)
                probs = scores.softmax(-1, dtype=torch.float64)
                cdf = probs.cumsum(-1)
                u = uniforms[alive, t].unsqueeze(-1) * cdf[:, -1:]
                nxt = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(cdf.shape[-1] - 1)
                bad = probs.gather(-1, nxt[:, None]).squeeze(-1) <= 0  # rounding at the very top
                if bad.any():
                    nxt = torch.where(bad, probs.argmax(-1), nxt)
            else:
                nxt = scores.argmax(-1)
            chosen = lp.gather(-1, nxt[:, None]).squeeze(-1)

            rows = alive.tolist()
            nxt_list, chosen_list = nxt.tolist(), chosen.tolist()
            done = []
            for j, r in enumerate(rows):
                tokens[r].append(nxt_list[j])
                logprobs[r].append(chosen_list[j])
                if record:
                    dists[r].append(lp[j].cpu())
                if nxt_list[j] in self.eos:
                    done.append(j)
                elif stops:
                    text = continuation_text(self.decoder.tokenizer, contexts[r // copies], tokens[r])
                    if find_stop(text, stops) >= 0:
                        done.append(j)
            if t + 1 == config.max_new_tokens or len(done) == len(rows):
                break
            if done:
                keep = torch.tensor(sorted(set(range(len(rows))) - set(done)), dtype=torch.long, device=device)
                alive, nxt = alive[keep], nxt[keep]
                for st in states:
                    st.select(keep)
            for k, st in enumerate(states):
                dev = st.mask.device
                st.mask = torch.cat([st.mask, st.mask.new_ones((st.mask.shape[0], 1))], dim=-1)
                st.pos = st.pos + 1
                st.logits = self._forward(k, nxt.to(dev)[:, None], st.mask, st.pos[:, None], st.cache)
        return Decoded(tokens, logprobs, dists)
