"""Benchmark: pretraining steps on padding-free batches vs right-padded batches.

The world's pretraining corpus mixes 20- and 130-token documents; a random batch of 16 is
about half padding. ``deepalign pretrain`` (``--padding_free``, the default) concatenates a
batch's documents into one row with positions restarting at each document, and the model's
mask keeps attention within each document: the same loss and gradients (tests/test_pretrain.py)
without computing on padding. Both sides here: the study's model shape (hidden 128, 4 layers,
4 heads, MLP 512), the same random batches of a freshly built world's corpus, AdamW steps,
interleaved runs, best of N.

    .venv/bin/python benchmarks/bench_pretrain.py [--steps 60] [--batch-size 16] [--repeats 3]
    .venv/bin/python benchmarks/bench_pretrain.py --smoke    # 2 steps of 4, once (CI: benchmarks/smoke.py)
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="2 steps, batch 4, one run of each (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.batch_size, args.repeats = 2, 4, 1

    import torch
    from transformers import AutoTokenizer

    from deepalign.training.pretrain import PretrainOptions, _corpus, build_model, collator
    from deepalign.world.generator import build_world

    tmp = Path(tempfile.mkdtemp(prefix="bench_pretrain."))
    try:
        world = build_world(out=tmp / "world", seed=0, quiet=True)
        tok = AutoTokenizer.from_pretrained(world / "tokenizer")
        ids = tok(_corpus(world), add_special_tokens=False, truncation=True, max_length=256)["input_ids"]
        rng = random.Random(0)
        batches = [[{"input_ids": ids[i]} for i in rng.sample(range(len(ids)), args.batch_size)]
                   for _ in range(args.steps)]
        opts = {free: PretrainOptions(world=str(world), padding_free=free) for free in (False, True)}  # study shape
        collate = {free: collator(opts[free], tok) for free in (False, True)}
        prepared = {free: [collate[free](b) for b in batches] for free in (False, True)}
        real = sum(len(f["input_ids"]) for b in batches for f in b)
        padded = sum(int(b["input_ids"].numel()) for b in prepared[False])

        def run(free: bool) -> tuple[float, float]:
            torch.manual_seed(0)
            model = build_model(opts[free], tok)
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.01)
            t0 = time.perf_counter()
            for batch in prepared[free]:
                loss = model(**batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0, float(loss)

        times = {False: [], True: []}
        losses = {}
        for _ in range(args.repeats):
            for free in (False, True):
                t, losses[free] = run(free)
                times[free].append(t)
        pad_s, free_s = min(times[False]), min(times[True])
        print(f"steps={args.steps} batch={args.batch_size} torch_threads={torch.get_num_threads()} "
              f"tokens={real} padded positions={padded} ({100 * (1 - real / padded):.0f}% padding)")
        print(f"padded:       {pad_s:.2f} s (runs: {', '.join(f'{x:.2f}' for x in times[False])}), last loss {losses[False]:.5f}")
        print(f"padding-free: {free_s:.2f} s (runs: {', '.join(f'{x:.2f}' for x in times[True])}), last loss {losses[True]:.5f}")
        print(f"ratio padding-free/padded = {free_s / pad_s:.3f}x time; last-step loss difference "
              f"{abs(losses[True] - losses[False]):.2e} (same batches, same updates)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
