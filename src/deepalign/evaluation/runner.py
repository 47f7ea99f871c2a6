"""The evaluation runner: targets x attacks x datasets, judged, written resumably: :func:`run_eval`.

``run_eval`` appends one row per target x attack x dataset x item x sample to the run
directory (:mod:`deepalign.runs.rundir`), one batch at a time, each row complete
(response *and* verdicts) when written. A rerun of the same command reads the finished keys
and does only the rest: a ``kill -9`` loses nothing that was written and duplicates nothing.
Resuming with other generation settings or judges is refused, while adding targets, attacks
or datasets to a run is fine; ``deepalign judge`` adds judges to a finished run. At the end
:func:`deepalign.reports.run_report.build_report` writes ``summary.json``, ``report.md`` and the
plots.

Every target, attack and dataset is recorded in the run log (:mod:`deepalign.runs.runlog`)
with what it is: a target's spec, name, tags and the generation settings it really used (the
run's, under an ED family's reference decoding, under the spec's own options), an attack's
family, shape, depth and what the judges see, a dataset's role and identity.

Generation is batched: each ``target.generate`` call gets ``batch_size`` items at once. Batches
keep fixed boundaries over each dataset, so a resumed run regenerates an unfinished batch with
the same batch-mates; with the same ``batch_size`` a resumed *sampled* run then draws the
same samples as an uninterrupted one (Hugging Face targets seed each batch from its request
ids, composed targets each row).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from deepalign.data.datasets import DATA_NEEDS, DataOptions
from deepalign.decoding.base import GEN_NEEDS, GenConfig
from deepalign.errors import DeepAlignError, OptionError
from deepalign.judges.base import judge_batch
from deepalign.runs.rundir import RunDir, row_key
from deepalign.runs.runlog import JUDGE_SCOPES, DatasetRecord, ResponseRow, RunRecord, TargetRecord, judged_text, role_of
from deepalign.options import Test, build, choice, number
from deepalign.records import EvalPrompt, Verdict
from deepalign.utils import progress, quiet_libraries, set_seed


@dataclass
class EvalOptions:
    """What to evaluate (decoding settings are a :class:`GenConfig`)."""

    targets: list[str] | None = field(default=None, metadata={
        "aliases": ["--target"],
        "help": "target specs: hf:<dir or hub id>[,format=...], openai:<model>@<url>, ed:base=...,aligned=...,alpha=A, "
                "eft:..., w2s:... (see docs/evaluation.md)"})
    attacks: list[str] = field(default_factory=lambda: ["direct"], metadata={
        "help": "attack specs, comma- or space-separated: direct, prefill:K[w], completion, code, cipher:NAME, "
                "template:PATH, pair, ..."})
    datasets: list[str] | None = field(default=None, metadata={
        "aliases": ["--dataset"],
        "help": "world:<split> (needs --world), [kind:][preset:]<file or hub id>[,targets=FILE,...], or a preset name "
                "(gsm8k, mmlu, ...); see docs/data.md (default world:test with --world)"})
    judges: list[str] | None = field(default=None, metadata={
        "aliases": ["--judge"],
        "help": "judges: keyword, keyword:nocase, oracle, harmbench:<model>, strongreject[:finetuned:<model>], "
                "moderation[:model], llm:jbb-hardened, llm:strongreject-hardened, classifier:<model> (see "
                "docs/evaluation.md; default: oracle,keyword with --world, else keyword)"})
    judge_scope: str = field(default="continuation", metadata={
        "help": "what the judges see of a reply to an attack that forces the start of the answer: continuation (what "
                "the model wrote) or full (the forced start and the continuation, as the DeRTa result files and Qi et "
                "al. 2025's judge do)"})
    out_dir: str | None = field(default=None, metadata={"aliases": ["--out"], "help": "run directory (rerun to resume)"})
    world: str | None = field(default=None, metadata={"help": "the embedded world directory (world: datasets, oracle)"})
    batch_size: int = field(default=16, metadata={"help": "items per generate call"})
    workers: int = field(default=1, metadata={
        "help": "forked CPU worker processes of one thread each, each taking every N-th batch: a small model decodes "
                "faster on N such processes than on N threads of one (same rows; docs/evaluation.md#workers)"})
    attacker: str | None = field(default=None, metadata={"help": "target spec of the PAIR attacker model"})
    judge_model: str | None = field(default=None, metadata={
        "help": "target spec of the model behind llm judges, e.g. openai:gpt-4o-mini@https://api.openai.com/v1"})
    device: str | None = field(default=None, metadata={"help": "device for local models (default: cuda if available)"})
    log_prompts: bool = field(default=False, metadata={"help": "store the rendered prompt of every response"})
    allow_unknown_tokens: bool = field(default=False, metadata={
        "help": "run attacks that make a target read words its tokenizer does not know (mapped to its unknown "
                "token) instead of refusing them; the rows keep those words and the report flags their cells"})
    report: bool = field(default=True, metadata={"help": "build summary.json, report.md and plots at the end"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars or summary lines"})

    def __post_init__(self):
        number("batch_size", self.batch_size, low=1, integer=True)
        number("workers", self.workers, low=1, integer=True)
        choice("judge_scope", self.judge_scope, JUDGE_SCOPES)


def _uses_pair(attacks) -> bool:
    from deepalign.registry import split_list

    specs = [attacks] if isinstance(attacks, str) else list(attacks or [])
    return any(not isinstance(a, str) for a in specs) or any(
        a.split(":", 1)[0].strip() == "pair" for a in split_list(specs))


def _eval_needs() -> dict:
    """``run_eval``'s options that only another setting reads (deepalign.options.check_needs)."""
    from deepalign.judges.registry import reads_judge_model

    return {"attacker": Test("attacks", _uses_pair, "a pair attack in --attacks"),
            "judge_model": Test("judges", reads_judge_model, "an llm or strongreject judge in --judges"),
            **GEN_NEEDS, **DATA_NEEDS}


