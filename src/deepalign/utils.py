"""Small shared helpers: JSONL files, atomic writes, append-only logs, seeding, progress bars
and quiet library loading. Every file the package writes goes through here, so there is one
atomic writer and one torn-line rule for the whole package."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from deepalign.errors import DeepAlignError


def os_error(exc: OSError, path: str | os.PathLike | None = None, doing: str = "write") -> DeepAlignError:
    """An ``OSError`` as a one-line user error naming the path."""
    where = path if path is not None else exc.filename
    reason = exc.strerror or type(exc).__name__
    return DeepAlignError(f"cannot {doing} {where}: {reason}")


# -- reading ---------------------------------------------------------------------------------


def read_text(path: str | os.PathLike, *, what: str = "file") -> str:
    """A UTF-8 text file; a missing, unreadable or non-UTF-8 file is a one-line error."""
    path = Path(path)
    if not path.exists():
        raise DeepAlignError(f"no such {what}: {path}")
    if not path.is_file():
        raise DeepAlignError(f"not a regular file: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DeepAlignError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from None
    except OSError as exc:
        raise os_error(exc, path, "read") from None


def json_lines(path: str | os.PathLike, name: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-empty line of a JSON Lines file; a
    malformed line is an error naming ``file:line`` (``name``: how errors call the file)."""
    path = Path(path)
    for lineno, raw in enumerate(read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield lineno, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DeepAlignError(f"malformed JSON ({exc.msg}, column {exc.colno})", path=name or path,
                                 line=lineno) from None


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-empty line; errors name ``file:line``."""
    path = Path(path)
    for lineno, obj in json_lines(path):
        if not isinstance(obj, dict):
            raise DeepAlignError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
        yield lineno, obj


def read_log(path: str | os.PathLike, *, repair: bool = False) -> list[tuple[int, dict]]:
    """The complete lines of an append-only JSONL log, as ``(line number, object)``.

    The one torn-line rule: every complete line ends with a newline, so a last line without
    one is the trace of an interrupted write. It is ignored, and cut off the file when
    ``repair`` (before appending again). Any other malformed line is an error naming
    ``file:line``.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    end = data.rfind(b"\n") + 1  # bytes up to and including the last newline
    if end < len(data) and repair:
        _synced(path, "r+b", lambda fh: fh.truncate(end))
    out = []
    for lineno, raw in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DeepAlignError("not UTF-8 text", path=path, line=lineno) from None
        except json.JSONDecodeError as exc:
            raise DeepAlignError(f"malformed JSON ({exc.msg})", path=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise DeepAlignError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
        out.append((lineno, obj))
    return out


# -- writing ---------------------------------------------------------------------------------


def dumps(obj: Any) -> str:
    """One JSON line: UTF-8 kept as is, and NaN / infinities refused (they are not JSON)."""
    try:
        return json.dumps(obj, ensure_ascii=False, sort_keys=False, allow_nan=False)
    except ValueError as exc:
        raise DeepAlignError(f"cannot write a non-finite number as JSON ({exc})") from None


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write a whole file atomically: a temporary file beside it, then one rename. On any
    failure the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise os_error(exc, path) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    try:
        text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise DeepAlignError(f"cannot write a non-finite number as JSON to {path} ({exc})") from None
    atomic_write(path, text + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows atomically; returns the row count."""
    lines = [dumps(row) + "\n" for row in rows]
    atomic_write(path, "".join(lines))
    return len(lines)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Append rows to an append-only log in one write, then flush and fsync (see
    :func:`read_log` for how an interrupted append is read back). Returns the row count."""
    rows = list(rows)
    if not rows:
        return 0
    blob = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
    _synced(path, "ab", lambda fh: fh.write(blob), parent=True)
    return len(rows)


def _synced(path: str | os.PathLike, mode: str, change: Callable[[Any], Any], *, parent: bool = False) -> None:
    """Open ``path`` in ``mode``, ``change(fh)``, then flush and fsync before returning (the
    append-only logs' one way of writing: what returned is on disk); ``parent``: create the
    folder first. An OSError is one line naming the path."""
    try:
        if parent:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, mode) as fh:
            change(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise os_error(exc, path) from None


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable_dir(out: str | os.PathLike, *, what: str = "output directory", replaces: str | None = None) -> Path:
    """Fail early (before any work) when ``out`` cannot become a directory we write into. A
    command that replaces its output whole passes ``replaces``: the file that marks an earlier
    output of its own, the only non-empty directory it may replace (never a model directory or
    anything else a user points it at)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DeepAlignError(f"{what} exists and is not a directory: {out}")
    if replaces is not None and out.is_dir():
        held = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if held and replaces not in held:
            raise DeepAlignError(f"{what} {out} is not empty and holds no earlier output of this command (it holds "
                                 f"{held[0]!r}); choose another --out")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise DeepAlignError(f"cannot create {what} {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DeepAlignError(f"cannot write {what} {out}: {parent} is not writable")
    return out


def check_writable_file(path: str | os.PathLike, *, what: str = "output file") -> Path:
    path = Path(path)
    if path.exists() and not path.is_file():
        raise DeepAlignError(f"{what} exists and is not a regular file: {path}")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise DeepAlignError(f"cannot write {what} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DeepAlignError(f"cannot write {what} {path}: {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out``.

    On any exception the temporary directory is removed and ``out`` is left untouched, so
    a failed or interrupted stage never leaves a half-written output directory.
    """
    out = check_writable_dir(out)
    if out.exists() and not overwrite:
        raise DeepAlignError(f"output directory already exists: {out}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise os_error(exc, out) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if out.exists():
            trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(exc, out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- running ---------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for reproducible runs."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass
    import torch

    torch.manual_seed(seed)


def progress(iterable=None, *, quiet: bool = False, **kwargs):
    """A tqdm progress bar that ``--quiet`` silences."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=quiet, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def no_weight_bars() -> Iterator[None]:
    """Silence transformers' own bars ("Loading weights", "Writing model shards") while the
    block runs, restored afterwards; training and evaluation bars stay. For stages that load
    and save many tiny models, where each bar is a line of noise that finishes in milliseconds."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_libraries(quiet: bool = True) -> Iterator[None]:
    """Under ``--quiet``, silence the progress bars and warnings of transformers, datasets,
    TRL, peft and accelerate while the block runs (restored afterwards)."""
    if not quiet:
        yield
        return
    import logging

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    loggers = {name: logging.getLogger(name).level for name in ("trl", "peft", "accelerate", "datasets")}
    hf_logging.set_verbosity_error()
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    ds_bars = None
    try:
        import datasets

        ds_bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    try:
        with no_weight_bars():
            yield
    finally:
        hf_logging.set_verbosity(level)
        for name, lvl in loggers.items():
            logging.getLogger(name).setLevel(lvl)
        if ds_bars:
            import datasets

            datasets.enable_progress_bars()
