"""``deepalign eval``: run targets x attacks x datasets, judge, and report.

    deepalign eval --target hf:runs/vanilla hf:runs/derta --attacks direct,completion,prefill:8w,code \
        --dataset world:test --world runs/world --judge oracle,keyword --out runs/eval

Rerunning the same command resumes an interrupted run; ``deepalign judge RUN_DIR`` adds judges,
``deepalign report RUN_DIR`` rebuilds the summary, report and plots.
"""

from deepalign.data.datasets import DataOptions
from deepalign.decoding.base import GenConfig
from deepalign.evaluation.runner import EvalOptions, run_eval

OPTIONS = (EvalOptions, GenConfig, DataOptions)


def run(options: EvalOptions, generation: GenConfig, data: DataOptions) -> int:
    run_eval(options, generation, data)
    return 0
