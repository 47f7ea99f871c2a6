"""GCG items per minute: deepalign's batched GCG against nanoGCG's one-item-at-a-time loop.

    .venv/bin/python benchmarks/bench_gcg.py            # ~6 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_gcg.py --smoke    # toy shape, once, floor not judged (CI)

The same items, settings and model for both, one after the other on this machine's threads:

* ``deepalign``: ``GCGAttack.optimise`` on every item at once (one forward and backward pass
  for the items' gradients, their candidates' losses in forward passes of up to 512 rows);
* ``nanoGCG``: nanoGCG 0.3.0 (PyPI) as its users run it, ``nanogcg.run`` on one item after
  another with its defaults (prefix cache included) under the same steps, search width and
  top-k, in its own environment (``bash scripts/setup_nanogcg.sh``: it pins
  ``transformers<=4.47.1``). Where that environment is missing, the alternative is
  deepalign's own GCG on one item at a time, and the output says so.

Each side is timed from its first item to its last, models loaded before. Shapes: the world's
(a random-init Llama of the study's base model size: hidden 128, 4 layers, the world's
tokenizer; 24 items, 10 steps, width 128, top-k 64; floor: deepalign >= 3x nanoGCG's items per
minute) and hidden 2048 (2 layers; 4 items, 2 steps, width 32: arithmetic-bound, reported
without a floor). Work differs in one way: nanoGCG reuses a prefix cache of the tokens before
the suffix; deepalign recomputes them in every row (batching rows of several items).

``--smoke``: 4 items, 2 steps, width 16, the world's shape at hidden 32: the same code and
lines in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = 3.0


def nanogcg_python() -> Path | None:
    venv = Path(os.environ.get("DEEPALIGN_NANOGCG_VENV", ROOT / ".nanogcg-venv"))
    exe = venv / "bin" / "python"
    return exe if (venv / ".deepalign-ready").exists() and exe.exists() else None


def measure(world: Path, model_dir: Path, n_items: int, steps: int, width: int, topk: int) -> dict:
    import torch

    from deepalign.attacks.gcg import GCGAttack, GCGSettings
    from deepalign.decoding.hf import HFTarget
    from deepalign.evaluation.runner import open_datasets

    items = list(open_datasets(["world:harmful"], world=str(world)).values())[0].items[:n_items]
    settings = GCGSettings(steps=steps, width=width, topk=topk)
    attack = GCGAttack(settings, world=str(world))
    target = HFTarget(str(model_dir), batch_size=16)
    torch.manual_seed(0)
    start = time.perf_counter()
    states = attack.optimise(target, items)
    ours = time.perf_counter() - start
    out = {"items": len(items), "deepalign_s": ours, "deepalign_loss": sum(s.best[0] for s in states) / len(states)}
    exe = nanogcg_python()
    if exe is None:
        start = time.perf_counter()
        for it in items:
            attack.optimise(target, [it])
        out.update(alternative="deepalign one item at a time (nanoGCG is not set up: bash scripts/setup_nanogcg.sh)",
                   other_s=time.perf_counter() - start)
        return out
    with tempfile.TemporaryDirectory() as tmp:
        req = {"model": str(model_dir),
               "config": {"num_steps": steps, "search_width": width, "topk": topk, "optim_str_init": attack.init_text(),
                          "seed": 0},
               "items": [{"query": it.prompt + " {optim_str}", "target": attack.target_of(it)} for it in items]}
        Path(tmp, "req.json").write_text(json.dumps(req))
        proc = subprocess.run([str(exe), str(ROOT / "scripts" / "nanogcg_reference.py"), "run", str(Path(tmp, "req.json")),
                               str(Path(tmp, "out.json"))], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"nanoGCG failed: {proc.stderr[-2000:]}")
        ref = json.loads(Path(tmp, "out.json").read_text())
    out.update(alternative="nanoGCG 0.3.0, one item after another", other_s=ref["seconds"],
               other_loss=sum(r["loss"] for r in ref["results"]) / len(ref["results"]))
    return out


def report(name: str, r: dict, floor: float | None, smoke: bool) -> bool:
    ours = 60 * r["items"] / r["deepalign_s"]
    other = 60 * r["items"] / r["other_s"]
    ratio = ours / other
    print(f"{name}: {r['items']} items; deepalign {ours:.1f} items/min ({r['deepalign_s']:.1f} s, mean best loss "
          f"{r['deepalign_loss']:.3f}); {r['alternative']}: {other:.1f} items/min ({r['other_s']:.1f} s"
          + (f", mean best loss {r['other_loss']:.3f}" if "other_loss" in r else "") + ")")
    verdict = "" if floor is None or smoke else (" PASS" if ratio >= floor else " FAIL") + f" (floor {floor:g}x)"
    print(f"  ratio deepalign/alternative = {ratio:.2f}x items per minute{verdict}")
    return floor is None or smoke or ratio >= floor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    from deepalign.world.tiny import random_model, small_world

    with tempfile.TemporaryDirectory() as tmp:
        world = small_world(Path(tmp) / "world", 24, 200)
        ok = True
        if args.smoke:
            model = random_model(world, Path(tmp) / "m", hidden=32, layers=2, heads=2, max_positions=256)
            ok &= report("world shape (smoke)", measure(world, model, 4, 2, 16, 16), FLOOR, True)
        else:
            model = random_model(world, Path(tmp) / "m", hidden=128, layers=4, heads=4, max_positions=256)
            ok &= report("world shape, hidden 128", measure(world, model, 24, 10, 128, 64), FLOOR, False)
            big = random_model(world, Path(tmp) / "big", hidden=2048, layers=2, heads=16, max_positions=256)
            ok &= report("hidden 2048", measure(world, big, 4, 2, 32, 32), None, False)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
