"""``deepalign report RUN_DIR``: rebuild summary.json, report.md and the plots of a run
(``--upgrade`` first rewrites a run directory of an older format in the current one)."""

from dataclasses import dataclass, field

from deepalign.errors import OptionError
from deepalign.reports.run_report import build_report


@dataclass
class ReportOptions:
    run_dir: str | None = field(default=None, metadata={"help": "a run directory (deepalign eval, ed, probe, study)"})
    upgrade: bool = field(default=False, metadata={
        "help": "rewrite a run directory written by an older deepalign in the current format (then it can be "
                "resumed, extended and judged again)"})
    validations: list[str] | None = field(default=None, metadata={
        "aliases": ["--validation"],
        "help": "validation.json files of 'deepalign judge --validate' whose numbers the report prints next to each "
                "judge's rates (besides the validations this machine has registered)"})
    quiet: bool = field(default=False, metadata={"help": "print nothing"})


OPTIONS = (ReportOptions,)
POSITIONAL = "run_dir"


def run(options: ReportOptions) -> int:
    if not options.run_dir:
        raise OptionError("run_dir", "is required: deepalign report RUN_DIR")
    if options.upgrade:
        from deepalign.runs.rundir import RunDir

        n = RunDir(options.run_dir).upgrade()
        if not options.quiet:
            print(f"{options.run_dir}: {'upgraded, ' + str(n) + ' rows rewritten' if n else 'already current'}")
    build_report(options.run_dir, quiet=options.quiet, validations=options.validations or ())
    return 0
