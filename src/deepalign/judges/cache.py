"""Verdict cache: re-judging only scores what is new.

:class:`CachedJudge` wraps a judge and keeps its verdicts in an append-only JSON Lines file,
one line per verdict, keyed by a hash of

- the judge: its name, class and :meth:`~deepalign.judges.base.Judge.settings` (model, prompt
  variant, threshold...),
- the judged text,
- the item it answers, all but its id: prompt, kind, reference, meta (the behaviour and
  context HarmBench's classifier reads, the kind the keyword judge needs...).

A response seen before (in this run, in another run sharing the file, in an interrupted
validation) is answered from the file; only misses reach the judge, in one batch, and their
verdicts are appended before the call returns (an interrupted job loses at most the batch in
flight). Error verdicts are not kept: a failed call is tried again next time. A torn last line
(an interrupted write) is ignored and cut off. Items the judge declines by design
(:meth:`~deepalign.judges.base.Judge.declines`) always go to the judge and are not kept.

    >>> from deepalign.judges import KeywordJudge
    >>> from deepalign.judges.cache import CachedJudge
    >>> import tempfile, os
    >>> j = CachedJudge(KeywordJudge(), os.path.join(tempfile.mkdtemp(), "keyword.jsonl"))
    >>> j.judge(["Sorry, no.", "Sorry, no."], [None, None])[1].refusal, (j.hits, j.misses)
    (True, (1, 1))
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Sequence

from deepalign.judges.base import Judge
from deepalign.records import EvalPrompt, Verdict, to_dict
from deepalign.utils import append_jsonl, read_log


def judge_identity(judge: Judge) -> dict:
    return {"name": judge.name, "class": f"{type(judge).__module__}.{type(judge).__qualname__}", **judge.settings()}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")).hexdigest()


def verdict_key(identity: dict, response: str, item: EvalPrompt | None) -> str:
    """The cache key of one verdict (see the module doc)."""
    body = None if item is None else {k: v for k, v in to_dict(item).items() if k != "id"}
    return _digest({"judge": identity, "response": response, "item": body})


def cache_file(directory: str | Path, judge: Judge) -> Path:
    """The file of ``judge``'s verdicts in a cache directory (its name, then a hash of its
    configuration: two configurations of one name never share a file)."""
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", judge.name).strip("_")[:80] or "judge"
    return Path(directory) / f"{slug}.{_digest(judge_identity(judge))[:10]}.jsonl"


def cached(judge: Judge, directory: str | Path | None) -> Judge:
    """``judge`` behind a cache in ``directory`` when it is worth one (a model judge), else
    ``judge`` itself (no directory: no cache)."""
    if directory is None or not judge.cacheable:
        return judge
    return CachedJudge(judge, cache_file(directory, judge))


class CachedJudge(Judge):
    """``judge`` with its verdicts kept in ``path`` (see the module doc); ``hits`` and
    ``misses`` count the verdicts answered from the file and by the judge."""

    def __init__(self, judge: Judge, path: str | Path):
        self.inner, self.path = judge, Path(path)
        self.name, self.cacheable = judge.name, judge.cacheable
        self.identity = judge_identity(judge)
        self.store: dict[str, Verdict] = {}
        for _, entry in read_log(self.path, repair=True):
            if isinstance(entry.get("key"), str) and isinstance(entry.get("verdict"), dict):
                try:
                    self.store[entry["key"]] = Verdict.from_dict(entry["verdict"])
                except (TypeError, ValueError):  # a verdict of another format: judged again
                    continue
        self.hits = self.misses = 0

    def settings(self) -> dict:
        return self.inner.settings()

    def declines(self, item: EvalPrompt | None) -> bool:
        return self.inner.declines(item)

    def judge(self, responses: Sequence[str], items: Sequence[EvalPrompt | None]) -> list[Verdict]:
        keys = [verdict_key(self.identity, r, it) for r, it in zip(responses, items, strict=True)]
        # an item the judge declines is always asked again and never kept: a verdict cached before
        # the judge declined it (HarmBench's copyright behaviours) does not answer for it
        declined = {k for k, it in zip(keys, items) if self.inner.declines(it)}
        todo: dict[str, int] = {}  # key -> first position (duplicates are judged once)
        for i, k in enumerate(keys):
            if (k not in self.store or k in declined) and k not in todo:
                todo[k] = i
        fresh: dict[str, Verdict] = {}
        if todo:
            positions = list(todo.values())
            verdicts = self.inner.judge([responses[i] for i in positions], [items[i] for i in positions])
            fresh = {k: Verdict.coerce(v) for k, v in zip(todo, verdicts, strict=True)}
            keep = {k: v for k, v in fresh.items() if not v.error and k not in declined}
            append_jsonl(self.path, ({"key": k, "judge": self.name, "verdict": v.to_dict()} for k, v in keep.items()))
            self.store.update(keep)
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        return [Verdict.from_dict((fresh[k] if k in fresh else self.store[k]).to_dict()) for k in keys]
