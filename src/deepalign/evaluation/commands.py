"""``deepalign eval``: run targets x attacks x datasets, judge, and report.

    deepalign eval --target hf:runs/vanilla --target hf:runs/derta \\
        --attacks direct,completion,prefill:8w,code,cipher:caesar --dataset world:test \\
        --world runs/world --judge oracle,keyword --out runs/eval

Rerunning the same command resumes an interrupted run; ``deepalign report RUN_DIR`` rebuilds
the summary, report and plots.
"""

from __future__ import annotations

import contextlib

from deepalign.decoding.base import GenConfig
from deepalign.errors import DeepAlignError


def configure(p) -> None:
    from deepalign.attacks.registry import ATTACKS
    from deepalign.judges.registry import JUDGES

    import deepalign.attacks  # noqa: F401  (registers the attacks for the help text)

    p.add_argument("--target", action="append", required=True, metavar="SPEC",
                   help="hf:<dir or hub id> | openai:<model>@<base_url>[,key_env=VAR] | ed:base=...,aligned=...,alpha=A (repeatable)")
    p.add_argument("--attacks", default="direct", metavar="LIST",
                   help="comma-separated attack specs: " + "; ".join(f"{k}" for k in sorted(ATTACKS)))
    p.add_argument("--dataset", action="append", default=None, metavar="SPEC",
                   help="world:<split> (needs --world) or [kind:]<file or hub id> (repeatable; default world:test with --world)")
    p.add_argument("--judge", default=None, metavar="LIST",
                   help="comma-separated judges: " + ", ".join(JUDGES) + " (default: oracle,keyword with --world, else keyword)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (rerun to resume)")
    p.add_argument("--world", default=None, metavar="DIR", help="the embedded world directory (world: datasets, oracle judge)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per response")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature > 0)")
    p.add_argument("--samples", type=int, default=1, help="responses per item (use with --temperature > 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling (sample i uses seed + i on HTTP targets)")
    p.add_argument("--batch-size", type=int, default=16, help="items per generate call")
    p.add_argument("--limit", type=int, default=None, help="use only the first N items of each dataset (of each world file)")
    p.add_argument("--attacker", default=None, metavar="SPEC", help="target spec of the PAIR attacker model")
    p.add_argument("--judge-model", default=None, metavar="SPEC", help="target spec of the model behind llm judges, e.g. openai:gpt-4o-mini@https://api.openai.com/v1")
    p.add_argument("--device", default=None, help="device for local models (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary lines")


def run(args) -> int:
    from deepalign.utils import set_seed

    if args.temperature < 0:
        raise DeepAlignError(f"--temperature must be >= 0, got {args.temperature}")
    if args.samples > 1 and args.temperature == 0:
        raise DeepAlignError("--samples > 1 needs --temperature > 0 (greedy samples would all be the same)")
    config = GenConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.temperature > 0,
        temperature=args.temperature if args.temperature > 0 else 1.0,
        top_p=args.top_p,
        seed=args.seed,
        num_samples=args.samples,
    )
    datasets = args.dataset or (["world:test"] if args.world else None)
    if not datasets:
        raise DeepAlignError("give --dataset SPEC (or --world DIR to use world:test)")
    judges = args.judge or ("oracle,keyword" if args.world else "keyword")
    set_seed(args.seed)
    with _quiet_loading(args.quiet):
        _run(args, config, datasets, judges)
    return 0


@contextlib.contextmanager
def _quiet_loading(quiet: bool):
    """--quiet also silences the model-loading progress bars of transformers."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _run(args, config, datasets, judges) -> None:
    from deepalign.evaluation.runner import run_eval

    run_eval(
        args.target,
        args.attacks,
        datasets,
        judges,
        args.out,
        config,
        world=args.world,
        batch_size=args.batch_size,
        limit=args.limit,
        attacker=args.attacker,
        judge_model=args.judge_model,
        device=args.device,
        quiet=args.quiet,
    )
