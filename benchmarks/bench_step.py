"""Time of one DeRTa training step vs one TRL ``SFTTrainer`` step on the same model and batch.

    .venv/bin/python benchmarks/bench_step.py                 # vocab 32000 and 128256 (17 min on 2 shared cores)
    .venv/bin/python benchmarks/bench_step.py --vocab 128256 --reps 5
    .venv/bin/python benchmarks/bench_step.py --smoke         # toy shapes, seconds (CI: benchmarks/smoke.py)

Model: a random-init LLaMA, hidden 1024, 4 layers, 16 heads, MLP 2816, untied head, with a
real vocabulary size (Llama-2's 32000, Llama-3's 128256), fp32 on CPU. Batch: 4 sequences
of 512 tokens shaped like a DeRTa batch: two helpful rows (64-token prompt, MLE on the rest),
one harmful-prefix row (64-token prompt, 128 forced harmful tokens, MLE on the rest) and one
RTO row (64-token prompt, 448 harmful tokens, 5% of them kept with the refusal target: the
full fine-tuning setting).

Like with like:

* same labels: DeRTa reads the RTO targets from its ``rto_labels`` channel, TRL gets them
  written into ``labels`` (what the reference implementation does), so both train exactly
  the same (position, target) pairs; both losses are printed and must agree to 1e-5;
* same model: two copies of one initialisation (TRL patches its model's ``forward`` with its
  fused LM head, so the copies are not shared);
* same optimizer and precision: each trainer's stock AdamW at lr 1e-4, fp32, no autocast
  (``bf16=False``: ``SFTConfig`` would default to bf16) and no gradient checkpointing
  (``SFTConfig`` defaults to it; ``DeRTaConfig`` does not);
* the same step: ``trainer.training_step`` (forward, loss, backward; TRL's includes the
  entropy and token-accuracy metrics it always computes) + ``optimizer.step()`` +
  ``zero_grad``. No gradient clipping in either (that lives in the training loop).

The two kinds alternate (A B A B ...) after a warm-up step of each (whose losses, from the
same initial weights, are the ones compared), and the medians are compared, so slow drifts
of a shared machine hit both alike. Floor: DeRTa <= 1.05x TRL. On CPU, TRL's fused head has
no Triton and scores every position (4 head matmuls over all rows); on a GPU it scores only
the labelled ones, as DeRTa does everywhere.

``--smoke``: hidden 64, 2 layers, vocab 1000, batch 4 x 192 (prompt 16), one timed step: the
same code and lines in seconds; the losses must still agree, the time floor is not judged.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

B, T, PROMPT = 4, 512, 64
HIDDEN, LAYERS, HEADS, MLP = 1024, 4, 16, 2816
SMOKE = dict(b=4, t=192, prompt=16, hidden=64, layers=2, heads=4, mlp=128, vocab=[1000], reps=1)


def make_batch(vocab: int, b: int = B, t: int = T, prompt: int = PROMPT, refusal: int = 7, device="cpu"):
    """A DeRTa-shaped batch: rows cycle helpful, helpful, harmful-prefix (128 forced tokens),
    RTO (5% of the harmful positions kept); returns ``(derta_inputs, trl_inputs)``, the
    latter with the RTO targets written into ``labels``."""
    import torch

    from deepalign.training.collator import keep_positions

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (b, t), generator=g)
    labels = torch.full((b, t), -100)
    rto = torch.full((b, t), -100)
    for i in range(b):
        kind = i % 4
        if kind < 2:
            labels[i, prompt:] = ids[i, prompt:]
        elif kind == 2:
            labels[i, prompt + 128:] = ids[i, prompt + 128:]
        else:
            keep = torch.as_tensor(keep_positions(t - prompt, 0.05, 0, 0, f"rto-row-{i}"))
            rto[i, prompt + keep] = refusal
    derta = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "rto_labels": rto}
    trl = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.where(rto != -100, rto, labels)}
    return ({k: v.to(device) for k, v in derta.items()}, {k: v.to(device) for k, v in trl.items()})


def make_trainers(model_d, model_t, tokenizer, common: dict):
    """``DeRTaTrainer`` and TRL ``SFTTrainer`` with the same settings, optimizers created."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer

    derta = DeRTaTrainer(model_d, DeRTaConfig(rto_keep=1.0, **common), train_dataset=[0],
                         processing_class=tokenizer, refusal_token_id=7)
    sft = SFTTrainer(model_t, SFTConfig(dataset_kwargs={"skip_prepare_dataset": True}, **common),
                     train_dataset=Dataset.from_dict({"input_ids": [[2, 2]]}), processing_class=tokenizer)
    for tr in (derta, sft):
        tr.create_optimizer_and_scheduler(num_training_steps=100)
    return derta, sft