def judge_outputs(judges, responses: Sequence[str], items: Sequence[EvalPrompt]) -> tuple[dict[str, list[Verdict]], dict]:
    """Every judge's verdicts on ``responses`` (and the seconds each judge took). A judge may
    return :class:`~deepalign.records.Verdict` records or flat dicts of verdict fields."""
    verdicts: dict[str, list[Verdict]] = {}
    seconds = {}
    for j in judges:
        t = time.perf_counter()
        verdicts[j.name] = judge_batch(j, responses, items)
        seconds[j.name] = time.perf_counter() - t
    return verdicts, seconds


def check_judges_gave_verdicts(rows, judges) -> None:
    """A judge whose every verdict on a run is an error judged nothing: that is a failure (exit
    status 2, naming the judge and its first error), never a run that looks finished. The rows
    and the report stay, with the errors in their column."""
    for name in judges:
        mine = [r.verdicts[name] for r in rows if name in r.verdicts]
        if mine and all(v.error for v in mine):
            raise DeepAlignError(f"judge {name} gave no verdict: all {len(mine)} of its verdicts are errors (first: "
                                 f"{mine[0].error[:200]}); the report shows them in its error column")


def load_datasets(datasets, *, world=None, limit: int | None = None, options=None) -> dict[str, list[EvalPrompt]]:
    """``{name: items}`` of every dataset spec (``options``: a :class:`DataOptions`; ``limit``
    the first N items of each). The same dataset given twice (by two paths) is loaded once."""
    return {name: ds.items for name, ds in open_datasets(datasets, world=world, limit=limit, options=options).items()}


def open_datasets(datasets, *, world=None, limit: int | None = None, options=None) -> dict:
    """``{name: Dataset}``: the datasets of a run, keyed by their identity-bearing name."""
    from dataclasses import replace

    from deepalign.data.datasets import DataOptions, Dataset, open_dataset

    options = options or DataOptions()
    if limit is not None:
        options = replace(options, limit=limit, sample=None)
    if isinstance(datasets, str):
        datasets = [datasets]
    out: dict[str, Dataset] = {}
    if isinstance(datasets, Mapping):
        for name, items in datasets.items():
            items = list(items)
            out[name] = Dataset(spec=name, name=name, items=items, total=len(items))
    else:
        for spec in datasets:
            ds = open_dataset(spec, options, world=world)
            if ds.name in out:  # the same content under another path: one dataset
                out[ds.name].notes.append(f"also given as {spec}")
                continue
            out[ds.name] = ds
    if not out:
        raise DeepAlignError("no datasets given")
    return out


