"""Jailbreak templates from user files (JailbreakChat-style). A template is any text with a
``{query}`` slot; the query replaces every occurrence of the slot (other braces in the text
are left alone, so templates may contain JSON or code).

``template:PATH`` where PATH is
- a ``.txt`` file: one template, labelled ``template:<file stem>``;
- a ``.jsonl`` file: one template per row ``{"name": ..., "template": ...}``, each its own
  attack ``template:<name>``;
- a directory: every ``*.txt`` file in it, sorted by name.
"""

from __future__ import annotations

from pathlib import Path

from deepalign.attacks.base import Attack, Attacked
from deepalign.attacks.registry import register
from deepalign.records import EvalPrompt
from deepalign.decoding.base import Request
from deepalign.errors import DeepAlignError
from deepalign.utils import read_jsonl, read_text

SLOT = "{query}"


class TemplateAttack(Attack):
    family = "template"
    shifted = True

    def __init__(self, name: str, template: str, *, source: str | None = None, line: int | None = None):
        if SLOT not in template:
            raise DeepAlignError(f"template {name!r} has no {SLOT} slot", path=source, line=line)
        self.name, self.template = name, template
        self.label = f"template:{name}"
        self.source = source

    def params(self) -> dict:
        return {"template": self.name, **({"source": self.source} if self.source else {})}

    def prepare(self, item: EvalPrompt) -> Attacked:
        return Attacked(Request(id=item.id, query=self.template.replace(SLOT, item.prompt)), meta={"template": self.name})


def load_templates(path: str | Path) -> list[TemplateAttack]:
    path = Path(path)
    if not path.exists():
        raise DeepAlignError(f"no such template file or directory: {path}")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DeepAlignError(f"template directory has no *.txt files: {path}")
        return [TemplateAttack(f.stem, read_text(f, what="template file"), source=str(f)) for f in files]
    if path.suffix == ".jsonl":
        out = []
        for lineno, row in read_jsonl(path):
            name, text = row.get("name"), row.get("template")
            if not isinstance(name, str) or not name.strip() or any(c in name for c in ",: "):
                raise DeepAlignError('missing or invalid "name" (a word without spaces, commas or colons)', path=path, line=lineno)
            if not isinstance(text, str):
                raise DeepAlignError('missing field "template" (a string)', path=path, line=lineno)
            out.append(TemplateAttack(name, text, source=str(path), line=lineno))
        if not out:
            raise DeepAlignError(f"template file is empty: {path}")
        return out
    return [TemplateAttack(path.stem, read_text(path, what="template file"), source=str(path))]


@register("template", "template:PATH: user templates with a {query} slot (.txt, .jsonl rows {name, template}, or a directory)")
def _template(args, context):
    rest = args.spec.partition(":")[2]
    if not rest:
        raise DeepAlignError(f"attack {args.spec!r}: give a template file, e.g. template:templates.jsonl")
    args.positional.clear()
    args.options.clear()  # a path may hold ':' or '=': the whole rest of the spec is the path
    return load_templates(rest)
