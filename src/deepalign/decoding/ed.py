"""Emulated Disalignment over a set of prompts, written as JSONL: :func:`run_ed`.

One row per (prompt, alpha, sample) is appended to ``out``; a rerun with the same settings
resumes where an interrupted run stopped (rows are keyed, a torn last line is dropped), and
several alphas form a sweep that loads each model once. Prompts come from any evaluation
dataset spec, read by the same loaders and presets as ``deepalign eval``
(:func:`deepalign.data.datasets.open_dataset`: ``world:harmful``, a JSONL / JSON / CSV file, a
dataset directory or hub id, ``harmbench:PATH``...; ``--fields``, ``--sample``, ``--limit`` as
for eval) or a ``.txt`` file with one prompt per line.

Decoding defaults are the ED reference's (sampling, temperature 0.7, 64 new tokens).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deepalign.data.datasets import DataOptions
from deepalign.decoding.base import GenConfig, Request
from deepalign.errors import DeepAlignError, OptionError
from deepalign.options import build, number


@dataclass
class EDGenConfig(GenConfig):
    """:class:`GenConfig` with the ED reference's decoding defaults."""

    do_sample: bool = field(default=True, metadata={"help": "sample (the ED reference); --no_do_sample for greedy"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})


@dataclass
class EDOptions:
    prompts: str | None = field(default=None, metadata={
        "help": "prompts: a dataset spec (world:harmful, a .jsonl/.json/.csv file, a dataset dir or hub id) or a .txt "
                "file with one prompt per line"})
    out: str | None = field(default=None, metadata={"help": "output JSONL (one row per prompt x alpha x sample; resumable)"})
    base: str | None = field(default=None, metadata={"help": "pre-trained model: local directory or hub id"})
    aligned: str | None = field(default=None, metadata={"help": "its aligned counterpart (same tokenizer)"})
    alpha: list[float] | None = field(default=None, metadata={
        "help": "ED strength(s) >= 0; several give a sweep (default: the family's reference value, else 0.3)"})
    family: str | None = field(default=None, metadata={
        "help": "an ED family of the paper (llama-2, llama, vicuna, mistral, alpaca, beaver; plain): its models, "
                "alpha, prompt formats and, with --reference_decoding, the reference's decoding"})
    reference_decoding: bool = field(default=True, metadata={
        "help": "with --family: decode as the ED reference does (T 0.7, top-k 50, 64 tokens, 3 samples, stop strings, "
                "EOS suppressed, short responses re-sampled), whatever the decoding flags say"})
    base_format: str | None = field(default=None, metadata={
        "help": "the base model's prompt format: chat, raw, text, text:<...{query}...> or a .txt file "
                "(default: the default text template)"})
    aligned_format: str | None = field(default=None, metadata={
        "help": "the aligned model's prompt format (default: its chat template when it has one)"})
    world: str | None = field(default=None, metadata={"help": "the world directory (for world: prompt specs)"})
    batch_size: int = 16
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16"})
    device: str = "auto"
    trust_remote_code: bool = False
    overwrite: bool = field(default=False, metadata={"help": "start afresh instead of resuming --out"})
    quiet: bool = False

    def __post_init__(self):
        if self.alpha is not None:
            alphas = self.alpha if isinstance(self.alpha, (list, tuple)) else [self.alpha]
            self.alpha = [float(a) for a in alphas]
            for a in self.alpha:
                number("alpha", a, low=0)
        number("batch_size", self.batch_size, low=1, integer=True)


def read_prompts(spec: str, *, world=None, limit: int | None = None, options: DataOptions | None = None) -> list[Request]:
    """Requests from a dataset spec (read by the same loaders and presets as ``deepalign eval``:
    a CSV is a table, never lines of text) or a ``.txt`` file (one prompt per line).
    ``options``: ``--fields`` / ``--subset`` / ``--split`` / ``--sample`` / ``--limit``."""
    from dataclasses import replace

    from deepalign.utils import read_text

    options = options or DataOptions()
    if limit is not None:
        options = replace(options, limit=limit, sample=None)
    path = Path(spec)
    if path.suffix == ".txt":
        lines = read_text(path, what="prompts file").splitlines()
        requests = [Request(id=f"line{i}", query=line) for i, line in enumerate(lines, start=1) if line.strip()]
        if not requests:
            raise DeepAlignError(f"prompts file has no prompts: {path}")
        if options.sample:
            import random

            keep = sorted(random.Random(options.sample_seed).sample(range(len(requests)), min(options.sample, len(requests))))
            return [requests[i] for i in keep]
        return requests[:options.limit]
    from deepalign.data.datasets import open_dataset

    out = []
    for it in open_dataset(spec, options, world=world).items:
        system = it.meta.get("system") if isinstance(it.meta.get("system"), str) else None
        if it.meta.get("raw"):  # a text to continue as is (DeRTa's completion-attack set)
            out.append(Request(id=it.id, text=it.prompt))
        else:
            out.append(Request(id=it.id, query=it.prompt, system=system))
    return out


