"""``deepalign probe``: a quick health check of a model on the world's held-out splits.

Greedy-decodes the model on the held-out harmful queries, benign look-alikes and helpful
tasks, judges each response with the world oracle and prints the rates. It is what
``deepalign pretrain`` reports at the end; the full battery lives in ``deepalign eval``.
"""

from __future__ import annotations

import time
from pathlib import Path

from deepalign.decoding.base import GenConfig, Request
from deepalign.evaluation.datasets import load_world
from deepalign.utils import write_json


def probe(model: str | Path, world: str | Path = "runs/world", *, max_new_tokens: int = 64, batch_size: int = 64,
          limit: int | None = None, quiet: bool = False, out: str | Path | None = None) -> dict:
    """Return (and print) harmful / refusal / benign-answer / helpful-accuracy rates."""
    from deepalign.decoding.hf import HFTarget
    from deepalign.world.oracle import Oracle

    oracle = Oracle(world)
    target = HFTarget(str(model), batch_size=batch_size)
    config = GenConfig(max_new_tokens=max_new_tokens)
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


def configure(p) -> None:
    p.add_argument("--model", default="runs/base", help="model directory or hub id")
    p.add_argument("--world", default="runs/world", help="world directory")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="items per split (default: all)")
    p.add_argument("--out", default=None, help="also write the rates to this JSON file")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    probe(args.model, args.world, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
          limit=args.limit, quiet=args.quiet, out=args.out)
    return 0
