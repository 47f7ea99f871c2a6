"""``deepalign ed``: Emulated Disalignment over a set of prompts, written as JSONL (resumable)."""

from deepalign.decoding.ed import EDGenConfig, EDOptions, run_ed

OPTIONS = (EDOptions, EDGenConfig)


def run(options: EDOptions, generation: EDGenConfig) -> int:
    summary = run_ed(options, generation)
    if not options.quiet:
        print(f"ed: {summary['rows']} rows written to {summary['out']} (alphas {summary['alphas']}; "
              f"{summary['skipped']} prompt x alpha pairs already done)")
    return 0
