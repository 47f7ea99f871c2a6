"""Load and validate datasets into the record types of :mod:`deepalign.records`.

Three loaders, one per record type::

    load_triples(source)        -> list[HarmfulTriple]    (query, harmful response, safe response)
    load_instructions(source)   -> list[InstructionPair]  (instruction, response[, answer])
    load_eval_prompts(source)   -> list[EvalPrompt]       (prompt[, answer, choices, harmful])

``source`` is anything :func:`deepalign.data.sources.read_source` reads (a file, a dataset
directory, a hub name, rows in memory). Each column is found under any of several common
names (:mod:`deepalign.data.fields`); every problem raises
:class:`~deepalign.errors.DeepAlignError` naming ``file:line`` (or ``file:#i``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from deepalign.data.fields import (EVAL_FIELDS, INSTRUCTION_FIELDS, TRIPLE_FIELDS, Fields, Ids, Row,
                                   check_fields_arg, type_name)
from deepalign.data.sources import read_source
from deepalign.errors import DeepAlignError
from deepalign.records import ITEM_KINDS, EvalPrompt, HarmfulTriple, InstructionPair

__all__ = ["load_triples", "load_instructions", "load_eval_prompts", "parse_final_answer"]

_FINAL_ANSWER = re.compile(r"^####\s*\$?\s*(-?[\d,]*\.?\d+(?:/\d+)?)\s*$")
_MC_OPTION = re.compile(r"^\s*-?\s*\(([A-Z])\)\s?(.*)$")


def _nonempty(name: str, rows: list[Row]) -> None:
    if not rows:
        raise DeepAlignError("no records", path=name)


def parse_final_answer(solution: str) -> str | None:
    """The final answer of a GSM8K-style solution, else None.

    The last non-empty line must be ``#### n`` with ``n`` a number; thousands separators and
    a leading ``$`` are removed (``"#### $1,200"`` gives ``"1200"``). A markdown heading such
    as ``#### Step 1`` is not an answer.
    """
    lines = [line for line in solution.splitlines() if line.strip()]
    match = _FINAL_ANSWER.match(lines[-1].strip()) if lines else None
    return match.group(1).replace(",", "") if match else None



# --------------------------------------------------------------------------------------
# The loaders
# --------------------------------------------------------------------------------------


def load_triples(
    source: Any,
    *,
    split: str | None = None,
    subset: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> list[HarmfulTriple]:
    """Load ``(query, harmful response, safe response)`` triples.

    Columns not used for the triple are kept in ``meta`` (e.g. a category).
    """
    check_fields_arg(fields, TRIPLE_FIELDS, "load_triples")
    name, rows = read_source(source, split=split, subset=subset, prefer_splits=("train",))
    _nonempty(name, rows)
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
) -> list[InstructionPair]:
    """Load helpful ``(instruction, response)`` pairs.

    Alpaca style: when a row has both an instruction and a non-empty ``input``, the input is
    appended to the instruction after a blank line. GSM8K style: a response ending in
    ``#### n`` sets ``answer = "n"`` (the response keeps the full solution). A separate
    ``answer`` column, when the response came from another column, sets ``answer`` too.
    """
    check_fields_arg(fields, INSTRUCTION_FIELDS, "load_instructions")
    name, rows = read_source(source, split=split, subset=subset, prefer_splits=("train",))
    _nonempty(name, rows)
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


def load_eval_prompts(
    source: Any,
    kind: str | None = None,
    *,
    split: str | None = None,
    subset: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> list[EvalPrompt]:
    """Load evaluation prompts.

    ``kind`` (harmful / benign / helpful / unknown) applies to every record; without it a
    ``kind`` column is used, else the kind is inferred: ``helpful`` when an answer is given,
    ``harmful`` for AdvBench / HarmBench rows (a ``goal`` or ``behavior`` column) or when a
    reference harmful response is given, ``unknown`` otherwise.

    Answers: a GSM8K solution ending in ``#### n`` gives ``answer = "n"`` (the solution is
    kept in ``meta["solution"]``); an integer answer of a multiple-choice item is turned into
    its letter (``meta["answer_index"]`` keeps the integer). Choices come from a ``choices``
    list, from ``A``/``B``/``C``/``D`` columns, or from ``-(A) ...`` option lines inside the
    prompt (the DeRTa MMLU file; the prompt is then left as it is).
    """
    if kind is not None and kind not in ITEM_KINDS:
        raise DeepAlignError(f"unknown kind {kind!r}; choose from {', '.join(ITEM_KINDS)}")
    check_fields_arg(fields, EVAL_FIELDS, "load_eval_prompts")
    name, rows = read_source(source, split=split, subset=subset, prefer_splits=("test", "validation", "train"))
    _nonempty(name, rows)
    ids, out = Ids(), []
    for row in rows:
        f = Fields(row, EVAL_FIELDS, fields)
        record_id = f.record_id()
        prompt_key, _, _ = f.find("prompt")
        prompt = f.text("prompt")
        meta: dict[str, Any] = {}

        context = f.text("context", required=False)
        if context is not None:  # HarmBench contextual behaviours
            meta["behavior"] = prompt
            prompt = f"{context}\n\n---\n\n{prompt}"

        choices = _choices(f, row)
        if choices is None:
            choices = _choices_in_prompt(prompt)
            if choices is not None:
                meta["choices_in_prompt"] = True

        _, answer = f.scalar("answer")
        if isinstance(answer, (int, float)):
            if choices is not None and isinstance(answer, int) and 0 <= answer < len(choices):
                meta["answer_index"] = answer
                answer = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[answer]
            else:
                answer = str(answer)
        if isinstance(answer, str):
            final = parse_final_answer(answer)
            if final is not None:
                meta["solution"] = answer
                answer = final
            elif choices is not None and answer.strip().upper() in list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices)]):
                answer = answer.strip().upper()

        harmful = f.text("harmful", required=False)

        kind_key, row_kind = f.take("kind")
        if kind is None and row_kind is not None and (not isinstance(row_kind, str) or row_kind not in ITEM_KINDS):
            raise row.error(f'field "{kind_key}" must be one of {", ".join(ITEM_KINDS)}, got {row_kind!r}')
        if kind is not None:
            record_kind = kind
        elif row_kind:
            record_kind = row_kind
        elif answer is not None:
            record_kind = "helpful"
        elif harmful is not None or (prompt_key or "").lower() in ("goal", "behavior"):
            record_kind = "harmful"
        else:
            record_kind = "unknown"

        ids.add(record_id, row)
        meta = {**f.extras(), **meta}
        out.append(
            EvalPrompt(
                id=record_id,
                prompt=prompt,
                kind=record_kind,
                answer=answer,
                harmful=harmful,
                choices=choices,
                meta=meta,
            )
        )
    return out


def _choices(f: Fields, row: Row) -> list[str] | None:
    key, value = f.take("choices")
    if value is not None:
        if not isinstance(value, (list, tuple)) or not value:
            raise row.error(f'field "{key}" must be a non-empty list of strings, got {type_name(value)}')
        out = []
        for i, choice in enumerate(value):
            if isinstance(choice, bool) or not isinstance(choice, (str, int, float)):
                raise row.error(f'field "{key}" item {i} must be a string, got {type_name(choice)}')
            out.append(str(choice))
        return out
    # A/B/C/D... columns (MMLU as CSV): consecutive letters starting at A, at least two.
    letters = []
    for letter in "ABCDEFGHIJ":
        col = f.keys.get(letter.lower())
        if col is None:
            break
        letters.append(col)
    if len(letters) < 2:
        return None
    out = []
    for col in letters:
        value = row.data[col]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise row.error(f'choice column "{col}" must be a string, got {type_name(value)}')
        if not str(value).strip():
            raise row.error(f'choice column "{col}" is empty')
        f.used.add(col)
        out.append(str(value))
    return out


def _choices_in_prompt(prompt: str) -> list[str] | None:
    """Options written as ``-(A) text`` lines after a ``-options`` line (DeRTa's MMLU file)."""
    lines = prompt.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().lower() in ("-options", "options:", "options"))
    except StopIteration:
        return None
    out = []
    for line in lines[start + 1 :]:
        match = _MC_OPTION.match(line)
        if match is None:
            if line.strip():
                break
            continue
        if match.group(1) != "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[len(out)]:
            return None
        out.append(match.group(2).strip())
    return out if len(out) >= 2 else None
