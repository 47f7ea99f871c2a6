"""How one model turns a :class:`~deepalign.decoding.base.Request` into prompt token ids.

Three kinds of format:

- ``chat``: the tokenizer's own chat template, with ``add_generation_prompt=True`` (and the
  request's system message, if any);
- ``text``: a plain text template holding ``{query}`` (and optionally ``{system}``), e.g. the
  "question / answer" layout a pre-trained base model continues naturally;
- ``raw``: the query itself, nothing around it.

A request given as ``text`` (a completion attack, say) is fed verbatim whatever the format.
A request's ``prefill`` is appended to the rendered prompt and the two are tokenised
together, so the model continues right after the prefill.

Formats parse from short strings (the CLI's ``--base-template`` / ``--aligned-template``):
``"chat"``, ``"raw"``, ``"text:<template>"`` or the path of a ``.txt`` file holding a template.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deepalign.decoding.base import Request
from deepalign.errors import DeepAlignError

QUERY = "{query}"
SYSTEM = "{system}"

# The layout ED feeds a pre-trained base model: a plain question / answer document.
BASE_TEMPLATE = "### Question:\n{query}\n\n### Answer:\n"


@dataclass(frozen=True)
class PromptFormat:
    kind: str  # "chat", "text" or "raw"
    template: str | None = None  # for kind == "text"

    def __post_init__(self):
        if self.kind not in ("chat", "text", "raw"):
            raise DeepAlignError(f"unknown prompt format kind {self.kind!r}; use chat, text or raw")
        if self.kind == "text":
            if not self.template or QUERY not in self.template:
                raise DeepAlignError(f"a text prompt template must contain {QUERY}, got {self.template!r}")
        elif self.template is not None:
            raise DeepAlignError(f"prompt format {self.kind!r} takes no template")

    # -- construction -----------------------------------------------------------------
    @classmethod
    def chat(cls) -> PromptFormat:
        return cls("chat")

    @classmethod
    def raw(cls) -> PromptFormat:
        return cls("raw")

    @classmethod
    def text(cls, template: str) -> PromptFormat:
        return cls("text", template)

    @classmethod
    def parse(cls, spec: str | PromptFormat | None, default: PromptFormat | None = None) -> PromptFormat:
        """``"chat"``, ``"raw"``, ``"text:<template>"`` or a path to a ``.txt`` template file."""
        if isinstance(spec, PromptFormat):
            return spec
        if spec is None or spec == "":
            if default is None:
                raise DeepAlignError("no prompt format given")
            return default
        if spec in ("chat", "raw"):
            return cls(spec)
        if spec.startswith("text:"):
            # the CLI cannot easily pass newlines: accept the two-character escape "\n"
            body = spec[len("text:"):]
            if "\n" not in body:
                body = body.replace("\\n", "\n")
            return cls("text", body)
        path = Path(os.path.expanduser(spec))
        if path.suffix == ".txt" or path.exists():
            if not path.is_file():
                raise DeepAlignError(f"no such template file: {path}")
            body = path.read_text(encoding="utf-8")
            if QUERY not in body:
                raise DeepAlignError(f"template does not contain {QUERY}", path=path)
            return cls("text", body)
        raise DeepAlignError(
            f"cannot parse prompt format {spec!r}: use chat, raw, text:<template with {QUERY}> or a .txt file"
        )

    def describe(self) -> str:
        return self.kind if self.kind != "text" else "text:" + self.template.replace("\n", "\\n")

    # -- rendering --------------------------------------------------------------------
    def render(self, tokenizer, request: Request) -> tuple[str, bool]:
        """The prompt string (prefill included) and whether the tokenizer should add its
        special tokens (BOS) when encoding it. Chat templates write their own."""
        if request.text is not None:
            return request.text + request.prefill, True
        query = request.query
        if self.kind == "raw":
            return query + request.prefill, True
        if self.kind == "text":
            body = self.template.replace(SYSTEM, request.system or "").replace(QUERY, query)
            return body + request.prefill, True
        if getattr(tokenizer, "chat_template", None) is None:
            name = getattr(tokenizer, "name_or_path", "") or "this model"
            raise DeepAlignError(
                f"the tokenizer of {name} has no chat template; give a text template (text:...{QUERY}...)"
            )
        messages = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": query})
        try:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja2 TemplateError and friends: e.g. no system role
            raise DeepAlignError(f"chat template failed for request {request.id!r}: {exc}") from None
        return prompt + request.prefill, False

    def encode(self, tokenizer, request: Request) -> list[int]:
        prompt, add_special = self.render(tokenizer, request)
        ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
        if not ids:
            raise DeepAlignError(f"request {request.id!r} renders to an empty prompt")
        return list(ids)
