"""Where raw records come from: files (JSON Lines, JSON, CSV), local Hugging Face dataset
directories, the hub, or rows already in memory. :func:`read_source` returns the rows
without interpreting any column; :mod:`deepalign.data.loaders` gives them meaning.

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

Errors start with the place of the record: ``file:line`` for JSON Lines and CSV (the
physical line where the record starts; the CSV header is line 1), ``file:#i`` for the i-th
record (counted from 1) of a JSON array or a Hugging Face dataset.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from deepalign.data.fields import ALL_FIELD_NAMES, Row, type_name
from deepalign.errors import DeepAlignError
from deepalign.registry import truth

__all__ = ["read_source", "read_hub", "read_lookup", "hub_offline", "FILE_TYPES", "TEXT_COLUMN", "GROUP_COLUMN"]

#: the column a bare JSON string is read into
TEXT_COLUMN = "text"
#: the column holding the key of a ``{key: [records]}`` JSON file
GROUP_COLUMN = "key"

FILE_TYPES: tuple[str, ...] = (".jsonl", ".json", ".csv", ".txt")

# Suffixes that mark a path as a file (so a missing one is "no such file", not a hub name).
_FILE_LIKE_SUFFIXES = FILE_TYPES + (
    ".tsv", ".parquet", ".arrow", ".gz", ".zip", ".xz", ".bz2", ".zst",
    ".xlsx", ".xls", ".yaml", ".yml", ".md", ".pkl", ".pickle", ".pt",
)
_SPLIT_NAMES = {"train", "test", "validation", "valid", "dev", "eval", "data", "rows", "items", "records"}
_SAVE_TO_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def read_source(
    source: Any,
    *,
    split: str | None = None,
    subset: str | None = None,
    prefer_splits: Sequence[str] = ("train",),
    data_dir: str | None = None,
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
                "use .jsonl, .json, .csv or .txt (one prompt per line), or a Hugging Face dataset directory"
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
    return read_hub(text, split, subset, prefer_splits, data_dir)


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
        if suffix == ".txt":
            return _read_text_rows(path, name)
        return _read_csv_rows(path, name)
    except UnicodeDecodeError as exc:
        raise DeepAlignError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=name) from None


def _read_text_rows(path: Path, name: str) -> list[Row]:
    """One prompt per non-empty line of a plain text file, read as ``{"text": line}``."""
    rows: list[Row] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            rows.append(Row({TEXT_COLUMN: line}, name, index=len(rows) + 1, line=lineno, stem=path.stem))
    return rows


def _read_jsonl_rows(path: Path, name: str) -> list[Row]:
    """One record per non-empty line: a JSON object, or a bare JSON string (DeRTa's
    completion-attack and PAIR result files), read as ``{"text": ...}``."""
    from deepalign.utils import json_lines

    rows: list[Row] = []
    kinds: set[str] = set()
    for lineno, obj in json_lines(path, name):
        if isinstance(obj, str):
            obj = {TEXT_COLUMN: obj}
            kinds.add("string")
        elif isinstance(obj, dict):
            kinds.add("object")
        else:
            raise DeepAlignError(f"expected a JSON object or string, got {type_name(obj)}", path=name, line=lineno)
        if len(kinds) > 1:
            raise DeepAlignError("mixes JSON objects and bare strings; a file holds one or the other", path=name,
                                 line=lineno)
        rows.append(Row(obj, name, index=len(rows) + 1, line=lineno, stem=path.stem))
    return rows


def _read_json_rows(path: Path, name: str) -> list[Row]:
    raw = path.read_text(encoding="utf-8-sig")
    if not raw.strip():
        return []
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        if raw.lstrip().startswith(("{", '"')):
            # JSON Lines stored with a .json extension (the DeRTa reference and result files are),
            # objects or bare strings
            return _read_jsonl_rows(path, name)
        raise DeepAlignError(f"malformed JSON ({exc.msg}, column {exc.colno})", path=name, line=exc.lineno) from None

    if isinstance(obj, dict):
        key = next((k for k in ("data", "rows") if isinstance(obj.get(k), list)), None)
        if key is not None:
            obj = obj[key]
        elif len(obj) >= 2 and not _looks_like_record(obj) and not set(map(str.lower, obj)) & _SPLIT_NAMES and all(
                isinstance(v, list) and v and all(isinstance(x, dict) for x in v) for v in obj.values()):
            # {key: [record, ...]} (HarmBench completions: behaviour id -> test cases): one row per
            # record, its key in column "key"
            return _rows_from_groups(obj, path, name)
        elif any(isinstance(v, (list, dict)) for v in obj.values()) and not _looks_like_record(obj):
            raise DeepAlignError(
                'expected a list of records, or an object with that list under "data" or "rows"', path=name
            )
        else:
            return [Row(obj, name, index=1, line=1, stem=path.stem)]
    if not isinstance(obj, list):
        raise DeepAlignError(f"expected a list of records, got {type(obj).__name__}", path=name)
    if obj and all(isinstance(item, str) for item in obj):  # a JSON array of bare strings
        return [Row({TEXT_COLUMN: item}, name, index=i, stem=path.stem) for i, item in enumerate(obj, start=1)]
    rows = []
    for i, item in enumerate(obj, start=1):
        row = Row(item if isinstance(item, dict) else {}, name, index=i, stem=path.stem)
        if not isinstance(item, dict):
            raise row.error(f"expected a JSON object, got {type_name(item)}")
        rows.append(row)
    return rows


def _rows_from_groups(obj: dict, path: Path, name: str) -> list[Row]:
    rows = []
    for key, records in obj.items():
        for j, record in enumerate(records):
            if GROUP_COLUMN in record:
                raise DeepAlignError(f'record {j + 1} of "{key}" has its own "{GROUP_COLUMN}" column', path=name)
            rows.append(Row({GROUP_COLUMN: key, **record}, f"{name}:{key}", index=j + 1, stem=path.stem))
    return rows


def read_lookup(source: str | os.PathLike, what: str) -> dict[str, str]:
    """A JSON object mapping keys to strings (HarmBench's targets file: behaviour id -> target)."""
    from deepalign.utils import read_text

    path = Path(source).expanduser()
    if not path.is_file():
        raise DeepAlignError(f"no such {what} file: {source}")
    try:
        obj = json.loads(read_text(path, what=f"{what} file"))
    except json.JSONDecodeError as exc:
        raise DeepAlignError(f"malformed JSON ({exc.msg})", path=source, line=exc.lineno) from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
        raise DeepAlignError(f"expected a JSON object mapping ids to strings ({what})", path=source)
    return obj


def _looks_like_record(obj: dict) -> bool:
    """A lone JSON object that is itself a record (e.g. one MMLU item with a choices list)."""
    return any(str(k).lower() in ALL_FIELD_NAMES for k in obj)


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
            raise row.error(f"expected a mapping of column -> value, got {type_name(item)}")
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


def hub_offline() -> bool:
    """Whether the user asked for offline mode (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``)."""
    return any(truth(os.environ.get(v)) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> str | None:
    """None when the hub's host answers a TCP connection within ``timeout`` seconds, else why not."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}"


@contextlib.contextmanager
def _offline_mode():
    """Make ``datasets`` and ``huggingface_hub`` read only their local cache (no retries)."""
    import datasets.config as dconfig
    import huggingface_hub.constants as hconstants

    saved = dconfig.HF_HUB_OFFLINE, hconstants.HF_HUB_OFFLINE
    dconfig.HF_HUB_OFFLINE = hconstants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconfig.HF_HUB_OFFLINE, hconstants.HF_HUB_OFFLINE = saved


def read_hub(text: str, split: str | None, subset: str | None, prefer: Sequence[str],
              data_dir: str | None = None) -> tuple[str, list[Row]]:
    """A dataset of the hub. Offline (``HF_HUB_OFFLINE=1``) or when the hub does not answer
    within seconds, only the local cache is read: a dataset that is not there is a one-line
    error at once, not minutes of retries."""
    import datasets

    name = text
    if ":" in text:
        name, _, tail = text.rpartition(":")
        split = _merge_split(split, tail, text)
    kwargs = {"data_dir": data_dir} if data_dir else {}
    unreachable = "offline mode (HF_HUB_OFFLINE)" if hub_offline() else _hub_reachable()
    try:
        with _offline_mode() if unreachable else contextlib.nullcontext():
            ds = datasets.load_dataset(name, subset, split=split, **kwargs) if split else \
                datasets.load_dataset(name, subset, **kwargs)
    except Exception as exc:  # network, missing dataset, bad config: all the same to the user
        if unreachable:
            raise DeepAlignError(
                f"cannot load dataset {name!r}: the Hugging Face hub is not reachable ({unreachable}) and the dataset "
                "is not in the local cache; give a local path (.jsonl, .json, .csv or a dataset directory) instead"
            ) from None
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
