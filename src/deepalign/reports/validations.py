"""Validations of judges against human labels, as reports show them: where a result of
``deepalign judge --validate`` (:mod:`deepalign.evaluation.validation`) is noted on this
machine when the user asks (``--register``), which results a report prints next to a judge's
rates, and the line it prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from deepalign.errors import DeepAlignError


# -- validations known to this machine: reports print them next to a judge's rates ------------------
def home() -> Path:
    """deepalign's per-user directory: ``$DEEPALIGN_HOME``, else ``~/.cache/deepalign``."""
    import os

    return Path(os.environ.get("DEEPALIGN_HOME") or Path.home() / ".cache" / "deepalign")


def register_validation(path: str | Path, result: dict[str, Any]) -> None:
    """Note a validation result in ``home()/validations.jsonl`` (the latest per judge wins), so
    that every later eval, judge and study report prints the judge's numbers next to its rates:
    only at the user's word (``--register``). A registry that cannot be written is an error."""
    import time

    from deepalign.utils import append_jsonl

    entry = {"path": str(Path(path).resolve()), "labels": result["labels"], "judges": sorted(result["judges"]),
             "time": time.strftime("%Y-%m-%d %H:%M:%S"), "registered": True}
    append_jsonl(home() / "validations.jsonl", [entry])


def validation_line(judge: str, stats: dict | None) -> str:
    """What a judge's agreement with human labels is (or that it has not been measured): the
    line a report prints at the head of the judge's section."""
    def stat(key: str) -> str:
        value, ci = stats.get(key), stats.get(f"{key}_ci95")
        if value is None:
            return "–"
        return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    if not stats:
        return (f"Not validated against human labels: `deepalign judge --validate LABELS --judges {judge} --out DIR` "
                "measures it (docs/evaluation.md).")
    return (f"Validated against human labels (`{stats.get('labels')}`, the `{stats.get('field')}` verdict, n = "
            f"{stats.get('n')}): agreement {stat('agreement')}, Cohen's kappa {stat('kappa')}, "
            f"precision {stat('precision')}, recall {stat('recall')}, F1 {stat('f1')} (`{stats.get('path')}`).")


def known_validations(judges, extra: Sequence[str | Path] = ()) -> dict[str, dict[str, Any]]:
    """Per judge of ``judges``: its overall validation numbers (n, agreement, kappa,
    precision, recall, F1 with intervals, the labels file, the field, the result's path), from
    the validation files ``extra`` and then the registry (the latest validation of a judge
    wins). A registry entry whose file is gone is skipped, and so is one that an earlier
    version wrote without being asked (no ``registered`` mark): a throwaway validation must not
    speak in every later report."""
    from deepalign.metrics.agreement import read_validation
    from deepalign.utils import read_log

    out: dict[str, dict[str, Any]] = {}

    def take(path: str) -> None:
        for name, stats in read_validation(path).items():
            if name in judges and name not in out:
                out[name] = {**stats, "path": path}

    for path in extra:  # given by the user: a bad file is an error
        take(str(Path(path).resolve()))
    try:
        registry = read_log(home() / "validations.jsonl", repair=False)
    except DeepAlignError:
        registry = []
    read: set[str] = set()
    for _, entry in reversed(registry):  # newest first; each file read once, only while a judge is missing
        missing = set(judges) - set(out)
        if not missing:
            break
        path, named = entry.get("path"), entry.get("judges")
        if entry.get("registered") is not True or not isinstance(path, str) or path in read or (isinstance(named, list) and not missing & set(named)):
            continue
        read.add(path)
        if Path(path).is_file():
            try:
                take(path)
            except DeepAlignError:  # a registered file rewritten into something else: skipped
                continue
    return out
