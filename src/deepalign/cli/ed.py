"""``deepalign ed``: Emulated Disalignment over a set of prompts, into a resumable run directory."""

from deepalign.data.datasets import DataOptions
from deepalign.evaluation.ed import EDGenConfig, EDOptions, run_ed

OPTIONS = (EDOptions, EDGenConfig, DataOptions)


def run(options: EDOptions, generation: EDGenConfig, data: DataOptions) -> int:
    run_ed(options, generation, data)
    if not options.quiet:
        print(f"ed: responses in {options.out}" + (f", flat rows in {options.export}" if options.export else ""))
    return 0