def not_applied_reason(attack, item: EvalPrompt) -> str | None:
    """Why ``attack`` cannot run on ``item`` (None: it can)."""
    applied = item.meta.get("attack_applied")
    if applied and attack.label != "direct":
        return f"the prompts already carry the {applied} attack (a DeRTa test set): only direct applies"
    if attack.applies(item):
        return None
    if not item.harmful:
        hint = ""
        if item.meta.get("functional_category"):
            hint = " (HarmBench: join its targets file, harmbench:FILE,targets=harmbench_targets_text.json)"
        return f"needs a reference harmful response, which {item.kind} items of this dataset lack{hint}"
    return "the attack does not apply to these items"


def _runs_on(attack, item: EvalPrompt) -> bool:
    return not_applied_reason(attack, item) is None


def applicability(attacks, data: Mapping[str, list[EvalPrompt]]) -> list[dict]:
    """Every attack x dataset pair where some items cannot be attacked: how many, and why."""
    out = []
    for a in attacks:
        for dname, items in data.items():
            reasons: dict[str, int] = {}
            for it in items:
                why = not_applied_reason(a, it)
                if why is not None:
                    reasons[why] = reasons.get(why, 0) + 1
            if reasons:
                skipped = sum(reasons.values())
                out.append({"attack": a.label, "dataset": dname, "skipped": skipped, "items": len(items),
                            "applied": len(items) - skipped, "reasons": reasons})
    return out


@dataclass
class _Target:
    """One target of a run: what it is (its record), how to build it (``spec``: its parsed
    spec, or the object itself) and the generation settings it really uses."""

    spec: Any
    record: TargetRecord
    config: GenConfig
    built: Any = None
    #: (attack, dataset, item) -> words of the attack's text this target cannot read
    unknown: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.record.label

    def build(self, batch_size: int, device):
        from deepalign.decoding.registry import make_target

        return self.built if self.built is not None else make_target(self.spec, batch_size=batch_size, device=device)


def open_target(spec, gen: GenConfig, *, batch_size: int, device) -> _Target:
    """A run's target from a spec string, a :class:`~deepalign.decoding.spec.TargetSpec`, a
    parsed spec or a Target object. A spec is parsed here, once; a local model is only checked
    (paths, direction files) and loaded when it has work; a server target is built now (its
    probe runs before any work)."""
    from deepalign.decoding.hf import apply_overrides
    from deepalign.decoding.registry import check_target, make_target
    from deepalign.decoding.spec import ParsedSpec, TargetSpec, parse_target

    if isinstance(spec, (str, TargetSpec, ParsedSpec)):
        spec = parse_target(spec)
        built, models = None, {}
        if spec.local:
            models = check_target(spec).models
        else:
            built = make_target(spec, batch_size=batch_size, device=device)
        overrides, kind, shown, name, tags = spec.generation, spec.kind, spec.label, spec.name, spec.tag_dict
    else:
        if not callable(getattr(spec, "generate", None)):
            raise DeepAlignError(f"not a target: {spec!r}")
        built, shown, kind = spec, getattr(spec, "name", type(spec).__name__), type(spec).__name__
        overrides, name, tags, models = dict(getattr(spec, "generation", {}) or {}), None, {}, {}
    config = apply_overrides(gen, overrides)
    if config.num_samples > 1 and not config.do_sample:
        raise OptionError("num_samples", f"> 1 needs sampling, which target {shown} does not do (add --do_sample)")
    record = TargetRecord(label=shown, spec=shown, kind=kind, generation=json.loads(json.dumps(asdict(config))),
                          name=name, tags=tags, models=models)
    return _Target(spec, record, config, built)


def dataset_record(ds) -> DatasetRecord:
    kinds = ds.kinds()
    return DatasetRecord(name=ds.name, spec=ds.spec, role=ds.role or role_of(kinds), title=ds.title or ds.name,
                         preset=ds.preset, identity=ds.identity, items=len(ds.items), total=ds.total,
                         selection=ds.selection, kinds=kinds, notes=list(ds.notes))


@dataclass
class _Setup:
    """Everything a run needs, checked and built before any work."""

    targets: list[_Target]
    data: dict[str, list[EvalPrompt]]
    judges: list
    attacks: list
    record: RunRecord


