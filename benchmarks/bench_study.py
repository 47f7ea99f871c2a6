"""Benchmark: where the main job's time goes, and what the decoding speed-ups buy.

Measured side by side, at the world model's shape (a random-init Llama of the pretrained
base's shape: 4 layers, hidden 128, MLP 512, the world's tokenizer; the arithmetic of a step
does not depend on the weights):

* **a decoding step against a plain forward of the same shape**: greedy decoding of a batch
  (64 prompts of 48 tokens from the world's test queries, 64 new tokens, end of sequence
  forbidden so every row runs to the end) with ``model.generate`` and its own ``DynamicCache`` (before), the same with
  the KV cache that grows in place (:mod:`deepalign.decoding.cache`), the greedy loop
  (:mod:`deepalign.decoding.greedy`, what ``HFTarget`` runs for greedy rows now, on that cache),
  and a bare loop of one-token forwards on that cache (the floor: the model alone). The tokens
  of the first three must be equal, else the script fails.
* **an evaluation in one process against ``--workers 2``** (:mod:`deepalign.evaluation.workers`):
  the study's prefill battery on the world's harmful test queries, oracle and keyword judges,
  through ``run_eval``; the rows (all but their timings) must be equal, else the script fails.
* **an evaluation in batches of 64 against batches of 128** (the study's batch now: its 120
  held-out queries in one batch), both with ``--workers 2``; the rows must be equal;
* **the study's trainings one after another against side by side** (:mod:`deepalign.study.jobs`:
  two forked one-thread processes): the four record recipes, 40 steps each, from the
  random-init model;
* **the main job's stage times**: with ``--study DIR``, the table of a finished ``deepalign
  study``'s ``timing.json`` (``--run-study`` runs the study into DIR first: about 9 minutes),
  the trainings that ran side by side inside their wall-time row.

    .venv/bin/python benchmarks/bench_study.py [--batch 64] [--new-tokens 64] [--limit 48] [--study DIR [--run-study]]
    .venv/bin/python benchmarks/bench_study.py --smoke     # a few rows and tokens (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

#: the study's world shape (deepalign.training.pretrain.PretrainOptions)
SHAPE = dict(hidden=128, layers=4, heads=4, intermediate=512, max_positions=1024)
PROMPT = 48  # prompt tokens of the decoding section (the study's chat prompts run 30 to 60)
BATTERY = "direct,prefill:2,prefill:4,prefill:8,prefill:16,prefill:32,completion"


def _kv(model, cache) -> dict:
    from deepalign.decoding.cache import cache_kwarg

    return {cache_kwarg(model): cache}


def decode_section(world: Path, model_dir: Path, batch: int, new: int, reps: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    from deepalign.decoding.cache import reserved_cache
    from deepalign.decoding.greedy import greedy_decode
    from deepalign.models import left_pad

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    # prompts of one length (the world's queries, run on until PROMPT tokens): no padding, so that
    # the bare loop below needs no attention mask and is the model's forward alone
    stream = [i for line in (world / "test" / "harmful.jsonl").open()
              for i in tok(json.loads(line)["query"], add_special_tokens=False)["input_ids"]]
    prompts = [[tok.bos_token_id] + (stream[i * 7:] + stream)[: PROMPT - 1] for i in range(batch)]
    ids, mask = left_pad(prompts, tok.pad_token_id, "cpu")
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True)

    def generate(cache_fn):
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model.generate(**common, **_kv(model, cache_fn()))
            return time.perf_counter() - t0, out

    def bare():  # one-token forwards on the cache, nothing else: the model's own time per step
        with torch.inference_mode():
            cache = reserved_cache(model, new)
            out = model(input_ids=ids, use_cache=True, **_kv(model, cache))
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t0 = time.perf_counter()
            for _ in range(new - 1):
                out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **_kv(model, cache))
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter() - t0

    def loop():  # deepalign.decoding.greedy: what HFTarget runs for greedy rows
        with torch.inference_mode():
            t0 = time.perf_counter()
            rows, _ = greedy_decode(model, ids, mask, reserved_cache(model, new), max_new_tokens=new,
                                    eos={tok.eos_token_id}, suppress=[], pad=tok.pad_token_id, min_new_tokens=new)
            return time.perf_counter() - t0, torch.tensor(rows)

    runs = {"dynamic": [], "reserved": [], "loop": [], "bare": []}
    outs = {}
    generate(lambda: reserved_cache(model, new))  # warm-up
    for _ in range(reps):  # interleaved, so that a busy moment of the machine hits every way alike
        for name, fn in (("dynamic", lambda: DynamicCache(config=model.config)),
                         ("reserved", lambda: reserved_cache(model, new))):
            dt, outs[name] = generate(fn)
            runs[name].append(dt)
        dt, outs["loop"] = loop()
        runs["loop"].append(dt)
        runs["bare"].append(bare())
    if not torch.equal(outs["dynamic"], outs["reserved"]):
        raise SystemExit("the reserved cache changed a token: it must not")
    if not torch.equal(outs["loop"], outs["reserved"][:, ids.shape[1]:]):
        raise SystemExit("the greedy loop wrote other tokens than generate: it must not")
    ms = {k: 1000 * statistics.median(v) / (new - 1 if k == "bare" else new) for k, v in runs.items()}
    print(f"decoding step (batch {batch}, {new} new tokens, prompts {ids.shape[1]} tokens, median of {reps}): "
          f"generate + DynamicCache {ms['dynamic']:.2f} ms, generate + reserved cache {ms['reserved']:.2f} ms, "
          f"greedy loop {ms['loop']:.2f} ms, bare forward {ms['bare']:.2f} ms; same tokens")
    print(f"ratio reserved/dynamic cache = {ms['reserved'] / ms['dynamic']:.3f}x per decoding step")
    print(f"ratio greedy loop/generate (both on the reserved cache) = {ms['loop'] / ms['reserved']:.3f}x per step; "
          f"against generate as before (DynamicCache): {ms['loop'] / ms['dynamic']:.3f}x")
    print(f"ratio decoding step/plain forward = {ms['loop'] / ms['bare']:.3f}x (the greedy loop; generate: "
          f"{ms['reserved'] / ms['bare']:.3f}x)")


def eval_section(world: Path, model_dir: Path, limit: int, new: int) -> None:
    from deepalign.evaluation.runner import run_eval
    from deepalign.runs.rundir import RunDir
    from deepalign.utils import no_weight_bars

    with no_weight_bars():  # warm-up: the first run in a process pays one-off costs (imports, first loads)
        run_eval(targets=[f"hf:{model_dir}"], attacks="direct", datasets=["world:harmful"], world=str(world), limit=2,
                 judges=["oracle"], out_dir=str(world.parent / "eval-warm"), quiet=True, max_new_tokens=2)
    times, rows = {}, {}
    for workers in (1, 2):
        out = world.parent / f"eval-{workers}"
        t0 = time.perf_counter()
        with no_weight_bars():
            run_eval(targets=[f"hf:{model_dir}"], attacks=BATTERY, datasets=["world:harmful"], world=str(world),
                     limit=limit, judges=["oracle", "keyword:nocase"], out_dir=str(out), batch_size=64, quiet=True,
                     max_new_tokens=new, allow_unknown_tokens=True, workers=workers)
        times[workers] = time.perf_counter() - t0
        rows[workers] = [{k: v for k, v in r.to_dict().items() if k != "timing"} for r in RunDir(out).rows()]
    if rows[1] != rows[2]:
        raise SystemExit("--workers 2 wrote other rows than one process: it must not")
    print(f"evaluation ({len(rows[1])} rows: {BATTERY} on world:harmful --limit {limit}, {new} tokens, oracle and "
          f"keyword judges, report): one process ({torch.get_num_threads()} threads) {times[1]:.1f} s, --workers 2 "
          f"{times[2]:.1f} s; same rows")
    print(f"ratio workers 2/one process = {times[2] / times[1]:.3f}x wall time")


def batch_section(world: Path, model_dir: Path, items: int, new: int) -> None:
    """The study's evaluations in batches of 64 (before) and of 128 (now: the world's 120
    items in one batch), both with --workers 2; the rows must be equal."""
    from deepalign.evaluation.runner import run_eval
    from deepalign.runs.rundir import RunDir
    from deepalign.utils import no_weight_bars

    times, rows = {64: [], 128: []}, {}
    for rep in range(2):  # interleaved
        for batch in (64, 128):
            out = world.parent / f"batch-{batch}-{rep}"
            t0 = time.perf_counter()
            with no_weight_bars():
                run_eval(targets=[f"hf:{model_dir}"], attacks=BATTERY, datasets=["world:harmful"], world=str(world),
                         limit=items, judges=["oracle"], out_dir=str(out), batch_size=batch, quiet=True,
                         max_new_tokens=new, allow_unknown_tokens=True, workers=2)
            times[batch].append(time.perf_counter() - t0)
            rows[batch] = [{k: v for k, v in r.to_dict().items() if k != "timing"} for r in RunDir(out).rows()]
    if rows[64] != rows[128]:
        raise SystemExit("batches of 128 wrote other rows than batches of 64: they must not")
    best = {b: min(t) for b, t in times.items()}
    print(f"evaluation in batches ({len(rows[64])} rows: {BATTERY} on {items} harmful queries, {new} tokens, "
          f"--workers 2, best of 2): 64 {best[64]:.1f} s, 128 {best[128]:.1f} s; same rows")
    print(f"ratio batches of 128/64 = {best[128] / best[64]:.3f}x wall time")


def train_section(world: Path, model_dir: Path, steps: int) -> None:
    """The study's four record recipes trained one after another in this process (as before)
    and side by side in two forked one-thread processes (deepalign.study.jobs, as now)."""
    from deepalign.data.recipes import RTO_RECIPES
    from deepalign.study import WORLD_RTO_KEEP, WORLD_SAFETY_RATIO
    from deepalign.study.jobs import Job, run_jobs
    from deepalign.training.finetune import train
    from deepalign.utils import no_weight_bars

    recipes = ("vanilla", "harmful-prefix", "rto", "derta")

    def job(recipe: str, out: Path) -> Job:  # the study's mixture (_Study.mixture)
        extra = {"rto_keep": WORLD_RTO_KEEP} if recipe in RTO_RECIPES else {}
        return Job(f"train {recipe}", lambda: (out / "config.json").exists(), lambda: train(
            recipe=recipe, model_name_or_path=str(model_dir), output_dir=str(out), world=str(world), seed=0,
            max_steps=steps, quiet=True, safety_ratio=WORLD_SAFETY_RATIO, padding_free=True, **extra))

    times = {}
    with no_weight_bars():
        t0 = time.perf_counter()
        for recipe in recipes:
            job(recipe, world.parent / "one" / recipe).fn()
        times["one"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_jobs([job(r, world.parent / "two" / r) for r in recipes], 2, world.parent / "logs", say=lambda _: None)
        times["two"] = time.perf_counter() - t0
    for r in recipes:
        if not (world.parent / "two" / r / "config.json").exists():
            raise SystemExit(f"the side-by-side run made no {r} model")
    print(f"trainings ({', '.join(recipes)}, {steps} steps each, the study's mixture): one after another in this "
          f"process ({torch.get_num_threads()} threads) {times['one']:.1f} s, two at a time in one-thread processes "
          f"{times['two']:.1f} s")
    print(f"ratio side by side/one after another = {times['two'] / times['one']:.3f}x wall time")


def stage_section(study: Path, run: bool) -> None:
    if run:
        subprocess.run([sys.executable, "-m", "deepalign", "study", "--out", str(study), "--quiet"], check=True)
    path = study / "timing.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: give the --out of a finished study, or --run-study")
    saved = json.loads(path.read_text())
    if "stages_s" not in saved:  # a study from before the trainings ran side by side
        saved = {"stages_s": saved}
    times, parallel = saved["stages_s"], set(saved.get("parallel", []))
    # the trainings that ran side by side overlap: their wall time is the group's own row
    total = sum(s for name, s in times.items() if name not in parallel)
    width = max(len(k) for k in times) + 2
    print(f"main job's stages ({path}; || ran side by side in one-thread processes, inside the 'trainings' row):")
    for name, s in times.items():
        label = f"|| {name}" if name in parallel else name
        share = "" if name in parallel else f"  {100 * s / total:4.1f}%"
        print(f"  {label:<{width}}  {s:6.1f} s{share}")
    print(f"  {'total':<{width}}  {total:6.1f} s ({total / 60:.1f} min)")
    later = sum(s for name, s in times.items() if name not in parallel and _later_stage(name))
    print(f"  {'without the adaptive and defence evaluations':<{width}}  {total - later:6.1f} s "
          f"({(total - later) / 60:.1f} min)")
    print(f"ratio main job/8 minutes = {total / 480:.3f}x")
    print(f"ratio main job without the adaptive and defence evaluations/6 minutes = {(total - later) / 360:.3f}x")


def _later_stage(name: str) -> bool:
    """The evaluations of the stages the main job's 6 minutes came before (adaptive attacks,
    defences); their trainings run inside the trainings row."""
    from deepalign.study.report import LATER_EVALUATIONS

    return name in LATER_EVALUATIONS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--limit", type=int, default=48, help="harmful test queries of the evaluation section")
    ap.add_argument("--study", type=Path, help="a study's --out: print its stage times")
    ap.add_argument("--run-study", action="store_true", help="run the study into --study first")
    ap.add_argument("--smoke", action="store_true", help="8 rows, 8 tokens, 1 rep, no study (CI)")
    args = ap.parse_args()
    items, steps = 120, 40  # the study's held-out harmful queries; steps per training
    if args.smoke:
        args.batch, args.new_tokens, args.reps, args.limit, args.study = 8, 8, 1, 4, None
        items, steps = 6, 2
    from deepalign.world.tiny import random_model, small_world

    tmp = Path(tempfile.mkdtemp(prefix="bench_study."))
    try:
        world = small_world(tmp / "world", max(args.limit, items, 2), n_pretrain=500)
        model = random_model(world, tmp / "model", **SHAPE)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
        decode_section(world, model, args.batch, args.new_tokens, args.reps)
        eval_section(world, model, args.limit, args.new_tokens)
        batch_section(world, model, items, args.new_tokens)
        train_section(world, model, steps)
        if args.study is not None:
            stage_section(args.study, args.run_study)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
