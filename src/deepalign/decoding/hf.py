"""A plain Hugging Face causal LM as a :class:`~deepalign.decoding.base.Target`: batches of
requests answered with ``model.generate`` (left padding, greedy or sampling, stop strings,
EOS suppression, per-token log-probs; a KV cache that grows in place, :mod:`deepalign.decoding.cache`;
greedy rows by :mod:`deepalign.decoding.greedy`, ``generate``'s rows with less work per step),
every prompt and forced start tokenised by the token
contract of :mod:`deepalign.tokens`.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, Sequence

import torch

from deepalign.decoding.base import GenConfig, Generation, Request
from deepalign.decoding.cache import cache_kwarg, reserved_cache
from deepalign.decoding.greedy import greedy_decode, plain_greedy
from deepalign.decoding.output import StopOnText, continuation_text, eos_ids, find_stop, group_generations, pad_id
from deepalign.errors import DeepAlignError
from deepalign.models import left_pad, load_causal_lm, load_tokenizer, logits_width  # noqa: F401
from deepalign.tokens import Encoder, PromptFormat


def chunks(seq: Sequence, size: int):
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def max_positions(model) -> int | None:
    """How many positions the model can attend to (None when its config does not say)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class PromptIds:
    """Requests to token ids for one model: the token contract plus the forced start."""

    def __init__(self, encoder: Encoder, model=None, *, truncate: bool = False):
        self.encoder = encoder
        self.limit = max_positions(model) if model is not None else None
        self.truncate = truncate

    def __call__(self, request: Request, max_new_tokens: int = 0, forced: list[int] | None = None
                 ) -> tuple[list[int], list[int]]:
        """``(prompt ids with the forced start, forced ids)``. ``forced`` imposes the forced
        ids (a composed decoder forces one tokenisation on every component)."""
        enc = self.encoder
        if request.text is not None:
            ids, own = enc.raw_ids(request.text + request.prefill), []
        elif request.prefill_ids is not None and forced is None:
            own = list(request.prefill_ids)
            ids = enc.prompt_ids(request.query, request.system) + own
        elif request.prefill and forced is None:
            prompt, own = enc.conversation(request.query, request.prefill, system=request.system, end=False)
            if request.prefill_tokens is not None:
                own = own[: request.prefill_tokens]
            ids = prompt + own
        else:
            own = list(forced or [])
            ids = enc.prompt_ids(request.query, request.system) + own
        if not ids:
            raise DeepAlignError(f"request {request.id!r} renders to an empty prompt")
        if request.prefill_ids is not None and forced is None:
            size = len(enc.tokenizer)
            bad = [i for i in request.prefill_ids if i >= size]
            if bad:
                raise DeepAlignError(f"request {request.id!r}: prefill_ids {bad[:5]} are not ids of {enc.name}'s "
                                     f"tokenizer ({size} tokens)")
        if self.limit is not None and len(ids) + max_new_tokens > self.limit:
            if not self.truncate:
                raise DeepAlignError(
                    f"request {request.id!r}: {len(ids)} prompt tokens + {max_new_tokens} new tokens exceed the "
                    f"{self.limit} positions of {enc.name}; shorten the input, lower --max_new_tokens, or give the "
                    "target truncate=true (keeps the end of the prompt)")
            keep = max(1, self.limit - max_new_tokens)
            ids = ids[-keep:]
        return ids, own

    def forced_ids(self, request: Request) -> list[int]:
        """The forced ids of ``request`` in this model's own tokenisation."""
        if request.prefill_ids is not None:
            return list(request.prefill_ids)
        if request.text is not None or not request.prefill:
            return []
        own = self.encoder.response_ids(request.query, request.prefill, system=request.system, end=False)
        return own[: request.prefill_tokens] if request.prefill_tokens is not None else own


class Batched:
    """What the local targets share: requests are generated ``batch_size`` at a time
    (``_generate_batch``), with the target's own decoding settings (``generation``: an ED
    family's reference decoding, spec options) over the run's."""

    batch_size: int
    generation: dict

    def generate(self, requests: Sequence[Request], config: GenConfig) -> list[list[Generation]]:
        config = apply_overrides(config, self.generation)
        out: list[list[Generation]] = []
        for batch in chunks(list(requests), self.batch_size):
            out.extend(self._generate_batch(batch, config))
        return out