def time_steps(derta, sft, batch_d, batch_t, reps: int, sync=lambda: None):
    """Warm-up step of each (losses from the same initial weights), then ``reps`` alternating
    steps; returns ``(derta_times, trl_times, derta_first_loss, trl_first_loss)``."""

    def step(tr, inputs):
        n = tr._get_num_items_in_batch([inputs], inputs["input_ids"].device)
        tr.current_gradient_accumulation_steps = 1
        sync()
        t0 = time.perf_counter()
        loss = tr.training_step(tr.model, dict(inputs), n)
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        loss = float(loss)
        sync()
        return time.perf_counter() - t0, loss

    _, loss_d = step(derta, batch_d)
    _, loss_t = step(sft, batch_t)
    t_d, t_t = [], []
    for _ in range(reps):
        t_d.append(step(derta, batch_d)[0])
        t_t.append(step(sft, batch_t)[0])
    return t_d, t_t, loss_d, loss_t


def tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "a": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="a")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="a")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="toy shapes, one timed step (CI); time floor not judged")
    a = p.parse_args()
    shape = dict(b=B, t=T, prompt=PROMPT, hidden=HIDDEN, layers=LAYERS, heads=HEADS, mlp=MLP)
    if a.smoke:
        shape.update(SMOKE)
        a.vocab, a.reps = shape.pop("vocab"), shape.pop("reps")
    b, t, hidden = shape["b"], shape["t"], shape["hidden"]
    warnings.filterwarnings("ignore")

    import torch
    import trl
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print(f"one training step (forward + backward + AdamW), batch {b} x {t} tokens, LLaMA hidden {hidden} x "
          f"{shape['layers']} layers, fp32, {torch.get_num_threads()} threads; DeRTaTrainer vs TRL {trl.__version__} "
          f"SFTTrainer (its default fused LM head)")
    ok = True
    for vocab in a.vocab:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=shape["mlp"],
                          num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                          num_key_value_heads=shape["heads"], max_position_embeddings=t,
                          tie_word_embeddings=False, pad_token_id=0)
        model_d = LlamaForCausalLM(cfg)
        model_t = copy.deepcopy(model_d)
        common = dict(output_dir="/tmp/deepalign-bench-step", report_to="none", use_cpu=True, disable_tqdm=True,
                      learning_rate=1e-4, bf16=False, gradient_checkpointing=False, save_strategy="no")
        derta, sft = make_trainers(model_d, model_t, tokenizer(), common)
        batch, merged = make_batch(vocab, b, t, shape["prompt"])
        optimizers = {type(derta.optimizer).__name__, type(sft.optimizer).__name__}
        t_d, t_t, loss_d, loss_t = time_steps(derta, sft, batch, merged, a.reps)
        md, mt = statistics.median(t_d), statistics.median(t_t)
        same = abs(loss_d - loss_t) <= 1e-5 * abs(loss_t)
        labelled = int((merged["labels"][:, 1:] != -100).sum())
        print(f"vocab {vocab:>6}: TRL step {mt:.2f}s, DeRTa step {md:.2f}s (medians of {a.reps}; runs "
              f"{' '.join(f'{x:.2f}' for x in t_t)} | {' '.join(f'{x:.2f}' for x in t_d)}), ratio {md / mt:.3f}x; "
              f"first-step loss TRL {loss_t:.6f} DeRTa {loss_d:.6f} equal: {same}; {labelled} labelled pairs of "
              f"{b * (t - 1)}; optimizer {', '.join(sorted(optimizers))}")
        verdict = "not judged (--smoke)" if a.smoke else ("PASS" if md / mt <= 1.05 else "FAIL")
        print(f"vocab {vocab:>6}: floor DeRTa <= 1.05x TRL SFTTrainer: {verdict}", flush=True)
        ok &= same and (a.smoke or md / mt <= 1.05) and len(optimizers) == 1
        del derta, sft, model_d, model_t
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