def _check_options(opts: EvalOptions, gen: GenConfig) -> None:
    if gen.num_samples > 1 and not gen.do_sample:
        raise OptionError("num_samples", "> 1 needs --do_sample (greedy samples would all be the same)")
    if not opts.targets:
        raise OptionError("targets", "is required: give at least one --target SPEC")
    if not opts.out_dir:
        raise OptionError("out_dir", "is required: give --out RUN_DIR")
    if opts.workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise OptionError("workers", "> 1 is for a run in one process: under accelerate launch every process already "
                                     "takes its share of the batches")
    if not (opts.datasets or opts.world):
        raise OptionError("datasets", "is required: give --dataset SPEC (or --world DIR to use world:test)")


def _make_attacks(opts: EvalOptions, judge_objs, device):
    from deepalign.attacks import make_attacks
    from deepalign.attacks.base import Attack
    from deepalign.decoding.registry import make_target

    attacks = opts.attacks
    if attacks and all(isinstance(a, str) for a in attacks):
        attacker = opts.attacker
        if isinstance(attacker, str):
            attacker = make_target(attacker, batch_size=opts.batch_size, device=device)
        return make_attacks(attacks, attacker=attacker, pair_judge=judge_objs[0], world=opts.world), attacker
    objs = list(attacks)
    if not all(isinstance(a, Attack) for a in objs):
        raise DeepAlignError("attacks must be Attack objects or specs")
    labels = [a.label for a in objs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise DeepAlignError(f"attack(s) given twice: {', '.join(dup)}")
    return objs, None


def _setup(opts: EvalOptions, gen: GenConfig, data_opts: DataOptions, device) -> _Setup:
    """Targets, datasets, judges and attacks, cheap checks first (spec syntax, API keys,
    datasets: a malformed row fails before any model is loaded), and the run's record."""
    from deepalign.evaluation.workers import check_workers
    from deepalign.judges import make_judges

    targets = [open_target(t, gen, batch_size=opts.batch_size, device=device) for t in opts.targets]
    labels = [t.label for t in targets]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise DeepAlignError(f"targets given twice: {', '.join(dup)}")
    opened = open_datasets(opts.datasets or ["world:test"], world=opts.world, options=data_opts)
    data = {name: ds.items for name, ds in opened.items()}
    judges = opts.judges or (["oracle,keyword"] if opts.world else ["keyword"])
    judge_objs = judges if not isinstance(judges[0], str) else make_judges(
        judges, world=opts.world, judge_target=opts.judge_model, device=device)
    attack_objs, attacker = _make_attacks(opts, judge_objs, device)
    skipped = applicability(attack_objs, data)
    for a in attack_objs:
        if not any(not_applied_reason(a, it) is None for items in data.values() for it in items):
            why = sorted({r for s in skipped if s["attack"] == a.label for r in s["reasons"]})
            raise DeepAlignError(f"attack {a.label} applies to no item of the datasets: {'; '.join(why)}")
    check_workers(opts.workers, device, targets, judge_objs, attacker)
    check_local_attacks(targets, attack_objs)
    check_vocabulary(targets, attack_objs, data, allow=opts.allow_unknown_tokens)
    # servers: one probe each before any work (prefill support, log-probs, sampling)
    notes = probe_servers(targets, attack_objs, judge_objs, attacker)
    for t in targets:
        t.record.notes = notes.get(t.label, [])
    for key, found in notes.items():
        if key not in labels:  # a judge's model
            targets[0].record.notes.append(f"{key}: {'; '.join(found)}")
    record = RunRecord(generation=json.loads(json.dumps(asdict(gen))), judges=[j.name for j in judge_objs],
                       judge_scope=opts.judge_scope, targets=[t.record for t in targets],
                       attacks=[a.info() for a in attack_objs],
                       datasets=[dataset_record(ds) for ds in opened.values()], not_applied=skipped)
    return _Setup(targets, data, judge_objs, attack_objs, record)


def check_local_attacks(targets: list[_Target], attacks) -> None:
    """Attacks that read a model's next-token ranking or write token ids into its answer
    (``Attack.needs_local``) refuse, before any work, a target that is not a local model."""
    for a in attacks:
        why = getattr(a, "needs_local", None)
        if not why:
            continue
        single = getattr(a, "needs_single_model", False)
        method = getattr(a, "server_method", None)
        for t in targets:
            local = (callable(getattr(t.built, "next_logprobs", None)) if t.built is not None
                     else bool(getattr(t.spec, "local", False)))
            if not local and method and callable(getattr(t.built, method, None)):
                if getattr(t.built, "encoder", None) is None:
                    raise DeepAlignError(f"attack {a.label} {why}: server target {t.label} needs the model's "
                                         "tokenizer for it; give tokenizer=<model dir or hub id>")
                continue
            if not local:
                where = "local Hugging Face and ablated targets" if single else \
                    "local Hugging Face, composed and ablated targets"
                raise DeepAlignError(f"attack {a.label} {why}: target {t.label} is not a local model (the attack runs "
                                     f"on {where}, not on servers)")
            if single and t.record.kind not in ("hf", "ablate", "actadd", "ada-rk", "ada-lp", "HFTarget", "AdaTarget"):
                raise DeepAlignError(f"attack {a.label} {why}: target {t.label} is a composition of several models "
                                     f"({t.record.kind}); the attack runs on one Hugging Face model, plain, ablated "
                                     "or defended by ADA")


def run_eval(options: EvalOptions | None = None, generation: GenConfig | None = None, data: DataOptions | None = None,
             **kwargs) -> dict:
    """Evaluate every target on every (attack, dataset) pair; returns the summary.

    ``options`` / ``generation`` / ``data``: an :class:`EvalOptions`, a :class:`GenConfig` and a
    :class:`~deepalign.data.datasets.DataOptions` (``sample``, ``limit``, ``fields``, ...), or
    their fields as keyword arguments. ``targets``: spec strings (``hf:...``, ``openai:...``,
    ``ed:...``; local models are loaded one at a time, only when they have work left),
    :class:`~deepalign.decoding.registry.TargetSpec` objects (with a display name and tags the
    run log keeps) or Target objects. ``attacks``: specs or Attack objects. ``datasets``: specs
    (``world:test``, a file) or ``{name: items}``. ``judges``: names or judge objects; the first
    also guides PAIR. ``attacker`` / ``judge_model``: the PAIR attacker and the model behind
    LLM judges (a spec or a Target).

    Example (the world's held-out harmful queries, two attacks)::

        >>> summary = run_eval(targets=["hf:runs/derta"], attacks=["direct", "prefill:8"], datasets=["world:harmful"],
        ...                    world="runs/world", limit=4, out_dir="runs/eval", quiet=True)
        >>> sorted({(c["attack"], c["judge"]) for c in summary["results"]})[:2]
        [('direct', 'keyword'), ('direct', 'oracle')]
    """
    opts, gen, data_opts = build(kwargs, needs=_eval_needs(), options=(EvalOptions, options),
                                 generation=(GenConfig, generation), data=(DataOptions, data))
    _check_options(opts, gen)
    run = RunDir(opts.out_dir).require_current()
    procs = Processes()
    device = procs.device(opts.device)
    set_seed(gen.seed)
    with quiet_libraries(opts.quiet):
        setup = _setup(opts, gen, data_opts, device)
        info = run.merge_info(setup.record)  # refuses other settings before any work
        _Execution(run, setup, info, opts, procs, device).execute()
    if not procs.main or not opts.report:
        return {}
    if not run.is_run():
        raise DeepAlignError(f"nothing to report: no responses were written to {run.path}")
    from deepalign.reports.run_report import build_report

    summary = build_report(run.path, quiet=opts.quiet)
    check_judges_gave_verdicts(run.rows(), summary.get("judges", []))
    return summary


def _tokenizer(t: _Target):
    """The tokenizer target ``t`` reads forced text with, loaded alone for a local model (the
    weights wait until the target has work)."""
    from deepalign.evaluation.vocabulary import tokenizer_of

    if t.built is not None:
        return tokenizer_of(t.built)
    if t.record.models:
        from deepalign.models import load_tokenizer

        return load_tokenizer(next(iter(t.record.models.values())))
    return None


def check_vocabulary(targets: list[_Target], attacks, data, *, allow: bool) -> None:
    """No attack may make a target read a word its tokenizer does not know
    (:mod:`deepalign.evaluation.vocabulary`): refused before any work, or with ``allow`` kept
    per row for the report to flag."""
    from deepalign.evaluation.vocabulary import fingerprint, unknown_words

    found: dict[str, dict] = {}  # targets that read words alike are checked once
    for t in targets:
        tokenizer = _tokenizer(t)
        if tokenizer is None:
            t.unknown = {}
        else:
            key = fingerprint(tokenizer)
            if key not in found:
                found[key] = unknown_words(tokenizer, attacks, data, applies=_runs_on)
            t.unknown = found[key]
        if t.unknown and not allow:
            (attack, _, _), words = next(iter(t.unknown.items()))
            cells = sum(1 for key in t.unknown if key[0] == attack)
            raise DeepAlignError(
                f"attack {attack} makes target {t.label} read words its tokenizer does not know ("
                + ", ".join(repr(w) for w in words[:3]) + f"; {cells} item(s)): they become its unknown token; give "
                "text in its vocabulary (e.g. completion:start=...) or pass --allow_unknown_tokens to run it anyway "
                "(the report then flags those rows)")


def probe_servers(targets: list[_Target], attacks, judges, attacker) -> dict[str, list[str]]:
    """Probe every target that talks to a server (and the judges' and attacker's models) for
    what this run needs, before any work; returns the notes per target for the report."""
    forced = {getattr(a, "forced", None) for a in attacks}
    notes: dict[str, list[str]] = {}
    for t in targets:
        if t.built is not None and callable(getattr(t.built, "probe", None)):
            found = t.built.probe(t.config, prefill=bool(forced - {None}), prefill_tokens="tokens" in forced)
            if found:
                notes[t.label] = found
    for j in judges:
        model = getattr(j, "target", None)
        if callable(getattr(model, "probe", None)) and model.caps is None:
            found = model.probe(j.config)
            if found:
                notes[f"judge {j.name}: {model.name}"] = found
    if callable(getattr(attacker, "probe", None)) and attacker.caps is None:
        attacker.probe(GenConfig(max_new_tokens=8, do_sample=True))
    return notes


class _Execution:
    """Generating a run's missing rows: the plan (fixed batches), this process's share of it,
    writing rows as each batch is judged, folding the shards of a multi-process run."""

    def __init__(self, run: RunDir, setup: _Setup, info: RunRecord, opts: EvalOptions, procs, device):
        self.run, self.setup, self.info, self.opts, self.procs, self.device = run, setup, info, opts, procs, device
        self.started = False
        self.repaired = False

    def execute(self) -> None:
        setup, procs, run = self.setup, self.procs, self.run
        done = run.done_keys() if run.is_run() else set()
        plan, total = _plan(setup.targets, setup.data, setup.attacks, done, self.opts.batch_size)
        # every key of the run in the order one process writes them (how shards are folded)
        order = _order(_plan(setup.targets, setup.data, setup.attacks, set(), self.opts.batch_size)[0])
        procs.barrier()  # every process has read the same finished rows before any process writes more
        if self.opts.workers > 1 and total:
            return self._execute_forked(plan, done, order)
        mine, my_total = _share(plan, done, procs.rank, procs.size)
        with contextlib.ExitStack() as stack:
            self.stack = stack
            if procs.size > 1:  # the main process sets the directory up and holds the lock
                if procs.main and (total or run.shards()):
                    self.start()
                procs.barrier()
            found = self.generate(mine, my_total, done)
            self.finish(found, order)

    def _execute_forked(self, plan, done: set, order: list[str]) -> None:
        """``--workers N``: N forked workers each take every N-th batch
        (:mod:`deepalign.evaluation.workers`); this process waits and folds their shards."""
        from deepalign.evaluation.workers import LocalWorkers

        workers = LocalWorkers(self.opts.workers)
        with contextlib.ExitStack() as stack:
            self.stack = stack
            self.start()  # the directory and its lock belong to this process
            rank = workers.fork()
            if rank is not None:  # a worker: its share, then it ends
                self.procs = workers
                try:
                    found = self.generate(*_share(plan, done, rank, workers.size), done)
                except BaseException as exc:
                    workers.leave(error=exc)
                workers.leave(found)
            try:
                parts = workers.gather()
            except BaseException:
                workers.stop()
                raise
            self._record_examples(parts)
            self.run.fold_shards(order)
            self.run.write_info(self.info)

    def start(self) -> None:
        if not self.started:  # the directory appears with the first finished rows
            run = self.run
            run.create()
            self.stack.enter_context(run.lock())
            self.info = run.merge_info(self.info)  # another process may have written meanwhile
            run.done_keys(repair=True)  # cut a torn last line before appending
            run.add_items(self.setup.data)
            run.write_info(self.info)
            self.started = True

    def write(self, rows: list[ResponseRow]) -> None:
        try:
            if self.procs.size == 1:
                self.start()
                self.run.append_rows(rows)
            else:  # a shard of this process left by a killed run may end in a torn line
                self.run.append_shard(self.procs.rank, rows, repair=not self.repaired)
                self.repaired = True
        except DeepAlignError as exc:
            raise DeepAlignError(f"{exc}; the rows written so far are kept: rerun the same command to resume") from None

    def generate(self, mine, my_total: int, done: set) -> dict:
        from deepalign.decoding.registry import keep_models, shared_models

        opts, bar = self.opts, None
        examples = self.info.examples
        found: dict[str, tuple[int, str | None]] = {}  # cell -> (batch, prompt): the first batch wins
        self.stack.enter_context(shared_models())  # an ED sweep loads its two models once
        for t, work in mine:
            keep_models(t.record.models.values())
            target = t.build(opts.batch_size, self.device)
            if bar is None:  # after the first model loads, so a load error is the only output
                bar = self.stack.enter_context(progress(total=my_total, quiet=opts.quiet or not self.procs.main,
                                                        desc="eval", unit="resp"))
            for dname, attack, batches in work:
                bar.set_description(f"{t.label} | {attack.label} | {dname}"[-60:])
                cell = f"{t.label} | {attack.label} | {dname}"
                if cell not in examples:
                    found[cell] = (batches[0][0], _example(target, attack, batches[0][1][0]))
                for _, batch in batches:
                    rows = _run_batch(target, t, attack, dname, batch, self.setup.judges, done, opts)
                    self.write(rows)
                    done.update(r.key for r in rows)
                    bar.update(len(rows))
            del target
        return found

    def _record_examples(self, parts: list[dict]) -> None:
        for cell, (_, prompt) in sorted((kv for part in parts for kv in part.items()), key=lambda kv: -kv[1][0]):
            self.info.examples[cell] = prompt  # in descending batch order, so the lowest batch is set last

    def finish(self, found: dict, order: list[str]) -> None:
        procs, run = self.procs, self.run
        if procs.size > 1:
            procs.barrier()  # every shard is complete
            parts = procs.gather(found)
        else:
            parts = [found]
        self._record_examples(parts)
        if procs.size > 1:
            if procs.main and self.started:
                run.fold_shards(order)
                run.write_info(self.info)
        elif self.started:
            if run.shards():  # rows of an earlier multi-process run that was cut off
                run.fold_shards(order)
            run.write_info(self.info)
        elif run.shards():  # nothing left to generate, but an earlier run left shards
            self.start()
            run.fold_shards(order)


def _plan(targets: list[_Target], data, attacks, done, batch_size: int):
    """Per target, the (dataset, attack, batches) with a sample still missing. Batches have
    fixed boundaries over the dataset (not over what is left), so a resumed run regenerates
    an unfinished batch exactly as it was: with the same batch-mates, a sampled target draws
    the same samples."""
    plan, total = [], 0
    for t in targets:
        work = []
        for dname, items in data.items():
            for a in attacks:
                todo = [it for it in items if not_applied_reason(a, it) is None]
                batches = []
                for i in range(0, len(todo), batch_size):
                    batch = todo[i: i + batch_size]
                    missing = _missing(t, a, dname, batch, done)
                    if missing:
                        batches.append((i // batch_size, batch))
                        total += missing
                if batches:
                    work.append((dname, a, batches))
        if work:
            plan.append((t, work))
    return plan, total


def _missing(t: _Target, attack, dname: str, batch, done) -> int:
    return sum(row_key(t.label, attack.label, dname, it.id, s) not in done for it in batch
               for s in range(t.config.num_samples))


def _order(plan) -> list[str]:
    """The keys of ``plan`` in the order one process writes them."""
    return [row_key(t.label, a.label, dname, it.id, s) for t, work in plan for dname, a, batches in work
            for _, batch in batches for it in batch for s in range(t.config.num_samples)]


def _share(plan, done, rank: int, size: int):
    """Process ``rank``'s part of ``plan``: every ``size``-th batch, counted over the whole plan
    (so batches of one cell spread over the processes), and the responses it owes."""
    if size == 1:
        return plan, sum(_missing(t, a, d, b, done) for t, w in plan for d, a, bs in w for _, b in bs)
    mine, total, n = [], 0, 0
    for t, work in plan:
        kept = []
        for dname, a, batches in work:
            own = []
            for batch in batches:
                if n % size == rank:
                    own.append(batch)
                    total += _missing(t, a, dname, batch[1], done)
                n += 1
            if own:
                kept.append((dname, a, own))
        if kept:
            mine.append((t, kept))
    return mine, total


class Processes:
    """This process's place in a run started by ``accelerate launch`` (or torchrun): one model
    copy per process, every process takes every ``size``-th batch. A plain run is process 0
    of 1 and needs no process group."""

    def __init__(self):
        import os

        self.state, self.rank, self.size = None, 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            self.state = PartialState(cpu=not torch.cuda.is_available())  # no GPU: gloo on CPU
            self.rank, self.size = self.state.process_index, self.state.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, asked: str | None) -> str | None:
        """The device a local model goes on: as asked, else this process's own device."""
        return asked if asked or self.state is None else str(self.state.device)

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def gather(self, obj) -> list:
        if self.state is None:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])


