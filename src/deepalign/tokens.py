"""The one tokenisation contract: how a query becomes prompt ids, and how a response is
tokenised the way the model's own format places it after that prompt.

Training (labels), decoding (prompts, prefills), attacks (prefill depth) and composed
decoders all go through :class:`Encoder`, so the tokens a model is trained on, attacked with
and measured on are the tokens its own tokenizer and template produce.

A :class:`PromptFormat` says how a query is laid out:

- ``chat``: the tokenizer's chat template (``add_generation_prompt=True``), with an optional
  system message. Tokenizers that implement chat formatting themselves instead of a Jinja
  template (``MistralCommonBackend``: Tekken and SentencePiece files of mistral-common) are
  driven through their own ``apply_chat_template(tokenize=True)``, i.e. at the id level;
- ``text``: a plain text template with ``{query}`` (and optionally ``{system}``), e.g. the
  default :data:`DEFAULT_TEMPLATE` for models without a chat template;
- ``raw``: the query itself.

The contract (``Encoder``):

- ``prompt_ids(query)``: the prompt with the generation prompt. Chat templates write their
  own special tokens; text and raw formats get the tokenizer's BOS *id* when the tokenizer
  adds one (never BOS *text*, which tokenizers such as ``MistralCommonBackend`` do not parse).
- ``response_ids(query, response, end=True)``: the conversation is rendered with the
  assistant turn and split at the prompt boundary, which is checked to be a prefix of it
  (where a template breaks that property the response is tokenised on its own, with a
  warning). ``end=True`` keeps the end-of-turn tokens (the template's, or the EOS id for text
  formats); ``end=False`` is the response as a forced, unfinished start (a prefill).
- BOS and EOS appear exactly once; nothing is ever glued as text onto a rendered prompt and
  re-tokenised (SentencePiece would write ``Sure`` where the model writes ``▁Sure``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from deepalign.errors import DeepAlignError

QUERY = "{query}"
SYSTEM = "{system}"
#: the one default text template: for models without a chat template, in training and decoding
DEFAULT_TEMPLATE = "Query: {query}\nResponse:"
KINDS = ("chat", "text", "raw")


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


@dataclass(frozen=True)
class PromptFormat:
    """How a query becomes a prompt: ``kind`` (chat / text / raw), the ``template`` of a text
    format, and a default ``system`` prompt (a request's own system prompt wins).

    Three rarely needed settings reproduce published setups exactly (the ED family presets):
    ``wrap`` puts the query into a text with ``{query}`` before the format sees it (a guardrail
    inside the user turn), ``suffix`` is text after the rendered prompt (the ED reference's
    space after Llama-2's ``[/INST]``; a response then follows the suffix as plain text), and
    ``bos=False`` drops the BOS id that text formats otherwise get."""

    kind: str = "chat"
    template: str | None = None
    system: str | None = None
    wrap: str | None = None
    suffix: str = ""
    bos: bool = True

    def __post_init__(self):
        if self.wrap is not None and QUERY not in self.wrap:
            raise DeepAlignError(f"a query wrapper must contain {QUERY}, got {self.wrap!r}")
        if self.kind not in KINDS:
            raise DeepAlignError(f"unknown prompt format kind {self.kind!r}; use chat, text or raw")
        if self.kind == "text":
            if not isinstance(self.template, str) or QUERY not in self.template:
                raise DeepAlignError(f"a text prompt template must contain {QUERY}, got {self.template!r}")
        elif self.template is not None:
            raise DeepAlignError(f"prompt format {self.kind!r} takes no template")

    @classmethod
    def chat(cls, system: str | None = None) -> PromptFormat:
        return cls("chat", system=system)

    @classmethod
    def raw(cls) -> PromptFormat:
        return cls("raw")

    @classmethod
    def text(cls, template: str = DEFAULT_TEMPLATE, system: str | None = None) -> PromptFormat:
        return cls("text", template, system)

    @classmethod
    def parse(cls, spec: str | PromptFormat | None, default: PromptFormat | None = None) -> PromptFormat:
        """``chat``, ``raw``, ``text`` (the default template), ``text:<template>`` (``\\n``
        may be written as the two characters backslash-n) or the path of a ``.txt`` file
        holding a template."""
        if isinstance(spec, PromptFormat):
            return spec
        if spec is None or spec == "":
            if default is None:
                raise DeepAlignError("no prompt format given")
            return default
        if spec in ("chat", "raw"):
            return cls(spec)
        if spec == "text":
            return cls.text()
        if spec.startswith("text:"):
            body = spec[len("text:"):]
            if "\n" not in body:
                body = body.replace("\\n", "\n")
            return cls.text(body)
        path = Path(os.path.expanduser(spec))
        if path.suffix == ".txt" or path.exists():
            from deepalign.utils import read_text

            body = read_text(path, what="template file")
            if QUERY not in body:
                raise DeepAlignError(f"template does not contain {QUERY}", path=path)
            return cls.text(body)
        raise DeepAlignError(
            f"cannot parse prompt format {spec!r}: use chat, raw, text, text:<template with {QUERY}> or a .txt file"
        )

    @classmethod
    def for_tokenizer(cls, tokenizer, spec: str | PromptFormat | None = None) -> PromptFormat:
        """``spec`` parsed, or by default the tokenizer's own chat format when it has one and
        the default text template when it has not."""
        if spec not in (None, ""):
            return cls.parse(spec)
        return cls.chat() if has_chat_format(tokenizer) else cls.text()

    def describe(self) -> str:
        out = self.kind if self.kind != "text" else "text:" + self.template.replace("\n", "\\n")
        extra = [f"system: {self.system!r}"] if self.system else []
        extra += [f"query in {self.wrap!r}"] if self.wrap else []
        extra += [f"suffix {self.suffix!r}"] if self.suffix else []
        extra += ["no BOS"] if not self.bos else []
        return out + (f" ({'; '.join(extra)})" if extra else "")


def ids_backend(tokenizer) -> bool:
    """Tokenizers whose chat formatting is their own code working on ids, not a Jinja
    template over text (transformers' ``MistralCommonBackend``)."""
    return type(tokenizer).__name__ == "MistralCommonBackend"


def has_chat_format(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) or ids_backend(tokenizer)


def _as_ids(out: Any) -> list[int]:
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(i) for i in out]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Encoder:
    """A :class:`PromptFormat` bound to one tokenizer: the tokenisation contract (module doc)."""

    def __init__(self, tokenizer, fmt: PromptFormat | str | None = None, *, name: str | None = None):
        self.tokenizer = tokenizer
        self.format = PromptFormat.for_tokenizer(tokenizer, fmt)
        self.name = name or getattr(tokenizer, "name_or_path", "") or "this model"
        self.by_ids = self.format.kind == "chat" and ids_backend(tokenizer)
        if self.format.kind == "chat" and not has_chat_format(tokenizer):
            raise DeepAlignError(
                f"the tokenizer of {self.name} has no chat template: give a chat template file, or a text "
                f"prompt format (text, text:...{QUERY}..., raw)"
            )
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self.bos = self.bos_ids() if self.format.kind != "chat" and self.format.bos else []
        self._warned = False

    # -- primitives ----------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added (special-token strings in the
        text are parsed by tokenizers that parse them)."""
        if not text:
            return []
        return _as_ids(self.tokenizer(text, add_special_tokens=False))

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        try:
            out = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
            return [list(map(int, x)) for x in out]
        except (TypeError, ValueError, NotImplementedError):  # wrappers without batch support
            return [self.encode_text(t) for t in texts]

    def bos_ids(self) -> list[int]:
        """The BOS id when this tokenizer adds one to plain text, else nothing."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is None:
            return []
        try:
            ids = _as_ids(self.tokenizer("a", add_special_tokens=True))
        except Exception:  # pragma: no cover - defensive
            return []
        return [int(bos)] if ids and ids[0] == bos else []

    def messages(self, query: str, system: str | None = None, response: str | None = None) -> list[dict]:
        system = system if system is not None else self.format.system
        query = self._wrapped(query)
        out = [{"role": "system", "content": system}] if system else []
        out.append({"role": "user", "content": query})
        if response is not None:
            out.append({"role": "assistant", "content": response})
        return out

    def _chat(self, messages: list[dict], **kwargs) -> Any:
        try:
            return self.tokenizer.apply_chat_template(messages, **kwargs)
        except Exception as exc:  # jinja2 TemplateError and friends: e.g. no system role
            msg = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise DeepAlignError(f"the chat template of {self.name} cannot render this conversation: {msg}") from None

    def _wrapped(self, query: str) -> str:
        return self.format.wrap.replace(QUERY, query) if self.format.wrap else query

    def prompt_text(self, query: str, system: str | None = None) -> str:
        """Text and raw formats: the prompt text (the template filled in, no BOS)."""
        query = self._wrapped(query)
        system = system if system is not None else self.format.system
        if system and (self.format.kind == "raw" or SYSTEM not in self.format.template):
            # a system prompt that the format has no place for would vanish without a word
            where = "the raw format" if self.format.kind == "raw" else f"the text format {self.format.describe()!r}"
            raise DeepAlignError(f"{self.name} reads {where}, which has no {SYSTEM} slot for the system prompt "
                                 f"{_short(system)!r}; use a chat format or a text template with {SYSTEM}")
        if self.format.kind == "raw":
            return query
        return self.format.template.replace(SYSTEM, system or "").replace(QUERY, query)

    @staticmethod
    def lead(prompt_text: str) -> str:
        """Text formats: a response follows the prompt after one space, unless the prompt
        already ends in whitespace (the DeRTa reference writes ``prefix`` + ``" " + text``)."""
        return "" if not prompt_text or prompt_text[-1].isspace() else " "

    # -- the contract --------------------------------------------------------------------
    def render(self, query: str, system: str | None = None) -> str:
        """The prompt as text (what the model reads), for logs and text endpoints. For
        :func:`ids_backend` tokenizers this is the decoded prompt ids."""
        if self.format.kind != "chat":
            bos = self.tokenizer.decode(self.bos) if self.bos else ""
            return bos + self.prompt_text(query, system) + self.format.suffix
        if self.by_ids:
            return self.tokenizer.decode(self.prompt_ids(query, system), skip_special_tokens=False)
        return self._chat(self.messages(query, system), tokenize=False, add_generation_prompt=True) + self.format.suffix

    def _head_and_text(self, query: str, system: str | None) -> tuple[list[int], str]:
        """The prompt as leading ids plus text: (BOS id, template filled in + suffix) for text
        formats, (nothing, rendered chat + suffix) for Jinja templates, (the template's ids,
        suffix) for id-level tokenizers."""
        if self.format.kind != "chat":
            return self.bos, self.prompt_text(query, system) + self.format.suffix
        if self.by_ids:
            return _as_ids(self._chat(self.messages(query, system), tokenize=True)), self.format.suffix
        return [], self.render(query, system)

    def prompt_ids(self, query: str, system: str | None = None) -> list[int]:
        head, text = self._head_and_text(query, system)
        return head + self.encode_text(text)

    def after_query(self, query: str, system: str | None = None) -> int:
        """How many of ``prompt_ids(query)`` come after the query: the tokens the format puts
        between the query and the response (``<|eot_id|><|start_header_id|>assistant...`` of
        Llama-3, `` [/INST]`` of Llama-2, ``<assistant>`` on the world; none for ``raw``).
        The prompt up to the end of the query is tokenised and compared with the prompt; a
        token that straddles the query's end counts as after it. Id-level tokenizers, whose
        template has no text, compare the prompts of the query followed by two different
        words instead."""
        head, text = self._head_and_text(query, system)
        full = head + self.encode_text(text)
        wrapped = self._wrapped(query)
        end = text.rfind(wrapped) if wrapped else -1
        if end >= 0:
            return len(full) - common_prefix(full, head + self.encode_text(text[: end + len(wrapped)]))
        a, b = self.prompt_ids(query + " A", system), self.prompt_ids(query + " B", system)
        n = 0
        while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
            n += 1
        return n

    def conversation(self, query: str, response: str, *, system: str | None = None,
                     end: bool = True) -> tuple[list[int], list[int]]:
        """``(prompt ids, response ids)`` of ``query`` answered by ``response``."""
        return self.conversations([(query, response)], system=system, end=end)[0]

    def response_ids(self, query: str, response: str, *, system: str | None = None, end: bool = True) -> list[int]:
        return self.conversation(query, response, system=system, end=end)[1]

    def conversations(self, pairs: Sequence[tuple[str, str]], *, system: str | None = None,
                      end: bool = True) -> list[tuple[list[int], list[int]]]:
        """:meth:`conversation` for many ``(query, response)`` pairs, tokenised in batches."""
        if not pairs:
            return []
        if self.format.suffix:  # a response follows the suffix as plain text (there is no template slot)
            out = []
            for q, r in pairs:
                head, text = self._head_and_text(q, system)
                prompt, full = head + self.encode_text(text), head + self.encode_text(text + r)
                resp = self._split(prompt, full, q, r, system)
                out.append((prompt, resp + ([self.eos_id] if end and self.eos_id is not None else [])))
            return out
        if self.by_ids:
            out = []
            for q, r in pairs:
                prompt = self.prompt_ids(q, system)
                full = _as_ids(self._chat(self.messages(q, system, r), tokenize=True, continue_final_message=True))
                resp = self._split(prompt, full, q, r, system)
                out.append((prompt, resp + ([self.eos_id] if end and self.eos_id is not None else [])))
            return out
        if self.format.kind != "chat":
            prompts = [self.prompt_text(q, system) for q, _ in pairs]
            fulls = [p + self.lead(p) + r for p, (_, r) in zip(prompts, pairs)]
            p_ids = self.encode_texts(prompts)
            f_ids = self.encode_texts(fulls)
            out = []
            for (q, r), p, f in zip(pairs, p_ids, f_ids):
                resp = self._split(p, f, q, r, system)
                out.append((self.bos + p, resp + ([self.eos_id] if end and self.eos_id is not None else [])))
            return out
        prompts = [self.render(q, system) for q, _ in pairs]
        fulls = [self._chat(self.messages(q, system, r), tokenize=False, continue_final_message=not end)
                 for q, r in pairs]
        p_ids = self.encode_texts(prompts)
        f_ids = self.encode_texts(fulls)
        return [(p, self._split(p, f, q, r, system, prompt_text=pt, full_text=ft))
                for (q, r), p, f, pt, ft in zip(pairs, p_ids, f_ids, prompts, fulls)]

    def _split(self, prompt: list[int], full: list[int], query: str, response: str, system: str | None,
               prompt_text: str | None = None, full_text: str | None = None) -> list[int]:
        """The response part of ``full`` after ``prompt``, checked to be a prefix split."""
        if full[: len(prompt)] == prompt:
            return full[len(prompt):]
        if not self._warned:
            warnings.warn(f"{self.name}: the prompt's tokens are not a prefix of the conversation's tokens "
                          "(the template or tokenizer changes the prompt when an answer follows); the "
                          "response is tokenised on its own", stacklevel=3)
            self._warned = True
        if prompt_text is not None and full_text is not None and full_text.startswith(prompt_text):
            return self.encode_text(full_text[len(prompt_text):])
        return self.encode_text(response)

    def spans(self, query: str, parts: Sequence[str], *, system: str | None = None,
              end: bool = True) -> tuple[list[int], list[int], list[int]]:
        """Tokenise a response made of consecutive text ``parts`` (already joined with their
        own spacing, e.g. ``["a harmful start", " Sorry, ..."]``): ``(prompt ids, response
        ids, start offsets)``, the offset of each part in the response ids. A token that
        straddles two parts belongs to the later one."""
        texts = ["".join(parts[: i + 1]) for i in range(len(parts))]
        convs = self.conversations([(query, t) for t in texts[:-1]], system=system, end=False)
        prompt, full = self.conversation(query, texts[-1], system=system, end=end)
        starts = [0]
        for _, resp in convs:
            starts.append(max(starts[-1], common_prefix(resp, full)))
        return prompt, full, starts

    def response_offsets(self, query: str, response: str, *, system: str | None = None) -> list[int] | None:
        """The character end (in ``response``) of each token of the response as this format
        tokenises it after the prompt; None where the tokenizer gives no offsets (slow and
        id-level tokenizers)."""
        if self.by_ids or not getattr(self.tokenizer, "is_fast", False) or not response:
            return None
        if self.format.kind == "chat":
            prompt = self.render(query, system)
            full = self._chat(self.messages(query, system, response), tokenize=False, continue_final_message=True)
        else:
            prompt = self.prompt_text(query, system)
            full = prompt + self.lead(prompt) + response
        start = full.rfind(response.rstrip())
        if start < 0:
            return None
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        n_prompt = len(self.encode_text(prompt))
        return [min(max(end - start, 0), len(response)) for _, end in enc["offset_mapping"][n_prompt:]]

    def raw_ids(self, text: str) -> list[int]:
        """A raw text request (a completion attack file, sent verbatim): BOS id + its tokens."""
        return self.bos_ids() + self.encode_text(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
