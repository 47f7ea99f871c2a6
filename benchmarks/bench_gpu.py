"""GPU benchmark at real shapes, bf16: loss memory, training step time, ED tokens/s and
evaluation (generation) throughput, each against its alternative measured in the same run.

    python benchmarks/bench_gpu.py                      # all sections; sized for well under 10 min on one H100 (not yet run)
    python benchmarks/bench_gpu.py --sections loss step --json gpu.json
    python benchmarks/bench_gpu.py --plan               # print the shapes and exit (no GPU needed)
    python benchmarks/bench_gpu.py --smoke              # toy shapes, seconds; on CPU in float32 without CUDA

Needs one CUDA GPU (about 40 GB free for the default shapes) plus the benchmark
dependencies of the CPU scripts (TRL for the loss and step sections). Without CUDA it stops
with a one-line error (exit status 2), except with ``--smoke``: toy shapes (a LLaMA of hidden
64, 2 layers, vocabulary 8000; 4 queries x 4 tokens; one rep of everything), the same code and
lines, on the GPU in bf16 where there is one, else on CPU in float32 (peak RSS for the loss
memory, glibc's mmap threshold fixed at 64 KiB as in ``bench_loss.py``) and without the
``dist`` section, which needs GPU processes. It checks that the script runs (CI runs it,
``benchmarks/smoke.py``): the losses must still agree, the speed and memory floors are not
judged, and its numbers say nothing about a GPU. Models are random-init LLaMA configurations at the
shapes of Llama-3.2-1B (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192, vocabulary
128256, tied embeddings), weights in bf16, ``bf16=True`` in the trainers.

Sections (see the CPU benchmarks for the method of each):

* ``loss``: peak memory above the inputs (``torch.cuda.max_memory_allocated``) and time of
  one forward + backward of the loss on the model's head, hidden 2048 and 4096 x vocab
  128256 x 8 x 2048 tokens (7/8 labelled), full fine-tuning and frozen head:
  transformers' full-logits loss (``hf``), TRL ``SFTTrainer.compute_loss`` (its fused head;
  with Triton it scores only labelled positions) and ``DeRTaTrainer.compute_loss``
  (``ours``), as in ``bench_loss.py``. ``work`` = peak minus the gradients the step leaves.
* ``step``: one optimizer step of ``DeRTaTrainer`` vs TRL ``SFTTrainer`` on the 1B model,
  batch 8 x 1024 DeRTa-shaped (``bench_step.py``), same labels, AdamW, bf16, no gradient
  checkpointing; medians of alternating steps. Floor DeRTa <= 1.05x TRL.
* ``ed``: Emulated Disalignment (``ComposedTarget``, two 1B models) on 64 queries x 128 new
  tokens vs the limit loop of two cached forwards per step (``bench_ed.py``). Floor 0.9x.
* ``eval``: ``HFTarget.generate`` vs plain ``model.generate`` on the same 64-query batch,
  128 new tokens, sampling at temperature 0.7 (tokens/s). Floor 0.9x.
* ``dist``: the shipped multi-process configs, which CPU processes cannot check (accelerate
  applies FSDP only to GPU processes): DeRTa training, 2 steps, on a small world model under
  ``accelerate launch --config_file src/deepalign/configs/fsdp.yaml`` (and the two DeepSpeed
  configs where DeepSpeed is installed) on every GPU, against one process on the same global
  batch. Floor: the same loss at each step (relative 1e-2) and the same weights (1e-3).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SECTIONS = ("loss", "step", "ed", "eval", "dist")
MIB = 2**20
# Llama-3.2-1B shapes
MODEL_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                max_position_embeddings=4096)
# --smoke: the same architecture (GQA, tied embeddings) at a toy size
MODEL_SMOKE = dict(MODEL_1B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=8000, max_position_embeddings=512)
SMOKE_ARGS = dict(loss_hidden=[64], loss_tokens="2x128", step_tokens="4x256", step_reps=1, queries=4, new_tokens=4,
                  repeats=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_gpu.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--loss-hidden", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--loss-tokens", default="8x2048", help="BATCHxTOKENS for the loss section")
    p.add_argument("--step-tokens", default="8x1024", help="BATCHxTOKENS for the step section")
    p.add_argument("--step-reps", type=int, default=5)
    p.add_argument("--queries", type=int, default=64, help="ED and eval batch")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="ED and eval: best of")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--plan", action="store_true", help="print the sections and shapes, then exit")
    p.add_argument("--smoke", action="store_true",
                   help="toy shapes, one rep (CI): checks that the script runs; on CPU in float32 without CUDA; "
                        "floors not judged")
    a = p.parse_args(argv)
    a.model, a.size = MODEL_1B, "1B"
    if a.smoke:
        vars(a).update(SMOKE_ARGS)
        a.model, a.size = MODEL_SMOKE, "toy"
    for name in ("loss_tokens", "step_tokens"):
        b, sep, t = getattr(a, name).partition("x")
        if not (sep and b.isdigit() and t.isdigit() and int(b) > 0 and int(t) > 1):
            p.error(f"--{name.replace('_', '-')} must look like 8x2048, got {getattr(a, name)!r}")
        setattr(a, name, (int(b), int(t)))
    for name in ("step_reps", "queries", "new_tokens", "repeats"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return a


def plan(a: argparse.Namespace) -> list[str]:
    lines = []
    if "loss" in a.sections:
        lines.append(f"loss: hidden {a.loss_hidden} x vocab {a.model['vocab_size']} x {a.loss_tokens[0]}x"
                     f"{a.loss_tokens[1]} tokens, full and frozen head, methods hf / trl / ours")
    if "step" in a.sections:
        lines.append(f"step: {a.size} LLaMA, batch {a.step_tokens[0]}x{a.step_tokens[1]}, {a.step_reps} alternating reps, "
                     "DeRTaTrainer vs SFTTrainer")
    if "ed" in a.sections:
        lines.append(f"ed: two {a.size} models, {a.queries} queries x {a.new_tokens} tokens, best of {a.repeats}, "
                     "ComposedTarget vs two cached forwards per step")
    if "eval" in a.sections:
        lines.append(f"eval: one {a.size} model, {a.queries} queries x {a.new_tokens} tokens, best of {a.repeats}, "
                     "HFTarget vs model.generate")
    if "dist" in a.sections:
        lines.append("dist: world model (hidden 256, 4 layers), DeRTa 2 steps, accelerate launch with fsdp.yaml "
                     "(+ deepspeed_zero2/3.yaml with DeepSpeed) on every GPU vs one process"
                     + (" (skipped without CUDA)" if a.smoke else ""))
    return lines


# -- sections ------------------------------------------------------------------------------


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _Memory:
    """Memory above a starting point: CUDA's allocated bytes, or on CPU (``--smoke`` without
    CUDA) the process's RSS with its high-water mark reset, as in ``bench_loss.py``."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, device == "cuda"

    def start(self) -> int:
        import bench_loss

        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        bench_loss._reset_peak()
        return bench_loss._status("VmRSS")

    def peak(self) -> int:
        import bench_loss

        return self.torch.cuda.max_memory_allocated() if self.cuda else bench_loss._status("VmHWM")

    def now(self) -> int:
        import bench_loss

        return self.torch.cuda.memory_allocated() if self.cuda else bench_loss._status("VmRSS")