class HFTarget(Batched):
    """A Hugging Face causal LM answering requests in its own prompt format.

    ``model`` / ``tokenizer`` may be loaded objects or, for ``model``, a directory / hub id
    (loaded with :func:`deepalign.models.load_causal_lm`). ``prompt_format``: chat (the
    tokenizer's template), text, ``text:<template>``, raw, or a ``.txt`` file; by default the
    chat template when the tokenizer has one, else the default text template. ``system``: a
    default system prompt. ``chat_template``: a Jinja template (file) replacing the
    tokenizer's. ``truncate``: keep the end of prompts that exceed the model's positions
    instead of failing. ``generation``: settings that override the run's :class:`GenConfig`
    for this target (e.g. ``{"stop_strings": [...], "top_k": 50}``).
    """

    def __init__(self, model, tokenizer=None, *, prompt_format: str | PromptFormat | None = None,
                 system: str | None = None, chat_template: str | None = None, name: str | None = None,
                 batch_size: int = 16, truncate: bool = False, generation: dict | None = None, dtype: str = "auto",
                 device: str | None = "auto", device_map: str | None = None, trust_remote_code: bool = False):
        if isinstance(model, (str, os.PathLike)):
            name = name or os.fspath(model)
            tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code, chat_template=chat_template)
            model = load_causal_lm(model, dtype=dtype, device=device, device_map=device_map,
                                   trust_remote_code=trust_remote_code)
        elif chat_template is not None:
            from deepalign.models import set_chat_template

            set_chat_template(tokenizer, chat_template)
        if tokenizer is None:
            raise DeepAlignError("HFTarget needs a tokenizer with a loaded model")
        if batch_size < 1:
            raise DeepAlignError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.name = name or getattr(model, "name_or_path", None) or type(model).__name__
        fmt = PromptFormat.for_tokenizer(tokenizer, prompt_format)
        if system is not None:
            from dataclasses import replace

            fmt = replace(fmt, system=system)
        self.encoder = Encoder(tokenizer, fmt, name=self.name)
        self.ids = PromptIds(self.encoder, model, truncate=truncate)
        self.batch_size = batch_size
        self.generation = dict(generation or {})
        self.eos = eos_ids(model, tokenizer)
        self.pad = pad_id(tokenizer, self.eos)
        self._cache_arg = cache_kwarg(model)  # generate() takes the cache by the model's name for it

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def render(self, request: Request) -> str:
        return self.encoder.decode(self.ids(request)[0])

    @torch.inference_mode()
    def next_logprobs(self, requests: Sequence[Request]) -> torch.Tensor:
        """Per request, the log-probabilities (over the tokenizer's vocabulary, float32, on the
        CPU) of the token that follows the prompt and its forced start: one forward pass per
        batch of ``batch_size`` left-padded rows, positions counted from each row's first token
        as ``generate`` counts them."""
        out = []
        size = len(self.tokenizer)
        for batch in chunks(list(requests), self.batch_size):
            prompts = [self.ids(r, 1)[0] for r in batch]
            ids, mask = left_pad(prompts, self.pad, self.device)
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
            out.append(logits[:, -1, :size].float().log_softmax(-1).cpu())
        return torch.cat(out) if out else torch.empty(0, size)

    def _cache(self, config: GenConfig):
        """A KV cache that grows in place (:mod:`deepalign.decoding.cache`: the same tokens as
        ``generate``'s own ``DynamicCache``, without its copy at every step), where ``generate``
        would build a ``DynamicCache`` itself; else None (``generate`` builds its own)."""
        model = self.model
        supports = getattr(model, "_supports_default_dynamic_cache", None)
        if (getattr(model.config, "is_encoder_decoder", False) or supports is None or not supports()
                or getattr(getattr(model, "generation_config", None), "cache_implementation", None) is not None):
            return None
        return reserved_cache(model, config.max_new_tokens)

    @torch.inference_mode()
    def _generate_batch(self, requests: list[Request], config: GenConfig) -> list[list[Generation]]:
        from transformers import StoppingCriteriaList

        encoded = [self.ids(r, config.max_new_tokens) for r in requests]
        prompts = [ids for ids, _ in encoded]
        input_ids, attention_mask = left_pad(prompts, self.pad, self.device)
        # ids past the tokenizer (padding rows of the output layer) are not tokens: never emit them
        suppress = set(range(len(self.tokenizer), logits_width(self.model)))
        if config.suppress_eos:
            suppress |= self.eos
        cache = self._cache(config)
        if not config.do_sample and cache is not None and plain_greedy(self.model):
            return _greedy_batch(self, requests, config, encoded, input_ids, attention_mask, cache, suppress)
        # greedy decoding is deterministic: decode once and repeat it num_samples times
        copies = config.num_samples if config.do_sample else 1
        kwargs = dict(
            max_new_tokens=config.max_new_tokens,
            min_new_tokens=config.min_new_tokens or None,
            do_sample=config.do_sample,
            num_return_sequences=copies,
            pad_token_id=self.pad,
            eos_token_id=sorted(self.eos) or None,
            return_dict_in_generate=True,
            output_logits=config.return_logprobs,
            # decode with a KV cache even when the checkpoint's generation_config.json says
            # use_cache=false (as models saved mid-training often do): same tokens, far faster
            use_cache=True,
        )
        if config.do_sample:
            kwargs.update(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
        if suppress:
            kwargs["suppress_tokens"] = sorted(suppress)
        if cache is not None:
            kwargs[self._cache_arg] = cache
        if config.stop_strings:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [StopOnText(self.tokenizer, config.stop_strings, input_ids.shape[1], prompts)]
            )
        # seeded by the batch's request ids: the same batch draws the same samples in any run
        # (the evaluation runner keeps batch boundaries fixed across resumes)
        torch.manual_seed(zlib.crc32(f"{config.seed}:{':'.join(r.id for r in requests)}".encode("utf-8")))
        result = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        new = result.sequences[:, input_ids.shape[1]:]
        logprobs = None
        if config.return_logprobs:
            # renormalised over the tokenizer's vocabulary, as ComposedTarget does
            steps = torch.stack(result.logits, dim=1)[..., : len(self.tokenizer)].float().log_softmax(-1)
            logprobs = steps.gather(-1, new[:, : steps.shape[1], None]).squeeze(-1).tolist()
        gens = group_generations(self.tokenizer, requests, config, prompts, new.tolist(), self.eos, logprobs)
        return mark_forced(gens, [f for _, f in encoded], self.tokenizer)


