"""Run inside nanoGCG's own environment (scripts/setup_nanogcg.sh): nanoGCG 0.3.0 itself on a
saved model, for tests/test_gcg_reference.py and benchmarks/bench_gcg.py.

    .nanogcg-venv/bin/python scripts/nanogcg_reference.py compare REQUEST.json OUT.json
    .nanogcg-venv/bin/python scripts/nanogcg_reference.py run REQUEST.json OUT.json

``run``: nanoGCG as its users run it, ``nanogcg.run`` on one item after another (its defaults,
prefix cache included, under the request's settings), timed from the first item to the last
(the model and tokenizer loaded before).

``compare``:
The request names a model directory and, per problem, the ids before the suffix, after it,
the target ids, the suffix, candidate suffixes, and the sampling settings. For each problem the
output holds nanoGCG's token gradient (``GCG.compute_token_gradient``), its candidate losses
(``GCG._compute_candidates_loss_original``) and the candidates ``sample_ids_from_grad`` draws
after ``torch.manual_seed(seed)``, and which of them ``filter_ids`` keeps. No prefix cache:
nanoGCG's fails on this transformers' caches in the project's environment and is only a speed-up.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import nanogcg
from nanogcg.gcg import GCG, GCGConfig, filter_ids, sample_ids_from_grad
from nanogcg.utils import get_nonascii_toks


def load_tokenizer(path: str):
    """The saved tokenizer. A directory written by transformers 5 names a tokenizer class this
    transformers does not have; its tokenizer.json and special tokens load as a fast tokenizer."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except ValueError:
        from pathlib import Path

        from transformers import PreTrainedTokenizerFast

        config = json.loads((Path(path) / "tokenizer_config.json").read_text())
        special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k)}
        tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json"), **special)
        template = Path(path) / "chat_template.jinja"
        if template.exists():
            tok.chat_template = template.read_text()
        return tok


def run(request_path: str, out_path: str) -> None:
    import logging
    import time

    req = json.load(open(request_path))
    model = AutoModelForCausalLM.from_pretrained(req["model"], torch_dtype=torch.float32).eval()
    tok = load_tokenizer(req["model"])
    config = GCGConfig(verbosity="WARNING", **req["config"])
    logging.getLogger("nanogcg").setLevel(logging.WARNING)
    start = time.perf_counter()
    results = []
    for item in req["items"]:
        out = nanogcg.run(model, tok, [{"role": "user", "content": item["query"]}], item["target"], config)
        results.append({"loss": out.best_loss, "suffix": out.best_string})
    json.dump({"seconds": time.perf_counter() - start, "results": results}, open(out_path, "w"))


def compare(request_path: str, out_path: str) -> None:
    req = json.load(open(request_path))
    model = AutoModelForCausalLM.from_pretrained(req["model"], torch_dtype=torch.float32).eval()
    tok = load_tokenizer(req["model"])
    out = {"nanogcg": nanogcg.__file__, "problems": [], "not_allowed": get_nonascii_toks(tok).tolist()}
    for p in req["problems"]:
        config = GCGConfig(use_prefix_cache=False, use_mellowmax=p["mellowmax"], mellowmax_alpha=p["alpha"],
                           verbosity="WARNING")
        gcg = GCG(model, tok, config)
        emb = gcg.embedding_layer
        ids = {k: torch.tensor([p[k]], dtype=torch.long) for k in ("before", "after", "target")}
        gcg.before_embeds, gcg.after_embeds, gcg.target_embeds = (emb(ids[k]) for k in ("before", "after", "target"))
        gcg.target_ids = ids["target"]
        suffix = torch.tensor([p["suffix"]], dtype=torch.long)
        grad = gcg.compute_token_gradient(suffix)[0]
        cands = torch.tensor(p["candidates"], dtype=torch.long)
        n = cands.shape[0]
        with torch.no_grad():
            embeds = torch.cat([gcg.before_embeds.repeat(n, 1, 1), emb(cands), gcg.after_embeds.repeat(n, 1, 1),
                                gcg.target_embeds.repeat(n, 1, 1)], dim=1)
            losses = gcg._compute_candidates_loss_original(n, embeds)
        torch.manual_seed(p["seed"])
        banned = torch.tensor(p["not_allowed"], dtype=torch.long)
        sampled = sample_ids_from_grad(suffix[0], grad.clone(), p["width"], p["topk"], p["n_replace"], banned)
        kept = filter_ids(sampled, tok)
        out["problems"].append({"grad": grad.tolist(), "losses": losses.tolist(), "sampled": sampled.tolist(),
                                "kept": kept.tolist()})
    json.dump(out, open(out_path, "w"))


if __name__ == "__main__":
    {"run": run, "compare": compare}[sys.argv[1]](sys.argv[2], sys.argv[3])
