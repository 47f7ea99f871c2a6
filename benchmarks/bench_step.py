"""Time of one DeRTa training step vs one plain SFT step on the same batch.

    .venv/bin/python benchmarks/bench_step.py [--vocab 32768] [--reps 5]

Model: a random LLaMA (hidden 256, 4 layers, 4 heads, MLP 1024, untied head) with the given
vocabulary. Batch: 4 sequences of 512 tokens shaped like a DeRTa batch: two helpful rows
(64-token prompt, MLE on the rest), one harmful-prefix row (64-token prompt, 128 forced
harmful tokens, MLE on the rest) and one RTO row (64-token prompt, 448 harmful tokens, 5% of
them kept with the refusal target: the full fine-tuning setting).

* ``SFT``: the stock ``transformers.Trainer.training_step`` (the model's own causal-LM loss
  over full logits) with the RTO targets written into ``labels``, as the reference
  implementation does (so both steps train exactly the same (position, target) pairs);
* ``DeRTa``: ``DeRTaTrainer.training_step`` with the separate ``rto_labels`` channel.

Each step is forward + backward + AdamW update. The two kinds alternate (A B A B ...) after
a warm-up of each, and the medians are compared, so slow drifts of a shared machine hit both
alike. Both losses are printed and must agree.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

B, T, PROMPT = 4, 512, 64


def _batch(vocab: int, refusal: int = 7):
    import torch

    from deepalign.training.collator import keep_positions

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (B, T), generator=g)
    labels = torch.full((B, T), -100)
    rto = torch.full((B, T), -100)
    labels[0:2, PROMPT:] = ids[0:2, PROMPT:]
    labels[2, PROMPT + 128:] = ids[2, PROMPT + 128:]
    keep = torch.as_tensor(keep_positions(T - PROMPT, 0.05, 0, 0, "rto-row"))
    rto[3, PROMPT + keep] = refusal
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "rto_labels": rto}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[32768])
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    warnings.filterwarnings("ignore")

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer

    hf_logging.set_verbosity_error()
    print(f"one training step (fwd + bwd + AdamW), batch {B} x {T} tokens, LLaMA hidden 256 x 4 layers")
    ok = True
    for vocab in a.vocab:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=T,
                          tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)

        class _Tok:  # the trainers only need a pad id here
            pad_token_id = 0
            eos_token_id = 0

            def save_pretrained(self, *a, **k):
                pass

        common = dict(output_dir="/tmp/deepalign-bench-step", report_to="none", use_cpu=True, disable_tqdm=True,
                      learning_rate=1e-4)
        derta = DeRTaTrainer(model, DeRTaConfig(rto_keep=1.0, **common), train_dataset=[0],
                             processing_class=_Tok(), refusal_token_id=7)
        sft = Trainer(model=model, args=TrainingArguments(**common), train_dataset=[0])
        for tr in (derta, sft):
            tr.create_optimizer_and_scheduler(num_training_steps=100)
        batch = _batch(vocab)
        merged = dict(batch)
        rto = merged.pop("rto_labels")
        merged["labels"] = torch.where(rto != -100, rto, batch["labels"])

        def step(tr, inputs):
            n = tr._get_num_items_in_batch([inputs], torch.device("cpu"))
            tr.current_gradient_accumulation_steps = 1
            t0 = time.perf_counter()
            loss = tr.training_step(model, dict(inputs), n)
            tr.optimizer.step()
            tr.optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - t0, float(loss)

        step(derta, batch)
        step(sft, merged)
        t_d, t_s, l_d, l_s = [], [], [], []
        for _ in range(a.reps):
            td, ld = step(derta, batch)
            ts, ls = step(sft, merged)
            t_d.append(td)
            t_s.append(ts)
            l_d.append(ld)
            l_s.append(ls)
        # losses of the same step kind differ over steps (the weights move); check one fresh pair
        model.zero_grad()
        with torch.no_grad():
            ref = model(**merged).loss.item()
            n = derta._get_num_items_in_batch([batch], torch.device("cpu"))
            ours = derta.compute_loss(model, dict(batch), num_items_in_batch=n).item()
        md, ms = statistics.median(t_d), statistics.median(t_s)
        same = abs(ours - ref) <= 1e-5 * abs(ref)
        print(f"vocab {vocab:>6}: SFT step {ms:.3f}s, DeRTa step {md:.3f}s (medians of {a.reps}), "
              f"ratio {md / ms:.3f}x; loss SFT {ref:.6f} DeRTa {ours:.6f} equal: {same}")
        print(f"vocab {vocab:>6}: floor DeRTa <= 1.05x SFT: {'PASS' if md / ms <= 1.05 else 'FAIL'}")
        ok &= same and md / ms <= 1.05
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
