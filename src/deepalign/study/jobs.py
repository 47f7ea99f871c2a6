"""The study's trainings, run side by side: independent jobs in forked one-thread processes.

Every training of the study after pretraining (the five alignment recipes, the fine-tuning
attack's runs, the refusal-prefix runs, PRESTO and ADA-LP's probe) depends only on models made
before it, never on an evaluation. On a CPU a model this small trains faster as two
one-thread processes than as one two-thread process (its matrices are too small for two
threads to share a step well: the world's vanilla recipe takes 10.5 s on two threads and 12.9 s
on one), so two at a time take 0.81x the wall time of one after another
(``benchmarks/bench_study.py``; the study's seventeen trainings: about 107 s against 136 s).
:func:`run_jobs` starts each job in a process forked for it, at most ``workers`` at a time,
a job once every job it names in ``after`` has finished, in the order given.

A job's arithmetic is that of a one-thread process, which is not bit for bit that of two
threads: the study's models change in their last bits (and so may a greedy token) against
a study that trains in one process (``--workers 1``, which runs the same jobs one after
another in the study's own process). Each run is seeded and deterministic either way; over
the three seeds of the README's run no greedy token of the study changed.

The process that forks the jobs computes nothing and keeps its own torch settings (see
:mod:`deepalign.evaluation.workers`). A job's output is written atomically by the job itself
(a model directory exists once its training finished), so a study killed mid-job resumes it
from its last checkpoint. A job's own messages (progress, warnings) go to
``OUT/logs/<job>.log``; a job that fails stops the others and fails the study with its error
and the path of its log.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from deepalign.errors import DeepAlignError


@dataclass
class Job:
    """One training of the study: ``fn`` makes its output; ``done`` says whether it is
    already there (checked when the job would start); ``after``: names of the jobs whose
    outputs it reads."""

    name: str
    done: Callable[[], bool]
    fn: Callable[[], None]
    after: tuple[str, ...] = field(default_factory=tuple)


def log_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".log"


def check_jobs(jobs: list[Job]) -> None:
    """Every ``after`` names an earlier job (so the order given can always run)."""
    seen: set[str] = set()
    for job in jobs:
        missing = [a for a in job.after if a not in seen]
        if missing:
            raise ValueError(f"job {job.name!r} runs after {missing[0]!r}, which is not an earlier job")
        seen.add(job.name)


def run_jobs(jobs: list[Job], workers: int, logs: Path, *, say: Callable[[str], None] = print,
             on_done: Callable[[str, float], None] | None = None) -> None:
    """Run the jobs not ``done``, at most ``workers`` at a time, each in a forked one-thread
    process (see the module doc); ``on_done(name, seconds)`` as each one ends. Raises the
    first failure once every running job has ended."""
    check_jobs(jobs)
    finished = {j.name for j in jobs if j.done()}
    pending = [j for j in jobs if j.name not in finished]
    running: dict[int, tuple[Job, int, float]] = {}  # pid -> (job, read end, start)
    logs.mkdir(parents=True, exist_ok=True)
    error: str | None = None
    try:
        while pending or running:
            while error is None and len(running) < workers:
                ready = next((j for j in pending if all(a in finished for a in j.after)), None)
                if ready is None:
                    break
                pending.remove(ready)
                say(f"[study] {ready.name} ... (log: {logs / log_name(ready.name)})")
                # Ctrl-C or SIGTERM held back until the new process is on the list _stop ends
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                try:
                    pid, read = _fork(ready, logs / log_name(ready.name), mask)
                    running[pid] = (ready, read, time.time())
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if not running:
                break
            pid, status = os.waitpid(-1, 0)
            if pid not in running:
                continue
            job, read, start = running.pop(pid)
            with os.fdopen(read, "rb") as pipe:
                data = pipe.read()
            code = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
            ended = f"ended with exit code {code}" if code >= 0 else f"was killed by signal {-code}"
            try:
                kind, value = pickle.loads(data) if data else ("error", f"{ended} before its report")
            except Exception:  # a torn message: the process died while writing it
                kind, value = "error", f"{ended} mid-report"
            if kind == "ok":
                finished.add(job.name)
                if on_done is not None:
                    on_done(job.name, float(value))
                say(f"[study] {job.name}: done in {float(value):.0f}s")
            elif error is None:
                error = f"{job.name}: {value} (its log: {logs / log_name(job.name)})"
                _stop(running)  # the others end; what they finished so far stays on disk
    except BaseException:
        _stop(running)
        raise
    if error is not None:
        raise DeepAlignError(error + "; rerun the same command to resume")


def _fork(job: Job, log: Path, mask) -> tuple[int, int]:
    """Fork the job's process (called with SIGINT and SIGTERM blocked; ``mask``: the signal
    mask to restore in the child once its own handlers are set)."""
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write)
        return pid, read
    # the job's process: one thread, its own signal defaults, its output to its log
    status, payload = 1, pickle.dumps(("error", "failed before it started"))
    try:
        os.close(read)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _end_with_parent()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        import torch

        torch.set_num_threads(1)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # Python's own streams too (they may not be the process's: pytest's capture, a notebook)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
        start = time.time()
        job.fn()
        status, payload = 0, pickle.dumps(("ok", round(time.time() - start, 1)))
    except BaseException as exc:  # noqa: BLE001 - everything goes to the coordinator
        if isinstance(exc, DeepAlignError):
            message = str(exc)
        else:  # a bug: the traceback goes to the log, its last line to the coordinator
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
            print(text, file=sys.stderr)
            message = text.splitlines()[-1]
        # at most 3000 bytes: a pipe holds at least a page, so the write never waits for a reader
        payload = pickle.dumps(("error", message.encode("utf-8")[:3000].decode("utf-8", "ignore")))
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(write, payload)
            os.close(write)
        finally:
            os._exit(status)


def _end_with_parent() -> None:
    """On Linux, have the kernel send this process SIGTERM when the study's process dies (killed
    by a scheduler, not only by Ctrl-C): a training never goes on unsupervised."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _stop(running: dict[int, tuple[Job, int, float]]) -> None:
    from deepalign.evaluation.workers import stop_children

    stop_children([(pid, read) for pid, (_, read, _) in running.items()])
    running.clear()