def _dtype_name(a) -> str:
    return str(a.dtype).removeprefix("torch.").replace("bfloat16", "bf16")


def section_loss(a, out: dict) -> bool:
    import torch

    import bench_loss

    b, t = a.loss_tokens
    vocab = a.model["vocab_size"]
    dev, cuda = a.device, a.device == "cuda"
    memory = _Memory(dev)
    ok = True
    work_hf, work_trl = [], []
    print(f"loss: {_dtype_name(a)}, vocab {vocab}, {b}x{t} tokens; MiB above the inputs (work = peak - gradients left)")
    print(f"{'hidden':>6} {'mode':>4} | {'hf peak':>7} {'work':>6} {'s':>6} | {'trl peak':>8} {'work':>6} {'s':>6} | "
          f"{'ours peak':>9} {'work':>6} {'s':>6} | work/hf work/trl | loss eq")
    for hidden in a.loss_hidden:
        for mode in ("full", "lora"):
            res = {}
            for method in bench_loss.METHODS:
                model = bench_loss.head_model(hidden, vocab, frozen_head=(mode == "lora")).to(dev, a.dtype)
                fn = bench_loss.loss_fn(method, model, use_cpu=not cuda, bf16=cuda)
                g = torch.Generator().manual_seed(0)
                mle, rto = bench_loss.make_labels(b, t, vocab, g)
                embeds = torch.randn(b, t, hidden, generator=g).to(dev, a.dtype).requires_grad_()
                inputs = {"inputs_embeds": embeds, "attention_mask": torch.ones(b, t, dtype=torch.long, device=dev)}
                if method == "ours":
                    inputs.update(labels=mle.to(dev), rto_labels=rto.to(dev))
                else:
                    inputs["labels"] = torch.where(rto != -100, rto, mle).to(dev)
                for warm in (True, False):
                    model.zero_grad(set_to_none=True)
                    embeds.grad = None
                    gc.collect()
                    _sync()
                    before = memory.start()
                    t0 = time.perf_counter()
                    loss = fn(inputs)
                    loss.backward()
                    value = float(loss)
                    del loss
                    _sync()
                    seconds = time.perf_counter() - t0
                    if not warm:
                        peak = memory.peak() - before
                        kept = memory.now() - before
                        res[method] = {"peak": peak, "work": peak - kept, "seconds": seconds, "loss": value}
                del model, fn, inputs, embeds
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            hf, tr, us = res["hf"], res["trl"], res["ours"]
            tol = 2e-2 if a.dtype == torch.bfloat16 else 1e-5
            same = all(abs(r["loss"] - hf["loss"]) <= tol * abs(hf["loss"]) for r in res.values())
            w_hf, w_trl = bench_loss._ratio(us["work"], hf["work"]), bench_loss._ratio(us["work"], tr["work"])
            work_hf.append(w_hf)
            work_trl.append(w_trl)
            ok &= same and (a.smoke or (w_trl <= 1.0 and w_hf <= 0.5))
            print(f"{hidden:>6} {mode:>4} | {hf['peak'] / MIB:>7.0f} {hf['work'] / MIB:>6.0f} {hf['seconds']:>6.3f} | "
                  f"{tr['peak'] / MIB:>8.0f} {tr['work'] / MIB:>6.0f} {tr['seconds']:>6.3f} | "
                  f"{us['peak'] / MIB:>9.0f} {us['work'] / MIB:>6.0f} {us['seconds']:>6.3f} | "
                  f"{w_hf:>7.3f} {w_trl:>8.3f} | {same}", flush=True)
            out.setdefault("loss", []).append({"hidden": hidden, "mode": mode, **{k: v for k, v in res.items()}})
    for name, values, floor in (("hf", work_hf, 0.5), ("trl", work_trl, 1.0)):
        finite = [v for v in values if v == v]
        span = f"{min(finite):.3f}x - {max(finite):.3f}x" if finite else "n/a (nothing measurable at these shapes)"
        print(f"loss: ratio work ours/{name}: {span} (floor {floor}x{', not judged (--smoke)' if a.smoke else ''})")
    return ok


