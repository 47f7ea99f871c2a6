"""Peak memory of the DeRTa loss against the loss paths a user would otherwise run, over a
grid of real shapes, each measured side by side in the same run.

    .venv/bin/python benchmarks/bench_loss.py            # the whole grid (about 20 min on 2 shared cores)
    .venv/bin/python benchmarks/bench_loss.py --quick    # hidden 256 and 2048, 4 x 256 tokens (about 4 min)
    .venv/bin/python benchmarks/bench_loss.py --hidden 2048 --vocab 128256 --tokens 4x256 --modes full
    .venv/bin/python benchmarks/bench_loss.py --smoke    # hidden 128, vocab 8000, 2 x 128 tokens (CI, seconds)

Grid: hidden {256, 2048, 4096} x vocab {32000, 128256} (Llama-2 and Llama-3) x (batch x
tokens) {4 x 256, 1 x 2048} x {full fine-tuning, LoRA (frozen head)}. Labels: the first
1/8 of every sequence is prompt; with 4 rows, rows 0-2 carry MLE labels and row 3 RTO labels
(all kept, the LoRA setting); with 1 row, the first half of the response carries RTO labels
and the second half MLE labels. 7/8 of the positions are labelled: close to the worst case
for a loss that only skips unlabelled rows.

The model is a LLaMA with no decoder layer: final RMSNorm + untied output head (fp32), fed
random hidden states through ``inputs_embeds`` (they require grad: they stand for the
decoder). Every method runs on the same model, the same inputs and the same (position,
target) pairs; the RTO targets are written into ``labels`` for the methods without an RTO
channel, as the reference implementation does. Methods:

* ``hf``: ``model(..., labels=labels).loss``, transformers' ``ForCausalLMLoss`` over the full
  fp32 logits. It is what ``transformers.Trainer`` runs, and what TRL's ``SFTTrainer`` falls
  back to with ``label_smoothing_factor`` or ``compute_loss_func``: the full-logits floor.
* ``trl``: ``SFTTrainer.compute_loss`` of TRL 1.16 with its defaults (``loss_type="nll"``):
  the model's forward patched by ``add_fused_lm_head`` (``ChunkedLogProbFunction``: 32768
  vocabulary columns x 4096 tokens per tile, log-probs recomputed in backward, entropy and
  top-1 accuracy for its logs). Without Triton (CPU) it scores every position, not only the
  labelled ones. Its other options are not measurable here: ``use_liger_kernel`` (Liger's
  Triton kernels, GPU only; TRL 1.16 also turns Liger's fused cross-entropy off since it
  would replace the patched forward), Hub kernels (``use_kernels``: download + GPU),
  ``loss_type="dft"`` (another objective).
* ``ours``: ``DeRTaTrainer.compute_loss`` (label rows only, tiled, fused gradients).

Memory. Each (point, method) runs in a fresh process (forked from a server that imported
the libraries once) with ``MALLOC_MMAP_THRESHOLD_`` at 64 KiB (glibc serves every large tensor with its own mmap and returns it on free, so RSS
follows live tensors). After the inputs exist, the peak-RSS mark is reset
(``/proc/self/clear_refs``), one forward + backward runs, and we read ``VmHWM`` (peak) and
``VmRSS`` (what the step leaves behind: the gradients of the head and of the hidden
states, the same size for every method). ``peak`` is the high-water mark above the
inputs; ``work`` = peak minus what stays, the memory the loss itself needs on top of the
gradients every method must return. Floors (at every point): ``work`` <= 0.5x ``hf`` at
128K vocabularies, ``work`` <= ``trl``, losses equal to 1e-5. The ``peak`` ratios are
printed too: with a full-fine-tuning head the fp32 weight gradient (V x H x 4 bytes, 2 GiB
at hidden 4096 x 128K) is in every method's peak, so they tend to 1 as the hidden size grows.

No gradient work without grad: ``ours`` then also runs under ``torch.no_grad()`` (an
evaluation loss of a trainable model) with ``FlopCounterMode``; its matmul FLOPs must equal
one forward projection of the labelled rows (2 N H V), with no weight-sized buffer.

Time: wall time of the single measured step (``--reps`` for medians), printed as a ratio,
with no floor here (``bench_step.py`` has the step-time floor).

``--smoke`` (what CI runs, benchmarks/smoke.py): one toy point in both modes, the same code
paths and lines; the memory floor is not judged at a toy shape, the losses and the FLOP check
still are.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

GRID_HIDDEN = (256, 2048, 4096)
GRID_VOCAB = (32000, 128256)
GRID_TOKENS = ((4, 256), (1, 2048))
MODES = ("full", "lora")
METHODS = ("hf", "trl", "ours")
MIB = 2**20


# -- the measured child ------------------------------------------------------------------


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def make_labels(b: int, t: int, vocab: int, g):
    import torch

    labels = torch.full((b, t), -100)
    rto = torch.full((b, t), -100)
    start = t // 8
    refusal = 7
    if b > 1:
        labels[: b - 1, start:] = torch.randint(0, vocab, (b - 1, t - start), generator=g)
        rto[b - 1, start:] = refusal
    else:
        mid = (start + t) // 2
        rto[0, start:mid] = refusal
        labels[0, mid:] = torch.randint(0, vocab, (t - mid,), generator=g)
    return labels, rto


def head_model(hidden: int, vocab: int, frozen_head: bool):
    import torch
    from torch import nn
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=0,
                      num_attention_heads=max(1, hidden // 128), num_key_value_heads=max(1, hidden // 128),
                      max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    # a real head and norm; the (unused) input embedding is a stub: hidden states come in as inputs_embeds
    model.model.embed_tokens = nn.Embedding(2, hidden)
    model.model.norm = LlamaRMSNorm(hidden, eps=cfg.rms_norm_eps)
    model.model.rotary_emb = LlamaRotaryEmbedding(config=cfg)
    model.lm_head = nn.Linear(hidden, vocab, bias=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.02, generator=g)
    for p in model.parameters():
        p.requires_grad_(not frozen_head)
    return model.train()


class _Tok:
    """What DeRTaTrainer needs of a tokenizer here."""

    pad_token_id = 0
    eos_token_id = 0

    def save_pretrained(self, *a, **k):
        pass


def _trl_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "a": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="a")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="a")


def loss_fn(method: str, model, **overrides):
    """``fn(inputs) -> loss tensor`` for one method (trainers are built here, before measuring;
    ``overrides`` change their arguments, e.g. ``use_cpu=False, bf16=True`` on a GPU)."""
    common = dict(output_dir="/tmp/deepalign-bench-loss", report_to="none", use_cpu=True, disable_tqdm=True,
                  save_strategy="no", bf16=False)
    common.update(overrides)
    if method == "hf":
        return lambda inputs: model(**inputs).loss
    if method == "ours":
        from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer

        trainer = DeRTaTrainer(model, DeRTaConfig(rto_keep=1.0, **common), train_dataset=[0],
                               processing_class=_Tok(), refusal_token_id=7)
    elif method == "trl":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(gradient_checkpointing=False, dataset_kwargs={"skip_prepare_dataset": True}, **common)
        trainer = SFTTrainer(model, args, train_dataset=Dataset.from_dict({"input_ids": [[2, 2]]}),
                             processing_class=_trl_tokenizer())
    else:
        raise ValueError(method)
    return lambda inputs: trainer.compute_loss(model, dict(inputs))


def _child(method: str, hidden: int, vocab: int, b: int, t: int, mode: str, reps: int) -> dict:
    import gc

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = head_model(hidden, vocab, frozen_head=(mode == "lora"))
    fn = loss_fn(method, model)
    g = torch.Generator().manual_seed(0)
    mle, rto = make_labels(b, t, vocab, g)
    merged = torch.where(rto != -100, rto, mle)
    embeds = torch.randn(b, t, hidden, generator=g).requires_grad_()
    inputs = {"inputs_embeds": embeds, "attention_mask": torch.ones(b, t, dtype=torch.long)}
    # the same (position, target) pairs: DeRTa's separate RTO channel, or written into the labels
    inputs.update({"labels": mle, "rto_labels": rto} if method == "ours" else {"labels": merged})

    def step() -> float:
        loss = fn(inputs)
        loss.backward()
        return float(loss)

    gc.collect()
    before = _status("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    loss = step()
    seconds = [time.perf_counter() - t0]
    peak = _status("VmHWM") - before
    kept = _status("VmRSS") - before
    for _ in range(reps - 1):
        model.zero_grad(set_to_none=True)
        embeds.grad = None
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    out = {"peak": peak, "kept": kept, "work": peak - kept, "seconds": statistics.median(seconds), "loss": loss}
    if method == "ours":
        from torch.utils.flop_counter import FlopCounterMode

        model.zero_grad(set_to_none=True)
        embeds.grad = None
        n = int((mle[:, 1:] != -100).sum() + (rto[:, 1:] != -100).sum())
        gc.collect()
        before = _status("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            fn(inputs)
        out["eval_seconds"] = time.perf_counter() - t0
        out["eval_peak"] = _status("VmHWM") - before
        counts = fc.get_flop_counts().get("Global", {})
        head = sum(v for k, v in counts.items() if str(k).split(".")[-1] in ("mm", "addmm"))
        out["eval_head_flops"] = head
        out["eval_min_flops"] = 2 * n * hidden * vocab
    return out


# -- the driver ----------------------------------------------------------------------------


_PRELOAD = ["torch", "transformers", "transformers.models.llama.modeling_llama", "datasets", "trl",
            "deepalign.training.trainer"]


def _job(queue, *args) -> None:
    try:
        queue.put(("ok", _child(*args)))
    except BaseException:  # reported by the driver
        import traceback

        queue.put(("error", traceback.format_exc()[-3000:]))


def _runner():
    """``run(method, hidden, vocab, b, t, mode, reps) -> dict``: each call in a fresh process,
    forked from a server that imported torch, transformers and TRL once (imports cost more
    than the small points themselves)."""
    import multiprocessing as mp

    os.environ.update({"MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONWARNINGS": "ignore",
                       "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"})
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)

    def run(*args) -> dict:
        queue = ctx.Queue()
        proc = ctx.Process(target=_job, args=(queue, *args))
        proc.start()
        status, value = queue.get()
        proc.join()
        if status != "ok":
            raise RuntimeError(f"measurement {args} failed:\n{value}")
        return value

    return run


def _ratio(num: float, den: float) -> float:
    """``num / den``, NaN when nothing was measured (a shape too small for RSS to see)."""
    return num / den if den else float("nan")


def _parse_tokens(spec: str) -> tuple[int, int]:
    b, _, t = spec.partition("x")
    return int(b), int(t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, nargs="+", default=list(GRID_HIDDEN))
    p.add_argument("--vocab", type=int, nargs="+", default=list(GRID_VOCAB))
    p.add_argument("--tokens", nargs="+", default=[f"{b}x{t}" for b, t in GRID_TOKENS], help="BATCHxTOKENS")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--quick", action="store_true", help="hidden 256 and 2048, 4x256 tokens only")
    p.add_argument("--reps", type=int, default=1, help="timed steps per method and point (median)")
    p.add_argument("--smoke", action="store_true",
                   help="hidden 128, vocab 8000, 2x128 tokens, both modes: runs every path in seconds (CI); "
                        "memory floors not judged")
    a = p.parse_args()
    if a.quick:
        a.hidden, a.tokens = [256, 2048], ["4x256"]
    if a.smoke:
        a.hidden, a.vocab, a.tokens = [128], [8000], ["2x128"]
    import torch
    import trl

    print(f"DeRTa loss vs transformers' full-logits loss (hf) vs TRL {trl.__version__} SFTTrainer's loss (trl); "
          f"torch {torch.__version__}, {os.cpu_count()} CPU threads; 7/8 of positions labelled")
    print("MiB: peak = high-water mark above the inputs; work = peak - what the step leaves (its gradients)")
    head = (f"{'hidden':>6} {'vocab':>6} {'BxT':>6} {'mode':>4} | {'hf peak':>7} {'work':>6} | {'trl peak':>8} "
            f"{'work':>6} | {'ours peak':>9} {'work':>6} | {'work/hf':>7} {'work/trl':>8} {'peak/hf':>7} "
            f"{'peak/trl':>8} | {'t/hf':>5} {'t/trl':>5} | loss eq | eval flops/min")
    print(head)
    ok = True
    work_hf, work_trl = [], []
    started = time.perf_counter()
    run = _runner()
    for hidden in a.hidden:
        for vocab in a.vocab:
            for spec in a.tokens:
                b, t = _parse_tokens(spec)
                for mode in a.modes:
                    r = {m: run(m, hidden, vocab, b, t, mode, a.reps) for m in METHODS}
                    hf, tr, us = r["hf"], r["trl"], r["ours"]
                    w_hf, w_trl = _ratio(us["work"], hf["work"]), _ratio(us["work"], tr["work"])
                    work_hf.append(w_hf)
                    work_trl.append(w_trl)
                    same = all(abs(r[m]["loss"] - hf["loss"]) <= 1e-5 * abs(hf["loss"]) for m in METHODS)
                    flops = us["eval_head_flops"] / us["eval_min_flops"]
                    floors = [same, flops == 1.0]
                    if not a.smoke:  # memory at a toy shape says nothing
                        floors += [w_trl <= 1.0] + ([w_hf <= 0.5] if vocab >= 128000 else [])
                    ok &= all(floors)
                    print(f"{hidden:>6} {vocab:>6} {spec:>6} {mode:>4} | {hf['peak'] / MIB:>7.0f} {hf['work'] / MIB:>6.0f}"
                          f" | {tr['peak'] / MIB:>8.0f} {tr['work'] / MIB:>6.0f} | {us['peak'] / MIB:>9.0f} "
                          f"{us['work'] / MIB:>6.0f} | {w_hf:>7.3f} {w_trl:>8.3f} {_ratio(us['peak'], hf['peak']):>7.3f} "
                          f"{_ratio(us['peak'], tr['peak']):>8.3f} | {us['seconds'] / hf['seconds']:>5.2f} "
                          f"{us['seconds'] / tr['seconds']:>5.2f} | {'yes' if same else 'NO':>7} | {flops:.3f}"
                          f"{'' if all(floors) else '  FAIL'}", flush=True)
    print(f"losses (last point): hf {hf['loss']:.6f} trl {tr['loss']:.6f} ours {us['loss']:.6f}; "
          f"ours under no_grad: {us['eval_seconds']:.2f}s, peak {us['eval_peak'] / MIB:.0f} MiB")
    for name, values in (("hf", work_hf), ("trl", work_trl)):
        finite = [v for v in values if v == v]
        span = f"{min(finite):.3f}x - {max(finite):.3f}x" if finite else "n/a (nothing measurable at these shapes)"
        print(f"ratio work ours/{name}: {span} ({len(finite)} of {len(values)} points)")
    judged = ("losses equal to 1e-5, no gradient work under no_grad (eval flops/min = 1); memory floors not judged "
              "(--smoke)") if a.smoke else ("work <= 0.5x hf at 128K vocabularies, work <= trl, losses equal to "
                                            "1e-5, no gradient work under no_grad (eval flops/min = 1)")
    print(f"floors: {judged}: {'PASS' if ok else 'FAIL'}; {time.perf_counter() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
