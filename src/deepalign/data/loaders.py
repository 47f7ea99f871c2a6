"""Load and validate datasets into the record types of :mod:`deepalign.records`.

Three loaders, one per record type::

    load_triples(source)        -> list[HarmfulTriple]    (query, harmful response, safe response)
    load_instructions(source)   -> list[InstructionPair]  (instruction, response[, answer])
    load_eval_prompts(source)   -> list[EvalPrompt]       (prompt[, answer, choices, harmful])

``source`` is anything :func:`deepalign.data.sources.read_source` reads (a file, a dataset
directory, a hub name, rows in memory). A file in the schema of a known benchmark
(HarmBench, XSTest, StrongREJECT, GSM8K, ...: :mod:`deepalign.data.presets`) is read with
that benchmark's meaning; ``preset=`` names the benchmark explicitly. Other files are read by
column aliases (:mod:`deepalign.data.fields`). Every problem raises
:class:`~deepalign.errors.DeepAlignError` naming ``file:line`` (or ``file:#i``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from deepalign.data.answers import parse_final_answer
from deepalign.data.fields import (EVAL_FIELDS, INSTRUCTION_FIELDS, TRIPLE_FIELDS, Fields, Ids, Row,
                                   check_fields_arg, type_name)
from deepalign.data.items import eval_item
from deepalign.data.sources import TEXT_COLUMN, read_source
from deepalign.data.specs import Context
from deepalign.errors import DeepAlignError
from deepalign.records import ITEM_KINDS, EvalPrompt, HarmfulTriple, InstructionPair

__all__ = ["load_triples", "load_instructions", "load_eval_prompts", "load_eval_dataset", "parse_final_answer", "eval_item",
           "EVAL_FIELDS", "INSTRUCTION_FIELDS", "TRIPLE_FIELDS"]


def _nonempty(name: str, rows: list) -> None:
    if not rows:
        raise DeepAlignError("no records", path=name)


def _read(source: Any, preset: str | None, split, subset, prefer) -> tuple[str, list[Row], Any]:
    """Rows of ``source`` and the preset that reads them (named, recognised, or None)."""
    from deepalign.data import presets

    chosen = presets.get(preset) if preset else None
    if source is None:
        if chosen is None:
            raise DeepAlignError("no data source given")
        name, rows = chosen.read_hub(split=split, subset=subset, prefer=prefer, train=prefer[0] == "train")
    else:
        name, rows = read_source(source, split=split, subset=subset, prefer_splits=prefer)
    _nonempty(name, rows)
    if chosen is not None:
        chosen.check_schema(rows, name)
    else:
        chosen = presets.detect(rows, name)
    return name, rows, chosen


def _unique(records: list, rows_where: list[str] | None = None) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.id in seen:
            where = f" ({rows_where[i]})" if rows_where else ""
            raise DeepAlignError(f'duplicate id "{r.id}"{where}')
        seen[r.id] = i


# --------------------------------------------------------------------------------------
# The loaders
# --------------------------------------------------------------------------------------


def load_triples(
    source: Any,
    *,
    split: str | None = None,
    subset: str | None = None,
    fields: Mapping[str, str] | None = None,
    preset: str | None = None,
    options: Mapping[str, str] | None = None,
    notes: list[str] | None = None,
) -> list[HarmfulTriple]:
    """Load ``(query, harmful response, safe response)`` triples.

    Columns not used for the triple are kept in ``meta`` (e.g. a category). BeaverTails
    (one row per response, ``is_safe``) and hh-rlhf (``chosen`` / ``rejected`` transcripts)
    are paired into triples by their presets; ``notes`` collects what a preset left out.
    """
    check_fields_arg(fields, TRIPLE_FIELDS, "load_triples")
    name, rows, chosen = _read(source, preset, split, subset, ("train",))
    if chosen is not None and chosen.triples is not None:
        out = chosen.triples(rows, Context(name, fields or {}, dict(options or {}), split, notes if notes is not None else []))
        _unique(out)
        if not out:
            raise DeepAlignError(f"no triples: the {chosen.name} rows hold no prompt with both a harmful and a safe "
                                 "response", path=name)
        return out
    ids, out = Ids(), []
    for row in rows:
        f = Fields(row, TRIPLE_FIELDS, fields)
        record_id = f.record_id()
        query = f.text("query")
        harmful = f.text("harmful")
        safe = f.text("safe")
        ids.add(record_id, row)
        out.append(HarmfulTriple(id=record_id, query=query, harmful=harmful, safe=safe, meta=f.extras()))
    return out


def load_instructions(
    source: Any,
    *,
    split: str | None = None,
    subset: str | None = None,
    fields: Mapping[str, str] | None = None,
    preset: str | None = None,
) -> list[InstructionPair]:
    """Load helpful ``(instruction, response)`` pairs.

    Alpaca style: when a row has both an instruction and a non-empty ``input``, the input is
    appended to the instruction after a blank line. GSM8K style: a response ending in
    ``#### n`` sets ``answer = "n"`` (the response keeps the full solution). A separate
    ``answer`` column, when the response came from another column, sets ``answer`` too.
    """
    check_fields_arg(fields, INSTRUCTION_FIELDS, "load_instructions")
    _, rows, _ = _read(source, preset, split, subset, ("train",))
    ids, out = Ids(), []
    for row in rows:
        f = Fields(row, INSTRUCTION_FIELDS, fields)
        record_id = f.record_id()
        instruction_key, _, _ = f.find("instruction")
        instruction = f.text("instruction")
        meta: dict[str, Any] = {}
        if str(instruction_key).lower() != "input" and "input" in f.keys and f.keys["input"] not in f.used:
            extra_key = f.keys["input"]
            f.used.add(extra_key)
            extra = row.data[extra_key]
            if extra is not None and not isinstance(extra, str):
                raise row.error(f'field "{extra_key}" must be a string, got {type_name(extra)}')
            if extra and extra.strip():
                instruction = f"{instruction}\n\n{extra}"
                meta["input"] = extra
        response = f.text("response")
        _, answer = f.scalar("answer")
        answer = None if answer is None else str(answer)
        if answer is None:
            answer = parse_final_answer(response)
        ids.add(record_id, row)
        meta = {**f.extras(), **meta}
        out.append(InstructionPair(id=record_id, instruction=instruction, response=response, answer=answer, meta=meta))
    return out


def load_eval_prompts(source: Any, kind: str | None = None, **how: Any) -> list[EvalPrompt]:
    """Load evaluation prompts: the items of :func:`load_eval_dataset`, which takes the same
    arguments (``split``, ``subset``, ``fields``, ``preset``, ``options``, ``notes``) and says
    how it read them."""
    return load_eval_dataset(source, kind, **how)[0]


def load_eval_dataset(
    source: Any,
    kind: str | None = None,
    *,
    split: str | None = None,
    subset: str | None = None,
    fields: Mapping[str, str] | None = None,
    preset: str | None = None,
    options: Mapping[str, str] | None = None,
    notes: list[str] | None = None,
    reference: list[EvalPrompt] | None = None,
) -> tuple[list[EvalPrompt], str | None, str]:
    """Load evaluation prompts: ``(items, the preset that read the rows (None: the generic
    aliases), the source's display name)``. ``reference``: the items a file of published
    responses answers (joined by the presets that need them).

    A file in a known benchmark's schema (or ``preset=NAME``; ``source=None`` with a preset
    loads its hub copy) gets that benchmark's kinds, categories and answers (see
    :mod:`deepalign.data.presets`); ``options`` are the preset's own (``targets`` of HarmBench,
    ``attack`` of the DeRTa test sets) and ``notes`` collects what it left out.

    Other files: ``kind`` (harmful / benign / helpful / unknown) applies to every record;
    without it a ``kind`` column is used, else the kind is inferred: ``helpful`` when an
    answer is given, ``harmful`` for a ``goal`` or ``behavior`` prompt column or when a
    reference harmful response is given, ``unknown`` otherwise.

    Answers: a GSM8K solution ending in ``#### n`` gives ``answer = "n"`` (the solution is
    kept in ``meta["solution"]``); a multiple-choice answer becomes its letter (``-C``,
    ``(C)``, an option index: ``meta["answer_index"]`` keeps the integer). Choices come from a
    ``choices`` list, from ``A``/``B``/``C``/``D`` columns, or from ``-(A) ...`` option lines
    inside the prompt (the DeRTa MMLU file; the prompt is then left as it is).
    """
    if kind is not None and kind not in ITEM_KINDS:
        raise DeepAlignError(f"unknown kind {kind!r}; choose from {', '.join(ITEM_KINDS)}")
    check_fields_arg(fields, EVAL_FIELDS, "load_eval_prompts")
    name, rows, chosen = _read(source, preset, split, subset, ("test", "validation", "train"))
    if chosen is not None:
        if kind is not None and chosen.row_kinds:
            raise DeepAlignError(f"{name}: each {chosen.title} row says its own kind; drop the {kind}: prefix "
                                 f"({chosen.kinds})")
        ctx = Context(name, fields or {}, dict(options or {}), split, notes if notes is not None else [], reference)
        items = chosen.eval_items(rows, ctx)
        _unique(items)
        if not items:
            raise DeepAlignError(f"no items: the {chosen.name} preset kept none of the rows", path=name)
    else:
        if options:
            raise DeepAlignError(f"{name}: options {', '.join(sorted(options))} belong to a dataset preset; name it "
                                 "(e.g. harmbench:FILE,targets=...)")
        ids, items = Ids(), []
        # a file of bare strings (a JSON list, or JSON Lines): each string is a prompt
        bare = not (fields or {}).get("prompt") and all(set(r.data) == {TEXT_COLUMN} for r in rows)
        for row in rows:
            item = eval_item(Fields(row, EVAL_FIELDS, fields), kind=kind, prompt=row.data[TEXT_COLUMN] if bare else None)
            if bare:
                item.meta.pop(TEXT_COLUMN, None)
            ids.add(item.id, row)
            items.append(item)
    if kind is not None:
        items = [replace(it, kind=kind) for it in items]
    return items, (chosen.name if chosen is not None else None), name
