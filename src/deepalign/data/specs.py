"""Presets and the spec that names one: the mechanism that dataset presets
(:mod:`deepalign.data.presets`: public benchmarks) and label presets
(:mod:`deepalign.evaluation.validation`: human-labelled files for judge validation) share.

A spec is ``[kind:][preset:]SOURCE[,key=value...]``:

- ``kind:`` (datasets only: ``harmful``, ``benign``, ``helpful``, ``unknown``) forces the kind of
  every row;
- ``preset:`` names a preset of the table the spec is read against (``harmbench:FILE``,
  ``xstest-completions:FILE``); a preset's name alone (``gsm8k``, ``jbb-judges``) reads its
  hub copy. A path that exists is always a path, even when it starts with a preset's name;
- ``SOURCE`` is a file, a dataset directory or a hub id;
- options after commas: ``split=`` (and for datasets ``subset=``) and the preset's own
  (``targets=FILE`` of HarmBench, ``behaviors=CSV`` of harmbench-val); a value holding a comma
  is written in double quotes (``harmbench:"a,b.csv"``).

A preset table (:class:`PresetTable`) finds a preset by name (aliases, a close match in the
error) or by the columns of a file; every preset (:class:`PresetSchema`) checks its schema and
its options the same way and knows where its hub copy lives (:class:`HubCopy`). A preset's
reader gets the rows and a :class:`Context`, and reads cells with the typed readers of
:class:`deepalign.data.fields.Fields` (``cell``, ``cell_text``, ``cell_flag``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Iterator, Mapping, Sequence, TypeVar

from deepalign.data.fields import Row, column_names
from deepalign.data.sources import read_hub
from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt
from deepalign.registry import split_args

__all__ = ["Context", "HubCopy", "accept_all", "PresetSchema", "PresetTable", "SourceSpec", "parse_spec"]


@dataclass
class Context:
    """What a preset's reader knows besides the rows."""

    name: str  #: the source as shown in errors
    fields: Mapping[str, str] = field(default_factory=dict)  #: the user's column names (``--fields``)
    options: dict[str, str] = field(default_factory=dict)  #: the preset's spec options (targets=, attack=)
    split: str | None = None
    notes: list[str] = field(default_factory=list)  #: what the preset left out, for the report
    #: the items a file of published responses answers (``deepalign judge FILE --prompts DATASET``)
    reference: list[EvalPrompt] | None = None

    def option(self, key: str) -> str | None:
        return self.options.pop(key, None)


@dataclass(frozen=True)
class HubCopy:
    """Where a preset's data lives on the Hugging Face hub (tried when the hub is reachable)."""

    id: str
    subset: str | None = None
    split: str | None = None
    data_dir: str | None = None
    train_split: str | None = None


def accept_all(cols: set[str], rows: list[Row], name: str) -> bool:
    return True


class PresetSchema:
    """What every preset has and does; a preset is a frozen dataclass deriving from this with
    the fields ``name``, ``title``, ``columns`` (the lower-case columns that identify its
    files, one set per accepted layout), ``accepts`` (a further check on the columns, rows and
    source name), ``options`` (its own spec options) and ``hub``. ``noun`` names the kind of
    preset in errors."""

    noun = "preset"

    def matches(self, rows: Sequence[Row], name: str, cols: set[str] | None = None) -> bool:
        cols = column_names(rows) if cols is None else cols
        return any(layout <= cols for layout in self.columns) and self.accepts(cols, list(rows), name)

    def check_schema(self, rows: Sequence[Row], name: str) -> None:
        """The rows must be in one of this preset's layouts (a named preset on the wrong file)."""
        if self.matches(rows, name):
            return
        want = " or ".join(", ".join(sorted(layout)) for layout in self.columns)
        raise DeepAlignError(f"{name}: not in the {self.title} schema (expected columns {want}; found "
                             f"{', '.join(sorted(column_names(rows))) or 'none'})")

    def check_options(self, ctx: Context) -> None:
        """Every option of the spec must be one of this preset's."""
        unknown = sorted(set(ctx.options) - set(self.options))
        if unknown:
            known = f"; known: {', '.join(self.options)}" if self.options else " (it takes none)"
            raise DeepAlignError(f"{ctx.name}: unknown option {unknown[0]} of the {self.name} {self.noun}{known}")

    def no_hub(self) -> str:
        return f"{self.name}: no hub copy is known; give the file: {self.name}:PATH"

    def read_hub(self, *, split: str | None, subset: str | None = None, prefer: Sequence[str] = (),
                 train: bool = False) -> tuple[str, list[Row]]:
        """The rows of the preset's hub copy (``train``: its training split by default)."""
        if self.hub is None:
            raise DeepAlignError(self.no_hub())
        default_split = (self.hub.train_split if train else None) or self.hub.split
        return read_hub(self.hub.id, split or default_split, subset or self.hub.subset,
                        prefer or (default_split,), self.hub.data_dir)


