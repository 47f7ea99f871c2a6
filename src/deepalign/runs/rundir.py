"""The run directory of an evaluation, and everything that reads or writes it.

::

    RUN_DIR/
      run.json          what was run (a :class:`~deepalign.runs.runlog.RunRecord`, with the
                        format version): generation settings, judges, every target with the
                        settings it really used, attacks with their metadata, datasets with
                        their role and identity (lists grow as a run is extended), example
                        prompts per cell
      items.jsonl       the evaluation items, one line per dataset x item: a run can be re-judged
                        and reported without its data files
      responses.jsonl   one :class:`~deepalign.runs.runlog.ResponseRow` per target x attack x
                        dataset x item x sample, keyed by ``key`` (append-only; each row holds its
                        response and the verdicts of the run's judges)
      responses.shard-R.jsonl
                        rows written by process R of an ``accelerate launch`` run while it runs;
                        folded into responses.jsonl, in the one-process order, when the run ends
      verdicts.jsonl    verdicts added later by ``deepalign judge`` (append-only: key, judge, verdict)
      summary.json, report.md, *.png     built from the above (``deepalign report``)
      .lock             held while a process writes

All JSONL files are append-only logs read with the package's one torn-line rule
(:func:`deepalign.utils.read_log`): a last line without its newline is the trace of an
interrupted write and is dropped. Shard files left by a killed multi-process run count as
written (rows are read from them, first copy of a key wins) until a later run folds them in.
A directory is only created when its first rows are ready
to be written, so a run that fails before that leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from deepalign.errors import DeepAlignError
from deepalign.runs.runlog import (FORMAT_VERSION, ResponseRow, RunRecord, format_version, upgrade_info,
                                         upgrade_row)
from deepalign.records import EvalPrompt, Verdict, from_dict, to_dict
from deepalign.utils import append_jsonl, os_error, read_log, write_json, write_jsonl

RESPONSES = "responses.jsonl"
SHARD_GLOB = "responses.shard-*.jsonl"
VERDICTS = "verdicts.jsonl"
ITEMS = "items.jsonl"
RUN_INFO = "run.json"
SUMMARY = "summary.json"
REPORT = "report.md"
LOCK = ".lock"


def row_key(target: str, attack: str, dataset: str, item_id: str, sample: int) -> str:
    """The stable key of one response row."""
    return json.dumps([target, attack, dataset, item_id, sample], ensure_ascii=False)


def check_row(row: dict, path, line: int) -> None:
    """A response row has the fields the metrics read, with the right types (one line otherwise)."""
    def bad(message: str):
        return DeepAlignError(f"{message}; not a deepalign responses row", path=path, line=line)

    for name in ("key", "target", "attack", "dataset", "item"):
        if not isinstance(row.get(name), str):
            raise bad(f'field "{name}" must be a string')
    if not isinstance(row.get("response", ""), str):
        raise bad('field "response" must be a string')
    if not isinstance(row.get("sample", 0), int) or isinstance(row.get("sample"), bool):
        raise bad('field "sample" must be an integer')
    for name in ("meta", "prompt", "verdicts"):
        if not isinstance(row.get(name, {}), dict):
            raise bad(f'field "{name}" must be an object')
    for judge, verdict in (row.get("verdicts") or {}).items():
        if not isinstance(verdict, dict):
            raise bad(f'the verdict of judge "{judge}" must be an object')


def _typed(row: dict, current: bool, path, line: int) -> ResponseRow:
    try:
        return ResponseRow.from_dict(row) if current else upgrade_row(row)
    except (TypeError, ValueError) as exc:
        raise DeepAlignError(f"{exc}; not a deepalign responses row", path=path, line=line) from None


class RunDir:
    """One run directory (which may not exist yet)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise DeepAlignError(f"output path exists and is not a directory: {self.path}")

    def file(self, name: str) -> Path:
        return self.path / name

    def require(self) -> RunDir:
        if not self.is_run():
            raise DeepAlignError(f"not a run directory (no {RESPONSES}): {self.path}")
        return self

    # -- run.json ----------------------------------------------------------------------------
    def _raw_info(self) -> dict:
        path = self.file(RUN_INFO)
        if not path.exists():
            return {}
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise DeepAlignError(f"cannot read {path}; start a new run directory") from None
        if not isinstance(info, dict):
            raise DeepAlignError(f"{path} is not a run description (expected a JSON object)")
        return info

    @property
    def version(self) -> int:
        """The format of this run directory (:data:`FORMAT_VERSION` for a new one)."""
        version = format_version(self._raw_info())
        if version < 1 or version > FORMAT_VERSION:
            raise DeepAlignError(f"{self.file(RUN_INFO)} is not a run description this deepalign can read "
                                 f"(format {version}; it reads 1 to {FORMAT_VERSION})")
        return version

    def info(self) -> RunRecord | None:
        """The run's :class:`RunRecord` (None before the run exists); an older format is read
        through the converter."""
        raw = self._raw_info()
        if not raw:
            return None
        if self.version < FORMAT_VERSION:
            return upgrade_info(raw)
        try:
            return RunRecord.from_dict(raw)
        except (TypeError, ValueError, KeyError) as exc:
            raise DeepAlignError(f"{self.file(RUN_INFO)} is not a valid run description ({exc})") from None

    def require_current(self) -> RunDir:
        """Refuse to write to a run directory of an older format (reading it is fine)."""
        if self.is_run() and self.version < FORMAT_VERSION:
            raise DeepAlignError(f"{self.path} was written by an older deepalign (run format {self.version}); "
                                 f"upgrade it first with 'deepalign report {self.path} --upgrade'")
        return self

    def merge_info(self, new: RunRecord) -> RunRecord:
        """``new`` checked against the existing run: fixed settings must match, lists grow."""
        old = self.info()
        return new if old is None else old.merge(new, str(self.path))

    def write_info(self, info: RunRecord) -> None:
        write_json(self.file(RUN_INFO), info.to_dict())

    def upgrade(self) -> int:
        """Rewrite a run directory of an older format in the current one (run.json, every
        response row and added verdict); returns the rows rewritten (0: already current)."""
        self.require()
        if self.version == FORMAT_VERSION:
            return 0
        with self.lock():
            info = self.info()
            rows = self.rows(repair=True)  # shards and added verdicts folded in
            write_jsonl(self.file(RESPONSES), [r.to_dict() for r in rows])
            for path in (*self.shards(), self.file(VERDICTS)):
                path.unlink(missing_ok=True)
            self.write_info(info)
        return len(rows)

    # -- rows --------------------------------------------------------------------------------
    def shard(self, rank: int) -> Path:
        return self.file(f"responses.shard-{rank}.jsonl")

    def shards(self) -> list[Path]:
        return sorted(self.path.glob(SHARD_GLOB)) if self.path.is_dir() else []

    def _logs(self, *, repair: bool = False) -> Iterator[tuple[Path, int, dict]]:
        for path in (self.file(RESPONSES), *self.shards()):
            for line, row in read_log(path, repair=repair and path.name == RESPONSES):
                yield path, line, row

    def rows(self, *, repair: bool = False) -> list[ResponseRow]:
        """The response rows (shard files of an unfinished multi-process run included, each
        key once), with the verdicts of ``verdicts.jsonl`` merged in."""
        current = self.version == FORMAT_VERSION
        rows, seen = [], set()
        for path, line, row in self._logs(repair=repair):
            check_row(row, path, line)
            if row["key"] not in seen:
                seen.add(row["key"])
                rows.append(_typed(row, current, path, line))
        added = self.added_verdicts(repair=repair)
        if added:
            for row in rows:
                row.verdicts.update(added.get(row.key) or {})
        return rows

    def added_verdicts(self, *, repair: bool = False) -> dict[str, dict[str, Verdict]]:
        out: dict[str, dict[str, Verdict]] = {}
        current = self.version == FORMAT_VERSION
        for line, entry in read_log(self.file(VERDICTS), repair=repair):
            if not isinstance(entry.get("key"), str) or not isinstance(entry.get("judge"), str) \
                    or not isinstance(entry.get("verdict"), dict):
                raise DeepAlignError("not a verdict entry (needs key, judge, verdict)", path=self.file(VERDICTS),
                                     line=line)
            try:
                verdict = Verdict.from_dict(entry["verdict"]) if current else Verdict.coerce(entry["verdict"])
            except (TypeError, ValueError) as exc:
                raise DeepAlignError(f"not a verdict ({exc})", path=self.file(VERDICTS), line=line) from None
            out.setdefault(entry["key"], {})[entry["judge"]] = verdict
        return out

    def done_keys(self, *, repair: bool = False) -> set[str]:
        return {row["key"] for _, _, row in self._logs(repair=repair) if "key" in row}

    def is_run(self) -> bool:
        return self.file(RESPONSES).exists() or bool(self.shards())

    def append_shard(self, rank: int, rows: Iterable[ResponseRow], *, repair: bool = False) -> int:
        """Append rows to process ``rank``'s shard (``repair`` cuts a torn last line first)."""
        if repair:
            read_log(self.shard(rank), repair=True)
        return append_jsonl(self.shard(rank), (r.to_dict() for r in rows))

    def fold_shards(self, order: Iterable[str] = ()) -> int:
        """Move the rows of every shard file into responses.jsonl: rows whose key is in
        ``order`` first, in that order (the order one process would have written them), then
        the rest as found; keys already there are skipped, so an interrupted fold is finished
        by the next one. The caller holds the lock. Returns the rows moved."""
        shards = self.shards()
        if not shards:
            return 0
        have = {row["key"] for _, row in read_log(self.file(RESPONSES), repair=True) if "key" in row}
        found: dict[str, dict] = {}
        for path in shards:
            for line, row in read_log(path):
                check_row(row, path, line)
                if row["key"] not in have:
                    found.setdefault(row["key"], row)
        rank = {key: i for i, key in enumerate(order)}
        moved = sorted(found.values(), key=lambda r: rank.get(r["key"], len(rank)))
        append_jsonl(self.file(RESPONSES), moved)
        for path in shards:
            try:
                path.unlink()
            except OSError as exc:
                raise os_error(exc, path) from None
        return len(moved)

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, self.path) from None

    def append_rows(self, rows: Iterable[ResponseRow]) -> int:
        return append_jsonl(self.file(RESPONSES), (r.to_dict() for r in rows))

    def append_verdicts(self, entries: Iterable[tuple[str, str, Verdict]]) -> int:
        """Append ``(key, judge, verdict)`` entries to ``verdicts.jsonl``."""
        return append_jsonl(self.file(VERDICTS), ({"key": k, "judge": j, "verdict": v.to_dict()} for k, j, v in entries))

    # -- items -------------------------------------------------------------------------------
    def items(self) -> dict[tuple[str, str], EvalPrompt]:
        out = {}
        for line, obj in read_log(self.file(ITEMS), repair=False):
            try:
                out[(obj["dataset"], obj["item"]["id"])] = from_dict(EvalPrompt, obj["item"])
            except (KeyError, TypeError):
                raise DeepAlignError("not an item line (needs dataset, item)", path=self.file(ITEMS), line=line) from None
        return out

    def add_items(self, data: dict[str, list[EvalPrompt]]) -> None:
        have = set(self.items()) if self.file(ITEMS).exists() else set()
        append_jsonl(self.file(ITEMS), ({"dataset": name, "item": to_dict(it)} for name, items in data.items()
                                        for it in items if (name, it.id) not in have))

    # -- writers -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Refuse a second writer on the same run directory (POSIX advisory lock); the
        directory must exist."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            yield
            return
        try:
            fh = open(self.file(LOCK), "a")  # never truncated: taking the lock changes no file
        except OSError as exc:
            raise os_error(exc, self.file(LOCK)) from None
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise DeepAlignError(f"another process is writing {self.path}; wait for it or use another --out") from None
            yield
        finally:
            fh.close()