def _done_keys(out: Path, settings: dict) -> set[tuple]:
    """Keys (id, alpha, sample) already written to ``out``; other settings are refused."""
    from deepalign.utils import read_log

    done = set()
    for line, row in read_log(out, repair=True):
        if row.get("settings") != settings:
            raise DeepAlignError(f"{out} holds results made with other settings (line {line}); pass --overwrite or "
                                 "choose another --out")
        try:
            done.add((row["id"], float(row["alpha"]), int(row["sample"])))
        except (KeyError, TypeError, ValueError):
            raise DeepAlignError("not a row of deepalign ed (needs id, alpha, sample)", path=out, line=line) from None
    return done


def run_ed(options: EDOptions | None = None, generation: EDGenConfig | None = None, data: DataOptions | None = None,
           **kwargs) -> dict:
    """Run ED on every prompt for every alpha and append one row per sample to ``out``.

    ``family`` (see :data:`deepalign.decoding.presets.ED_FAMILIES`) fills in the base and
    aligned models, alpha and prompt formats; explicit options override it. Returns a
    summary.

    Example (two world models; any pair of HF models that share a tokenizer works)::

        >>> run_ed(base="runs/base", aligned="runs/derta", alpha=[0.3, 1.0], prompts="world:harmful",
        ...        world="runs/world", limit=2, out="runs/ed.jsonl", quiet=True)["rows"]
        4
    """
    from deepalign.decoding import presets
    from deepalign.utils import append_jsonl, check_writable_file, progress, quiet_libraries, set_seed

    opts, gen, data_opts = build(kwargs, options=(EDOptions, options), generation=(EDGenConfig, generation),
                                 data=(DataOptions, data))
    if not opts.prompts:
        raise OptionError("prompts", "is required (a dataset spec or a .txt file)")
    if not opts.out:
        raise OptionError("out", "is required (the output JSONL)")
    fam = presets.family(opts.family) if opts.family else None
    base = opts.base or (fam.base if fam else None)
    aligned = opts.aligned or (fam.aligned if fam else None)
    if not base or not aligned:
        raise OptionError("base", "and --aligned are required (or --family)")
    from deepalign.decoding.compose import refuse_servers

    refuse_servers({"base": base, "aligned": aligned}, "ed")
    alphas = opts.alpha or [fam.alpha if fam else 0.3]
    if len(set(alphas)) != len(alphas):
        raise OptionError("alpha", f"holds a value twice: {alphas}")
    from deepalign.tokens import PromptFormat

    base_fmt = PromptFormat.parse(opts.base_format or (fam.base_format if fam else None), default=PromptFormat.text())
    aligned_fmt = opts.aligned_format or (fam.aligned_format if fam else None)
    aligned_fmt = PromptFormat.parse(aligned_fmt) if aligned_fmt else None
    reference = fam is not None and opts.reference_decoding
    if reference:
        from dataclasses import replace

        gen = replace(gen, **fam.generation(), num_samples=fam.num_samples)
    requests = read_prompts(opts.prompts, world=opts.world, options=data_opts)
    out = check_writable_file(opts.out, what="output file")
    settings = {"method": "ed", "base": str(base), "aligned": str(aligned), "base_format": base_fmt.describe(),
                "aligned_format": aligned_fmt.describe() if aligned_fmt else "default",
                "family": opts.family if reference else None, "generation": json.loads(json.dumps(asdict(gen)))}
    done = set() if opts.overwrite else _done_keys(out, settings)
    todo = {a: [r for r in requests if any((r.id, a, s) not in done for s in range(gen.num_samples))] for a in alphas}
    summary = {"out": str(out), "prompts": len(requests), "alphas": alphas, "rows": 0,
               "skipped": sum(len(requests) - len(t) for t in todo.values())}
    if not any(todo.values()):
        return summary

    set_seed(gen.seed)
    with quiet_libraries(opts.quiet):
        from deepalign.decoding.compose import Component

        load = {"dtype": opts.dtype, "device": opts.device, "trust_remote_code": opts.trust_remote_code}
        base_c = Component.load(base, 1.0, base_fmt, **load)
        aligned_c = Component.load(aligned, 1.0, aligned_fmt, **load)
        targets = {a: presets.ed(base_c, aligned_c, a, base_format=base_fmt, aligned_format=aligned_fmt,
                                 batch_size=opts.batch_size) for a in alphas if todo[a]}
        if reference:  # the reference's response filters: trailing characters, short responses re-sampled
            targets = {a: presets.ReferenceDecoding(t, fam) for a, t in targets.items()}
    if opts.overwrite:
        out.unlink(missing_ok=True)  # only now that the prompts and models loaded
    bar = progress(total=sum(len(t) for t in todo.values()), quiet=opts.quiet, desc="ed", unit="prompt")
    try:
        for alpha, target in targets.items():
            batch_todo = todo[alpha]
            for start in range(0, len(batch_todo), opts.batch_size):
                batch = batch_todo[start:start + opts.batch_size]
                rows = []
                for req, gens in zip(batch, target.generate(batch, gen)):
                    query = req.query if req.query is not None else req.text
                    rows += [{"id": req.id, "alpha": alpha, "sample": g.sample, "query": query, "response": g.text,
                              "num_tokens": g.num_tokens, "finish_reason": g.finish_reason, "settings": settings}
                             for g in gens if (req.id, alpha, g.sample) not in done]
                summary["rows"] += append_jsonl(out, rows)
                bar.update(len(batch))
    finally:
        bar.close()
    return summary
