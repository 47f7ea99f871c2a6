"""Cost of PRESTO (``--presto_weight 1``): time and peak memory of harmful-prefix training
steps with the attention regulariser against the same steps without it.

    .venv/bin/python benchmarks/bench_presto.py            # three shapes (about 4 min on 2 shared cores)
    .venv/bin/python benchmarks/bench_presto.py --rounds 3 --steps 10
    .venv/bin/python benchmarks/bench_presto.py --smoke    # a toy shape, seconds (CI: benchmarks/smoke.py)

Each shape trains one random-init Llama (seed 0, the world's tokenizer, fp32) on the same
batches of ``harmful-prefix`` records built from a small world (seed 0; a third of the
safety records get ``k = 0``, as the recipe does), three ways:

* ``sdpa``: deepalign's default, no PRESTO, the model's own attention (SDPA);
* ``eager``: no PRESTO, eager attention: what PRESTO has to switch to, so that the cost of
  the switch and the cost of the term show apart;
* ``presto``: ``--presto_weight 1``: eager attention, the attention probabilities returned,
  the term added to the loss.

Every variant runs in its own process (so that its memory is its own), ``--rounds`` times,
variants alternating (A B C A B C), and the step is ``DeRTaTrainer.training_step`` (forward,
loss, backward) + ``optimizer.step()`` + ``zero_grad`` on each batch in turn, after one
warm-up step. Time: the median step over all rounds. Memory: on CPU the process's peak
resident set during the steps (``VmHWM`` of ``/proc/self/status``, reset through
``/proc/self/clear_refs`` right before the warm-up step: the weights, the optimizer state,
activations and gradients, as the kernel counts them) and its growth over the resident set
before the steps; on CUDA ``torch.cuda.max_memory_allocated`` over the same span (and its
growth over the memory allocated before). Both are medians over the rounds. The first-step
losses are printed: ``sdpa`` and ``eager`` must agree (1e-5), ``presto`` is larger by its term.

Shapes: the world's model (hidden 128, 4 layers, 4 heads, MLP 512) on the world's records
(about 48 tokens each); the same at hidden 512 (8 heads, MLP 2048); and the world's model on
long records (each harmful, safe and helpful answer written 8 times), where eager
attention's ``T x T`` probabilities weigh. Each process runs one torch thread (``--threads``):
on a shared machine the barriers between threads stall steps of a few milliseconds for whole
scheduler slices. ``--smoke``: hidden 32, 2 layers, 2 steps, one round; the losses must
still agree, no ratio is judged.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

VARIANTS = ("sdpa", "eager", "presto")
SHAPES = {
    "world": dict(hidden=128, layers=4, heads=4, mlp=512, repeat=1, batch=8),
    "hidden 512": dict(hidden=512, layers=4, heads=8, mlp=2048, repeat=1, batch=8),
    "world, long records": dict(hidden=128, layers=4, heads=4, mlp=512, repeat=8, batch=8),
}
SMOKE = {"smoke": dict(hidden=32, layers=2, heads=2, mlp=64, repeat=1, batch=4)}


# -- one variant, in its own process ---------------------------------------------------------------


def _status(key: str) -> int:
    """A ``/proc/self/status`` entry in bytes (``VmRSS``, ``VmHWM``)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _reset_peak(cuda: bool) -> int:
    """Reset the peak counter; returns the memory in use now."""
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _status("VmRSS")


def _peak(cuda: bool) -> int:
    import torch

    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _status("VmHWM")


def worker(job: dict) -> dict:
    """Train ``job['variant']`` for ``job['steps']`` timed steps; its times, memory and first loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepalign.data.recipes import load_records
    from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer, use_eager_attention
    from deepalign.utils import no_weight_bars

    warnings.filterwarnings("ignore")
    torch.set_num_threads(job["threads"])
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(job["model"])
    with no_weight_bars():
        model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    variant = job["variant"]
    args = DeRTaConfig(output_dir=str(Path(job["model"]) / "ck"), report_to="none", disable_tqdm=True, use_cpu=not cuda,
                       bf16=False, learning_rate=1e-4, save_strategy="no", rto_keep=1.0,
                       presto_weight=1.0 if variant == "presto" else 0.0)
    trainer = DeRTaTrainer(model, args, train_dataset=load_records(job["records"]), processing_class=tok)
    if variant == "eager":
        use_eager_attention(trainer.model)
    feats = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    b = job["batch"]
    groups = [feats[i:i + b] for i in range(0, len(feats) - b + 1, b)]
    start = next(i for i, g in enumerate(groups) if any("prefix_start" in f for f in g))
    groups = groups[start:] + groups[:start]  # the warm-up batch, whose loss is compared, has a prefix
    batches = [trainer.data_collator(g) for g in groups]
    trainer.create_optimizer_and_scheduler(num_training_steps=job["steps"] + 1)
    trainer.model.train()

    def step(inputs) -> tuple[float, float]:
        n = trainer._get_num_items_in_batch([inputs], trainer.args.device)
        trainer.current_gradient_accumulation_steps = 1
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = trainer.training_step(trainer.model, dict(inputs), n)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        loss = float(loss)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, loss

    before = _reset_peak(cuda)
    _, first = step(batches[0])
    times = [step(batches[(i + 1) % len(batches)])[0] for i in range(job["steps"])]
    peak = _peak(cuda)
    tokens = sum(int(x["input_ids"].numel()) for x in batches) / len(batches)
    prefixes = sum("prefix_start" in f for g in groups for f in g)
    return {"times": times, "peak": peak, "growth": peak - before, "first_loss": first, "tokens": tokens,
            "prefixes": prefixes, "batches": len(batches), "device": "cuda" if cuda else "cpu",
            "attention": trainer.model.config._attn_implementation}


# -- the driver ----------------------------------------------------------------------------------------


def build_shape(tmp: Path, world: Path, name: str, shape: dict) -> tuple[Path, Path]:
    """The shape's random model directory and its records file."""
    from deepalign.data.loaders import load_instructions, load_triples
    from deepalign.data.recipes import build_records, save_records
    from deepalign.records import HarmfulTriple, InstructionPair
    from deepalign.world.tiny import random_model

    r = shape["repeat"]
    triples = [HarmfulTriple(t.id, t.query, " ".join([t.harmful] * r), " ".join([t.safe] * r))
               for t in load_triples(str(world / "train" / "triples.jsonl"))]
    helpful = [InstructionPair(p.id, p.instruction, " ".join([p.response] * r))
               for p in load_instructions(str(world / "train" / "helpful.jsonl"))]
    slug = re.sub(r"\W+", "-", name)
    records = tmp / f"{slug}.jsonl"
    save_records(build_records("harmful-prefix", triples, helpful, seed=0), records)
    model = random_model(world, tmp / slug, hidden=shape["hidden"], layers=shape["layers"], heads=shape["heads"],
                         max_positions=4096, intermediate=shape["mlp"])
    return model, records