def section_step(a, out: dict) -> bool:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import bench_step

    b, t = a.step_tokens
    cuda = a.device == "cuda"
    torch.manual_seed(0)
    with torch.device(a.device):
        model_d = LlamaForCausalLM(LlamaConfig(**a.model, pad_token_id=0)).to(a.dtype)
    model_t = copy.deepcopy(model_d)
    common = dict(output_dir="/tmp/deepalign-bench-gpu", report_to="none", disable_tqdm=True, learning_rate=1e-5,
                  bf16=cuda, use_cpu=not cuda, gradient_checkpointing=False, save_strategy="no")
    derta, sft = bench_step.make_trainers(model_d, model_t, bench_step.tokenizer(), common)
    batch_d, batch_t = bench_step.make_batch(a.model["vocab_size"], b, t, device=a.device)
    t_d, t_t, loss_d, loss_t = bench_step.time_steps(derta, sft, batch_d, batch_t, a.step_reps, sync=_sync)
    md, mt = statistics.median(t_d), statistics.median(t_t)
    same = abs(loss_d - loss_t) <= (2e-2 if a.dtype == torch.bfloat16 else 1e-5) * abs(loss_t)
    tokens = b * t
    memory = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "on CPU"
    print(f"step: {a.size} LLaMA {_dtype_name(a)}, batch {b}x{t}: TRL {mt:.3f}s ({tokens / mt:.0f} tok/s), DeRTa "
          f"{md:.3f}s ({tokens / md:.0f} tok/s), ratio {md / mt:.3f}x (floor 1.05x{', not judged' if a.smoke else ''}); "
          f"first-step loss TRL {loss_t:.4f} DeRTa {loss_d:.4f}; {memory}", flush=True)
    out["step"] = {"trl_s": t_t, "derta_s": t_d, "ratio": md / mt, "loss_trl": loss_t, "loss_derta": loss_d}
    del derta, sft, model_d, model_t
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return same and (a.smoke or md / mt <= 1.05)


