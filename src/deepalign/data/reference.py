"""The training-file format of the DeRTa reference code (Yuan et al. 2024, arXiv 2407.09121).

The reference trains from JSON Lines files (named ``.json``) whose lines are::

    {"prefix": "[INST] <query> [\\INST]<optional forced response start>",
     "text":   " <target text><|end_of_text|>",
     "safe":   "false" | "true"}

* ``prefix`` is the model input that carries no loss: the query in the reference's plain
  template ``[INST] {query} [\\INST]`` (the backslash is literal), optionally followed by a
  space and the first words of a harmful response (MLE with harmful prefix).
* ``text`` is the continuation that carries the loss: a leading space, the response, and the
  end-of-text marker of the tokenizer.
* ``safe`` is a string switch for the objective, not a safety label: ``"false"`` means plain
  next-token MLE on ``text``; ``"true"`` means Reinforced Transition Optimization: ``text``
  is then the *harmful* response and every one of its positions is trained to predict the
  refusal token (e.g. "Sorry") instead of the next token.

:func:`load_reference_training` reads such lines into :class:`ReferenceExample` (query,
forced response prefix, target, objective), :func:`save_reference_training` writes them
back, and :func:`triples_from_reference` rebuilds ``(query, harmful, safe)`` triples by
pairing each RTO line with a safe-response line of the same query. See docs/data.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from deepalign.data.fields import ID_FIELDS, Ids
from deepalign.data.sources import read_source
from deepalign.records import HarmfulTriple
from deepalign.errors import DeepAlignError
from deepalign.registry import truth
from deepalign.utils import write_jsonl

__all__ = [
    "ReferenceExample",
    "load_reference_training",
    "save_reference_training",
    "triples_from_reference",
    "REFERENCE_TEMPLATE",
    "REFERENCE_EOS",
    "OBJECTIVES",
]

REFERENCE_TEMPLATE = "[INST] {query} [\\INST]"
REFERENCE_EOS = "<|end_of_text|>"
OBJECTIVES = ("mle", "rto")

_OPEN = "[INST]"
_CLOSES = ("[\\INST]", "[/INST]")
_END_MARKERS = ("<|end_of_text|>", "<|eot_id|>", "<|endoftext|>", "<|im_end|>", "</s>", "<eos>")


@dataclass
class ReferenceExample:
    """One line of a reference training file, in neutral terms.

    ``query``: the user query (the text inside the ``[INST] ... [\\INST]`` template).
    ``response_prefix``: text forced at the start of the assistant turn, taken as input
    without loss (the first words of a harmful response); ``""`` for none.
    ``target``: the text that carries the loss, without the leading space and end marker.
    ``objective``: ``"mle"`` (next-token loss on ``target``) or ``"rto"`` (``target`` is a
    harmful response; each of its positions is trained to predict the refusal token).
    ``meta``: where it came from and how to write it back (``source``, ``eos``,
    ``prefix_slot``: the line had the harmful-prefix slot even if empty, ``verbatim``: the
    prefix did not use the template and ``query`` holds the whole prefix).
    """

    id: str
    query: str
    response_prefix: str
    target: str
    objective: str = "mle"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``rto``, ``harmful_prefix`` (MLE after a forced harmful prefix, possibly of 0
        words) or ``plain`` (query -> response: helpful or vanilla safety; the file alone
        does not tell which)."""
        if self.objective == "rto":
            return "rto"
        if self.response_prefix or self.meta.get("prefix_slot"):
            return "harmful_prefix"
        return "plain"


def _split_prefix(prefix: str) -> tuple[str, str, dict[str, Any]]:
    stripped = prefix.lstrip()
    if stripped.startswith(_OPEN):
        positions = [(stripped.find(c), c) for c in _CLOSES if stripped.find(c) >= 0]
        if positions:
            at, close = min(positions)
            query = stripped[len(_OPEN) : at].strip()
            rest = stripped[at + len(close) :]
            meta: dict[str, Any] = {}
            if close != _CLOSES[0]:
                meta["close"] = close
            if rest:
                meta["prefix_slot"] = True
                rest = rest[1:] if rest.startswith(" ") else rest
            if query:
                return query, rest, meta
    return prefix, "", {"verbatim": True}


def _split_text(text: str) -> tuple[str, dict[str, Any]]:
    meta: dict[str, Any] = {}
    body = text[1:] if text.startswith(" ") else text
    for marker in _END_MARKERS:
        if body.endswith(marker):
            body = body[: -len(marker)]
            meta["eos"] = marker
            break
    else:
        meta["eos"] = None
    return body, meta


