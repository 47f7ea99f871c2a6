"""Evaluation datasets by spec. Every spec gives a list of :class:`EvalPrompt`.

- ``world:<split>`` — the embedded world (``--world DIR``): ``world:harmful`` reads
  ``test/harmful.jsonl`` (HarmfulTriple rows: the harmful response becomes the prefill
  reference), ``world:unseen`` ``test/unseen.jsonl`` (the same, for misdeeds alignment data
  never shows), ``world:benign`` / ``world:helpful`` the EvalPrompt rows of
  ``test/benign.jsonl`` / ``test/helpful.jsonl``; ``world:test`` (or any directory name of
  the world, e.g. ``world:dev``, the split to tune on) every one of those files it has;
  ``world:dev/unseen`` one file of a split.
- ``[<kind>:]<path or hub id>`` — any file the data loaders read
  (:func:`deepalign.data.loaders.load_eval_prompts`): DeRTa ``{"question"}`` JSONL,
  AdvBench / HarmBench CSV (``goal`` / ``behavior``; AdvBench's ``target`` becomes the
  prefill reference), GSM8K ``{"question", "answer"}`` with ``#### n``, MMLU-style multiple
  choice. ``harmful:``, ``benign:``, ``helpful:`` or ``unknown:`` force the kind of every row.
"""

from __future__ import annotations

from pathlib import Path

from deepalign.data.records import EvalPrompt
from deepalign.errors import DeepAlignError

WORLD_FILES = ("harmful", "unseen", "benign", "helpful")
TRIPLE_FILES = ("harmful", "unseen")  # HarmfulTriple rows, evaluated as harmful items
KIND_PREFIXES = ("harmful", "benign", "helpful", "unknown")


def _world_file(path: Path, name: str) -> list[EvalPrompt]:
    from deepalign.data.loaders import load_eval_prompts, load_triples

    if name in TRIPLE_FILES:
        return [
            EvalPrompt(id=t.id, prompt=t.query, kind="harmful", harmful=t.harmful, meta={**t.meta, "safe": t.safe})
            for t in load_triples(str(path))
        ]
    return load_eval_prompts(str(path), kind=name if name in KIND_PREFIXES else None)


def load_world(world, split: str, limit: int | None = None) -> list[EvalPrompt]:
    """World items; ``limit`` applies to each file (so ``world:test`` keeps every kind)."""
    if world is None:
        raise DeepAlignError(f"dataset world:{split} needs the world directory (--world DIR)")
    root = Path(world)
    if not root.is_dir():
        raise DeepAlignError(f"no such world directory: {root}")
    if (root / split).is_dir():
        files = [(root / split / f"{n}.jsonl", n) for n in WORLD_FILES if (root / split / f"{n}.jsonl").exists()]
        if not files:
            raise DeepAlignError(f"world split directory has none of {', '.join(f'{n}.jsonl' for n in WORLD_FILES)}: {root / split}")
    elif (root / "test" / f"{split}.jsonl").exists():
        files = [(root / "test" / f"{split}.jsonl", split)]
    elif "/" in split and (root / f"{split}.jsonl").is_file():  # one file of a split: world:dev/unseen
        files = [(root / f"{split}.jsonl", split.rsplit("/", 1)[1])]
    else:
        raise DeepAlignError(f"unknown world split {split!r}: no {root / 'test' / (split + '.jsonl')} and no directory {root / split}")
    items: list[EvalPrompt] = []
    for path, name in files:
        items.extend(_world_file(path, name)[:limit])
    return items


def load_dataset(spec: str, *, world=None, limit: int | None = None) -> list[EvalPrompt]:
    """The items of dataset ``spec`` (first ``limit`` of them); ids must be unique."""
    if limit is not None and limit < 1:
        raise DeepAlignError(f"--limit must be >= 1, got {limit}")
    head, sep, rest = spec.partition(":")
    if head == "world" and sep:
        items = load_world(world, rest, limit)
    else:
        from deepalign.data.loaders import load_eval_prompts

        kind = None
        source = spec
        if sep and head in KIND_PREFIXES and rest:
            kind, source = head, rest
        items = load_eval_prompts(source, kind=kind)[:limit]
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise DeepAlignError(f"dataset {spec}: item id {it.id!r} occurs twice")
        seen.add(it.id)
    if not items:
        raise DeepAlignError(f"dataset {spec} has no items")
    return items
