"""Emulated Disalignment over a set of prompts: :func:`run_ed` (``deepalign ed``).

ED is one kind of target (``ed:base=...,aligned=...,alpha=...``, assembled in one place:
:func:`deepalign.decoding.presets.ed_target`); ``deepalign ed`` builds one such target per
alpha from its options and runs them through the evaluation runner, so its output is a run
directory like ``deepalign eval``'s: resumable (a rerun generates only what is missing),
judged, and read by ``deepalign report`` and ``deepalign judge``. The run log records every
target's base, aligned model, alpha, family and the decoding it really used (one precedence
rule: an explicit spec option > the family's reference decoding > these options). ``--export
FILE.jsonl`` also writes the flat rows (id, alpha, sample, query, response) of earlier
versions.

Prompts come from any evaluation dataset spec, read by the same loaders and presets as
``deepalign eval`` (``world:harmful``, a JSONL / JSON / CSV file, a ``.txt`` file with one
prompt per line, a dataset directory or hub id, ``harmbench:PATH``...; ``--fields``,
``--sample``, ``--limit`` as for eval). Decoding defaults are the ED reference's (sampling,
temperature 0.7, 64 new tokens).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from deepalign.data.datasets import DATA_NEEDS, DataOptions
from deepalign.decoding.base import GEN_NEEDS, GenConfig
from deepalign.errors import DeepAlignError, OptionError
from deepalign.options import Is, Off, On, build, number


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
    out: str | None = field(default=None, metadata={
        "help": "run directory (one row per prompt x alpha x sample; rerun to resume; deepalign report / judge read it)"})
    export: str | None = field(default=None, metadata={
        "help": "also write the flat rows (id, alpha, sample, query, response, ...) to this JSONL file"})
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
    judges: list[str] | None = field(default=None, metadata={
        "aliases": ["--judge"], "help": "judges (default: oracle,keyword with --world, else keyword)"})
    batch_size: int = 16
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16"})
    device: str = "auto"
    trust_remote_code: bool = False
    overwrite: bool = field(default=False, metadata={"help": "start afresh instead of resuming --out"})
    report: bool = field(default=True, metadata={"help": "build the run's summary, report and plots at the end"})
    quiet: bool = False

    def __post_init__(self):
        if self.alpha is not None:
            alphas = self.alpha if isinstance(self.alpha, (list, tuple)) else [self.alpha]
            self.alpha = [float(a) for a in alphas]
            for a in self.alpha:
                number("alpha", a, low=0)
        number("batch_size", self.batch_size, low=1, integer=True)


#: ``run_ed``'s options that only another setting reads (deepalign.options.check_needs): with
#: --family, the reference's decoding replaces these decoding settings
ED_NEEDS = {
    "reference_decoding": On("family"),
    ("do_sample", "temperature", "top_k", "max_new_tokens", "stop_strings", "suppress_eos", "num_samples"):
        (Off("family") | Is("reference_decoding", False)).worded(
            "--no_reference_decoding when --family is given (the family's reference decoding replaces it)"),
    **GEN_NEEDS, **DATA_NEEDS,
}


def ed_specs(opts: EDOptions) -> list:
    """One parsed ED spec (:class:`~deepalign.decoding.spec.EDSpec`) per alpha: the models,
    family and formats of ``opts``, tagged with the alpha (the run log keeps it). Every alpha
    goes into its spec as the float given; the spec parser checks everything else, once."""
    from deepalign.decoding import presets
    from deepalign.decoding.spec import TargetSpec, parse_target

    fam = presets.family(opts.family) if opts.family else None
    base = opts.base or (fam.base if fam else None)
    aligned = opts.aligned or (fam.aligned if fam else None)
    if not base or not aligned:
        raise OptionError("base", "and --aligned are required (or --family)")
    alphas = opts.alpha or [fam.alpha if fam else 0.3]
    if len(set(alphas)) != len(alphas):
        raise OptionError("alpha", f"holds a value twice: {alphas}")
    options: dict = {}
    if fam is not None:
        options.update(family=opts.family, reference_decoding=opts.reference_decoding)
    for role, fmt in (("base", opts.base_format), ("aligned", opts.aligned_format)):
        if fmt:
            options[f"{role}.format"] = fmt
    options.update(dtype=opts.dtype)
    if opts.trust_remote_code:
        options["trust_remote_code"] = True
    return [parse_target(TargetSpec.ed(base, aligned, a, name=f"ED alpha {a}", tags={"alpha": a}, options=options))
            for a in alphas]


def export_rows(run_dir, path) -> int:
    """Write the flat rows of an ED run (id, alpha, sample, query, response, num_tokens,
    finish_reason, target) to ``path`` (JSONL, atomically); returns the row count."""
    from deepalign.runs.rundir import RunDir
    from deepalign.utils import write_jsonl

    run = RunDir(run_dir).require()
    alpha = {t.label: t.tags.get("alpha") for t in run.info().targets}
    rows = [{"id": r.item, "alpha": alpha.get(r.target), "sample": r.sample,
             "query": r.prompt.get("query", r.prompt.get("text")), "response": r.response, "num_tokens": r.num_tokens,
             "finish_reason": r.finish_reason, "target": r.target} for r in run.rows()]
    return write_jsonl(path, rows)


def run_ed(options: EDOptions | None = None, generation: EDGenConfig | None = None, data: DataOptions | None = None,
           **kwargs) -> dict:
    """Run ED on every prompt for every alpha into the run directory ``out``; returns the
    run's summary (as :func:`deepalign.evaluation.runner.run_eval`).

    ``family`` (see :data:`deepalign.decoding.presets.ED_FAMILIES`) fills in the base and
    aligned models, alpha and prompt formats; explicit options override it.

    Example (two world models; any pair of HF models that share a tokenizer works)::

        >>> summary = run_ed(base="runs/base", aligned="runs/derta", alpha=[0.3, 1.0], prompts="world:harmful",
        ...                  world="runs/world", limit=2, out="runs/ed", quiet=True)
        >>> summary["run"]["n_responses"]
        4
    """
    from deepalign.evaluation.runner import run_eval
    from deepalign.utils import check_writable_dir, check_writable_file

    opts, gen, data_opts = build(kwargs, needs=ED_NEEDS, options=(EDOptions, options),
                                 generation=(EDGenConfig, generation), data=(DataOptions, data))
    if not opts.prompts:
        raise OptionError("prompts", "is required (a dataset spec or a .txt file)")
    if not opts.out:
        raise OptionError("out", "is required (the run directory)")
    if Path(opts.out).suffix == ".jsonl":
        raise OptionError("out", f"is a run directory now ({opts.out} looks like a file); give a directory, and "
                                 "--export FILE.jsonl for the flat rows")
    specs = ed_specs(opts)
    out = check_writable_dir(opts.out)
    if opts.export:
        check_writable_file(opts.export, what="export file")
    if opts.overwrite and out.exists():
        _check_before_wiping(specs, opts, data_opts)
        shutil.rmtree(out)
    from deepalign.runs.runlog import RunMismatch

    try:
        summary = run_eval(targets=specs, attacks=["direct"], datasets=[opts.prompts], judges=opts.judges,
                           world=opts.world, out_dir=str(out), batch_size=opts.batch_size, quiet=opts.quiet,
                           report=opts.report, device=None if opts.device == "auto" else opts.device,
                           generation=gen, data=data_opts)
    except RunMismatch as exc:
        raise DeepAlignError(f"{exc}, or pass --overwrite to start it afresh") from None
    if opts.export:
        export_rows(out, opts.export)
    return summary


def _check_before_wiping(specs, opts: EDOptions, data_opts: DataOptions) -> None:
    """What --overwrite must not throw away a run for: the models and the prompts must be there."""
    from deepalign.data.datasets import open_dataset
    from deepalign.decoding.registry import check_target

    for spec in specs:
        check_target(spec)
    open_dataset(opts.prompts, data_opts, world=opts.world)
