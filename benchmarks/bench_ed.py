"""Throughput of batched Emulated Disalignment decoding.

Compares one batched ED run (two models advanced together with their KV caches) on N
different queries against
  (a) the two-model limit: base.generate + aligned.generate on the same batch (same number
      of new tokens, EOS suppressed so every row has the same length), timed separately and
      summed - what two independent cached decodes cost;
  (b) a per-query ED loop (the same decoder called on one query at a time).

Models are random-init Llama models (default hidden 256, 4 layers, vocab 8000) sharing a
word-level tokenizer; sampling at temperature 0.7 everywhere. Each timing is the best of
``--repeats`` runs on one CPU thread by default (these machines are shared: take the
ratios, not the absolute numbers).

    .venv/bin/python benchmarks/bench_ed.py
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from deepalign.decoding.base import GenConfig, Request
from deepalign.decoding.hf import left_pad
from deepalign.decoding.presets import ed

CHAT = ("{{ bos_token }}{% for m in messages %}<user> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}")
TEMPLATE = "text:question: {query} answer: "


def build(args):
    words = ["<pad>", "<s>", "</s>", "<unk>", "<user>", "<assistant>", "question:", "answer:"]
    words += [f"w{i}" for i in range(args.vocab - len(words))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", chat_template=CHAT)
    pair = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                          num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                          max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        pair.append(LlamaForCausalLM(cfg).eval())
    rng = random.Random(0)
    queries = [" ".join(f"w{rng.randrange(args.vocab - 8)}" for _ in range(rng.randint(8, 40)))
               for _ in range(args.queries)]
    return tokenizer, pair, [Request(id=f"q{i}", query=q) for i, q in enumerate(queries)]


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default); 1 keeps small ops from stalling on a shared CPU")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tok, (base, aligned), requests = build(args)
    target = ed((base, tok), (aligned, tok), 0.3, base_format=TEMPLATE, aligned_format="chat",
                batch_size=len(requests))
    cfg = GenConfig(max_new_tokens=args.new_tokens, do_sample=True, temperature=0.7, suppress_eos=True)
    n_tokens = len(requests) * args.new_tokens

    def hf_generate(model, component):
        ids, mask = left_pad([component.ids(r)[0] for r in requests], 0, "cpu")
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                             min_new_tokens=args.new_tokens, do_sample=True, temperature=0.7, top_k=0,
                             suppress_tokens=[2], pad_token_id=0)
        assert out.shape[1] - ids.shape[1] == args.new_tokens

    def batched():
        out = target.generate(requests, cfg)
        assert all(g[0].num_tokens == args.new_tokens for g in out)

    def per_query():
        for r in requests:
            target.generate([r], cfg)

    base_fmt, aligned_fmt = target.components  # each model's prompt ids
    with torch.inference_mode():
        batched()  # warm-up
        hf_generate(base, base_fmt)
        t_ed = best_of(args.repeats, batched)
        t_base = best_of(args.repeats, lambda: hf_generate(base, base_fmt))
        t_aligned = best_of(args.repeats, lambda: hf_generate(aligned, aligned_fmt))
        t_loop = best_of(max(1, args.repeats - 1), per_query)

    t_two = t_base + t_aligned
    print(f"setup: {len(requests)} queries x {args.new_tokens} new tokens, llama hidden {args.hidden}, "
          f"{args.layers} layers, vocab {args.vocab}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"batched ED              : {t_ed:7.3f} s  {n_tokens / t_ed:8.1f} tok/s")
    print(f"base + aligned .generate: {t_two:7.3f} s  {n_tokens / t_two:8.1f} tok/s "
          f"(base {t_base:.3f} s + aligned {t_aligned:.3f} s)")
    print(f"per-query ED loop       : {t_loop:7.3f} s  {n_tokens / t_loop:8.1f} tok/s")
    print(f"ratio vs two-model generate limit: {t_two / t_ed:.2f}x (floor 0.9x)")
    print(f"ratio vs per-query ED loop       : {t_loop / t_ed:.2f}x (floor 3x)")


if __name__ == "__main__":
    main()
