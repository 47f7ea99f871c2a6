"""A quick health check of a model on the world's held-out splits: :func:`probe`.

Greedy-decodes the model on the held-out harmful queries, benign look-alikes and helpful
tasks, judges each response with the world oracle and prints the rates. It is what
``deepalign pretrain`` reports at the end; the full battery lives in ``deepalign eval``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from deepalign.data.datasets import load_world
from deepalign.decoding.base import GenConfig, Request
from deepalign.options import build, number
from deepalign.utils import check_writable_file, quiet_libraries, write_json


@dataclass
class ProbeOptions:
    model: str = field(default="runs/base", metadata={"help": "model directory or hub id"})
    world: str = field(default="runs/world", metadata={"help": "world directory"})
    max_new_tokens: int = 64
    batch_size: int = 64
    limit: int | None = field(default=None, metadata={"help": "items per split (default: all)"})
    out: str | None = field(default=None, metadata={"help": "also write the rates to this JSON file"})
    quiet: bool = False

    def __post_init__(self):
        number("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        number("batch_size", self.batch_size, low=1, integer=True)
        number("limit", self.limit, low=1, integer=True, optional=True)


def probe(options: ProbeOptions | None = None, **kwargs) -> dict:
    """Return (and print) harmful / refusal / benign-answer / helpful-accuracy rates of a
    model on the world's held-out splits, greedy, judged by the oracle.

    Example::

        >>> rates = probe(model="runs/base", world="runs/world", limit=4, quiet=True)
        >>> sorted(rates)[:3]
        ['benign_answer_rate', 'benign_refusal_rate', 'harmful_rate']
    """
    from deepalign.decoding.hf import HFTarget
    from deepalign.world.oracle import Oracle

    (opts,) = build(kwargs, options=(ProbeOptions, options))
    model, world, limit, quiet, out = opts.model, opts.world, opts.limit, opts.quiet, opts.out
    if out is not None:
        check_writable_file(out)
    oracle = Oracle(world)
    with quiet_libraries(quiet):
        target = HFTarget(str(model), batch_size=opts.batch_size)
    config = GenConfig(max_new_tokens=opts.max_new_tokens)
    start = time.time()
    results: dict[str, float | int] = {}
    for split in ("harmful", "benign", "helpful"):
        items = load_world(world, split, limit)
        requests = [Request(id=it.id, query=it.prompt) for it in items]
        gens = target.generate(requests, config)
        verdicts = [oracle.judge(g[0].text, it) for g, it in zip(gens, items)]
        n = len(verdicts)
        if split == "harmful":
            results["harmful_rate"] = sum(v.harmful for v in verdicts) / n
            results["harmful_refusal_rate"] = sum(v.refusal for v in verdicts) / n
        elif split == "benign":
            results["benign_answer_rate"] = sum(v.benign_answer for v in verdicts) / n
            results["benign_refusal_rate"] = sum(v.refusal for v in verdicts) / n
        else:
            results["helpful_accuracy"] = sum(bool(v.correct) for v in verdicts) / n
        results[f"n_{split}"] = n
    results["seconds"] = round(time.time() - start, 1)
    if out is not None:
        write_json(out, results)
    if not quiet:
        print(f"held-out probe of {model} (greedy, oracle): helpful accuracy {results['helpful_accuracy']:.1%}, "
              f"harmful answered harmfully {results['harmful_rate']:.1%} (refused {results['harmful_refusal_rate']:.1%}), "
              f"benign answered benignly {results['benign_answer_rate']:.1%}")
    return results
