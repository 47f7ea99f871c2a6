"""The one generation interface every target implements.

A :class:`Request` says *what* the model should continue: a chat query (rendered by each
target in its own prompt format) or a raw text (used verbatim, e.g. a completion-attack
file), optionally with a ``prefill``: the forced start of the response, tokenised the way the
target's format places a response after the prompt (:mod:`deepalign.tokens`), of which
``prefill_tokens`` keeps only the first K tokens. A target returns, for each request,
``num_samples`` :class:`Generation` objects holding only the continuation (never the prompt or
the forced start), and says what it forced.

:class:`GenConfig` holds the decoding settings under the names of Hugging Face's
``generate``; it is a dataclass, so ``deepalign eval`` and ``deepalign ed`` parse it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from deepalign.errors import DeepAlignError, OptionError
from deepalign.options import On, number


@dataclass
class Request:
    id: str
    query: str | None = None  # a user query: rendered by the target's own prompt format
    text: str | None = None  # a raw prompt: fed verbatim (no template)
    prefill: str = ""  # forced start of the response
    prefill_tokens: int | None = None  # force only the first K tokens of the prefill's response tokenisation
    system: str | None = None  # system prompt for chat formats (overrides the target's default)
    #: the forced start as the target's own token ids (an attack that picks tokens from the
    #: model, e.g. ``rap``); ``prefill`` then only shows them as text
    prefill_ids: tuple[int, ...] | None = None

    def __post_init__(self):
        if (self.query is None) == (self.text is None):
            raise DeepAlignError(f"request {self.id!r}: give exactly one of query or text")
        if self.prefill_tokens is not None and self.prefill_tokens < 0:
            raise DeepAlignError(f"request {self.id!r}: prefill_tokens must be >= 0")
        if self.prefill_ids is not None:
            self.prefill_ids = tuple(int(i) for i in self.prefill_ids)
            if self.text is not None or self.prefill_tokens is not None:
                raise DeepAlignError(f"request {self.id!r}: prefill_ids forces a chat answer's token ids; "
                                     "it takes neither a raw text nor prefill_tokens")
            if any(i < 0 for i in self.prefill_ids):
                raise DeepAlignError(f"request {self.id!r}: prefill_ids must be token ids (>= 0)")


#: GenConfig's options that only sampling reads (deepalign.options.check_needs)
GEN_NEEDS = {("temperature", "top_k", "top_p"): On("do_sample")}


@dataclass
class GenConfig:
    """Decoding settings (Hugging Face ``generate`` names). Greedy unless ``do_sample``."""

    max_new_tokens: int = field(default=64, metadata={"help": "new tokens per response"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (with --do_sample)"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling; 0 disables it"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (with --do_sample)"})
    seed: int = field(default=0, metadata={"help": "seed of sampling"})
    num_samples: int = field(default=1, metadata={"help": "responses per request (with --do_sample)"})
    stop_strings: list[str] = field(default_factory=list, metadata={"help": "stop at any of these strings"})
    suppress_eos: bool = field(default=False, metadata={
        "help": "forbid the end-of-sequence token (then stop on --stop_strings or --max_new_tokens)"})
    min_new_tokens: int = field(default=0, metadata={"help": "forbid ending before this many new tokens"})
    return_logprobs: bool = field(default=False, metadata={"help": "record the log-prob of every generated token"})

    def __post_init__(self):
        if isinstance(self.stop_strings, (tuple, str)):
            self.stop_strings = [self.stop_strings] if isinstance(self.stop_strings, str) else list(self.stop_strings)
        number("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        number("temperature", self.temperature, low=0, low_open=True)
        number("top_k", self.top_k, low=0, integer=True)
        number("top_p", self.top_p, low=0, high=1, low_open=True)
        number("num_samples", self.num_samples, low=1, integer=True)
        number("min_new_tokens", self.min_new_tokens, low=0, integer=True)
        number("seed", self.seed, integer=True)
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise OptionError("stop_strings", "must be non-empty strings")

    def describe(self) -> str:
        how = (f"sampling T={self.temperature:g}" + (f" top_p={self.top_p:g}" if self.top_p < 1 else "")
               + (f" top_k={self.top_k}" if self.top_k else "")) if self.do_sample else "greedy"
        extra = (f", stop={self.stop_strings}" if self.stop_strings else "") + (", EOS suppressed" if self.suppress_eos else "")
        return f"{how}, max_new_tokens={self.max_new_tokens}, samples={self.num_samples}, seed={self.seed}{extra}"


@dataclass
class Generation:
    request_id: str
    sample: int
    text: str  # the continuation only
    num_tokens: int
    finish_reason: str = "length"  # "eos", "stop", or "length"
    token_logprobs: list[float] | None = field(default=None, repr=False)
    forced_tokens: int = 0  # how many tokens of the prefill were forced
    forced_text: str = ""  # those tokens, decoded
    #: the continuation's token ids (local targets; None where a server gives text only)
    token_ids: list[int] | None = field(default=None, repr=False)
    #: what a defence at inference time did (ADA: its checks, where one fired, the text it replaced)
    defence: dict | None = field(default=None, repr=False)


class Target(Protocol):
    """Anything that can answer requests: an HF model, a composed decoder, an HTTP server."""

    name: str

    def generate(self, requests: Sequence[Request], config: GenConfig) -> list[list[Generation]]:
        """Return, per request and in order, ``config.num_samples`` generations."""
        ...

    def render(self, request: Request) -> str:
        """The prompt as text, forced start included: what the model reads for ``request``."""
        ...


class Scorer(Protocol):
    """A target that also gives its next-token distribution (local models: the rank-assisted
    prefilling attack reads it)."""

    def next_logprobs(self, requests: Sequence[Request]):
        """Per request, the log-probabilities of the next token after the prompt and the forced
        start: a float tensor of shape (requests, vocabulary)."""
        ...
