"""Decoding time per token of ADA-RK and ADA-LP against plain greedy decoding of the same output.

    .venv/bin/python benchmarks/bench_ada.py            # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_ada.py --smoke    # toy shape, once, goals not judged (CI)

The same requests and model for the three, side by side in one run, each generating exactly
``max_new_tokens`` tokens (end of sequence suppressed) so that the token counts match:

* ``plain``: ``HFTarget.generate`` (deepalign's greedy loop, ``model.generate``'s tokens);
* ``ADA-LP``: ``AdaTarget`` with a probe that never fires (the same states read, the same
  header forwards, the answer unchanged): a check is one forward of the header's tokens from
  the KV cache, then the cache is cut back;
* ``ADA-RK``: ``AdaTarget`` whose refusal phrase the model never writes: a check is the header's
  forward plus the whole lookahead.

The checks run at the authors' settings (every 25 tokens, lookahead 20) on 100 new tokens, and at
the study's (every 8) on 64. Shapes: the world's (a random-init Llama, hidden 128, 4 layers,
batch 16) and hidden 2048 (2 layers, batch 4). The goals (ADA-LP within 1.05x, ADA-RK within 1.3x,
at the authors' settings) are printed next to each ratio with whether they hold; the script exits
1 only when ADA changed an answer (it must not, since no check fires).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

GOALS = {"ADA-LP": 1.05, "ADA-RK": 1.3}


def probe_dir(target, out: Path) -> Path:
    """A probe of the model's width that never fires (zero weights, bias -30)."""
    import torch
    from safetensors.torch import save_file

    from deepalign.decoding.ada import header_ids, role_cut
    from deepalign.decoding.ada_probe import PROBE_FILE, WEIGHTS_FILE, tokenizer_identity

    header = header_ids(target.encoder)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"weight": torch.zeros(target.model.config.hidden_size), "bias": torch.tensor([-30.0])},
              str(out / WEIGHTS_FILE))
    (out / PROBE_FILE).write_text(json.dumps({"layer": 0, "cut": role_cut(target.tokenizer, header),
                                              "header_ids": header, "tokenizer": tokenizer_identity(target.tokenizer)}))
    return out


def measure(world: Path, model_dir: Path, tmp: Path, *, batch: int, tokens: int, every: int, lookahead: int,
            reps: int) -> dict:
    from deepalign.data.datasets import load_dataset
    from deepalign.decoding.ada import AdaSettings, AdaTarget
    from deepalign.decoding.base import GenConfig, Request
    from deepalign.decoding.hf import HFTarget

    items = load_dataset("world:harmful", world=str(world), limit=batch)
    plain = HFTarget(str(model_dir), batch_size=batch)
    reqs = [Request(it.id, query=it.prompt) for it in items]
    config = GenConfig(max_new_tokens=tokens, suppress_eos=True)
    targets = {"plain": plain,
               "ADA-LP": AdaTarget(plain, AdaSettings("lp", every=every, probe=str(probe_dir(plain, tmp / "probe")))),
               "ADA-RK": AdaTarget(plain, AdaSettings("rk", every=every, lookahead=lookahead, refuse=("zzzqqq",)))}
    best, texts = {}, {}
    for _ in range(reps):
        for name, t in targets.items():
            start = time.perf_counter()
            gens = t.generate(reqs, config)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
            texts[name] = [g[0].text for g in gens]
            assert all(g[0].num_tokens == tokens for g in gens), name
    same = all(texts[n] == texts["plain"] for n in texts)
    n_tokens = tokens * len(reqs)
    return {"ms_per_token": {n: 1000 * s / n_tokens for n, s in best.items()}, "same_answers": same}


def report(name: str, r: dict, judge: bool) -> bool:
    ms = r["ms_per_token"]
    print(f"{name}: plain {ms['plain']:.3f} ms/token, ADA-LP {ms['ADA-LP']:.3f}, ADA-RK {ms['ADA-RK']:.3f}; "
          f"answers unchanged: {r['same_answers']}")
    for mode in ("ADA-LP", "ADA-RK"):
        ratio = ms[mode] / ms["plain"]
        goal = f" (goal <= {GOALS[mode]}x: {'met' if ratio <= GOALS[mode] else 'not met'})" if judge else ""
        print(f"  {mode}: ratio {mode}/plain = {ratio:.3f}x time per token{goal}")
    return r["same_answers"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    import torch

    from deepalign.world.tiny import random_model, small_world

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        world = small_world(tmp / "world", 24, 200)
        ok = True
        if args.smoke:
            model = random_model(world, tmp / "m", hidden=32, layers=2, heads=2, max_positions=256)
            ok &= report("world shape (smoke)", measure(world, model, tmp, batch=4, tokens=10, every=4, lookahead=3,
                                                         reps=1), False)
        else:
            model = random_model(world, tmp / "m", hidden=128, layers=4, heads=4, max_positions=512)
            big = random_model(world, tmp / "big", hidden=2048, layers=2, heads=16, max_positions=512)
            for shape, path, batch in (("world shape, hidden 128", model, 16), ("hidden 2048", big, 4)):
                ok &= report(f"{shape}, the authors' settings (every 25, lookahead 20, 100 tokens)",
                             measure(world, path, tmp, batch=batch, tokens=100, every=25, lookahead=20, reps=3), True)
                ok &= report(f"{shape}, the study's settings (every 8, lookahead 20, 64 tokens)",
                             measure(world, path, tmp, batch=batch, tokens=64, every=8, lookahead=20, reps=3), False)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
