"""``deepalign depth``: per-token depth diagnostics of (base, aligned) model pairs.

    deepalign depth --base runs/study/base --aligned runs/study/models/vanilla \\
        --aligned runs/study/models/derta --world runs/study/world --dataset world:harmful --out runs/depth
    deepalign depth --base meta-llama/Meta-Llama-3-8B --aligned meta-llama/Meta-Llama-3-8B-Instruct \\
        --dataset harmful:data/harmful_with_responses.jsonl --base-format text:"Question: {query}\\nAnswer:" --out runs/depth

Writes ``OUT/depth.json`` (per aligned model: per-position KL(aligned || base) and refusal-token
probabilities with 95% intervals), ``OUT/depth.png`` and ``OUT/depth.md``; the directory is
written atomically. The work is :func:`deepalign.evaluation.depth.depth_diagnostics`.
"""

from __future__ import annotations

from pathlib import Path

from deepalign.errors import DeepAlignError


def configure(p) -> None:
    p.add_argument("--base", required=True, help="base model directory or hub id")
    p.add_argument("--aligned", action="append", required=True, metavar="MODEL",
                   help="aligned model directory or hub id (repeatable: one curve each)")
    p.add_argument("--dataset", default=None, metavar="SPEC",
                   help="items with a harmful response: world:<split> (needs --world) or [harmful:]<file> "
                        "(default world:harmful with --world)")
    p.add_argument("--world", default=None, metavar="DIR", help="the embedded world directory (for world: datasets)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    p.add_argument("--base-format", default=None,
                   help="prompt format of the base model: chat, raw, text:<template with {query}> or a .txt file "
                        "(default: its chat template if it has one, else a plain question/answer template)")
    p.add_argument("--aligned-format", default=None, help="prompt format of the aligned models (default as --base-format)")
    p.add_argument("--refusal-word", default=None,
                   help="word whose token is the refusal token, or several comma-separated (their probabilities add up); "
                        "default Sorry (sorry for lower-case vocabularies)")
    p.add_argument("--max-tokens", type=int, default=64, help="response positions measured")
    p.add_argument("--limit", type=int, default=None, help="use only the first N items")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="device (default: cuda if available)")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    from deepalign.evaluation.datasets import load_dataset
    from deepalign.evaluation.depth import depth_profiles, write_depth

    spec = args.dataset or ("world:harmful" if args.world else None)
    if spec is None:
        raise DeepAlignError("give --dataset SPEC (or --world DIR to use world:harmful)")
    items = load_dataset(spec, world=args.world, limit=args.limit)
    labels = [Path(a).name or a for a in args.aligned]
    if len(set(labels)) != len(labels):
        labels = list(args.aligned)
    results = depth_profiles(args.base, dict(zip(labels, args.aligned)), items, base_format=args.base_format,
                             aligned_format=args.aligned_format, refusal_words=args.refusal_word,
                             max_tokens=args.max_tokens, batch_size=args.batch_size, device=args.device)
    write_depth(args.out, results, dataset=spec)
    if not args.quiet:
        from deepalign.evaluation.depth import shallowness

        for label, r in results.items():
            share = shallowness(r)
            print(f"{label}: KL at t=0 {r['kl'][0]:.3f}, share of KL in the first 5 tokens "
                  f"{'–' if share is None else f'{share:.0%}'}; P(refusal) at k=0 {r['refusal'][0]:.3f}, "
                  f"at k=8 {r['refusal'][min(8, len(r['refusal']) - 1)]:.3f} ({r['items']} items)")
        print(f"depth diagnostics -> {args.out}")
    return 0