def _example(target, attack, item: EvalPrompt) -> str | None:
    """The prompt ``target`` reads for the first item of a cell (shown in the report)."""
    render = getattr(target, "render", None)
    if render is None:
        return None
    try:
        return render(attack.attacked(item).request) if hasattr(attack, "attacked") else None
    except (DeepAlignError, NotImplementedError):
        return None


def answer_fields(item: EvalPrompt, response: str) -> dict[str, Any]:
    """``correct`` (None without an answer) and, for items with one, what was extracted and
    whether anything could be (``answer_status``: correct / wrong / no_answer)."""
    from deepalign.data.answers import score_answer

    score = score_answer(item, response)
    if score is None:
        return {"correct": None}
    return {"correct": score.correct, "extracted": score.extracted, "answer_status": score.status}


def _request_dict(req, meta: dict) -> dict:
    """The request of a row. A token-depth prefill is stored as the text that was forced
    (not the whole reference it was cut from); forced token ids as the ids and their text."""
    tokens = req.prefill_tokens is not None or req.prefill_ids is not None
    prefill = meta.get("forced_text", "") if tokens else req.prefill
    ids = list(req.prefill_ids) if req.prefill_ids is not None else None
    return {k: v for k, v in (("query", req.query), ("text", req.text), ("prefill", prefill),
                              ("prefill_tokens", req.prefill_tokens), ("prefill_ids", ids),
                              ("system", req.system)) if v not in (None, "")}


