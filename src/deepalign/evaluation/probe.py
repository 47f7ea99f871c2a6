"""A quick health check of a model on the world's held-out splits: :func:`probe`.

Greedy-decodes the model on the held-out harmful queries, benign look-alikes and helpful
tasks through the evaluation runner, judged by the world oracle, and prints the rates. It is
what ``deepalign pretrain`` reports at the end; the full battery lives in ``deepalign eval``.
With ``--out RUN_DIR`` the responses stay in a run directory (resumable, and read by
``deepalign report`` and ``deepalign judge`` like any other); without it they go to a
temporary one.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field

from deepalign.options import build, number
from deepalign.utils import check_writable_dir

#: the world datasets a probe reads: held-out harmful queries, benign look-alikes, helpful tasks
DATASETS = ("world:harmful", "world:benign", "world:helpful")


@dataclass
class ProbeOptions:
    model: str = field(default="runs/base", metadata={"help": "model directory or hub id"})
    world: str = field(default="runs/world", metadata={"help": "world directory"})
    max_new_tokens: int = 64
    batch_size: int = 64
    limit: int | None = field(default=None, metadata={"help": "items per split (default: all)"})
    out: str | None = field(default=None, metadata={
        "help": "keep the responses in this run directory (deepalign report / judge read it; rerun to resume)"})
    quiet: bool = False

    def __post_init__(self):
        number("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        number("batch_size", self.batch_size, low=1, integer=True)
        number("limit", self.limit, low=1, integer=True, optional=True)


def rates(summary: dict) -> dict[str, float | int]:
    """The probe's rates from a run summary (oracle cells of the direct query per split)."""
    cells = {c["dataset"]: c for c in summary["results"] if c["judge"] == "oracle" and c["attack"] == "direct"}
    harmful, benign, helpful = (cells[d] for d in DATASETS)
    return {"harmful_rate": harmful["harmful"]["rate"], "harmful_refusal_rate": harmful["refusal"]["rate"],
            "n_harmful": harmful["n"], "benign_answer_rate": benign["answered"]["rate"],
            "benign_refusal_rate": benign["over_refusal"]["rate"], "n_benign": benign["n"],
            "helpful_accuracy": helpful["helpful"]["rate"], "n_helpful": helpful["n"]}


def probe(options: ProbeOptions | None = None, **kwargs) -> dict:
    """Return (and print) harmful / refusal / benign-answer / helpful-accuracy rates of a
    model on the world's held-out splits, greedy, judged by the oracle.

    Example::

        >>> rates = probe(model="runs/base", world="runs/world", limit=4, quiet=True)
        >>> sorted(rates)[:3]
        ['benign_answer_rate', 'benign_refusal_rate', 'harmful_rate']
    """
    from deepalign.decoding.base import GenConfig
    from deepalign.decoding.registry import TargetSpec
    from deepalign.evaluation.runner import run_eval
    from deepalign.world.generator import load_manifest

    (opts,) = build(kwargs, options=(ProbeOptions, options))
    load_manifest(opts.world)
    if opts.out is not None:
        check_writable_dir(opts.out)
    start = time.time()
    with contextlib.ExitStack() as stack:
        out = opts.out or stack.enter_context(tempfile.TemporaryDirectory(prefix="deepalign-probe-")) + "/run"
        summary = run_eval(targets=[TargetSpec.hf(opts.model)], attacks=["direct"],
                           datasets=list(DATASETS), judges=["oracle"], world=opts.world,
                           out_dir=out, batch_size=opts.batch_size, limit=opts.limit, quiet=True,
                           generation=GenConfig(max_new_tokens=opts.max_new_tokens))
    results = {**rates(summary), "seconds": round(time.time() - start, 1)}
    if not opts.quiet:
        print(f"held-out probe of {opts.model} (greedy, oracle): helpful accuracy {results['helpful_accuracy']:.1%}, "
              f"harmful answered harmfully {results['harmful_rate']:.1%} (refused {results['harmful_refusal_rate']:.1%}), "
              f"benign answered benignly {results['benign_answer_rate']:.1%}"
              + (f"; responses in {opts.out}" if opts.out else ""))
    return results