P = TypeVar("P", bound=PresetSchema)


class PresetTable(Generic[P]):
    """The presets of one kind, in the order files are matched against them (most specific
    first), found by name (or alias) or by the schema of a file."""

    def __init__(self, what: str, presets: Sequence[P], aliases: Mapping[str, str] | None = None):
        self.what, self.presets = what, tuple(presets)
        self.by_name = {p.name: p for p in self.presets}
        self.aliases = dict(aliases or {})

    def __iter__(self) -> Iterator[P]:
        return iter(self.presets)

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.by_name

    def names(self) -> list[str]:
        return [p.name for p in self.presets]

    def get(self, name: str) -> P:
        key = self.aliases.get(name, name)
        if key not in self.by_name:
            close = difflib.get_close_matches(name, list(self.by_name), n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise DeepAlignError(f"unknown {self.what} {name!r}{hint}; choose from {', '.join(self.by_name)}")
        return self.by_name[key]

    def detect(self, rows: Sequence[Row], name: str) -> P | None:
        """The preset whose schema ``rows`` are in (None: none of them)."""
        cols = column_names(rows)
        return next((p for p in self.presets if p.matches(rows, name, cols)), None)

    def by_hub_id(self, source: str) -> P | None:
        """The preset whose hub copy ``source`` names (``openai/gsm8k``, ``cais/mmlu:test``)."""
        base = source.split(":")[0].lower()
        return next((p for p in self.presets if p.hub is not None and p.hub.id.lower() == base), None)


@dataclass
class SourceSpec:
    """A parsed spec (see the module doc): ``preset`` is the preset's own name (not an alias);
    ``source`` None: the preset's hub copy."""

    text: str
    source: str | None
    kind: str | None = None
    preset: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def _options(parts: Sequence[str], spec: str, what: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise DeepAlignError(f"{what} {spec!r}: expected key=value after the comma, got {part!r}")
        if key.strip() in opts:
            raise DeepAlignError(f"{what} {spec!r}: option {key.strip()} given twice")
        opts[key.strip()] = value.strip()
    return opts


def parse_spec(spec: str, table: PresetTable, *, what: str, kinds: Sequence[str] = (),
               empty: str | None = None) -> SourceSpec:
    """``[kind:][preset:]SOURCE[,key=value...]`` against the presets of ``table`` (``kinds``:
    the kind prefixes this spec takes; ``what`` names it in errors, ``empty`` is the error of
    an empty spec)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DeepAlignError(empty or f"empty {what} spec")
    text = spec.strip()
    parts = split_args(text, ",", text)
    head, opts = parts[0].strip(), _options(parts[1:], spec, what)
    kind = preset = None
    first, sep, rest = head.partition(":")
    if sep and first in kinds:
        kind, head = first, rest
    first, sep, rest = head.partition(":")
    if first in table and not Path(head).exists():  # preset:SOURCE, or the preset alone
        preset, head = first, rest
    if kind is not None and not head and preset is None:
        raise DeepAlignError(f"{what} {spec!r}: give a file or hub id after {kind}:")
    return SourceSpec(spec, head or None, kind, table.get(preset).name if preset else None, opts)
