"""The one generation interface every target implements.

A :class:`Request` says *what* the model should continue: a chat query (rendered by each
model in its own prompt format) or a raw text (used verbatim, e.g. a completion attack),
optionally with a ``prefill``, the forced start of the response. A target returns, for
each request, ``num_samples`` :class:`Generation` objects holding only the continuation
(never the prompt or the prefill).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from deepalign.errors import DeepAlignError


@dataclass
class Request:
    id: str
    query: str | None = None  # a user query: rendered by the target's own prompt format
    text: str | None = None  # a raw prompt: fed verbatim (no template)
    prefill: str = ""  # forced start of the response, appended after rendering
    system: str | None = None  # optional system message for chat formats

    def __post_init__(self):
        if (self.query is None) == (self.text is None):
            raise DeepAlignError(f"request {self.id!r}: give exactly one of query or text")


@dataclass
class GenConfig:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    num_samples: int = 1
    stop_strings: tuple[str, ...] = ()
    suppress_eos: bool = False  # forbid EOS (then stop on stop_strings or max_new_tokens)
    min_new_tokens: int = 0
    return_logprobs: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise DeepAlignError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise DeepAlignError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise DeepAlignError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            raise DeepAlignError(f"num_samples must be >= 1, got {self.num_samples}")


@dataclass
class Generation:
    request_id: str
    sample: int
    text: str  # the continuation only
    num_tokens: int
    finish_reason: str = "length"  # "eos", "stop", or "length"
    token_logprobs: list[float] | None = field(default=None, repr=False)


class Target(Protocol):
    """Anything that can answer requests: an HF model, a composed decoder, an HTTP server."""

    name: str

    def generate(self, requests: Sequence[Request], config: GenConfig) -> list[list[Generation]]:
        """Return, per request and in order, ``config.num_samples`` generations."""
        ...