def run_variant(job: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"worker {job['variant']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(model: Path, records: Path, shape: dict, steps: int, rounds: int, threads: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            job = {"variant": variant, "model": str(model), "records": str(records), "batch": shape["batch"],
                   "steps": steps, "threads": threads}
            results[variant].append(run_variant(job))
    return results


def report(name: str, shape: dict, results: dict[str, list[dict]]) -> bool:
    mib = 1 / 2 ** 20
    first = results["sdpa"][0]
    kind = "CUDA max_memory_allocated" if first["device"] == "cuda" else "peak RSS (VmHWM)"
    print(f"{name}: hidden {shape['hidden']}, {shape['layers']} layers, {shape['heads']} heads, MLP {shape['mlp']}; "
          f"{first['batches']} batches of {shape['batch']} harmful-prefix records ({first['tokens']:.0f} positions per "
          f"padded batch, {first['prefixes'] / first['batches']:.1f} with a prefix); {first['device']}")
    med = {}
    for v in VARIANTS:
        rs = results[v]
        times = [t for r in rs for t in r["times"]]
        med[v] = (statistics.median(times), statistics.median(r["peak"] for r in rs),
                  statistics.median(r["growth"] for r in rs))
        print(f"  {v:<6} ({rs[0]['attention']} attention): step {med[v][0] * 1e3:.1f} ms (median of {len(times)}), "
              f"{kind} {med[v][1] * mib:.0f} MiB, +{med[v][2] * mib:.0f} MiB over the memory before the steps; "
              f"first-step loss {rs[0]['first_loss']:.6f}")
    for a, b in (("presto", "sdpa"), ("presto", "eager"), ("eager", "sdpa")):
        growth = med[a][2] / med[b][2] if med[b][2] > 0 else float("nan")
        print(f"  ratio {a}/{b} = {med[a][0] / med[b][0]:.3f}x time, {med[a][1] / med[b][1]:.3f}x peak memory, "
              f"{growth:.3f}x its growth over the steps")
    same = abs(results["sdpa"][0]["first_loss"] - results["eager"][0]["first_loss"]) <= 1e-5 * abs(
        results["sdpa"][0]["first_loss"])
    larger = results["presto"][0]["first_loss"] > results["eager"][0]["first_loss"]
    print(f"  first-step losses: sdpa == eager (1e-5): {same}; presto larger (its term): {larger}", flush=True)
    return same and larger


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a toy shape, 2 steps, one round (CI)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per process (after one warm-up step)")
    p.add_argument("--rounds", type=int, default=2, help="processes per variant, the variants alternating")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), help=f"shapes to run, of {', '.join(SHAPES)}")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: on a shared machine the barriers between threads "
                        "stall short steps for whole scheduler slices)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0
    shapes = SMOKE if a.smoke else {k: SHAPES[k] for k in a.shapes}
    steps, rounds = (2, 1) if a.smoke else (a.steps, a.rounds)
    from deepalign.world.tiny import small_world

    print(f"PRESTO cost: harmful-prefix training steps with --presto_weight 1 against the same steps without it "
          f"({rounds} round(s) x {steps} timed steps per variant, each variant in its own process, fp32, "
          f"{a.threads} torch thread(s) per process)")
    ok = True
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        world = small_world(tmp / "world", 8, 200)
        for shape_name, shape in shapes.items():
            model, records = build_shape(tmp, world, shape_name, shape)
            ok &= report(shape_name, shape, measure(model, records, shape, steps, rounds, a.threads))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
