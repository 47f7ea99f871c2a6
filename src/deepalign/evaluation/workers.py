"""Local worker processes for an evaluation on CPU (``deepalign eval --workers N``).

A small model on a CPU decodes faster as N processes of one thread each than as one process
of N threads: its matrices are too small for the threads to share a step well (on the world's
model, batch 64, a decoding step takes 62 us a row on two threads and 80 us on one, so two
one-thread processes get 1.5x the rows). ``--workers N`` forks N worker processes once the
run's plan is made; each takes every N-th batch of the plan (the split ``accelerate launch``
uses), loads its own copy of each model and writes its rows to its own shard; the process that
forked them waits, computing nothing and changing none of its own torch settings, and folds
the shards in the order one process would have written them. The rows are those of a
one-process run (each batch is the same batch, decoded alone; checked over the study's rows
and by ``tests/test_eval_runner.py`` and ``benchmarks/bench_study.py``); a killed run resumes
from every worker's finished rows.

Forking is for local models on CPU: it is refused with CUDA (a CUDA context does not survive a
fork; use ``accelerate launch``), under ``accelerate launch``, and with targets or judges that
talk to a server (their connection pools would be shared by the copies).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback

from deepalign.errors import DeepAlignError


class LocalWorkers:
    """``size`` worker processes of one run, forked by the process that made its plan (the
    coordinator). :meth:`fork` returns a worker's rank in the worker and None in the
    coordinator; a worker ends with :meth:`leave` (its result or its error), the coordinator
    collects every worker's with :meth:`gather`. The coordinator computes nothing and keeps its
    torch settings: a process's arithmetic can change after its thread count is changed and set
    back (pretraining that followed a switch to one thread and back drifted from step 50 on),
    and the study trains in the same process after each evaluation."""

    def __init__(self, size: int):
        self.size, self.rank = size, None
        self.children: list[tuple[int, int]] = []  # (pid, read end of its pipe), by rank
        self._write = None

    @property
    def main(self) -> bool:
        return self.rank == 0  # the worker that shows the progress bar

    def fork(self) -> int | None:
        # the tokenizers library warns in every child once its thread pool was used; the
        # workers tokenise on one thread anyway
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        sys.stdout.flush()
        sys.stderr.flush()
        for rank in range(self.size):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # a worker: rank `rank`, one thread, its own signal defaults
                import torch

                os.close(read)
                for _, other in self.children:
                    os.close(other)
                self.children, self.rank, self._write = [], rank, write
                signal.signal(signal.SIGINT, signal.default_int_handler)
                torch.set_num_threads(1)
                return rank
            os.close(write)
            self.children.append((pid, read))
        return None

    def leave(self, result=None, error: BaseException | None = None) -> None:
        """End a worker: its result, or its error, goes to the coordinator."""
        try:
            if error is not None:
                if isinstance(error, DeepAlignError):
                    message = str(error)
                else:  # a bug: its traceback goes to stderr, its last line to the coordinator
                    text = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
                    print(f"[worker {self.rank}] {text}", file=sys.stderr)
                    message = text.splitlines()[-1]
                payload = pickle.dumps(("error", message))
            else:
                payload = pickle.dumps(("ok", result))
            with os.fdopen(self._write, "wb") as pipe:
                pipe.write(payload)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0 if error is None else 1)

    def gather(self) -> list:
        """The coordinator: every worker's result, by rank; a worker that failed fails the run
        (its error named), after every worker has ended."""
        results, errors = [], []
        for rank, (pid, read) in enumerate(self.children):
            with os.fdopen(read, "rb") as pipe:
                data = pipe.read()
            _, status = os.waitpid(pid, 0)
            try:
                kind, value = pickle.loads(data) if data else ("error", f"ended with status {status} before its report")
            except Exception:  # a torn message: the worker died while writing it
                kind, value = "error", f"ended with status {status} mid-report"
            if kind == "ok":
                results.append(value)
            else:
                errors.append(f"worker {rank}: {value}")
        self.children = []
        if errors:
            raise DeepAlignError(errors[0] + ("" if len(errors) == 1 else f" (and {len(errors) - 1} more)")
                                 + "; the rows written so far are kept: rerun the same command to resume")
        return results

    def stop(self) -> None:
        """The coordinator was interrupted: end the workers (their finished rows stay in their
        shards)."""
        stop_children(self.children)
        self.children = []


def stop_children(children: list[tuple[int, int]]) -> None:
    """End forked processes, given as ``(pid, read end of its pipe)``, and wait for each."""
    for pid, read in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os.close(read)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def check_workers(workers: int, device, targets, judges, attacker) -> None:
    """Refuse ``--workers N`` (N > 1) where forking cannot give a one-process run's rows: see
    the module doc. ``targets``: the run's targets (``.built`` is set for server ones)."""
    import torch

    from deepalign.errors import OptionError

    if workers <= 1:
        return
    if str(device or "").startswith("cuda") or (device in (None, "auto") and torch.cuda.is_available()):
        raise OptionError("workers", "> 1 forks CPU processes; on a GPU spread the run with accelerate launch "
                                     "(or pass --device cpu)")
    servers = [t.label for t in targets if callable(getattr(t.built, "probe", None))]
    servers += [f"judge {j.name}" for j in judges if callable(getattr(getattr(j, "target", None), "probe", None))]
    if attacker is not None:
        servers.append("the PAIR attacker")
    if servers:
        raise OptionError("workers", f"> 1 is for local models; {servers[0]} talks to a server (its connections "
                                     "would be shared by the forked processes): run it with --workers 1")
