"""Load and validate datasets into the record types of :mod:`deepalign.data.records`.

Three loaders, one per record type::

    load_triples(source)        -> list[HarmfulTriple]    (query, harmful response, safe response)
    load_instructions(source)   -> list[InstructionPair]  (instruction, response[, answer])
    load_eval_prompts(source)   -> list[EvalPrompt]       (prompt[, answer, choices, harmful])

``source`` is one of

* a ``.jsonl`` file (one JSON object per line; a ``.json`` file holding JSON Lines, as the
  DeRTa reference files do, is read the same way),
* a ``.json`` file holding a list of objects, or an object with that list under ``"data"``
  or ``"rows"``,
* a ``.csv`` file with a header row,
* a local Hugging Face ``datasets`` directory (written by ``save_to_disk``, or a directory
  of data files that ``datasets.load_dataset(dir)`` understands); ``dir:split`` picks a split,
* a dataset name on the Hugging Face hub, ``name`` or ``name:split``,
* already-loaded rows: a list of dicts or a ``datasets.Dataset``.

Each column is found under any of several common names (see ``TRIPLE_FIELDS`` and friends,
documented in ``docs/data.md``); ``fields={"query": "my_column"}`` names a column
explicitly. Every problem raises :class:`~deepalign.errors.DeepAlignError` whose message
starts with the place of the record: ``file:line`` for JSON Lines and CSV (the physical line
where the record starts; the CSV header is line 1), ``file:#i`` for the i-th record (counted
from 1) of a JSON array or a Hugging Face dataset.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from deepalign.data.records import EvalPrompt, HarmfulTriple, InstructionPair
from deepalign.errors import DeepAlignError
from deepalign.utils import read_jsonl

__all__ = [
    "Row",
    "read_rows",
    "load_triples",
    "load_instructions",
    "load_eval_prompts",
    "parse_final_answer",
    "TRIPLE_FIELDS",
    "INSTRUCTION_FIELDS",
    "EVAL_FIELDS",
    "ID_FIELDS",
    "KINDS",
    "FILE_TYPES",
]

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
    "answer": ("answer", "target_answer", "label"),
    "choices": ("choices", "options"),
    "harmful": ("harmful", "harmful_response", "response_harmful", "unsafe", "target"),
    "kind": ("kind",),
    "context": ("context", "contextstring"),
}
ID_FIELDS: tuple[str, ...] = ("id", "idx", "uid", "behaviorid")
KINDS: tuple[str, ...] = ("harmful", "benign", "helpful", "unknown")
FILE_TYPES: tuple[str, ...] = (".jsonl", ".json", ".csv")

# Suffixes that mark a path as a file (so a missing one is "no such file", not a hub name).
_FILE_LIKE_SUFFIXES = FILE_TYPES + (
    ".txt", ".tsv", ".parquet", ".arrow", ".gz", ".zip", ".xz", ".bz2", ".zst",
    ".xlsx", ".xls", ".yaml", ".yml", ".md", ".pkl", ".pickle", ".pt",
)
_SAVE_TO_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_FINAL_ANSWER = re.compile(r"^####\s*\$?\s*(-?[\d,]*\.?\d+(?:/\d+)?)\s*$")
_MC_OPTION = re.compile(r"^\s*-?\s*\(([A-Z])\)\s?(.*)$")


# --------------------------------------------------------------------------------------
# Rows: one raw record with the place it came from
# --------------------------------------------------------------------------------------


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


def read_rows(
    source: Any,
    *,
    split: str | None = None,
    subset: str | None = None,
    prefer_splits: Sequence[str] = ("train",),
) -> tuple[str, list[Row]]:
    """Read ``source`` into ``(display name, rows)`` without interpreting any column.

    ``split`` picks a split of a dataset dict (also written ``source:split``);
    ``subset`` is the hub configuration name (e.g. ``"main"`` for ``openai/gsm8k``).
    Without a split, a single split is used as is; otherwise the first of
    ``prefer_splits`` that exists, else the first split.
    """
    if isinstance(source, (list, tuple)):
        return "<records>", _rows_from_objects(source, "<records>", "records")
    if _is_hf_dataset(source):
        return "<dataset>", _rows_from_objects(source, "<dataset>", "dataset")
    if _is_hf_dataset_dict(source):
        chosen = _choose_split(source, split, prefer_splits, "<dataset>")
        name = f"<dataset>:{chosen}"
        return name, _rows_from_objects(source[chosen], name, chosen)
    if not isinstance(source, (str, os.PathLike)):
        raise DeepAlignError(
            f"cannot read data from a {type(source).__name__}; give a path, a hub dataset name, "
            "a list of dicts or a datasets.Dataset"
        )

    text = os.fspath(source)
    if not text.strip():
        raise DeepAlignError("empty data source; give a path or a hub dataset name")
    path = Path(text).expanduser()

    if path.is_dir():
        return _read_hf_dir(path, text, split, prefer_splits)
    if ":" in text and not path.exists():
        base, _, tail = text.rpartition(":")
        if base and Path(base).expanduser().is_dir():
            return _read_hf_dir(Path(base).expanduser(), base, _merge_split(split, tail, text), prefer_splits)

    suffix = path.suffix.lower()
    if path.exists():
        if not path.is_file():
            raise DeepAlignError(f"not a regular file: {text}")
        if suffix not in FILE_TYPES:
            raise DeepAlignError(
                f"unsupported file type {suffix or '(no extension)'!r} for {text}; "
                "use .jsonl, .json or .csv, or a Hugging Face dataset directory"
            )
        return text, _read_file(path, text)

    # Nothing at that path: a missing file, or a hub dataset name.
    looks_local = (
        suffix in _FILE_LIKE_SUFFIXES
        or text.startswith(("./", "../", "/", "~", ".\\", "..\\"))
        or os.path.isabs(text)
        or text.endswith(("/", os.sep))
    )
    if looks_local:
        raise DeepAlignError(f"no such file: {text}")
    return _read_hub(text, split, subset, prefer_splits)


def _merge_split(split: str | None, tail: str, text: str) -> str:
    if split is not None and split != tail:
        raise DeepAlignError(f"{text}: the split is given twice ({tail!r} and split={split!r})")
    return tail


def _read_file(path: Path, name: str) -> list[Row]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl_rows(path, name)
        if suffix == ".json":
            return _read_json_rows(path, name)
        return _read_csv_rows(path, name)
    except UnicodeDecodeError as exc:
        raise DeepAlignError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=name) from None


def _read_jsonl_rows(path: Path, name: str) -> list[Row]:
    rows = []
    try:
        for lineno, obj in read_jsonl(path):
            rows.append(Row(obj, name, index=len(rows) + 1, line=lineno, stem=path.stem))
    except DeepAlignError as exc:
        # read_jsonl names the path it was given; re-raise with the name the user gave.
        if exc.path is not None and exc.line is not None:
            raise DeepAlignError(exc.bare_message, path=name, line=exc.line) from None
        raise
    return rows


def _read_json_rows(path: Path, name: str) -> list[Row]:
    raw = path.read_text(encoding="utf-8-sig")
    if not raw.strip():
        return []
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        if raw.lstrip().startswith("{"):
            # JSON Lines stored with a .json extension (the DeRTa reference files are).
            return _read_jsonl_rows(path, name)
        raise DeepAlignError(f"malformed JSON ({exc.msg}, column {exc.colno})", path=name, line=exc.lineno) from None

    if isinstance(obj, dict):
        key = next((k for k in ("data", "rows") if isinstance(obj.get(k), list)), None)
        if key is not None:
            obj = obj[key]
        elif any(isinstance(v, (list, dict)) for v in obj.values()) and not _looks_like_record(obj):
            raise DeepAlignError(
                'expected a list of records, or an object with that list under "data" or "rows"', path=name
            )
        else:
            return [Row(obj, name, index=1, line=1, stem=path.stem)]
    if not isinstance(obj, list):
        raise DeepAlignError(f"expected a list of records, got {type(obj).__name__}", path=name)
    rows = []
    for i, item in enumerate(obj, start=1):
        row = Row(item if isinstance(item, dict) else {}, name, index=i, stem=path.stem)
        if not isinstance(item, dict):
            raise row.error(f"expected a JSON object, got {_type_name(item)}")
        rows.append(row)
    return rows


def _looks_like_record(obj: dict) -> bool:
    """A lone JSON object that is itself a record (e.g. one MMLU item with a choices list)."""
    known = {a for table in (TRIPLE_FIELDS, INSTRUCTION_FIELDS, EVAL_FIELDS) for names in table.values() for a in names}
    return any(k.lower() in known for k in obj)


def _read_csv_rows(path: Path, name: str) -> list[Row]:
    _raise_csv_field_limit()
    rows: list[Row] = []
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            while header is not None and not any(cell.strip() for cell in header):
                header = next(reader, None)
            if header is None:
                return []
            header_line = reader.line_num
            columns = [cell.strip() for cell in header]
            seen: set[str] = set()
            for col in columns:
                if not col:
                    raise DeepAlignError("empty column name in the header", path=name, line=header_line)
                if col.lower() in seen:
                    raise DeepAlignError(f'duplicate column "{col}" in the header', path=name, line=header_line)
                seen.add(col.lower())
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not cells or not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(columns):
                    raise DeepAlignError(
                        f"expected {len(columns)} columns ({', '.join(columns)}), got {len(cells)}",
                        path=name,
                        line=line,
                    )
                rows.append(Row(dict(zip(columns, cells)), name, index=len(rows) + 1, line=line, stem=path.stem))
        except csv.Error as exc:
            raise DeepAlignError(f"malformed CSV ({exc})", path=name, line=reader.line_num) from None
    return rows


def _raise_csv_field_limit() -> None:
    limit = min(sys.maxsize, 2**31 - 1)
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


# --------------------------------------------------------------------------------------
# Hugging Face datasets (local directories and the hub)
# --------------------------------------------------------------------------------------


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__name__ == "Dataset" and hasattr(obj, "column_names") and hasattr(obj, "__getitem__")


def _is_hf_dataset_dict(obj: Any) -> bool:
    return type(obj).__name__ == "DatasetDict" and isinstance(obj, dict)


def _choose_split(dsdict: Mapping, split: str | None, prefer: Sequence[str], name: str) -> str:
    splits = list(dsdict.keys())
    if not splits:
        raise DeepAlignError(f"{name}: the dataset has no splits")
    if split is not None:
        if split not in dsdict:
            raise DeepAlignError(f"{name}: no split {split!r} (available: {', '.join(splits)})")
        return split
    if len(splits) == 1:
        return splits[0]
    for candidate in prefer:
        if candidate in dsdict:
            return candidate
    return splits[0]


def _rows_from_objects(items: Iterable, name: str, stem: str) -> list[Row]:
    rows = []
    for i, item in enumerate(items, start=1):
        row = Row(item if isinstance(item, dict) else {}, name, index=i, stem=stem)
        if not isinstance(item, dict):
            raise row.error(f"expected a mapping of column -> value, got {_type_name(item)}")
        rows.append(row)
    return rows


def _read_hf_dir(path: Path, name: str, split: str | None, prefer: Sequence[str]) -> tuple[str, list[Row]]:
    import datasets

    name = name.rstrip("/\\") or name
    stem = path.resolve().name or "data"
    try:
        if any((path / marker).exists() for marker in _SAVE_TO_DISK_MARKERS):
            ds = datasets.load_from_disk(str(path))
        else:
            if not any(p.is_file() for p in path.rglob("*")):
                raise DeepAlignError("empty directory: no dataset files", path=name)
            ds = datasets.load_dataset(str(path))
    except DeepAlignError:
        raise
    except Exception as exc:  # datasets raises many types; all mean "cannot read this dir"
        raise DeepAlignError(f"could not read the dataset directory ({_short_reason(exc)})", path=name) from None
    return _rows_from_loaded(ds, name, stem, split, prefer)


def _rows_from_loaded(ds: Any, name: str, stem: str, split: str | None, prefer: Sequence[str]) -> tuple[str, list[Row]]:
    if isinstance(ds, dict):  # DatasetDict
        chosen = _choose_split(ds, split, prefer, name)
        display = f"{name}:{chosen}" if len(ds) > 1 or split is not None else name
        return display, _rows_from_objects(ds[chosen], display, stem)
    held = getattr(ds, "split", None)
    if split is not None and held is not None and str(held) != split:
        raise DeepAlignError(f"{name}: no split {split!r} (the dataset holds only {held})")
    return name, _rows_from_objects(ds, name, stem)


def _read_hub(text: str, split: str | None, subset: str | None, prefer: Sequence[str]) -> tuple[str, list[Row]]:
    import datasets

    name = text
    if ":" in text:
        name, _, tail = text.rpartition(":")
        split = _merge_split(split, tail, text)
    try:
        ds = datasets.load_dataset(name, subset, split=split) if split else datasets.load_dataset(name, subset)
    except Exception as exc:  # network, missing dataset, bad config: all the same to the user
        raise DeepAlignError(
            f"could not load dataset {name!r} from the Hugging Face hub ({_short_reason(exc)}); "
            "no local file or directory of that name exists either: give a local path "
            "(.jsonl, .json, .csv or a dataset directory) instead"
        ) from None
    stem = name.replace("/", "_")
    if split is not None:
        display = f"{name}:{split}"
        return display, _rows_from_objects(ds, display, stem)
    return _rows_from_loaded(ds, name, stem, None, prefer)


def _short_reason(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if len(msg) > 160:
        msg = msg[:157] + "..."
    return f"{type(exc).__name__}: {msg}"


# --------------------------------------------------------------------------------------
# Field access and validation
# --------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


class _Fields:
    """Look up columns of one row by alias, validate them, remember what was used."""

    def __init__(self, row: Row, table: Mapping[str, tuple[str, ...]], overrides: Mapping[str, str] | None):
        self.row = row
        self.table = dict(table)
        for canonical, column in (overrides or {}).items():
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
            raise self.row.error(f"field {self._label(key, canonical)} must be a string, got {_type_name(value)}")
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
                f"field {self._label(key, canonical)} must be a string or a number, got {_type_name(value)}"
            )
        if isinstance(value, str) and not value.strip():
            return key, None
        return key, value

    def take(self, canonical: str) -> tuple[str | None, Any]:
        """Raw optional value of any type (marked as used)."""
        key, value, _ = self.find(canonical)
        if key is not None:
            self.used.add(key)
        return key, value

    def record_id(self) -> str:
        for alias in ID_FIELDS:
            key = self.keys.get(alias)
            if key is None:
                continue
            self.used.add(key)
            value = self.row.data[key]
            if value is None or (isinstance(value, str) and not value.strip()):
                continue  # an empty cell: no id given (a CSV cannot say null)
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise self.row.error(
                    f'field "{key}" (the record id) must be a string or an integer, got {_type_name(value)}'
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


class _Ids:
    """Reject duplicate record ids, naming both places."""

    def __init__(self):
        self.seen: dict[str, str] = {}

    def add(self, record_id: str, row: Row) -> None:
        first = self.seen.get(record_id)
        if first is not None:
            raise row.error(f'duplicate id "{record_id}" (first used at {first})')
        self.seen[record_id] = row.where


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


def _check_fields_arg(fields: Mapping[str, str] | None, table: Mapping[str, Any], loader: str) -> None:
    if fields is None:
        return
    if not isinstance(fields, Mapping):
        raise DeepAlignError(f"{loader}: fields must map a field name to a column name")
    unknown = [k for k in fields if k not in table]
    if unknown:
        raise DeepAlignError(f"{loader}: unknown field {unknown[0]!r} in fields= (known: {', '.join(table)})")
    for k, v in fields.items():
        if not isinstance(v, str) or not v:
            raise DeepAlignError(f"{loader}: fields[{k!r}] must be a column name")


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
    _check_fields_arg(fields, TRIPLE_FIELDS, "load_triples")
    name, rows = read_rows(source, split=split, subset=subset, prefer_splits=("train",))
    _nonempty(name, rows)
    ids, out = _Ids(), []
    for row in rows:
        f = _Fields(row, TRIPLE_FIELDS, fields)
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
    _check_fields_arg(fields, INSTRUCTION_FIELDS, "load_instructions")
    name, rows = read_rows(source, split=split, subset=subset, prefer_splits=("train",))
    _nonempty(name, rows)
    ids, out = _Ids(), []
    for row in rows:
        f = _Fields(row, INSTRUCTION_FIELDS, fields)
        record_id = f.record_id()
        instruction_key, _, _ = f.find("instruction")
        instruction = f.text("instruction")
        meta: dict[str, Any] = {}
        if str(instruction_key).lower() != "input" and "input" in f.keys and f.keys["input"] not in f.used:
            extra_key = f.keys["input"]
            f.used.add(extra_key)
            extra = row.data[extra_key]
            if extra is not None and not isinstance(extra, str):
                raise row.error(f'field "{extra_key}" must be a string, got {_type_name(extra)}')
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
    if kind is not None and kind not in KINDS:
        raise DeepAlignError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    _check_fields_arg(fields, EVAL_FIELDS, "load_eval_prompts")
    name, rows = read_rows(source, split=split, subset=subset, prefer_splits=("test", "validation", "train"))
    _nonempty(name, rows)
    ids, out = _Ids(), []
    for row in rows:
        f = _Fields(row, EVAL_FIELDS, fields)
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
        if kind is None and row_kind is not None and (not isinstance(row_kind, str) or row_kind not in KINDS):
            raise row.error(f'field "{kind_key}" must be one of {", ".join(KINDS)}, got {row_kind!r}')
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


def _choices(f: _Fields, row: Row) -> list[str] | None:
    key, value = f.take("choices")
    if value is not None:
        if not isinstance(value, (list, tuple)) or not value:
            raise row.error(f'field "{key}" must be a non-empty list of strings, got {_type_name(value)}')
        out = []
        for i, choice in enumerate(value):
            if isinstance(choice, bool) or not isinstance(choice, (str, int, float)):
                raise row.error(f'field "{key}" item {i} must be a string, got {_type_name(choice)}')
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
            raise row.error(f'choice column "{col}" must be a string, got {_type_name(value)}')
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
