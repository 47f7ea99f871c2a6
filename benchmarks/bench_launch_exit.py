"""Check: how often a finished two-process launch aborts at exit, by how the process leaves.

Each launch is ``torchrun --nproc_per_node 2`` on CPU (gloo) of a stage that does what the end
of a multi-process ``deepalign eval`` does: a barrier, a ``gather_object``, then the main
process keeps writing for a moment while the other one exits. The stage is run three ways:

- ``exit``: return from ``main()`` and let the interpreter shut down (no fix);
- ``destroy``: ``cli.main`` as before this fix, which ends the process group first;
- ``entry``: ``cli.entry``, the console script, which also leaves with ``os._exit`` from the
  last exit handler (see its docstring for the gdb backtrace of the abort).

It prints the launches that failed ("terminate called without an active exception", SIGABRT)
out of N per way, and their ratio to the ``exit`` way. Only a launch whose two processes both
finished the stage (each prints a marker) and that then failed counts as failed at exit; a launch
that did not finish its work (an import error, a rendezvous that failed) is counted apart, its
error printed, and makes the script exit with status 1: the check cannot be trusted then.

    .venv/bin/python benchmarks/bench_launch_exit.py [--launches 100]
    .venv/bin/python benchmarks/bench_launch_exit.py --smoke    # 1 launch per way (CI)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

MARK = "bench-launch-exit: stage finished by process"
WORKER = """
import sys, time
import deepalign.cli as cli

MARK = %r

def stage(argv=None):  # the end of a multi-process eval: every shard written, then gathered
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=True)
    torch.randn(256, 256) @ torch.randn(256, 256)
    state.wait_for_everyone()
    gather_object([state.process_index])
    # The work is done once gathered: say so before the main process's last writes, so that a
    # launch whose other process aborts at exit (and torchrun then ends this one mid-write)
    # counts as failed at exit, not as a launch that never finished its work.
    print(f"{MARK} {state.process_index}", flush=True)
    if state.process_index == 0:
        time.sleep(0.5)  # the main process folds the shards and writes the report
    return 0


def run_stage(argv=None):  # what cli.main does around a stage: the process group is ended after it
    try:
        return stage()
    finally:
        cli._end_process_group()


way = sys.argv[1]
if way == "exit":
    raise SystemExit(stage())
if way == "destroy":
    raise SystemExit(run_stage())
cli.main = run_stage
cli.entry()
""" % MARK


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker: Path, way: str) -> tuple[str, str]:
    """One launch: ``("ok", "")`` when every process exited 0, ``("failed", "")`` when both
    finished the stage and the launch failed after it (at exit), ``("broken", output tail)``
    when the work itself did not finish."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_port()), str(worker), way]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finished = all(f"{MARK} {rank}" in proc.stdout for rank in (0, 1))
    if proc.returncode == 0 and finished:
        return "ok", ""
    if finished:
        return "failed", ""
    return "broken", f"exit status {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--launches", type=int, default=100)
    ap.add_argument("--ways", default="exit,destroy,entry")
    ap.add_argument("--smoke", action="store_true", help="1 launch per way (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.launches = 1
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "worker.py"
        worker.write_text(WORKER)
        failed, broken = {}, {}
        for way in args.ways.split(","):
            results = [launch(worker, way) for _ in range(args.launches)]
            failed[way] = sum(kind == "failed" for kind, _ in results)
            broken[way] = [tail for kind, tail in results if kind == "broken"]
            done = args.launches - len(broken[way])
            ratio = f"{failed[way] / done:.3f}x" if done else "n/a"
            print(f"{way:8s} {failed[way]:3d} of {done} launches failed, ratio {ratio}"
                  + (f"; {len(broken[way])} more did not finish their work" if broken[way] else ""), flush=True)
    if failed.get("exit"):
        for way in failed:
            print(f"{way:8s} failures / exit's: {failed[way] / failed['exit']:.3f}x")
    for way, tails in broken.items():
        if tails:
            print(f"{way}: {len(tails)} launch(es) did not finish the stage; the first one's output:\n{tails[0]}",
                  file=sys.stderr)
    return 1 if any(broken.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