def _greedy_batch(target: HFTarget, requests, config: GenConfig, encoded, input_ids, attention_mask, cache,
                  suppress: set[int]) -> list[list[Generation]]:
    """Greedy rows by :func:`deepalign.decoding.greedy.greedy_decode`: ``generate``'s rows with
    less work around each forward."""
    prompts = [ids for ids, _ in encoded]
    stops = tuple(s for s in config.stop_strings if s)

    def stop(row: int, tokens: list[int]) -> bool:
        return find_stop(continuation_text(target.tokenizer, prompts[row], tokens), stops) >= 0

    rows, logprobs = greedy_decode(target.model, input_ids, attention_mask, cache, max_new_tokens=config.max_new_tokens,
                                   eos=target.eos, suppress=sorted(suppress), pad=target.pad,
                                   min_new_tokens=config.min_new_tokens,
                                   stop=stop if stops else None,
                                   vocab=len(target.tokenizer) if config.return_logprobs else None)
    gens = group_generations(target.tokenizer, requests, config, prompts, rows, target.eos, logprobs)
    return mark_forced(gens, [f for _, f in encoded], target.tokenizer)


def mark_forced(gens: list[list[Generation]], forced: list[list[int]], tokenizer) -> list[list[Generation]]:
    """Record on every generation what was forced before it (count and text)."""
    for per, ids in zip(gens, forced):
        if ids:
            text = tokenizer.decode(ids, skip_special_tokens=True)
            for g in per:
                g.forced_tokens, g.forced_text = len(ids), text
    return gens


def apply_overrides(config: GenConfig, overrides: dict) -> GenConfig:
    """``config`` with a target's own generation settings applied (stop strings add up)."""
    if not overrides:
        return config
    from dataclasses import replace

    changes = dict(overrides)
    if "stop_strings" in changes:
        changes["stop_strings"] = list(dict.fromkeys(list(config.stop_strings) + list(changes["stop_strings"])))
    return replace(config, **changes)


def direction_target(model, direction, *, mode: str = "ablate", coeff: float = 1.0, allow_foreign: bool = False,
                     tokenizer=None, name: str | None = None, dtype: str = "auto", device: str | None = "auto",
                     device_map: str | None = None, trust_remote_code: bool = False, chat_template: str | None = None,
                     **target_options: Any):
    """An :class:`~deepalign.decoding.hf.HFTarget` whose model has ``direction`` ablated
    (``mode="ablate"``) or added (``mode="add"``, scaled by ``coeff``). ``model``: a model
    directory / hub id (loaded here) or a loaded model with its ``tokenizer``; the other
    options are HFTarget's (``prompt_format``, ``system``, ``batch_size``, ...).

    Example::

        >>> target = direction_target("runs/derta", "runs/direction", batch_size=8)  # doctest: +SKIP
    """
    from deepalign.direction.apply import apply_direction
    from deepalign.direction.store import load_direction
    from deepalign.models import load_causal_lm, load_tokenizer, model_source

    d = load_direction(direction)
    if isinstance(model, (str, os.PathLike)):
        source = model_source(model)
        if os.path.isdir(source):
            d.check_checkpoint(source, allow_foreign=allow_foreign)
        name = name or os.fspath(model)
        tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code, chat_template=chat_template)
        model = load_causal_lm(model, dtype=dtype, device=device, device_map=device_map,
                               trust_remote_code=trust_remote_code)
        chat_template = None
    if tokenizer is None:
        raise DeepAlignError("direction_target needs a tokenizer with a loaded model")
    apply_direction(model, d, mode=mode, coeff=coeff, name=name, allow_foreign=allow_foreign)
    return HFTarget(model, tokenizer, name=name, chat_template=chat_template, **target_options)
