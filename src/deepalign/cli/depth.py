"""``deepalign depth``: per-token depth diagnostics of (base, aligned) model pairs.

    deepalign depth --base runs/study/base --aligned runs/study/models/vanilla \\
        --aligned runs/study/models/derta --world runs/study/world --base_format chat --out runs/depth

Writes ``OUT/depth.json`` (per aligned model: per-position KL(aligned || base) and
refusal-token probabilities with 95% intervals), ``OUT/depth.png`` and ``OUT/depth.md``; the
directory is written atomically.
"""

from deepalign.data.datasets import DataOptions
from deepalign.evaluation.depth import DepthOptions, run_depth

OPTIONS = (DepthOptions, DataOptions)


def run(options: DepthOptions, data: DataOptions) -> int:
    run_depth(options, data)
    return 0
