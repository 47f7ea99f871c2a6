"""The ``deepalign`` command: one sub-command per stage of the pipeline.

Each stage is a module of this package holding only glue: ``OPTIONS`` (the option dataclasses
of the stage, parsed by :class:`~deepalign.cli.parser.StageParser` from flags and ``--config``
files) and ``run(*options)``, which calls the stage's public Python function. Modules are
imported only when their sub-command is used, so ``deepalign --help`` stays fast.

User mistakes raise :class:`deepalign.errors.DeepAlignError`; they are printed here as one
line, ``deepalign: error: <message>``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from deepalign.errors import DeepAlignError, OptionError

# name -> one-line help. The order follows the data flow of docs/architecture.md; each stage's module
# is deepalign.cli.<name>.
STAGES: dict[str, str] = {
    "world": "generate the embedded fictional safety world (data + tokenizer)",
    "pretrain": "pretrain the tiny world base model from scratch",
    "train": "safety fine-tuning: vanilla, harmful-prefix, rto, derta (DeRTa) or dpo",
    "ed": "Emulated Disalignment: decode from (1+alpha)*base - alpha*aligned log-probs",
    "probe": "greedy-decode a model on the world's held-out splits, judged by the oracle",
    "eval": "attack targets with a battery of jailbreaks, judge the responses (resumable)",
    "judge": "add verdicts of new judges to a finished run (or score a file of published responses)",
    "report": "rebuild summary.json, report.md and plots of an eval run directory",
    "view": "read every response and verdict of a run (or a study) in Inspect AI's log viewer",
    "depth": "per-token KL(aligned || base) and refusal-token probability along harmful responses",
    "direction": "find a model's refusal direction (difference of means, selected as Arditi et al. 2024)",
    "ablate": "write a model with a refusal direction orthogonalised out of its weights",
    "ada-probe": "fit ADA-LP's linear probe (Any-Depth Alignment) on a model's states at a re-inserted header",
    "study": "the end-to-end replication of DeRTa and ED (world -> pretrain -> train x5 -> eval -> report)",
}


def stage_module(stage: str):
    """The module of a stage (``ada-probe`` lives in ``deepalign.cli.ada_probe``)."""
    return importlib.import_module(f"deepalign.cli.{stage.replace('-', '_')}")


def _top_help() -> str:
    from deepalign import __version__

    lines = [f"usage: deepalign <stage> [options] [--config FILE.yaml]   (deepalign {__version__})", "",
             "Deep safety alignment: train (DeRTa), attack (ED, prefill, ...), measure depth.", "", "stages:"]
    lines += [f"  {name:<10} {help_}" for name, help_ in STAGES.items()]
    lines += ["", "Run 'deepalign <stage> --help' for a stage's options. Every stage reads --config FILE.yaml",
              "(its options' own names); flags given on the command line override the file."]
    return "\n".join(lines)


def _fail(message: str) -> int:
    sys.stderr.write(f"deepalign: error: {' '.join(str(message).split())}\n")
    return 2


def _end_process_group() -> None:
    """End the process group that a stage started under ``accelerate launch`` / torchrun while the
    interpreter is still whole (see :func:`entry` for why a launched process also skips the
    interpreter's shutdown)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_EXIT_CODE: list[int] = []  # the status a launched process leaves with, once main() has returned


def _leave_launched_process() -> None:
    """The last exit handler of a launched process (registered first, so run last): flush what is
    buffered and end the process before the interpreter shuts down."""
    if not _EXIT_CODE:
        return
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(_EXIT_CODE[0])


def entry() -> None:
    """The ``deepalign`` console script and ``python -m deepalign``: :func:`main`, then exit.

    A process started by a launcher (``accelerate launch``, torchrun, deepspeed: ``WORLD_SIZE`` > 1)
    leaves without the interpreter's shutdown, once Python's own exit handlers have run. In that
    shutdown a gloo worker thread that still drops the last reference to a finished collective
    (the tensors of ``gather_object``) must take the GIL, and a thread that asks for the GIL while
    the interpreter finalises is ended by ``pthread_exit``, whose unwinding through a C++ frame
    calls ``std::terminate``: "terminate called without an active exception", SIGABRT, and the
    launcher fails a run whose work is done (gdb: thread ``pt_gloo_runloop``,
    ``~AsyncAllgatherWork`` -> ``decref_pyobject`` -> ``take_gil`` -> ``pthread_exit``). Measured
    with 2 CPU processes that gather and exit while the main process is still writing (100
    launches each): 11 aborted with nothing done, 0 with the process group ended first but 1 in a
    CI run of the suite, 0 leaving as here (the regression tests are in
    ``tests/test_eval_accelerate.py``)."""
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):  # started by a launcher
        import atexit

        atexit.register(_leave_launched_process)
    try:
        code = main()
    except BaseException:  # an unexpected error: its traceback is printed, the status is 1
        _EXIT_CODE.append(1)
        raise
    _EXIT_CODE.append(code)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        from deepalign import __version__

        print(f"deepalign {__version__}")
        return 0
    stage = argv[0]
    if stage not in STAGES:
        close = [c for c in STAGES if c.startswith(stage[:2])]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return _fail(f"unknown stage {stage!r}{hint}; choose from {', '.join(STAGES)}")
    parser = None
    try:
        from deepalign.cli.parser import StageParser

        module = stage_module(stage)
        parser = StageParser(stage, module.OPTIONS, STAGES[stage], positional=getattr(module, "POSITIONAL", None))
        options = parser.parse(argv[1:])
        try:
            return int(module.run(*options) or 0)
        finally:
            _end_process_group()
    except OptionError as exc:
        return _fail(parser.locate(exc) if parser is not None else exc)
    except DeepAlignError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        sys.stderr.write("deepalign: interrupted; finished work is kept, rerun the same command to resume\n")
        return 130
    except BrokenPipeError:  # pragma: no cover - e.g. piping into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # an environment failure the stage did not name: still one line
        from deepalign.utils import os_error

        return _fail(os_error(exc))
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0) if isinstance(exc.code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    entry()
