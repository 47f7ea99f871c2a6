"""Benchmark: writing a run's Inspect logs (``deepalign view``) against making the run.

Is exporting cheap enough to do at the end of every run or study? Measured side by side:

* an evaluation run on the embedded world (a tiny random-init Llama in the world's format, an
  attack battery, the oracle and keyword judges, the report): its wall time, then the export of
  its logs (:func:`deepalign.reports.inspect_log.export_logs`) in the same process, and
  ``import inspect_ai.log`` in a fresh interpreter (a one-off cost the export pays first);
* with ``--study``: a small ``deepalign study`` (world, pretraining, five alignment recipes, every
  evaluation stage, at the test suite's toy settings): its wall time, then the export of every
  run directory it wrote.

Prints ``ratio export/generation`` and ``ratio export/study`` (export time over the run's).

    .venv/bin/python benchmarks/bench_view.py [--limit 12] [--max-new-tokens 32] [--study]
    .venv/bin/python benchmarks/bench_view.py --smoke     # 2 items per split, 4 tokens (CI)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATTACKS = "direct,prefill:4,prefill:8,completion:3w,cipher:atbash"


def import_seconds() -> float:
    """``import inspect_ai.log`` in a fresh interpreter (best of 2)."""
    code = "import time; t = time.perf_counter(); import inspect_ai.log; print(time.perf_counter() - t)"
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout) for _ in range(2))


def export_seconds(path: Path) -> tuple[float, int, int]:
    """Wall time of writing every log of ``path`` (forced: logs made before are rewritten);
    returns (seconds, logs, rows)."""
    from deepalign.reports.inspect_log import export_logs

    t0 = time.perf_counter()
    done = export_logs(path, force=True)
    return time.perf_counter() - t0, sum(len(e.files) for e in done), sum(e.rows for e in done)


def eval_run(tmp: Path, limit: int, max_new_tokens: int) -> tuple[float, Path]:
    from deepalign.evaluation.runner import run_eval
    from deepalign.utils import no_weight_bars
    from deepalign.world.tiny import random_model, small_world

    world = small_world(tmp / "world", max(limit, 2), n_pretrain=500)
    model = random_model(world, tmp / "model", hidden=128, layers=4, heads=4, max_positions=512)  # the study's shape
    run = tmp / "run"
    t0 = time.perf_counter()
    with no_weight_bars():
        run_eval(targets=[f"hf:{model}"], attacks=ATTACKS, datasets=["world:test"], world=str(world), limit=limit,
                 judges=["oracle", "keyword"], out_dir=str(run), allow_unknown_tokens=True, quiet=True,
                 max_new_tokens=max_new_tokens)
    return time.perf_counter() - t0, run


def study_run(tmp: Path) -> tuple[float, Path]:
    from deepalign.study import run_study

    out = tmp / "study"
    t0 = time.perf_counter()
    run_study(out=str(out), quiet=True, limit=3, train_steps=2, depths=(0, 8), alphas=(0.5,), ed_samples=2,
              max_new_tokens=8, batch_size=8, finetune_steps=4, pretrain_steps=60)
    return time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=12, help="items per world split of the evaluation run")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--study", action="store_true", help="also a small study (a few minutes)")
    ap.add_argument("--smoke", action="store_true", help="2 items per split, 4 new tokens, no study (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.limit, args.max_new_tokens, args.study = 2, 4, False
    tmp = Path(tempfile.mkdtemp(prefix="bench_view."))
    try:
        imp = import_seconds()
        gen_s, run = eval_run(tmp, args.limit, args.max_new_tokens)
        import inspect_ai.log  # noqa: F401  (its import is measured on its own above)

        exp_s, logs, rows = export_seconds(run)
        print(f"import inspect_ai.log (fresh interpreter, once per process): {imp:.2f} s")
        print(f"eval run ({rows} responses: {ATTACKS} on world:test --limit {args.limit}, {args.max_new_tokens} "
              f"tokens, oracle+keyword, report): {gen_s:.2f} s")
        print(f"export ({logs} logs, {rows} samples): {exp_s:.2f} s ({1000 * exp_s / max(rows, 1):.1f} ms a row)")
        print(f"ratio export/generation = {exp_s / gen_s:.3f}x (with the import: {(exp_s + imp) / gen_s:.3f}x)")
        if args.study:
            study_s, out = study_run(tmp)
            exp_s, logs, rows = export_seconds(out)
            print(f"study (toy settings of tests/test_study.py): {study_s:.1f} s")
            print(f"export of the study ({logs} logs, {rows} samples): {exp_s:.2f} s")
            print(f"ratio export/study = {exp_s / study_s:.3f}x (with the import: {(exp_s + imp) / study_s:.3f}x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
