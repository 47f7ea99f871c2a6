"""Run every benchmark at a toy shape, so that none can rot unseen (CI runs this).

    .venv/bin/python benchmarks/smoke.py              # every benchmarks/bench_*.py, about 2 minutes on 2 cores
    .venv/bin/python benchmarks/smoke.py bench_ed     # only the named ones (with or without .py)
    .venv/bin/python benchmarks/smoke.py -v           # also print each benchmark's output
    .venv/bin/python benchmarks/smoke.py --jobs 1     # one at a time (default: 2 at a time)

The scripts are found by glob (``benchmarks/bench_*.py``) and each runs as a subprocess with
its entry in ``SMOKE`` below (``--smoke``: the same code paths and output lines at a toy
shape, one rep, on CPU). A script passes when

* it exits with status 0 (in smoke mode the benchmarks do not judge their speed and memory
  floors, which mean nothing at a toy shape, but still check what must hold at any shape:
  equal losses, no gradient work without grad, launches that finish their work), and
* its standard output has at least one ratio line: a line with the word ``ratio`` whose first
  number after it is a decimal written with an ``x`` right after it (``RATIO`` below), e.g.
  ``ratio padding-free/padded = 0.533x time`` or ``..., ratio 0.725x; ...``. A ``nan`` or
  ``inf`` ratio, or one the script could not compute (``n/a``), does not count.

A ``bench_*.py`` without an entry in ``SMOKE`` fails, and so does an entry without its script.
One line per script as it finishes (verdict, wall time, CPU time, ratio lines; a failure's
output tail), then a summary; the exit status is 1 when any failed. Two scripts run at a time
by default: most of a toy run is importing torch and transformers, single-threaded. CPU time
is the script's and that of the child processes it waited for (``bench_loss.py`` measures in
processes of a fork server it does not wait for: their time is not in its figure). The
numbers the benchmarks print here say nothing: docs/benchmarks.md records the full-size runs.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# each benchmark's smoke arguments (a new bench_*.py must get an entry here)
SMOKE: dict[str, list[str]] = {
    "bench_ada.py": ["--smoke"],
    "bench_constrained.py": ["--smoke"],
    "bench_ed.py": ["--smoke"],
    "bench_gcg.py": ["--smoke"],  # against nanoGCG in its own venv where set up (CI), else item by item
    "bench_gpu.py": ["--smoke"],  # on CPU in float32 without CUDA; its dist section needs GPUs
    "bench_launch_exit.py": ["--smoke"],
    "bench_loss.py": ["--smoke"],
    "bench_presto.py": ["--smoke"],
    "bench_pretrain.py": ["--smoke"],
    "bench_runner.py": ["--smoke"],
    "bench_step.py": ["--smoke"],
    "bench_study.py": ["--smoke"],
    "bench_view.py": ["--smoke"],
}
# "ratio", then (no digits, no nan/inf on the way) the measured number with its "x"
RATIO = re.compile(r"\bratio\b(?:(?!\b(?:nan|inf)x?\b)\D)*?(?<![\w.])\d+\.\d+x\b")
TIMEOUT_S = 600
TAIL_LINES = 40


def ratio_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if RATIO.search(line)]


def run_one(name: str, verbose: bool) -> tuple[bool, str]:
    """Run one benchmark's smoke: ``(passed, report)``, the report's first line the verdict,
    then the output (its tail on failure, all of it with ``verbose``)."""
    if name not in SMOKE:
        return False, f"FAIL {name}: no smoke entry (add its smoke arguments to SMOKE in benchmarks/smoke.py)"
    if not (HERE / name).is_file():
        return False, f"FAIL {name}: in SMOKE but benchmarks/{name} does not exist"
    args = " ".join(SMOKE[name])
    status, wall, cpu, stdout, stderr = _run([sys.executable, str(HERE / name), *SMOKE[name]])
    ratios = ratio_lines(stdout)
    problems = []
    if status is None:
        problems.append(f"still running after {TIMEOUT_S} s, killed")
    elif status != 0:
        problems.append(f"exit status {status}")
    if not ratios:
        problems.append(f"no ratio line (a line matching {RATIO.pattern!r})")
    times = f"{wall:6.1f} s ({cpu:5.1f} s CPU)"
    if problems:
        head = f"FAIL {name} {args} {times}: {'; '.join(problems)}"
    else:
        head = f"PASS {name} {args} {times}, {len(ratios)} ratio line(s), e.g. {ratios[0].strip()[:100]}"
    shown = _output(name, stdout, stderr, tail=not verbose) if problems or verbose else []
    return not problems, "\n".join([head, *shown])


def _run(cmd: list[str], timeout: float = TIMEOUT_S) -> tuple[int | None, float, float, str, str]:
    """``(exit status or None if killed at the timeout, wall seconds, CPU seconds of the
    process and the children it waited for, stdout, stderr)``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=HERE.parent, stdout=out, stderr=err, start_new_session=True)
        killed = threading.Event()

        def kill() -> None:  # the benchmark and whatever it launched (torchrun's workers): its own session
            killed.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, wait_status, usage = os.wait4(proc.pid, 0)  # its own rusage, even with other jobs running
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(wait_status)  # reaped here: Popen must not wait again
        wall = time.perf_counter() - t0
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
    status = None if killed.is_set() else proc.returncode
    return status, wall, usage.ru_utime + usage.ru_stime, texts[0], texts[1]


def _output(name: str, stdout: str, stderr: str, tail: bool) -> list[str]:
    shown = []
    for label, text in (("stdout", stdout), ("stderr", stderr)):
        lines = text.rstrip().splitlines()
        if not lines:
            continue
        if tail and len(lines) > TAIL_LINES:
            lines = [f"... ({len(lines) - TAIL_LINES} lines before)"] + lines[-TAIL_LINES:]
        shown += [f"--- {name} {label}:"] + [f"    {line}" for line in lines]
    return shown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("only", nargs="*", help="benchmark names to run (default: every benchmarks/bench_*.py)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every benchmark's output")
    p.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="benchmarks run at a time (default: 2, or 1 on one core)")
    a = p.parse_args(argv)
    if a.jobs < 1:
        p.error(f"--jobs must be >= 1, got {a.jobs}")
    found = sorted(path.name for path in HERE.glob("bench_*.py"))
    names = sorted(set(found) | set(SMOKE))
    if a.only:
        wanted = {n if n.endswith(".py") else f"{n}.py" for n in a.only}
        unknown = sorted(wanted - set(names))
        if unknown:
            p.error(f"no such benchmark: {', '.join(unknown)} (known: {', '.join(names)})")
        names = [n for n in names if n in wanted]
    from concurrent.futures import ThreadPoolExecutor, as_completed

    started = time.perf_counter()
    failed = []
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        futures = {pool.submit(run_one, name, a.verbose): name for name in names}
        for future in as_completed(futures):
            ok, report = future.result()
            print(report, flush=True)
            if not ok:
                failed.append(futures[future])
    failed.sort()
    total = time.perf_counter() - started
    print(f"benchmark smoke: {len(names) - len(failed)} of {len(names)} passed in {total:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
