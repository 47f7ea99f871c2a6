"""One evaluation item from one row: :func:`eval_item`, shared by the generic loader
(:mod:`deepalign.data.loaders`, columns found by their aliases) and the benchmark presets
(:mod:`deepalign.data.presets`, each with its own column table)."""

from __future__ import annotations

from typing import Any

from deepalign.data.answers import choices_in_text, normalise_letter, parse_final_answer
from deepalign.data.fields import Fields
from deepalign.records import ITEM_KINDS, EvalPrompt


def eval_item(f: Fields, *, kind: str | None = None, prompt: str | None = None) -> EvalPrompt:
    """One :class:`EvalPrompt` from a row, by the columns of ``f``'s table (aliases or a
    preset's own); ``kind`` fixes the kind, ``prompt`` replaces the prompt column."""
    row = f.row
    record_id = f.record_id()
    prompt_key = None
    if prompt is None:
        prompt_key, _, _ = f.find("prompt")
        prompt = f.text("prompt")
    meta: dict[str, Any] = {}

    context = f.text("context", required=False)
    if context is not None:  # HarmBench contextual behaviours, laid out as HarmBench does
        meta["behavior"] = prompt
        meta["context"] = context  # kept apart too: HarmBench's classifier reads them apart
        prompt = f"{context}\n\n---\n\n{prompt}"

    choices = f.choices()
    if choices is None:
        choices = choices_in_text(prompt)
        if choices is not None:
            meta["choices_in_prompt"] = True

    _, answer = f.scalar("answer")
    if isinstance(answer, (int, float)):
        if choices is not None and isinstance(answer, int) and 0 <= answer < len(choices):
            meta["answer_index"] = answer
            answer = "ABCDEFGHIJ"[answer]
        else:
            answer = str(answer)
    if isinstance(answer, str):
        final = parse_final_answer(answer)
        if final is not None:
            meta["solution"] = answer
            answer = final
        elif choices is not None and normalise_letter(answer, len(choices)) is not None:
            answer = normalise_letter(answer, len(choices))

    harmful = f.text("harmful", required=False)
    _, category = f.scalar("category")
    if category is not None:
        meta["category"] = str(category)

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

    system = f.text("system", required=False)
    meta = {**f.extras(), **meta}
    return EvalPrompt(id=record_id, prompt=prompt, kind=record_kind, answer=answer, harmful=harmful, choices=choices,
                      meta=meta, system=system)
