"""The plain attacks: the query as is (``direct``), a forced start of the answer inside the
chat format (``prefill``), and the whole chat prompt plus an answer start sent as raw text
(``completion``, the DeRTa CompletionAttack form)."""

from __future__ import annotations

import re

from deepalign.attacks.base import Attack, Attacked
from deepalign.attacks.registry import Args, register
from deepalign.data.records import EvalPrompt
from deepalign.decoding.base import Request
from deepalign.errors import DeepAlignError

#: the generic answer start of completion attacks
DEFAULT_ANSWER_START = "Sure, here is"
#: the raw-text format used when a target cannot render its own chat format (an HTTP server)
FALLBACK_CHAT_FORMAT = "### Instruction:\n{query}\n\n### Response:\n"


def target_tokenizer(target):
    """The tokenizer of a local target (an HF model, or the shared one of a composed decoder)."""
    return getattr(target, "tokenizer", None) or getattr(target, "decoder", None)


def leading_units(text: str, k: int, unit: str, tokenizer=None, skip: int = 0) -> tuple[str, int]:
    """The first ``k`` words (``unit="w"``) or tokens (``unit="t"``) of ``text`` (after
    skipping ``skip`` units) and how many there actually were (fewer when ``text`` is short)."""
    if k <= 0:
        return "", 0
    if unit == "w":
        words = text.split()[skip:]
        return " ".join(words[:k]), min(k, len(words))
    if tokenizer is None:
        raise DeepAlignError("counting tokens needs a tokenizer")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][skip:]
    return tokenizer.decode(ids[:k]), min(k, len(ids))