def _best_of(repeats: int, fns: dict) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def _models(a, count: int):
    import torch

    import bench_ed

    spec = SimpleNamespace(vocab=a.model["vocab_size"], hidden=a.model["hidden_size"],
                           layers=a.model["num_hidden_layers"], queries=a.queries)
    tok, pair, requests = bench_ed.build(spec, device=a.device, dtype=a.dtype, **a.model)
    return tok, pair[:count], requests


def section_ed(a, out: dict) -> bool:
    import torch

    import bench_ed
    from deepalign.decoding.base import GenConfig
    from deepalign.decoding.presets import ed

    tok, (base, aligned), requests = _models(a, 2)
    target = ed((base, tok), (aligned, tok), 0.3, base_format=bench_ed.TEMPLATE, aligned_format="chat",
                batch_size=len(requests))
    cfg = GenConfig(max_new_tokens=a.new_tokens, do_sample=True, temperature=0.7, suppress_eos=True)
    prompts = [[c.ids(r)[0] for r in requests] for c in target.components]
    fns = {"ED": lambda: target.generate(requests, cfg),
           "limit": lambda: bench_ed.limit_loop([(c.model, pr) for c, pr in zip(target.components, prompts)],
                                                a.new_tokens, tok.pad_token_id)}
    with torch.inference_mode():
        for fn in fns.values():
            fn()  # warm-up
        best = _best_of(a.repeats, fns)
    n = len(requests) * a.new_tokens
    ratio = best["limit"] / best["ED"]
    print(f"ed: two {a.size} models {_dtype_name(a)}, {len(requests)} queries x {a.new_tokens} tokens: ED "
          f"{n / best['ED']:.0f} tok/s, limit {n / best['limit']:.0f} tok/s, ratio {ratio:.3f}x "
          f"(floor 0.9x{', not judged' if a.smoke else ''})", flush=True)
    out["ed"] = {"ed_tok_s": n / best["ED"], "limit_tok_s": n / best["limit"], "ratio": ratio}
    del target, base, aligned
    gc.collect()
    if a.device == "cuda":
        torch.cuda.empty_cache()
    return a.smoke or ratio >= 0.9


def section_eval(a, out: dict) -> bool:
    import torch

    from deepalign.decoding.base import GenConfig
    from deepalign.decoding.hf import HFTarget, left_pad

    tok, (model,), requests = _models(a, 1)
    target = HFTarget(model, tok, prompt_format="chat", batch_size=len(requests))
    cfg = GenConfig(max_new_tokens=a.new_tokens, do_sample=True, temperature=0.7, suppress_eos=True)
    # the ids HFTarget.generate itself builds (its PromptIds: chat template, no truncation)
    ids, mask = left_pad([target.ids(r, a.new_tokens)[0] for r in requests], tok.pad_token_id, a.device)
    fns = {"HFTarget": lambda: target.generate(requests, cfg),
           "generate": lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.new_tokens,
                                              do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                                              suppress_tokens=[tok.eos_token_id], pad_token_id=tok.pad_token_id)}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        best = _best_of(a.repeats, fns)
    n = len(requests) * a.new_tokens
    ratio = best["generate"] / best["HFTarget"]
    print(f"eval: {a.size} model {_dtype_name(a)}, {len(requests)} queries x {a.new_tokens} tokens: HFTarget "
          f"{n / best['HFTarget']:.0f} tok/s, generate {n / best['generate']:.0f} tok/s, ratio {ratio:.3f}x "
          f"(floor 0.9x{', not judged' if a.smoke else ''})", flush=True)
    out["eval"] = {"hftarget_tok_s": n / best["HFTarget"], "generate_tok_s": n / best["generate"], "ratio": ratio}
    return a.smoke or ratio >= 0.9


