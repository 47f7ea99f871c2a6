"""Throughput of batched Emulated Disalignment decoding and of the HF target, at a mid shape.

    .venv/bin/python benchmarks/bench_ed.py              # ~4 min on 2 shared CPU cores
    .venv/bin/python benchmarks/bench_ed.py --repeats 2 --queries 8
    .venv/bin/python benchmarks/bench_ed.py --smoke      # toy shapes, once, floors not judged (CI)

Models: two random-init LLaMA models (default hidden 512, 8 layers, 8 heads, MLP 1408,
vocabulary 32000) sharing a word-level tokenizer; 16 different queries (8 to 40 words), 64
new tokens, EOS suppressed so every row decodes the full length, sampling at temperature
0.7. Measured side by side, interleaved, best of ``--repeats``, on one CPU thread by default,
in CPU seconds of this process (``time.process_time``; wall seconds are printed too): on a
shared machine the wall time of a run also counts the time other jobs held the core, which
moved identical runs by up to 1.6x here, while all the work measured is compute in this
process. Take the ratios:

* ``ED``: ``ComposedTarget`` (the ``ed`` preset, alpha 0.3: base in a text template, aligned
  in its chat template), the whole batch at once, ``generate`` end to end (prompts rendered
  and tokenised, generations decoded to text);
* ``limit``: a loop written here that does nothing but the two models' cached forwards: each
  model prefills its left-padded prompts once and then advances one token per step with its
  own KV cache, attention mask and position ids, exactly the forward calls ED makes (the
  next token is the argmax of the first model's logits). No composition, no sampling, no
  text. Floor: ED >= 0.9x the limit's throughput;
* ``per-query ED``: the same target called on one query at a time. Floor: ED >= 5x;
* ``HFTarget``: ``HFTarget.generate`` on the aligned model (chat format) vs plain
  ``model.generate`` on the same, already tokenised, left-padded batch with the same
  sampling settings. Floor: HFTarget >= 0.9x.

``--smoke`` (CI, benchmarks/smoke.py): 4 queries x 4 tokens, hidden 64, 2 layers, vocabulary
1000, one run of each: the same code and lines in seconds, the floors not judged.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from deepalign.decoding.base import GenConfig, Request
from deepalign.decoding.hf import HFTarget, left_pad
from deepalign.decoding.presets import ed

CHAT = ("{{ bos_token }}{% for m in messages %}<user> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}")
TEMPLATE = "text:question: {query} answer: "


def build(args, device="cpu", dtype=torch.float32, **config):
    """Word-level tokenizer, two random-init LLaMA models (``args.hidden``, ``args.layers``,
    ``args.vocab``; ``config`` overrides other ``LlamaConfig`` fields) on ``device`` in
    ``dtype``, and ``args.queries`` requests."""
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
        fields = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                      max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
        cfg = LlamaConfig(**{**fields, **config})
        with torch.device(device):
            pair.append(LlamaForCausalLM(cfg).to(dtype).eval())
    rng = random.Random(0)
    queries = [" ".join(f"w{rng.randrange(args.vocab - 8)}" for _ in range(rng.randint(8, 40)))
               for _ in range(args.queries)]
    return tokenizer, pair, [Request(id=f"q{i}", query=q) for i, q in enumerate(queries)]


def limit_loop(models_prompts, new_tokens: int, pad: int) -> None:
    """Two (or more) models' cached forwards and nothing else: prefill, then one token a step."""
    states = []
    for model, prompts in models_prompts:
        ids, mask = left_pad(prompts, pad, model.device)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        states.append([model, cache, mask, pos[:, -1:], logits])
    for _ in range(new_tokens - 1):
        nxt = states[0][4].argmax(-1)[:, None]
        for st in states:
            model, cache, mask, pos, _ = st
            st[2] = mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            st[3] = pos = pos + 1
            st[4] = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=cache,
                          use_cache=True, logits_to_keep=1).logits[:, -1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default); 1 keeps small ops from stalling on a shared CPU")
    p.add_argument("--smoke", action="store_true", help="toy shapes, one run of each (CI); floors not judged")
    args = p.parse_args(argv)
    if args.smoke:
        args.queries, args.new_tokens, args.hidden, args.layers, args.vocab, args.repeats = 4, 4, 64, 2, 1000, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    tok, (base, aligned), requests = build(args)
    target = ed((base, tok), (aligned, tok), 0.3, base_format=TEMPLATE, aligned_format="chat",
                batch_size=len(requests))
    hf_target = HFTarget(aligned, tok, prompt_format="chat", batch_size=len(requests))
    cfg = GenConfig(max_new_tokens=args.new_tokens, do_sample=True, temperature=0.7, suppress_eos=True)
    n_tokens = len(requests) * args.new_tokens
    comps = target.components
    prompts = [[c.ids(r)[0] for r in requests] for c in comps]
    aligned_ids, aligned_mask = left_pad(prompts[1], tok.pad_token_id, "cpu")

    def run_ed():
        out = target.generate(requests, cfg)
        assert all(g[0].num_tokens == args.new_tokens for g in out)

    def run_limit():
        limit_loop([(c.model, pr) for c, pr in zip(comps, prompts)], args.new_tokens, tok.pad_token_id)

    def run_per_query():
        for r in requests:
            target.generate([r], cfg)

    def run_hf_target():
        out = hf_target.generate(requests, cfg)
        assert all(g[0].num_tokens == args.new_tokens for g in out)

    def run_generate():
        out = aligned.generate(input_ids=aligned_ids, attention_mask=aligned_mask, max_new_tokens=args.new_tokens,
                               do_sample=True, temperature=0.7, top_k=0, top_p=1.0, suppress_tokens=[2],
                               pad_token_id=tok.pad_token_id)
        assert out.shape[1] - aligned_ids.shape[1] == args.new_tokens

    runs = {"ED": run_ed, "limit": run_limit, "HFTarget": run_hf_target, "generate": run_generate,
            "per-query ED": run_per_query}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        run_ed()  # warm-up
        run_generate()
        for rep in range(args.repeats):
            for name, fn in runs.items():
                if name == "per-query ED" and rep >= max(1, args.repeats - 1):
                    continue  # the slowest: one run fewer
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                cpu[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - w0)
    best = {k: min(v) for k, v in cpu.items()}

    print(f"setup: {len(requests)} queries x {args.new_tokens} new tokens, llama hidden {args.hidden}, "
          f"{args.layers} layers, vocab {args.vocab}, {torch.get_num_threads()} threads, best of {args.repeats} "
          f"(per-query: {len(cpu['per-query ED'])}), interleaved; CPU seconds of this process (wall in brackets)")
    for name in runs:
        print(f"{name:<13}: {best[name]:7.3f} s  {n_tokens / best[name]:8.1f} tok/s   (runs: "
              f"{' '.join(f'{c:.2f} [{w:.2f}]' for c, w in zip(cpu[name], wall[name]))})")
    floors = [("ED vs limit (two cached forwards per step)", best["limit"] / best["ED"], 0.9),
              ("ED vs per-query ED loop", best["per-query ED"] / best["ED"], 5.0),
              ("HFTarget vs plain model.generate", best["generate"] / best["HFTarget"], 0.9)]
    ok = True
    for label, ratio, floor in floors:
        verdict = "not judged (--smoke)" if args.smoke else ("PASS" if ratio >= floor else "FAIL")
        print(f"ratio {label:<43}: {ratio:6.3f}x (floor {floor}x) {verdict}")
        ok &= args.smoke or ratio >= floor
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
