"""Step time and peak memory of the token-wise constrained objective against plain SFT, side by
side on the same model and batch, plus the one-time cost of its reference pass.

    .venv/bin/python benchmarks/bench_constrained.py                 # vocab 32000 and 128256
    .venv/bin/python benchmarks/bench_constrained.py --vocab 32000 --reps 5
    .venv/bin/python benchmarks/bench_constrained.py --smoke   # toy shapes, seconds (CI: benchmarks/smoke.py)

Model: a random-init LLaMA, hidden 512, 4 layers, 8 heads, MLP 1408, untied head, with a real
vocabulary size (Llama-2's 32000, Llama-3's 128256), fp32 on CPU (a CUDA device when there is
one). Batch: 4 sequences of 256 tokens, a 64-token prompt and a 192-token response each.

* ``sft``: :class:`~deepalign.training.trainer.DeRTaTrainer` on the response labels (the
  ``sft`` recipe's plain objective);
* ``constrained``: :class:`~deepalign.training.constrained.ConstrainedTrainer` on the same
  labels, the reference log-probs of the batch already computed (as in training: one pass
  over the data before the first step).

Both run ``training_step`` + ``optimizer.step()`` + ``zero_grad`` with their stock AdamW; the
kinds alternate (A B A B ...) after a warm-up step of each, whose losses (from the same initial
weights, where every token weight is 1) must agree to 1e-4; medians are compared. Memory:
``MALLOC_MMAP_THRESHOLD_`` at 64 KiB (so RSS follows live tensors; the script re-executes
itself with it), the peak-RSS mark reset before each step (``/proc/self/clear_refs``) and
``VmHWM`` read after it, minus the RSS before the step: the step's own peak (on a GPU,
``torch.cuda.max_memory_allocated`` above the allocated memory before the step). The
reference pass is timed as the pass ``ConstrainedTrainer`` runs before training (no grad, the
same tiled label-only log-probs), per record, as a ratio to an SFT step per record.

``--smoke``: hidden 64, 2 layers, vocab 1000, batch 4 x 64 (prompt 16), one timed step of
each: the same code and lines in seconds; the first-step losses must still agree.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings

B, T, PROMPT = 4, 256, 64
HIDDEN, LAYERS, HEADS, MLP = 512, 4, 8, 1408
SMOKE = dict(B=4, T=64, PROMPT=16, HIDDEN=64, LAYERS=2, HEADS=4, MLP=128)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class Meter:
    """Peak memory of one step above what was there before it (CPU: RSS, GPU: allocated)."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def start(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        return _status("VmRSS")

    def peak(self, before: int) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated() - before
        return _status("VmHWM") - before


def features(vocab: int):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (B, T), generator=g)
    return [{"input_ids": ids[i].tolist(), "rto_start": PROMPT, "mle_start": PROMPT, "key": f"r{i}", "kind": "sft"}
            for i in range(B)]


def trainers(vocab: int, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench_step import tokenizer
    from deepalign.training.collator import FeatureDataset
    from deepalign.training.constrained import ConstrainedTrainer
    from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=T,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    common = dict(output_dir="/tmp/bench-constrained", report_to="none", disable_tqdm=True, use_cpu=device.type != "cuda",
                  bf16=False, learning_rate=1e-4, per_device_train_batch_size=B, save_strategy="no")
    tok = tokenizer()
    sft = DeRTaTrainer(copy.deepcopy(model), DeRTaConfig(**common), train_dataset=FeatureDataset(features(vocab)),
                       processing_class=tok)
    constrained = ConstrainedTrainer(model, DeRTaConfig(**common), train_dataset=FeatureDataset(features(vocab)),
                                     processing_class=tok)
    for tr in (sft, constrained):
        tr.create_optimizer_and_scheduler(num_training_steps=100)
    return sft, constrained


def measure(vocab: int, reps: int, device) -> dict:
    sft, con = trainers(vocab, device)
    meter = Meter(device)
    batches = {id(sft): sft.data_collator(sft.train_dataset.features),
               id(con): con.data_collator(con.train_dataset.features)}
    batches = {k: {n: v.to(device) for n, v in b.items()} for k, b in batches.items()}

    def step(tr):
        inputs = batches[id(tr)]
        n = tr._get_num_items_in_batch([inputs], device)
        tr.current_gradient_accumulation_steps = 1
        before = meter.start()
        t0 = time.perf_counter()
        loss = float(tr.training_step(tr.model, dict(inputs), n))
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        if meter.cuda:
            meter.torch.cuda.synchronize()
        return time.perf_counter() - t0, meter.peak(before), loss

    _, _, loss_s = step(sft)
    _, _, loss_c = step(con)
    out = {"sft": ([], []), "constrained": ([], [])}
    for _ in range(reps):
        for name, tr in (("sft", sft), ("constrained", con)):
            seconds, peak, _ = step(tr)
            out[name][0].append(seconds)
            out[name][1].append(peak)
    t0 = time.perf_counter()
    con._compute_reference(con.train_dataset.features, None)  # the pass that runs once before training
    ref_pass = time.perf_counter() - t0
    return {"loss_sft": loss_s, "loss_constrained": loss_c, "ref_pass": ref_pass,
            **{f"{k}_{m}": statistics.median(v[i]) for k, v in out.items() for i, m in enumerate(("s", "peak"))}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="toy shapes, vocab 1000, one timed step (CI)")
    a = p.parse_args()
    if a.smoke:  # the module's shape constants, read by features() and trainers()
        globals().update(SMOKE)
        a.vocab, a.reps = [1000], 1
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":  # RSS must follow live tensors
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    warnings.filterwarnings("ignore")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"constrained objective vs plain SFT: LLaMA hidden {HIDDEN}, {LAYERS} layers, batch {B}x{T} "
          f"({T - PROMPT} response tokens per row), fp32, {device.type}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {a.reps} alternating steps")
    ok = True
    for vocab in a.vocab:
        r = measure(vocab, a.reps, device)
        same = abs(r["loss_sft"] - r["loss_constrained"]) <= 1e-4 * max(1.0, abs(r["loss_sft"]))
        ok &= same
        peak = r["constrained_peak"] / r["sft_peak"] if r["sft_peak"] > 0 else float("nan")  # 0: too small for RSS
        print(f"vocab {vocab:>6}: step {r['sft_s']:.3f} s sft, {r['constrained_s']:.3f} s constrained: ratio "
              f"{r['constrained_s'] / r['sft_s']:.3f}x; peak {r['sft_peak'] / 2**20:.0f} MiB sft, "
              f"{r['constrained_peak'] / 2**20:.0f} MiB constrained: ratio {peak:.3f}x; "
              f"reference pass over the batch's records (once per run) {r['ref_pass'] / r['sft_s']:.3f}x an sft step; first-step losses "
              f"{r['loss_sft']:.5f} / {r['loss_constrained']:.5f} ({'equal' if same else 'DIFFER'})", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