def _run_batch(target, t: _Target, attack, dname: str, batch: list[EvalPrompt], judges, done: set,
               opts: EvalOptions) -> list[ResponseRow]:
    tl = t.label
    t0 = time.perf_counter()
    outputs = attack.run(target, batch, t.config)
    gen_s = time.perf_counter() - t0
    if len(outputs) != len(batch):
        raise DeepAlignError(f"attack {attack.label} returned {len(outputs)} results for {len(batch)} items")
    flat = [(it, s, o) for it, outs in zip(batch, outputs) for s, o in enumerate(outs)]
    flat = [(it, s, o) for it, s, o in flat if row_key(tl, attack.label, dname, it.id, s) not in done]
    prompts = [_request_dict(o.request, o.meta) for _, _, o in flat]
    verdicts, judge_s = judge_outputs(judges, [judged_text(o.response, pr, opts.judge_scope)
                                               for (_, _, o), pr in zip(flat, prompts)], [it for it, _, _ in flat])
    rows = []
    share = 1 / max(1, sum(len(o) for o in outputs))
    for idx, (it, s, o) in enumerate(flat):
        row = ResponseRow(key=row_key(tl, attack.label, dname, it.id, s), target=tl, attack=attack.label, dataset=dname,
                          item=it.id, kind=it.kind, sample=s, prompt=prompts[idx],
                          response=o.response, raw=o.raw if o.raw != o.response else None, num_tokens=o.num_tokens,
                          finish_reason=o.finish_reason, meta=o.meta,
                          category=str(it.meta["category"]) if it.meta.get("category") is not None else None,
                          verdicts={name: vs[idx] for name, vs in verdicts.items()},
                          timing={"generate_s": round(gen_s * share, 6),
                                  **{f"judge_{k}_s": round(v / max(1, len(flat)), 6) for k, v in judge_s.items()}},
                          **answer_fields(it, o.response))
        if opts.log_prompts and hasattr(target, "render"):
            row.prompt["rendered"] = target.render(o.request)
        unknown = t.unknown.get((attack.label, dname, it.id))
        if unknown:
            row.meta = {**row.meta, "unknown_words": unknown}
        rows.append(row)
    return rows
