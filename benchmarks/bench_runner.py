"""Benchmark: generation through the evaluation runner vs. the target's batched ``generate``.

Same tiny random-init Llama (world tokenizer), same prompts, same batch size, greedy. The
runner adds attack preparation, keyword judging, JSONL rows with fsync per batch and the
resume bookkeeping; the floor is runner time <= 1.2x the direct batched calls. Report
building (summary, Markdown, plots) is timed separately: it runs once per run, not per batch.

    .venv/bin/python benchmarks/bench_runner.py [--items 96] [--batch-size 16] [--max-new-tokens 32]
    .venv/bin/python benchmarks/bench_runner.py --smoke    # 8 items, 4 tokens, once; floor not judged (CI)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

FLOOR = 1.2


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="8 items in batches of 4, 4 new tokens, one run (CI); "
                                                         "the floor is not judged")
    args = ap.parse_args()
    if args.smoke:
        args.items, args.batch_size, args.max_new_tokens, args.repeats = 8, 4, 4, 1

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from deepalign.decoding.base import GenConfig, Request
    from deepalign.decoding.hf import HFTarget
    from deepalign.data.datasets import load_dataset
    from deepalign.reports.run_report import build_report
    from deepalign.evaluation.runner import run_eval
    from deepalign.world.generator import build_world

    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = Path(tempfile.mkdtemp(prefix="bench_runner."))
    try:
        world = build_world(out=tmp / "world", seed=0, quiet=True, n_pretrain=2000, n_test_harmful=args.items)
        items = load_dataset("world:harmful", world=world, limit=args.items)
        tok = AutoTokenizer.from_pretrained(world / "tokenizer")
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model = LlamaForCausalLM(cfg).eval()
        target = HFTarget(model, tok, name="tiny", batch_size=args.batch_size)
        gen = GenConfig(max_new_tokens=args.max_new_tokens, suppress_eos=True)  # every row decodes the full length
        requests = [Request(id=it.id, query=it.prompt) for it in items]

        def direct() -> float:
            t0 = time.perf_counter()
            for start in range(0, len(requests), args.batch_size):
                target.generate(requests[start : start + args.batch_size], gen)
            return time.perf_counter() - t0

        def runner(i: int) -> float:
            out = tmp / f"run{i}"
            t0 = time.perf_counter()
            run_eval(targets=[target], attacks="direct", datasets={"bench": items}, judges="keyword", out_dir=out,
                     generation=gen, batch_size=args.batch_size, quiet=True, report=False)
            return time.perf_counter() - t0

        direct()  # warm-up
        d_times, r_times = [], []
        for i in range(args.repeats):  # interleaved, best of N (timings on shared CPUs vary)
            d_times.append(direct())
            r_times.append(runner(i))
        t0 = time.perf_counter()
        build_report(tmp / "run0")
        report_s = time.perf_counter() - t0
        d, r = min(d_times), min(r_times)
        print(f"items={len(items)} batch={args.batch_size} new_tokens={args.max_new_tokens} torch_threads={torch.get_num_threads()}")
        print(f"direct batched target.generate: {d:.2f} s (runs: {', '.join(f'{x:.2f}' for x in d_times)})")
        print(f"run_eval (direct attack, keyword judge, fsync'd JSONL): {r:.2f} s (runs: {', '.join(f'{x:.2f}' for x in r_times)})")
        print(f"report (summary + markdown + plots, once per run): {report_s:.2f} s")
        ratio = r / d
        verdict = "not judged (--smoke)" if args.smoke else ("OK" if ratio <= FLOOR else "TOO SLOW")
        print(f"ratio runner/direct = {ratio:.3f}x (floor {FLOOR}x): {verdict}")
        return 0 if args.smoke or ratio <= FLOOR else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
