"""A raw record and its columns: where a row came from (for ``file:line`` errors), the column
names accepted for each field (matched case-insensitively, in order of preference), typed
access with one-line errors, and record ids.

The alias tables are documented in ``docs/data.md``; ``fields={"query": "my_column"}`` names
a column explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from deepalign.errors import DeepAlignError
from deepalign.registry import YES_NO, truth

__all__ = ["Row", "Fields", "Ids", "TRIPLE_FIELDS", "INSTRUCTION_FIELDS", "EVAL_FIELDS", "ID_FIELDS",
           "ALL_FIELD_NAMES", "type_name", "check_fields_arg", "cell", "column_names"]

# Accepted column names, in order of preference (matched case-insensitively).
TRIPLE_FIELDS: dict[str, tuple[str, ...]] = {
    "query": ("query", "prompt", "question", "instruction", "goal"),
    # "output" is last: it is what the DeRTa reference's BeaverTails-derived source file
    # calls the harmful response (next to "instruction" and "safe_response").
    "harmful": ("harmful", "harmful_response", "response_harmful", "target", "unsafe", "output"),
    "safe": ("safe", "safe_response", "refusal", "response_safe"),
}
INSTRUCTION_FIELDS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "prompt", "question", "query", "input"),
    "response": ("response", "output", "answer", "completion"),
    # a separate checkable answer, used when the response came from another column
    "answer": ("answer", "target_answer", "final_answer"),
}
EVAL_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "query", "question", "goal", "instruction", "behavior"),
    # not "label": in safety data it is a safe/unsafe label (XSTest), a kind, never an answer
    "answer": ("answer", "target_answer"),
    "choices": ("choices", "options"),
    "harmful": ("harmful", "harmful_response", "response_harmful", "unsafe", "target"),
    "kind": ("kind",),
    "context": ("context", "contextstring"),
    "category": ("category",),
    # a row's own system prompt: it reaches the model, or the attack refuses the row by name
    "system": ("system", "system_prompt"),
}
ID_FIELDS: tuple[str, ...] = ("id", "idx", "uid", "behaviorid")

#: every accepted column name of every record type (to recognise a lone JSON object as a record)
ALL_FIELD_NAMES: frozenset[str] = frozenset(
    a for table in (TRIPLE_FIELDS, INSTRUCTION_FIELDS, EVAL_FIELDS) for names in table.values() for a in names
)


@dataclass
class Row:
    """One raw record (a dict of column -> value) and where it came from.

    ``line`` is the 1-based physical line (JSON Lines, CSV); ``index`` the 1-based record
    number (always set). ``where`` is the prefix used in error messages.
    """

    data: dict[str, Any]
    source: str
    index: int
    line: int | None = None
    stem: str = "data"

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else f"{self.source}:#{self.index}"

    @property
    def default_id(self) -> str:
        return f"{self.stem}-{self.line if self.line is not None else self.index}"

    def error(self, message: str) -> DeepAlignError:
        if self.line is not None:
            return DeepAlignError(message, path=self.source, line=self.line)
        return DeepAlignError(message, path=f"{self.source}:#{self.index}")



def column_names(rows) -> set[str]:
    """The lower-case column names of ``rows`` (what a preset's schema is matched against)."""
    return {str(k).lower() for r in rows for k in r.data}


def cell(row: Row, column: str) -> Any:
    """The value of ``row``'s column named ``column`` (any case); None when it has none."""
    key = next((k for k in row.data if str(k).lower() == column.lower()), None)
    return None if key is None else row.data[key]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


class Fields:
    """Look up columns of one row by alias, validate them, remember what was used."""

    def __init__(self, row: Row, table: Mapping[str, tuple[str, ...]], overrides: Mapping[str, str] | None):
        self.row = row
        self.table = dict(table)
        self.id_column: str | None = None
        for canonical, column in (overrides or {}).items():
            if canonical == "id":
                self.id_column = column
            else:
                self.table[canonical] = (column,)
        self.keys: dict[str, str] = {}
        for key in row.data:
            self.keys.setdefault(str(key).lower(), key)
        self.used: set[str] = set()

    def aliases(self, canonical: str) -> tuple[str, ...]:
        return self.table.get(canonical, (canonical,))

    def find(self, canonical: str) -> tuple[str | None, Any, bool]:
        """(key, value, seen_null): the first alias present with a non-null value."""
        seen_null = None
        for alias in self.aliases(canonical):
            key = self.keys.get(alias.lower())
            if key is None or key in self.used:
                continue
            value = self.row.data[key]
            if value is None:
                seen_null = seen_null or key
                continue
            return key, value, False
        return seen_null, None, seen_null is not None

    def _label(self, key: str, canonical: str) -> str:
        return f'"{key}"' if key.lower() == canonical else f'"{key}" (used as {canonical})'

    def missing(self, canonical: str) -> DeepAlignError:
        names = ", ".join(self.aliases(canonical))
        return self.row.error(f'missing field "{canonical}" (accepted names: {names})')

    def text(self, canonical: str, *, required: bool = True) -> str | None:
        key, value, null = self.find(canonical)
        if key is None or null:
            if null and required:
                raise self.row.error(f"field {self._label(key, canonical)} is null, expected a non-empty string")
            if required:
                raise self.missing(canonical)
            return None
        self.used.add(key)
        if not isinstance(value, str):
            raise self.row.error(f"field {self._label(key, canonical)} must be a string, got {type_name(value)}")
        if not value.strip():
            if not required:
                return None
            raise self.row.error(f"field {self._label(key, canonical)} is empty")
        return value

    def scalar(self, canonical: str) -> tuple[str | None, Any]:
        """An optional string or number (answers, labels); empty strings count as absent."""
        key, value, _ = self.find(canonical)
        if key is None or value is None:
            return None, None
        self.used.add(key)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.row.error(
                f"field {self._label(key, canonical)} must be a string or a number, got {type_name(value)}"
            )
        if isinstance(value, str) and not value.strip():
            return key, None
        return key, value

    # -- cells by their own column name (a preset's columns), marked as used --------------------
    def cell(self, column: str) -> Any:
        """The raw value of the column named ``column`` (any case); None when there is none."""
        key = self.keys.get(column.lower())
        if key is None:
            return None
        self.used.add(key)
        return self.row.data[key]

    def cell_text(self, column: str, *, required: bool = False) -> str | None:
        """A string (or number) cell as text; None when absent or blank, unless ``required``."""
        value = self.cell(column)
        if _blank(value):
            if required:
                raise self.row.error(f'missing field "{column}"')
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.row.error(f'field "{column}" must be a string, got {type_name(value)}')
        return str(value)

    def cell_flag(self, column: str, *, what: str = "field",
                  words: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())) -> bool | None:
        """A yes/no cell: a bool, one of :data:`deepalign.registry.TRUE_WORDS` /
        ``FALSE_WORDS`` (1/0, true/false, yes/no, on/off), or one of the file's own ``words``
        (true ones, false ones); None when blank; any other value is an error naming it."""
        value = self.cell(column)
        if _blank(value):
            return None
        flag = truth(value)
        text = str(value).strip().lower()
        if flag is None and text in words[0] | words[1]:
            flag = text in words[0]
        if flag is None:
            known = ", ".join([*(f"{yes}/{no}" for yes, no in YES_NO), *sorted(words[0] | words[1])])
            raise self.row.error(f'{what} "{column}" has the value {value!r}, which this file does not use '
                                 f"(known: {known})")
        return flag

    def take(self, canonical: str) -> tuple[str | None, Any]:
        """Raw optional value of any type (marked as used)."""
        key, value, _ = self.find(canonical)
        if key is not None:
            self.used.add(key)
        return key, value

    def choices(self) -> list[str] | None:
        """Options of a multiple-choice row: a ``choices`` / ``options`` list, or columns ``A``,
        ``B``, ... (consecutive letters from A, at least two); None when there are none."""
        key, value = self.take("choices")
        if value is not None:
            if not isinstance(value, (list, tuple)) or not value:
                raise self.row.error(f'field "{key}" must be a non-empty list of strings, got {type_name(value)}')
            out = []
            for i, choice in enumerate(value):
                if isinstance(choice, bool) or not isinstance(choice, (str, int, float)):
                    raise self.row.error(f'field "{key}" item {i} must be a string, got {type_name(choice)}')
                out.append(str(choice))
            return out
        letters = []
        for letter in "ABCDEFGHIJ":
            col = self.keys.get(letter.lower())
            if col is None:
                break
            letters.append(col)
        if len(letters) < 2:
            return None
        out = []
        for col in letters:
            value = self.row.data[col]
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise self.row.error(f'choice column "{col}" must be a string, got {type_name(value)}')
            if not str(value).strip():
                raise self.row.error(f'choice column "{col}" is empty')
            self.used.add(col)
            out.append(str(value))
        return out

    def record_id(self) -> str:
        if self.id_column is not None and self.id_column.lower() not in self.keys:
            raise self.row.error(f'missing field "{self.id_column}" (named as id)')
        for alias in (self.id_column.lower(),) if self.id_column is not None else ID_FIELDS:
            key = self.keys.get(alias)
            if key is None:
                continue
            self.used.add(key)
            value = self.row.data[key]
            if value is None or (isinstance(value, str) and not value.strip()):
                continue  # an empty cell: no id given (a CSV cannot say null)
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise self.row.error(
                    f'field "{key}" (the record id) must be a string or an integer, got {type_name(value)}'
                )
            return str(value)
        return self.row.default_id

    def extras(self) -> dict[str, Any]:
        """Unused columns; a ``meta`` object (our own records' field) is merged, not nested,
        so records round-trip through JSONL."""
        out = {}
        meta = self.row.data.get("meta")
        if isinstance(meta, dict) and "meta" not in self.used:
            out.update({str(k): v for k, v in meta.items()})
        for key, value in self.row.data.items():
            if key in self.used or value is None or (isinstance(value, str) and not value.strip()):
                continue
            if key == "meta" and isinstance(value, dict):
                continue
            out[str(key)] = value
        return out


class Ids:
    """Reject duplicate record ids, naming both places."""

    def __init__(self):
        self.seen: dict[str, str] = {}

    def add(self, record_id: str, row: Row) -> None:
        first = self.seen.get(record_id)
        if first is not None:
            raise row.error(f'duplicate id "{record_id}" (first used at {first})')
        self.seen[record_id] = row.where


def check_fields_arg(fields: Mapping[str, str] | None, table: Mapping[str, Any], loader: str) -> None:
    if fields is None:
        return
    if not isinstance(fields, Mapping):
        raise DeepAlignError(f"{loader}: fields must map a field name to a column name")
    unknown = [k for k in fields if k not in table and k != "id"]
    if unknown:
        raise DeepAlignError(f"{loader}: unknown field {unknown[0]!r} in fields= (known: {', '.join([*table, 'id'])})")
    for k, v in fields.items():
        if not isinstance(v, str) or not v:
            raise DeepAlignError(f"{loader}: fields[{k!r}] must be a column name")
