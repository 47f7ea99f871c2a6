"""``deepalign ed``: Emulated Disalignment over a set of prompts, written as JSONL (resumable)."""

from deepalign.data.datasets import DataOptions
from deepalign.decoding.ed import EDGenConfig, EDOptions, run_ed

OPTIONS = (EDOptions, EDGenConfig, DataOptions)


def run(options: EDOptions, generation: EDGenConfig, data: DataOptions) -> int:
    summary = run_ed(options, generation, data)
    if not options.quiet:
        print(f"ed: {summary['rows']} rows written to {summary['out']} (alphas {summary['alphas']}; "
              f"{summary['skipped']} prompt x alpha pairs already done)")
    return 0
