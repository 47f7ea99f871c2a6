"""The ``deepalign`` command: one sub-command per stage of the pipeline.

Each stage lives in its own module, which exposes ``configure(parser)`` (add options) and
``run(args)`` (do the work by calling the stage's public Python function). Modules are
imported only when their sub-command is used, so ``deepalign --help`` stays fast.

User mistakes raise :class:`deepalign.errors.DeepAlignError`; they are printed here as one
line, ``deepalign: error: <message>``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from deepalign.errors import DeepAlignError

# name -> (module, one-line help). The order follows the data flow of DESIGN.md.
COMMANDS: dict[str, tuple[str, str]] = {
    "world": ("deepalign.world.commands", "generate the embedded fictional safety world (data + tokenizer)"),
    "pretrain": ("deepalign.training.pretrain", "pretrain the tiny world base model from scratch"),
    "train": ("deepalign.training.commands", "safety fine-tuning: vanilla, harmful-prefix, rto, derta (DeRTa) or dpo"),
    "probe": ("deepalign.evaluation.probe", "greedy-decode a model on the world's held-out splits, judged by the oracle"),
    "eval": ("deepalign.evaluation.commands", "attack targets with a battery of jailbreaks, judge the responses (resumable)"),
    "report": ("deepalign.evaluation.report", "rebuild summary.json, report.md and plots of an eval run directory"),
    "ed": ("deepalign.decoding.commands", "Emulated Disalignment: decode from (1+alpha)*base - alpha*aligned log-probs"),
    "depth": ("deepalign.evaluation.depth_command", "per-token KL(aligned || base) and refusal-token probability along harmful responses"),
    "study": ("deepalign.study", "the end-to-end replication of DeRTa and ED (world -> pretrain -> train x5 -> eval -> report)"),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit with status 2."""

    def error(self, message):  # noqa: D401 - argparse API
        sys.stderr.write(f"deepalign: error: {self.prog.split(' ', 1)[-1] + ': ' if ' ' in self.prog else ''}{message}\n")
        raise SystemExit(2)


def _top_parser() -> argparse.ArgumentParser:
    from deepalign import __version__

    epilog = "stages:\n" + "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items())
    p = _Parser(
        prog="deepalign",
        description="Deep safety alignment: train (DeRTa), attack (ED, prefill, ...), measure depth.",
        epilog=epilog + "\n\nRun 'deepalign <stage> --help' for a stage's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"deepalign {__version__}")
    p.add_argument("stage", nargs="?", help="the stage to run")
    return p


def build_parser(stage: str) -> argparse.ArgumentParser:
    module_name, help_ = COMMANDS[stage]
    module = importlib.import_module(module_name)
    p = _Parser(prog=f"deepalign {stage}", description=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    module.configure(p)
    p.set_defaults(_run=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        top.parse_args(argv)
    stage = argv[0]
    if stage not in COMMANDS:
        close = [c for c in COMMANDS if c.startswith(stage[:2])]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        sys.stderr.write(f"deepalign: error: unknown stage {stage!r}{hint}; choose from {', '.join(COMMANDS)}\n")
        return 2
    try:
        parser = build_parser(stage)
        args = parser.parse_args(argv[1:])
        result = args._run(args)
        return int(result or 0)
    except DeepAlignError as exc:
        sys.stderr.write(f"deepalign: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("deepalign: interrupted; finished work is kept, rerun the same command to resume\n")
        return 130
    except BrokenPipeError:  # pragma: no cover - e.g. piping into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
