"""A plain Hugging Face causal LM as a :class:`~deepalign.decoding.base.Target`.

``load_model`` loads a model and its tokenizer from a local directory or a hub id;
``HFTarget`` answers batches of requests with ``model.generate`` (left padding, greedy or
sampling, stop strings, EOS suppression, per-token log-probs).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Sequence

import torch

from deepalign.decoding.base import GenConfig, Generation, Request
from deepalign.decoding.output import StopOnText, eos_ids, group_generations, pad_id
from deepalign.decoding.prompts import PromptFormat
from deepalign.errors import DeepAlignError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeepAlignError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeepAlignError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA device that supports it, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise DeepAlignError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _looks_local(spec: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else names a local path."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec


def load_model(
    path_or_id: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = "auto",
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` from a local directory or a hub id, ready for inference.

    Raises :class:`DeepAlignError` (one line) when the path does not exist or the model or
    its tokenizer cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = os.fspath(path_or_id)
    local = Path(os.path.expanduser(spec))
    if local.exists():
        if not local.is_dir():
            raise DeepAlignError(f"model path is not a directory: {spec}")
        source = str(local)
    elif _looks_local(spec):
        raise DeepAlignError(f"no such model directory: {spec}")
    else:
        source = spec  # a hub id
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError (missing / unreachable), ValueError (unknown architecture), ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeepAlignError(f"cannot load model {spec!r}: {first}") from None
    model.to(dev).eval()
    return model, tokenizer


def logits_width(model) -> int:
    """Width of the model's output layer (often padded beyond the tokenizer's size)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(input_ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def chunks(seq: Sequence, size: int):
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


class HFTarget:
    """A Hugging Face causal LM answering requests in its own prompt format.

    ``model`` / ``tokenizer`` may be loaded objects or, for ``model``, a path / hub id
    (then loaded with :func:`load_model`).
    """

    def __init__(self, model, tokenizer=None, *, prompt_format: str | PromptFormat = "chat",
                 name: str | None = None, batch_size: int = 16, **load_kwargs):
        if isinstance(model, (str, os.PathLike)):
            name = name or os.fspath(model)
            model, tokenizer = load_model(model, **load_kwargs)
        if tokenizer is None:
            raise DeepAlignError("HFTarget needs a tokenizer with a loaded model")
        if batch_size < 1:
            raise DeepAlignError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.format = PromptFormat.parse(prompt_format)
        self.name = name or getattr(model, "name_or_path", None) or type(model).__name__
        self.batch_size = batch_size
        self.eos = eos_ids(model, tokenizer)
        self.pad = pad_id(tokenizer, self.eos)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, requests: Sequence[Request], config: GenConfig) -> list[list[Generation]]:
        out: list[list[Generation]] = []
        for batch in chunks(list(requests), self.batch_size):
            out.extend(self._generate_batch(batch, config))
        return out

    @torch.inference_mode()
    def _generate_batch(self, requests: list[Request], config: GenConfig) -> list[list[Generation]]:
        from transformers import StoppingCriteriaList

        prompts = [self.format.encode(self.tokenizer, r) for r in requests]
        input_ids, attention_mask = left_pad(prompts, self.pad, self.device)
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
        )
        if config.do_sample:
            kwargs.update(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
        # ids past the tokenizer (padding rows of the output layer) are not tokens: never emit them
        suppress = set(range(len(self.tokenizer), logits_width(self.model)))
        if config.suppress_eos:
            suppress |= self.eos
        if suppress:
            kwargs["suppress_tokens"] = sorted(suppress)
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
        return group_generations(self.tokenizer, requests, config, prompts, new.tolist(), self.eos, logprobs)
