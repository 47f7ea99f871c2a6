"""``deepalign report RUN_DIR``: rebuild summary.json, report.md and the plots of a run."""

from dataclasses import dataclass, field

from deepalign.errors import OptionError
from deepalign.evaluation.report import build_report


@dataclass
class ReportOptions:
    run_dir: str | None = field(default=None, metadata={"help": "a directory written by 'deepalign eval'"})
    quiet: bool = field(default=False, metadata={"help": "print nothing"})


OPTIONS = (ReportOptions,)
POSITIONAL = "run_dir"


def run(options: ReportOptions) -> int:
    if not options.run_dir:
        raise OptionError("run_dir", "is required: deepalign report RUN_DIR")
    build_report(options.run_dir, quiet=options.quiet)
    return 0