def _adds_bos(tok) -> bool:
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return False
    ids = tok("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def render_chat(target, request: Request) -> str:
    """The text ``target`` would feed its model for a chat ``request`` (without prefill).

    Uses the target's own prompt format (``HFTarget.format``; for a composed decoder, that of
    its first chat-format model), else its tokenizer's chat template, else
    :data:`FALLBACK_CHAT_FORMAT` (HTTP targets). A BOS token written by a chat template is
    dropped when the tokenizer adds one itself to raw text, so it is not doubled.
    """
    plain = Request(id=request.id, query=request.query, system=request.system)
    fmt, tok = getattr(target, "format", None), target_tokenizer(target)
    components = getattr(target, "components", None)
    if fmt is None and components:
        def fmt_of(c):
            return getattr(c, "prompt_format", None) or getattr(c, "format", None)

        chosen = next((c for c in components if getattr(fmt_of(c), "kind", None) == "chat"), components[0])
        fmt, tok = fmt_of(chosen), chosen.tokenizer
    text = None
    if fmt is not None and callable(getattr(fmt, "render", None)) and tok is not None:
        text, _ = fmt.render(tok, plain)
    elif tok is not None and getattr(tok, "chat_template", None):
        messages = ([{"role": "system", "content": request.system}] if request.system else []) + [
            {"role": "user", "content": request.query}
        ]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if text is None:
        system = f"{request.system}\n\n" if request.system else ""
        return system + FALLBACK_CHAT_FORMAT.format(query=request.query)
    bos = getattr(tok, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tok):
        text = text[len(bos) :]
    return text


def _depth(spec: str, raw: str) -> tuple[int, str]:
    m = re.fullmatch(r"(\d+)([wt]?)", raw)
    if not m:
        raise DeepAlignError(f"attack {spec!r}: depth must look like 8 (tokens), 8t or 8w (words), got {raw!r}")
    return int(m.group(1)), m.group(2) or "t"


class Direct(Attack):
    label = "direct"

    def prepare(self, item: EvalPrompt, target=None) -> Attacked:
        return Attacked(Request(id=item.id, query=item.prompt))


class Prefill(Attack):
    """Force the first ``k`` tokens/words of the item's reference harmful response as the start
    of the answer; the target returns (and the judges see) only the continuation.

    With ``skip`` the forced text starts ``skip`` units into the reference instead (a response
    that begins mid-procedure: a shape that harmful-prefix training never shows)."""

    def __init__(self, k: int, unit: str = "t", skip: int = 0):
        if k < 0:
            raise DeepAlignError(f"prefill depth must be >= 0, got {k}")
        if skip < 0:
            raise DeepAlignError(f"prefill skip must be >= 0, got {skip}")
        self.k, self.unit, self.skip = k, unit, skip
        self.label = f"prefill:{k}" + ("w" if unit == "w" else "") + (f":skip={skip}" if skip else "")

    def applies(self, item: EvalPrompt) -> bool:
        return bool(item.harmful)

    def prepare(self, item: EvalPrompt, target=None) -> Attacked:
        if not item.harmful:
            raise DeepAlignError(f"attack {self.label} needs a reference harmful response; item {item.id!r} has none")
        tok = target_tokenizer(target) if self.unit == "t" and self.k > 0 else None
        if self.unit == "t" and self.k > 0 and tok is None:
            name = getattr(target, "name", "?")
            raise DeepAlignError(
                f"attack {self.label} counts tokens and needs a target with a tokenizer (target {name} has none); "
                f"use prefill:{self.k}w to count words"
            )
        prefix, depth = leading_units(item.harmful, self.k, self.unit, tok, self.skip)
        meta = {"depth": self.k, "depth_unit": "words" if self.unit == "w" else "tokens", "prefill_len": depth}
        if self.skip:
            meta["skip"] = self.skip
        return Attacked(Request(id=item.id, query=item.prompt, prefill=prefix), meta=meta)


class Completion(Attack):
    """DeRTa's CompletionAttack: the chat-rendered prompt followed by the start of an answer,
    sent as raw text so the target simply continues it."""

    def __init__(self, start: str | None = None, k: int | None = None, unit: str = "w", label: str = "completion"):
        self.start, self.k, self.unit, self.label = start, k, unit, label

    def applies(self, item: EvalPrompt) -> bool:
        return self.k is None or bool(item.harmful)

    def prepare(self, item: EvalPrompt, target=None) -> Attacked:
        rendered = render_chat(target, Request(id=item.id, query=item.prompt))
        meta = {}
        if self.k is not None:
            if not item.harmful:
                raise DeepAlignError(f"attack {self.label} needs a reference harmful response; item {item.id!r} has none")
            tok = target_tokenizer(target) if self.unit == "t" else None
            if self.unit == "t" and tok is None:
                raise DeepAlignError(f"attack {self.label} counts tokens and needs a target with a tokenizer")
            start, n = leading_units(item.harmful, self.k, self.unit, tok)
            meta = {"depth": self.k, "depth_unit": "words" if self.unit == "w" else "tokens", "prefill_len": n}
        else:
            start = self.start if self.start is not None else DEFAULT_ANSWER_START
        meta["answer_start"] = start
        return Attacked(Request(id=item.id, text=rendered + start), meta=meta)


@register("direct", "the query as is")
def _direct(spec, rest, context):
    Args.parse(spec, rest).done()
    return [Direct()]


@register("prefill", "prefill:K (tokens) or prefill:Kw (words): force the first K units of the harmful reference; "
                     ":skip=S starts S units into it (mid-response)")
def _prefill(spec, rest, context):
    args = Args.parse(spec, rest)
    if not args.positional:
        raise DeepAlignError(f"attack {spec!r}: give a depth, e.g. prefill:8 (tokens) or prefill:8w (words)")
    k, unit = _depth(spec, args.positional[0])
    skip = args.option("skip", 0, int)
    args.done(1)
    return [Prefill(k, unit, skip)]


@register("completion", "chat prompt + answer start as raw text; completion:start=TEXT or completion:Kw (harmful reference)")
def _completion(spec, rest, context):
    args = Args.parse(spec, rest)
    start = args.option("start")
    if args.positional:
        k, unit = _depth(spec, args.positional[0])
        args.done(1)
        if start is not None:
            raise DeepAlignError(f"attack {spec!r}: give either a depth or start=, not both")
        return [Completion(k=k, unit=unit, label=f"completion:{k}" + ("w" if unit == "w" else ""))]
    args.done()
    return [Completion(start=start, label="completion" if start is None else f"completion:start={start}")]
