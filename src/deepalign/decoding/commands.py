"""``deepalign ed``: Emulated Disalignment over a file of prompts, written as JSONL.

The same as a Python function, :func:`run_ed`. The output is append-only and keyed by
prompt id, so an interrupted run resumes where it stopped when rerun with the same
settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

from deepalign.decoding.base import GenConfig, Request
from deepalign.decoding.prompts import BASE_TEMPLATE, PromptFormat
from deepalign.errors import DeepAlignError
from deepalign.utils import append_jsonl, progress, read_jsonl, set_seed, write_jsonl

PROMPT_FIELDS = ("prompt", "query", "question", "instruction")


def read_prompts(path: str | os.PathLike) -> list[Request]:
    """Requests from a JSONL file (a ``prompt`` / ``query`` / ``question`` / ``instruction``
    field per line, optional ``id`` and ``system``) or a plain text file (one per line)."""
    path = Path(path)
    if not path.exists():
        raise DeepAlignError(f"no such prompts file: {path}")
    requests: list[Request] = []
    seen: set[str] = set()
    if path.suffix in (".jsonl", ".json"):
        for lineno, obj in read_jsonl(path):
            field = next((f for f in PROMPT_FIELDS if f in obj), None)
            if field is None:
                raise DeepAlignError(f"no prompt field (one of {', '.join(PROMPT_FIELDS)})", path=path, line=lineno)
            query = obj[field]
            if not isinstance(query, str) or not query.strip():
                raise DeepAlignError(f'field "{field}" must be a non-empty string', path=path, line=lineno)
            rid = str(obj.get("id", f"line{lineno}"))
            system = obj.get("system")
            if system is not None and not isinstance(system, str):
                raise DeepAlignError('field "system" must be a string', path=path, line=lineno)
            if rid in seen:
                raise DeepAlignError(f"duplicate id {rid!r}", path=path, line=lineno)
            seen.add(rid)
            requests.append(Request(id=rid, query=query, system=system))
    else:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    requests.append(Request(id=f"line{lineno}", query=line.rstrip("\r\n")))
    if not requests:
        raise DeepAlignError(f"prompts file has no prompts: {path}")
    return requests


def _finished(out: Path, settings: dict, num_samples: int, overwrite: bool) -> set[str]:
    """Ids already complete in ``out``. Incomplete ids and a torn last line are dropped
    (the file is rewritten atomically without them); other settings raise."""
    if overwrite or not out.exists():
        return set()
    lines = out.read_text(encoding="utf-8").splitlines()
    rows = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw))
        except json.JSONDecodeError:
            if lineno == len(lines):  # torn by an interruption: redo that prompt
                continue
            raise DeepAlignError("malformed JSON in existing output", path=out, line=lineno) from None
    for row in rows:
        if row.get("settings") != settings:
            raise DeepAlignError(
                f"{out} holds results made with other settings; pass --overwrite or choose another --out"
            )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["id"]] = counts.get(row["id"], 0) + 1
    done = {i for i, n in counts.items() if n >= num_samples}
    kept = [r for r in rows if r["id"] in done]
    if len(kept) != len(lines):
        write_jsonl(out, kept)
    return done


@contextlib.contextmanager
def _hf_quiet(quiet: bool):
    """Silence transformers' own progress bars and warnings (model loading) under --quiet."""
    from transformers.utils import logging as hf_logging

    if not quiet:
        yield
        return
    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def run_ed(
    prompts: str | os.PathLike,
    out: str | os.PathLike,
    *,
    base: str | None = None,
    aligned: str | None = None,
    alpha: float | None = None,
    family: str | None = None,
    base_template: str | None = None,
    aligned_template: str | None = None,
    temperature: float = 0.7,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 64,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    greedy: bool = False,
    stop: tuple[str, ...] | list[str] = (),
    suppress_eos: bool = False,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict:
    """Run ED on every prompt of ``prompts`` and append one row per sample to ``out``.

    ``family`` (llama-2, llama, vicuna, mistral, alpaca, beaver) fills in the base and aligned
    models, alpha and prompt formats; explicit arguments override it. Returns a summary.
    """
    from deepalign.decoding import presets

    fam = presets.family(family) if family else None
    base = base or (fam.base if fam else None)
    aligned = aligned or (fam.aligned if fam else None)
    if not base or not aligned:
        raise DeepAlignError("give --base and --aligned (or --family)")
    if alpha is None:
        alpha = fam.alpha if fam else 0.3
    if not alpha >= 0:
        raise DeepAlignError(f"alpha must be >= 0, got {alpha}")
    base_fmt = PromptFormat.parse(base_template or (fam.base_format if fam else None),
                                  default=PromptFormat.text(BASE_TEMPLATE))
    aligned_fmt = PromptFormat.parse(aligned_template or (fam.aligned_format if fam else None),
                                     default=PromptFormat.chat())
    if batch_size < 1:
        raise DeepAlignError(f"batch_size must be >= 1, got {batch_size}")
    if top_k < 0:
        raise DeepAlignError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    config = GenConfig(max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed, num_samples=num_samples, stop_strings=tuple(stop),
                       suppress_eos=suppress_eos)
    requests = read_prompts(prompts)
    settings = {
        "method": "ed", "base": str(base), "aligned": str(aligned), "alpha": alpha,
        "base_format": base_fmt.describe(), "aligned_format": aligned_fmt.describe(),
        "greedy": greedy, "temperature": None if greedy else temperature,
        "top_p": None if greedy else top_p, "top_k": None if greedy else top_k,
        "max_new_tokens": max_new_tokens, "num_samples": num_samples, "seed": seed,
        "stop": list(stop), "suppress_eos": suppress_eos,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _finished(out, settings, num_samples, overwrite)
    todo = [r for r in requests if r.id not in done]
    summary = {"out": str(out), "prompts": len(requests), "skipped": len(requests) - len(todo), "rows": 0}
    if not todo:
        return summary

    set_seed(seed)
    with _hf_quiet(quiet):
        target = presets.ed(base, aligned, alpha, base_format=base_fmt, aligned_format=aligned_fmt,
                           batch_size=batch_size, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if overwrite and out.exists():
        out.unlink()  # only now that the models loaded
    bar = progress(total=len(todo), quiet=quiet, desc="ed", unit="prompt")
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            for req, gens in zip(batch, target.generate(batch, config)):
                for g in gens:
                    append_jsonl(out, {
                        "id": req.id, "query": req.query, "response": g.text, "sample": g.sample,
                        "num_tokens": g.num_tokens, "finish_reason": g.finish_reason, "settings": settings,
                    })
                    summary["rows"] += 1
            bar.update(len(batch))
    finally:
        bar.close()
    return summary


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="pre-trained model: local directory or hub id")
    parser.add_argument("--aligned", help="its aligned counterpart (same tokenizer)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="ED strength >= 0 (default: the family's reference value, else 0.3)")
    parser.add_argument("--family", help="named (base, aligned) pair with reference alpha and formats: "
                        "llama-2, llama, vicuna, mistral, alpaca, beaver")
    parser.add_argument("--prompts", required=True, help="JSONL with a prompt/query/question/instruction field, or .txt")
    parser.add_argument("--out", required=True, help="output JSONL (one row per sample; resumable)")
    parser.add_argument("--base-template", help="base prompt format: chat, raw, text:<...{query}...> or a .txt file "
                        "(default: a plain question/answer template)")
    parser.add_argument("--aligned-template", help="aligned prompt format (default: chat)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 disables top-k")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--suppress-eos", action="store_true", help="never emit EOS (stop on --stop or length)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming --out")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    summary = run_ed(
        args.prompts, args.out, base=args.base, aligned=args.aligned, alpha=args.alpha, family=args.family,
        base_template=args.base_template, aligned_template=args.aligned_template, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
        seed=args.seed, batch_size=args.batch_size, greedy=args.greedy, stop=args.stop,
        suppress_eos=args.suppress_eos, dtype=args.dtype, device=args.device,
        trust_remote_code=args.trust_remote_code, overwrite=args.overwrite, quiet=args.quiet,
    )
    if not args.quiet:
        print(f"ed: {summary['rows']} rows written to {summary['out']} "
              f"({summary['skipped']} of {summary['prompts']} prompts already done)")
    return 0