def _train(cmd: list[str], out: Path) -> tuple[list[float], dict]:
    """Run one ``deepalign train`` command; its loss per step and its weights."""
    import subprocess

    from safetensors.torch import load_file

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    info = json.loads((out / "deepalign_train.json").read_text())
    return [h["loss"] for h in info["loss_curve"] if "loss" in h], load_file(str(out / "model.safetensors"))


def section_dist(a, out: dict) -> bool:
    import importlib.util
    import tempfile
    from pathlib import Path

    import torch

    from deepalign.training.pretrain import pretrain
    from deepalign.world.generator import build_world

    if a.device != "cuda":
        print("dist: skipped: no CUDA device (accelerate applies FSDP only to GPU processes; --smoke on CPU runs "
              "the other sections only)", flush=True)
        return True
    tmp = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    build_world(out=str(tmp / "world"), seed=0, quiet=True)
    base = pretrain(world=str(tmp / "world"), out=str(tmp / "base"), quiet=True, hidden_size=256, num_layers=4,
                    num_heads=4, intermediate_size=512, max_steps=1)
    n = torch.cuda.device_count()
    common = ["train", "--recipe", "derta", "--world", str(tmp / "world"), "--model", str(base), "--max-steps", "2",
              "--gradient_accumulation_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-3", "--quiet"]
    ref_loss, ref = _train([sys.executable, "-m", "deepalign", *common, "--per_device_train_batch_size", str(4 * n),
                            "--out", str(tmp / "one")], tmp / "one")
    configs = ["fsdp"] + (["deepspeed_zero2", "deepspeed_zero3"] if importlib.util.find_spec("deepspeed") else [])
    root = Path(__file__).resolve().parents[1] / "src" / "deepalign" / "configs"
    ok, out["dist"] = True, {"processes": n, "reference_loss": ref_loss}
    for name in configs:
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(root / f"{name}.yaml"),
               "--num_processes", str(n), "--main_process_port", "0", "-m", "deepalign", *common,
               "--per_device_train_batch_size", "4", "--out", str(tmp / name)]
        loss, weights = _train(cmd, tmp / name)
        diff = max((weights[k].float() - ref[k].float()).abs().max().item() for k in ref)
        same = len(loss) == len(ref_loss) and all(abs(x - y) <= 1e-2 * abs(y) for x, y in zip(loss, ref_loss))
        ok &= same and diff <= 1e-3
        print(f"dist: {name} on {n} GPU process(es): loss {loss} vs one process {ref_loss}, max weight difference "
              f"{diff:.2e} ({'PASS' if same and diff <= 1e-3 else 'FAIL'})", flush=True)
        out["dist"][name] = {"loss": loss, "max_weight_diff": diff}
    return ok


def _fix_mmap_threshold() -> None:
    """glibc serves every allocation of 64 KiB or more with its own mmap and unmaps it on free,
    so RSS follows live tensors (what bench_loss.py gets from MALLOC_MMAP_THRESHOLD_)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: the CPU memory numbers are rougher, nothing else changes


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.plan:
        print("\n".join(plan(a)))
        return 0
    import torch

    if not torch.cuda.is_available() and not a.smoke:
        print("bench_gpu.py: error: no CUDA device (torch.cuda.is_available() is False); run it on a machine "
              "with an NVIDIA GPU", file=sys.stderr)
        return 2
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if torch.cuda.is_available():
        a.device, a.dtype = "cuda", torch.bfloat16
        device = torch.cuda.get_device_name(0)
        print(f"device: {device}; torch {torch.__version__}, CUDA {torch.version.cuda}"
              + ("; --smoke: toy shapes, floors not judged" if a.smoke else ""))
    else:
        a.device, a.dtype = "cpu", torch.float32
        device = "cpu"
        _fix_mmap_threshold()
        print(f"device: cpu (no CUDA device); torch {torch.__version__}; --smoke: toy shapes in float32 on CPU, to "
              "check that the script runs: floors not judged, numbers say nothing about a GPU")
    out: dict = {"device": device, "torch": torch.__version__}
    started = time.perf_counter()
    ok = True
    for name in a.sections:
        ok &= {"loss": section_loss, "step": section_step, "ed": section_ed, "eval": section_eval,
               "dist": section_dist}[name](a, out)
    out["seconds"] = time.perf_counter() - started
    print(f"floors: {'PASS' if ok else 'FAIL'}; {out['seconds']:.0f}s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