def _safe_flag(value: Any, row) -> str:
    """The objective a row's ``safe`` field asks for: ``"true"`` RTO, ``"false"`` (or none)
    MLE; read with the project's one set of yes/no words (:func:`deepalign.registry.truth`)."""
    flag = False if value is None else truth(value)
    if flag is None:
        raise row.error(f'field "safe" must be "true" or "false", got {value!r}')
    return "rto" if flag else "mle"


def load_reference_training(path: str | os.PathLike) -> list[ReferenceExample]:
    """Read a reference training file (``{"prefix", "text", "safe"}`` lines).

    A missing ``safe`` means ``"false"`` (the reference's vanilla scripts read files
    without it). Errors name ``file:line`` and the field.
    """
    name, rows = read_source(path)
    if not rows:
        raise DeepAlignError("no records", path=name)
    ids, out = Ids(), []
    for row in rows:
        data = row.data
        for key in ("prefix", "text"):
            if key not in data or data[key] is None:
                raise row.error(f'missing field "{key}" (a reference training line has prefix, text and safe)')
            if not isinstance(data[key], str):
                raise row.error(f'field "{key}" must be a string, got {type(data[key]).__name__}')
        if not data["text"].strip():
            raise row.error('field "text" is empty')
        objective = _safe_flag(data.get("safe"), row)
        query, response_prefix, meta = _split_prefix(data["prefix"])
        if not query.strip():
            raise row.error('field "prefix" is empty')
        target, text_meta = _split_text(data["text"])
        if not target.strip():
            raise row.error('field "text" holds only the end marker')
        record_id = next((str(data[k]) for k in ID_FIELDS if data.get(k) is not None), row.default_id)
        ids.add(record_id, row)
        meta = {"source": row.where, **meta, **text_meta}
        extras = {k: v for k, v in data.items() if k not in ("prefix", "text", "safe", *ID_FIELDS)}
        if extras:
            meta["extra"] = extras
        out.append(ReferenceExample(record_id, query, response_prefix, target, objective, meta))
    return out


def save_reference_training(
    records: Iterable[ReferenceExample],
    path: str | os.PathLike,
    *,
    template: str = REFERENCE_TEMPLATE,
    eos: str | None = REFERENCE_EOS,
) -> int:
    """Write ``records`` as reference training lines (JSON Lines); returns the line count.

    ``template`` must contain ``{query}``; ``eos`` is appended to every ``text`` (give the
    end-of-text string of the tokenizer you will train with, or None for none). A record
    loaded from a line with the harmful-prefix slot (``meta["prefix_slot"]``) keeps it, so
    loading and saving a reference file with the defaults reproduces its lines.
    """
    if "{query}" not in template:
        raise DeepAlignError(f"template must contain {{query}}, got {template!r}")

    def lines():
        for i, rec in enumerate(records, start=1):
            if not isinstance(rec, ReferenceExample):
                raise DeepAlignError(f"record {i}: expected a ReferenceExample, got {type(rec).__name__}")
            if rec.objective not in OBJECTIVES:
                raise DeepAlignError(
                    f"record {rec.id}: objective must be one of {', '.join(OBJECTIVES)}, got {rec.objective!r}"
                )
            if rec.meta.get("verbatim"):
                prefix = rec.query
            else:
                prefix = template.replace("{query}", rec.query)
            if rec.response_prefix or rec.meta.get("prefix_slot"):
                prefix += " " + rec.response_prefix
            text = " " + rec.target + (eos or "")
            yield {"prefix": prefix, "text": text, "safe": "true" if rec.objective == "rto" else "false"}

    return write_jsonl(Path(path), lines())


def triples_from_reference(examples: Iterable[ReferenceExample]) -> list[HarmfulTriple]:
    """Pair each RTO line (query, harmful response) with an MLE line of the same query that
    has no forced prefix or a harmful prefix (its target is the safe response).

    Queries without both halves are skipped; helpful lines therefore never become triples.
    """
    harmful: dict[str, ReferenceExample] = {}
    safe: dict[str, ReferenceExample] = {}
    order: list[str] = []
    for ex in examples:
        if ex.query not in harmful and ex.query not in safe:
            order.append(ex.query)
        if ex.objective == "rto":
            harmful.setdefault(ex.query, ex)
        else:
            safe.setdefault(ex.query, ex)
    out = []
    for query in order:
        if query in harmful and query in safe:
            h, s = harmful[query], safe[query]
            meta = {"reference_ids": [h.id, s.id]}
            out.append(HarmfulTriple(id=h.id, query=query, harmful=h.target, safe=s.target, meta=meta))
    return out
