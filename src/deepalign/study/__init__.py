"""``deepalign study``: the end-to-end replication of both seed papers (the main job).

On the embedded world (the default) it chains the public stages, each the same function a
user calls one by one:

1. ``build_world``  -> ``OUT/world``        (deepalign world)
2. ``pretrain``     -> ``OUT/base``         (deepalign pretrain)
3. ``train`` x 5    -> ``OUT/models/<recipe>`` for vanilla, harmful-prefix, rto, derta, and
   dpo on top of vanilla                    (deepalign train)
4. ``run_eval``     -> ``OUT/eval/attacks`` (every model x the attack battery on held-out
   harmful queries, and on queries for misdeeds the alignment data never shows),
   ``OUT/eval/benign`` (over-refusal and helpfulness), ``OUT/eval/ed`` (Emulated
   Disalignment of the base against each aligned model, sampled)  (deepalign eval)
5. the fine-tuning attack -> ``OUT/finetune/<model>/<data>-<objective>``, ``OUT/eval/finetune``,
   ``OUT/eval/finetune-steps``: vanilla under plain and constrained SFT on harmful and benign
   data, every aligned model under the plain attack checkpoint by checkpoint
   (deepalign train --recipe sft, deepalign eval; :mod:`deepalign.study.finetune`)
6. refusal directions -> ``OUT/direction/<model>``, ``OUT/eval/direction``: a direction per
   aligned model, each model with its own direction ablated (deepalign direction, deepalign
   eval with ``ablate:`` targets; :mod:`deepalign.study.direction`)
7. ``depth_profiles`` -> ``OUT/depth/<dataset>``: per-token KL(aligned || base), the
   refusal-token probability and the projection on the refusal direction along harmful
   responses, every recipe; and KL(fine-tuned || vanilla)  (deepalign depth)
8. the study report ``OUT/report.md`` with plots and a claims section that checks each
   claim from the measured numbers with its 95% interval (PASS / FAIL / N/A, with the
   numbers), and the time each stage took.

Every training after pretraining (step 3, step 5's runs, the adaptive stage's refusal-prefix
runs, the defence axis's PRESTO run and probe) reads no evaluation, so the study makes them
all right after pretraining, two at a time in forked one-thread processes on a CPU
(:mod:`deepalign.study.jobs`; ``--workers 1``: one after another), and evaluates after.

``--seeds 0 1 2`` runs the whole study once per seed into ``OUT/seed-<n>/`` and writes
``OUT/report.md`` with one claims table (each seed and pooled over seeds) and
``OUT/study.json``.

Finished stages are reused on rerun (a model directory only exists once its training
finished; the evaluation runner skips finished rows); ``--fresh`` redoes everything.
``--scale`` makes a bigger, slower, more faithful run. With ``--base`` (a hub id or a local
model directory) the same stages run on real models and data.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from deepalign.attacks.base import Attack
from deepalign.attacks.basic import Completion, Direct, Prefill, answer_start
from deepalign.attacks.shapes import ShapeAttack
from deepalign.data.recipes import ALIGNMENT_RECIPES, RTO_RECIPES
from deepalign.decoding.registry import TargetSpec
from deepalign.errors import OptionError
from deepalign.options import build, number
from deepalign.registry import split_list
from deepalign.study.models import ALIGNED_MODELS, BASE
from deepalign.utils import write_json

# -- the attack battery and how it is judged ---------------------------------------------------
#: prefill depths (tokens of a harmful response forced; 0: the direct query)
DEPTHS = (0, 2, 4, 8, 16, 32)
# ED alphas: the reference defaults for Llama-2 (0.3) and Llama / Vicuna / Mistral (0.6). On the
# world's dev split alpha 1.0 saturated (ED against vanilla 90-95% harmful), which leaves no
# room to see a better-aligned model make ED more harmful still.
ALPHAS = (0.3, 0.6)
#: ED is sampled at this temperature (every other evaluation is greedy)
ED_TEMPERATURE = 0.7
#: items per batch of the ED evaluation: the base model's sampled rows draw from a generator
#: seeded by their batch (deepalign.decoding.hf), so the batch size is part of the study's draws;
#: 64, the study's batch when these draws were first reported (greedy rows do not depend on it)
ED_BATCH = 64
#: items per batch, at most, of the evaluations that decode in their own row-by-row loops (RAP,
#: insertion, ADA's checks), of ADA-LP's probe and of the teacher-forced depth scoring: at 128
#: the adaptive and defence evaluations took 70 and 72 s of seed 0 against 56 and 53 s at 64
#: (the same rows), as rows of a longer batch wait for its slowest row
STEP_BATCH = 64
MID, MID_DEPTHS = 24, (8, 16)  # prefills that start mid-response (24 tokens in): a shifted shape
ROLEPLAYS = ("trickster", "game", "story")  # the world's role-play templates (deepalign.world.lexicon)
#: the judges of every evaluation, the first the one the claims read: the world's oracle (with the
#: case-blind keyword judge beside it), or on real models the keyword judge
WORLD_JUDGES = ("oracle", "keyword:nocase")
REAL_JUDGES = ("keyword",)

# -- the world's alignment mixtures -------------------------------------------------------------
# Safety records per helpful record in the world's alignment mixtures (vanilla's q -> refusal,
# harmful-prefix's and RTO's records, DeRTa's both), chosen on the dev splits of seed 0 (and
# checked on seed 1; docs/study.md#choosing-the-mixture-on-dev): the reference mixes 60K helpful
# with 6K safety examples (0.1). At 0.1 DeRTa was too weak on dev (26.7% harmful on direct
# queries), at the former one-per-triple 0.5 it cost 1.3 points of helpful accuracy and vanilla
# continued the world's affirmative opener only 36.7% of the time; 0.2 kept vanilla shallow
# (55% and 97% on seeds 0 and 1). RTO keeps 20% of its positions (the reference keeps 5% for
# full fine-tuning): at 5% with the smaller mixture DeRTa refused only 79% of seed 1's direct
# dev queries; at 20% it refused all on both seeds. A lower learning rate (1e-4) left vanilla
# answering 12-43% of direct dev queries harmfully.
WORLD_SAFETY_RATIO = 0.2
WORLD_RTO_KEEP = 0.2

# -- --scale: a bigger world and base model -----------------------------------------------------
# --scale's world: a 48000-document corpus uses more of the held-out phrasings, which dev may not
# repeat: about 90 unseen-misdeed dev queries are left (seeds 0-3), so it draws 72 of them
SCALE_WORLD = {"n_pretrain": 48000, "n_train_triples": 2000, "n_train_helpful": 4000, "n_dev_unseen": 72}
#: --scale's base model (pretrain's options)
SCALE_PRETRAIN = {"hidden_size": 256, "num_layers": 6, "num_heads": 8, "intermediate_size": 1024, "max_steps": 6000}

# -- the world's evaluation datasets ------------------------------------------------------------
#: the world's evaluation datasets per split (``--split dev`` tunes on files disjoint from test)
WORLD_SETS = {
    "test": {"harmful": ["world:harmful"], "unseen": ["world:unseen"], "benign": ["world:benign", "world:helpful"],
             "helpful": "world:helpful", "task": "world:ft_test/helpful"},
    "dev": {"harmful": ["world:dev/harmful"], "unseen": ["world:dev/unseen"],
            "benign": ["world:dev/benign", "world:dev/helpful"], "helpful": "world:dev/helpful",
            "task": "world:ft_dev/helpful"},
}


@dataclass
class StudyOptions:
    """The options of ``deepalign study`` (``run_study``'s keyword arguments)."""

    out: str = field(default="runs/study", metadata={"help": "study directory (stages are reused on rerun)"})
    seed: int = 0
    seeds: list[str] | None = field(default=None, metadata={
        "help": "several seeds, e.g. --seeds 0,1,2 (or 0 1 2): one full study each in OUT/seed-<n>, then one claims "
                "table (each seed and pooled) in OUT/report.md"})
    split: str = field(default="test", metadata={
        "help": "world: evaluate on the test split (the report) or the dev split (to tune: every evaluated set, "
                "helpfulness and the fine-tuning task included, then comes from dev)"})
    scale: bool = field(default=False, metadata={"help": "bigger world and model: slower, more faithful"})
    fresh: bool = field(default=False, metadata={"help": "redo every stage"})
    quiet: bool = False
    # real-model mode
    base: str | None = field(default=None, metadata={"help": "real-model mode: base model (hub id or local dir)"})
    triples: str | None = field(default=None, metadata={"help": "real-model mode: harmful triples file / dataset"})
    helpful: str | None = field(default=None, metadata={"help": "real-model mode: helpful instruction pairs"})
    eval_datasets: list[str] = field(default_factory=list, metadata={
        "help": "real-model mode: evaluation datasets (eval specs; benign:/helpful: prefixes for non-harmful)"})
    lora: bool | None = field(default=None, metadata={
        "help": "LoRA fine-tuning (default: on for real models, off for the world)"})
    # evaluation
    depths: list[int] = field(default_factory=lambda: list(DEPTHS), metadata={"help": "prefill depths (tokens)"})
    alphas: list[float] = field(default_factory=lambda: list(ALPHAS), metadata={"help": "ED alphas"})
    ed_samples: int = field(default=2, metadata={"help": "samples per query for the ED evaluation"})
    max_new_tokens: int = 64
    batch_size: int = field(default=128, metadata={
        "help": "items per batch of an evaluation (the world's model decodes 120 items in one batch in 0.87x the time of two "
                "batches of 64, with the same rows); the ED evaluation, the row-by-row loops (RAP, insertion, "
                "ADA) and the depth scoring take at most 64 (ED_BATCH, STEP_BATCH)"})
    workers: int | None = field(default=None, metadata={
        "help": "local processes per evaluation (deepalign eval --workers) and for the trainings after pretraining "
                "(default: 2 for the world on a CPU with 2 or more cores, else 1): the world's small models decode "
                "and train faster as two one-thread processes (deepalign.study.jobs)"})
    limit: int | None = field(default=None, metadata={"help": "items per evaluation dataset (default: all)"})
    train_steps: int = field(default=-1, metadata={"help": "optimizer steps per alignment run (-1: recipe default)"})
    pretrain_steps: int | None = field(default=None, metadata={"help": "pretraining steps (default: pretrain's default)"})
    finetune_steps: int = field(default=-1, metadata={
        "help": "optimizer steps per fine-tuning attack run (-1: the stage's settings, 8 epochs)"})
    finetune: bool = field(default=True, metadata={
        "help": "world: the fine-tuning attack stage (plain SFT and the constrained objective; --no_finetune skips it)"})
    direction: bool = field(default=True, metadata={
        "help": "world: the refusal-direction stage (a direction per aligned model, ablated; --no_direction skips it)"})
    adaptive: bool = field(default=True, metadata={
        "help": "world: the adaptive-attack stage (RAP, insertion, GCG on a subset, refusal-prefix fine-tuning; "
                "--no_adaptive skips it)"})
    defences: bool = field(default=True, metadata={
        "help": "world: the defence axis (ADA-RK and ADA-LP on vanilla, PRESTO on harmful-prefix, under the attack "
                "battery and the adaptive attacks; ADA on the fine-tuned models; --no_defences skips it)"})
    defence_shapes: bool = field(default=False, metadata={
        "help": "world: also attack the defended models of the defence axis with the shifted shapes (cells no claim "
                "reads; they cost about 45 s a seed)"})
    gcg_steps: int = field(default=10, metadata={
        "help": "world: GCG steps per item in the adaptive-attack stage (its fixed budget; more for a stronger GCG)"})
    checkpoint_every: float = field(default=0.05, metadata={
        "help": "share of each training stage between checkpoints: a killed study loses at most this much of a stage"})

    @property
    def world_mode(self) -> bool:
        return self.base is None

    def __post_init__(self):
        self.depths = list(self.depths)
        self.alphas = list(self.alphas)
        for a in self.alphas:
            number("alphas", a, low=0)
        for k in self.depths:
            number("depths", k, low=0, integer=True)
        for name in ("ed_samples", "max_new_tokens", "batch_size", "gcg_steps"):
            number(name, getattr(self, name), low=1, integer=True)
        number("limit", self.limit, low=1, integer=True, optional=True)
        number("workers", self.workers, low=1, integer=True, optional=True)
        for name in ("train_steps", "finetune_steps"):
            number(name, getattr(self, name), low=-1, integer=True)
            if getattr(self, name) == 0:
                raise OptionError(name, "must be -1 (the stage's own length) or a number of steps >= 1, got 0")
        number("pretrain_steps", self.pretrain_steps, low=1, integer=True, optional=True)
        if not self.defences and self.defence_shapes:
            raise OptionError("defence_shapes", "is read only with the defence axis; here --no_defences skips it")
        if not self.adaptive and self.gcg_steps != 10:
            raise OptionError("gcg_steps", "is read only with the adaptive-attack stage; here --no_adaptive skips it")
        number("checkpoint_every", self.checkpoint_every, low=0, high=1, low_open=True, high_open=True)
        if self.split not in ("test", "dev"):
            raise OptionError("split", f"must be test or dev, got {self.split!r}")
        if self.seeds is not None:
            self.seeds = _seed_list(self.seeds)
            if not self.seeds:
                raise OptionError("seeds", "needs at least one seed")
            if len(set(self.seeds)) != len(self.seeds):
                raise OptionError("seeds", f"lists a seed twice: {self.seeds}")
            for x in self.seeds:
                number("seeds", x, low=0, integer=True)
        if not self.world_mode and not (self.triples and self.helpful):
            raise OptionError("base", "needs --triples and --helpful (the alignment data of a real-model study)")
        if self.world_mode and (self.triples or self.helpful or self.eval_datasets):
            raise OptionError("triples", "/ --helpful / --eval_datasets are for real models: give --base too")


#: the former name of :class:`StudyOptions`, still importable
StudyConfig = StudyOptions


def _seed_list(values) -> list[int]:
    """``[0, 1]``, ``["0", "1"]`` or ``["0,1"]`` as ``[0, 1]``."""
    out = []
    for part in split_list([values] if isinstance(values, int) else values):
        try:
            out.append(int(part))
        except ValueError:
            raise OptionError("seeds", f"takes whole numbers such as 0,1,2, got {part!r}") from None
    return out


class _Stages:
    """Runs the stages in order, timing each and telling the user where it is. Times go to
    ``OUT/timing.json`` as each stage ends, so a resumed study still knows how long the
    stages it reuses took."""

    def __init__(self, cfg: StudyOptions, out: Path):
        self.cfg = cfg
        self.path = out / "timing.json"
        self.times: dict[str, float] = {}
        self.parallel: list[str] = []  # the stages that ran beside others, in one-thread processes
        if self.path.exists() and not cfg.fresh:
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
                if "stages_s" not in saved:  # the earlier format: {stage: seconds}
                    saved = {"stages_s": saved}
                self.times = {str(k): float(v) for k, v in saved["stages_s"].items()}
                self.parallel = [str(n) for n in saved.get("parallel", [])]
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError, KeyError):
                self.times, self.parallel = {}, []
        self.reused: list[str] = []

    def run(self, name: str, done: bool, fn, *, evaluation: bool = False) -> None:
        """Run stage ``name`` unless ``done``. An ``evaluation`` stage always runs (the runner
        resumes its rows); when it adds no row it counts as reused, with its earlier time."""
        if done and not self.cfg.fresh:
            self.reused.append(name)
            self.say(f"[study] {name}: reusing finished output")
            return
        self.say(f"[study] {name} ...")
        before = self._rows() if evaluation else None
        start = time.time()
        fn()
        if before and name in self.times and self._rows() == before:
            # an evaluation that resumed a finished run generated nothing: keep the time it took
            self.reused.append(name)
            self.say(f"[study] {name}: every row was already there, reusing it")
            return
        self._record(name, time.time() - start)
        self.say(f"[study] {name}: done in {self.times[name]:.0f}s")

    def _record(self, name: str, seconds: float, *, parallel: bool = False) -> None:
        self.times[name] = round(seconds, 1)
        if parallel and name not in self.parallel:
            self.parallel.append(name)
        elif not parallel and name in self.parallel:
            self.parallel.remove(name)
        write_json(self.path, {"stages_s": self.times, "parallel": self.parallel})

    def run_jobs(self, jobs: list, workers: int, logs: Path) -> None:
        """Run independent trainings (:class:`deepalign.study.jobs.Job`): with ``workers`` > 1
        side by side in forked one-thread processes, their wall time as the stage
        ``GROUP``; else one after another in this process, as :meth:`run` runs a stage."""
        from deepalign.study.jobs import run_jobs

        if workers <= 1:
            for job in jobs:
                self.run(job.name, job.done(), job.fn)
            return
        todo = []
        for job in jobs:
            if job.done() and not self.cfg.fresh:
                self.reused.append(job.name)
                self.say(f"[study] {job.name}: reusing finished output")
            else:
                todo.append(job.name)
        if not todo:
            if GROUP.format(workers=workers) in self.times:  # the group's wall time is an earlier run's
                self.reused.append(GROUP.format(workers=workers))
            return
        start = time.time()
        run_jobs(jobs, workers, logs, say=self.say, on_done=lambda name, s: self._record(name, s, parallel=True))
        self._record(GROUP.format(workers=workers), time.time() - start)

    def _rows(self) -> dict[str, int]:
        """Size of every evaluation run's rows file (an evaluation stage that adds none reused them)."""
        return {str(p): p.stat().st_size for p in self.path.parent.glob("eval/*/responses.jsonl")}

    def say(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(msg, flush=True)


#: the stage row of the trainings run side by side (their wall time)
GROUP = "trainings, {workers} at a time (wall)"


def world_attacks(cfg: StudyOptions, world=None) -> dict[str, list[Attack]]:
    """The attack battery, in three parts: ``plain`` (direct, completion and the prefill depth
    profile on held-out queries for seen misdeeds; every model), ``shifted`` (the shifted
    shapes on the same queries) and ``unseen`` (queries for unseen misdeeds: direct, the
    prefills and the shapes). DPO, which the study needs for Emulated Disalignment, only
    gets the plain part. The direct query is the prefill of depth 0; the completion attack
    starts the answer with the world's own affirmative opener (``world``: its directory)."""
    def prefills():
        return [Prefill(k) for k in cfg.depths if k > 0]

    def mids():
        return [Prefill(k, skip=MID) for k in MID_DEPTHS]

    plain = [Direct(), Completion(start=answer_start(world))] + prefills()
    if not cfg.world_mode:  # real models: the real attack families
        from deepalign.attacks.cipher import Caesar, CipherAttack
        from deepalign.attacks.code import CodeAttack

        return {"plain": plain, "shifted": mids() + [CodeAttack(), CipherAttack(Caesar())], "unseen": []}
    # the world's analogues of CodeAttack, cipher attacks and role-play templates, as the model
    # starts them and with 8 tokens of harm already under way in that shape
    shapes = ([ShapeAttack("ledger"), ShapeAttack("ledger", 8), ShapeAttack("oldtongue")]
              + [ShapeAttack("roleplay", 0, n) for n in ROLEPLAYS] + [ShapeAttack("roleplay", 8, "story")])
    unseen_shapes = [ShapeAttack("ledger"), ShapeAttack("ledger", 8), ShapeAttack("oldtongue"),
                     ShapeAttack("roleplay", 0, "story"), ShapeAttack("roleplay", 8, "story")]
    return {"plain": plain, "shifted": mids() + shapes, "unseen": [Direct()] + prefills() + mids() + unseen_shapes}


def eval_workers(cfg: StudyOptions) -> int:
    """Processes per evaluation, and trainings at a time after pretraining (deepalign.study.jobs):
    ``--workers``, else 2 for the world on a CPU-only machine with 2 or more cores
    (deepalign.evaluation.workers: the same rows as one process), else 1."""
    if cfg.workers is not None:
        return cfg.workers
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 if cfg.world_mode and cores >= 2 and not torch.cuda.is_available() else 1


def model_target(name: str, path) -> TargetSpec:
    """The study's target for one of its models (``base`` or a recipe)."""
    return TargetSpec.hf(path, name=name, tags={"model": name})


def ed_targets(cfg: StudyOptions, base, models: Path) -> list[TargetSpec]:
    """The ED stage's targets: the base model alone, and ED of the base against every aligned
    model at every alpha. The world base model's native format is the world chat format (its
    corpus is dialogs)."""
    options = {"base.format": "chat"} if cfg.world_mode else None
    return [model_target(BASE, base)] + [
        TargetSpec.ed(base, models / r, a, name=f"ED {r} alpha {a}", tags={"model": r, "alpha": a}, options=options)
        for r in ALIGNED_MODELS for a in cfg.alphas]  # recipe-major: each aligned model loaded once


def run_study(options: StudyOptions | None = None, **kwargs) -> dict:
    """Run (or resume) the study and return its results (also written to OUT/study.json).
    With ``seeds``: one study per seed in ``OUT/seed-<n>`` and the claims pooled over seeds.

    Example (the README's main job; under 10 minutes on 2 CPU cores)::

        >>> results = run_study(out="runs/study")                        # doctest: +SKIP
        >>> [c["status"] for c in results["claims"]]                      # doctest: +SKIP
    """
    (cfg,) = build(kwargs, options=(StudyOptions, options))
    if cfg.seeds is not None:
        return _run_sweep(cfg)
    return _run_one(cfg)


class _Study:
    """One study run: the stages in order, each reusing its finished output."""

    def __init__(self, cfg: StudyOptions):
        self.cfg = cfg
        self.out = Path(cfg.out)
        if cfg.fresh and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.stages = _Stages(cfg, self.out)
        self.started = time.time()
        self.world, self.models = self.out / "world", self.out / "models"
        self.base = cfg.base
        self.sets = WORLD_SETS[cfg.split] if cfg.world_mode else self._real_sets()

    def _real_sets(self) -> dict[str, list[str]]:
        cfg = self.cfg
        harmful = [d for d in cfg.eval_datasets if not d.startswith(("benign:", "helpful:"))]
        if not harmful:
            raise OptionError("eval_datasets", "has no harmful dataset (prefix benign:/helpful: marks the others)")
        return {"harmful": harmful, "unseen": [],
                "benign": [d for d in cfg.eval_datasets if d.startswith(("benign:", "helpful:"))]}

    # -- stages ----------------------------------------------------------------------------
    def world_and_base(self) -> None:
        """The world and its pretrained base model (real models: the base model given)."""
        cfg, stages = self.cfg, self.stages
        if not cfg.world_mode:
            return
        from deepalign.training.pretrain import pretrain
        from deepalign.world.generator import build_world

        world_opts = dict(SCALE_WORLD) if cfg.scale else {}
        pre_opts = dict(SCALE_PRETRAIN) if cfg.scale else {}
        if cfg.pretrain_steps is not None:
            pre_opts["max_steps"] = cfg.pretrain_steps
        stages.run("world", (self.world / "manifest.json").exists(),
                   lambda: build_world(out=str(self.world), seed=cfg.seed, quiet=cfg.quiet, **world_opts))
        base = self.out / "base"
        stages.run("pretrain", (base / "config.json").exists(),
                   lambda: pretrain(world=str(self.world), out=str(base), seed=cfg.seed, quiet=cfg.quiet, resume=True,
                                    save_steps=cfg.checkpoint_every, **pre_opts))
        self.base = str(base)

    def trainings(self) -> list:
        """Every training after pretraining, as jobs (:mod:`deepalign.study.jobs`): the five
        alignment recipes (DPO on top of vanilla), and in world mode the fine-tuning attack's
        runs, the refusal-prefix runs, PRESTO and ADA-LP's probe, each after the models it reads.
        None of them reads an evaluation."""
        from deepalign.study.jobs import Job
        from deepalign.training.finetune import train

        cfg = self.cfg
        lora = cfg.lora if cfg.lora is not None else not cfg.world_mode
        jobs = []
        # DPO (the longest) right after vanilla, so that it starts as soon as vanilla is there
        order = ["vanilla", "dpo"] + [r for r in ALIGNMENT_RECIPES if r not in ("vanilla", "dpo")]
        for recipe in order:
            dest = self.models / recipe
            start_from = str(self.models / "vanilla") if recipe == "dpo" else self.base
            jobs.append(Job(f"train {recipe}", lambda d=dest: (d / "config.json").exists(),
                            lambda r=recipe, d=dest, m=start_from: train(
                                recipe=r, model_name_or_path=m, output_dir=str(d), world=str(self.world), seed=cfg.seed,
                                use_peft=lora, resume=True, max_steps=cfg.train_steps, save_steps=cfg.checkpoint_every,
                                quiet=cfg.quiet, **self.mixture(r)),
                            after=("train vanilla",) if recipe == "dpo" else ()))
        if not cfg.world_mode:
            return jobs
        if cfg.defences:
            from deepalign.study import defences as de

            jobs.append(Job("train harmful-prefix presto", lambda: (de.presto_dir(self) / "config.json").exists(),
                            lambda: de.train_presto(self, self.mixture("harmful-prefix"))))
            jobs.append(Job("ada-lp probe", lambda: (de.probe_dir(self) / "probe.json").exists(),
                            lambda: de.fit_probe(self), after=("train vanilla",)))
        if cfg.finetune:
            from deepalign.study import finetune as ft

            for model, data, objective in ft.runs():
                dest = ft.run_dir(self.out / "finetune", model, data, objective)
                jobs.append(Job(f"finetune {model} {data} {objective}", lambda d=dest: (d / "config.json").exists(),
                                lambda m=model, d=data, o=objective: ft.train_run(self, m, d, o),
                                after=(f"train {model}",)))
        if cfg.adaptive:
            from deepalign.study import adaptive as ad

            for model, objective in ad.RP_RUNS:
                dest = ad.rp_dir(self, model, objective)
                jobs.append(Job(f"finetune {model} refusal-prefix {objective}",
                                lambda d=dest: (d / "config.json").exists(),
                                lambda m=model, o=objective: ad.train_rp(self, m, o), after=(f"train {model}",)))
        return jobs

    def check_workers(self) -> None:
        """``--workers`` > 1 forks CPU processes: refused on a GPU before any stage runs (a
        CUDA context does not survive a fork; the evaluations refuse it the same way)."""
        import torch

        if eval_workers(self.cfg) > 1 and torch.cuda.is_available():
            raise OptionError("workers", "> 1 forks CPU processes for the trainings and evaluations; on a GPU run the "
                                         "study with --workers 1")

    def train_all(self) -> None:
        """:meth:`trainings`, side by side (``--workers``; :mod:`deepalign.study.jobs`)."""
        self.stages.run_jobs(self.trainings(), eval_workers(self.cfg), self.out / "logs")

    def mixture(self, recipe: str) -> dict:
        """The data options of an alignment recipe (the world's mixture, or the real data)."""
        cfg = self.cfg
        data = {} if cfg.world_mode else {"triples": cfg.triples, "helpful": cfg.helpful}
        # DPO trains on the triples alone (train() refuses options a recipe does not read)
        mix = {k: v for k, v in data.items() if not (recipe == "dpo" and k == "helpful")}
        if cfg.world_mode and recipe != "dpo":
            mix["safety_ratio"] = WORLD_SAFETY_RATIO
        if cfg.world_mode and recipe in RTO_RECIPES:
            mix["rto_keep"] = WORLD_RTO_KEEP
        if cfg.world_mode and recipe != "dpo":
            # packed batches (a padded one was 58% padding): the same loss curve to 1e-7, 0.68x the time
            mix["padding_free"] = True
        return mix

    @property
    def step_batch(self) -> int:
        """Items per batch of the row-by-row evaluations and the depth scoring (:data:`STEP_BATCH`)."""
        return min(self.cfg.batch_size, STEP_BATCH)

    @property
    def paths(self) -> dict[str, str]:
        return {BASE: self.base, **{m: str(self.models / m) for m in ALIGNED_MODELS}}

    def _eval(self, out: str, targets, attacks, datasets, generation, *, limit: int | None = None,
              batch_size: int | None = None) -> None:
        """One evaluation into ``OUT/eval/<out>``; ``limit``: items per dataset (at most ``--limit``);
        ``batch_size``: items per batch (at most ``--batch_size``)."""
        from deepalign.evaluation.runner import run_eval

        cfg = self.cfg
        if limit is None or (cfg.limit is not None and cfg.limit < limit):
            limit = cfg.limit
        run_eval(targets=targets, attacks=attacks, datasets=datasets, out_dir=str(self.out / "eval" / out),
                 generation=generation, judges=list(_judges(cfg)),
                 world=str(self.world) if cfg.world_mode else None,
                 batch_size=min(batch_size or cfg.batch_size, cfg.batch_size), limit=limit,
                 quiet=cfg.quiet, workers=eval_workers(cfg))

    def evaluate(self) -> None:
        """The attack battery, over-refusal and helpfulness, and Emulated Disalignment."""
        from deepalign.decoding.base import GenConfig

        cfg, sets = self.cfg, self.sets
        hf = [model_target(name, path) for name, path in self.paths.items()]
        no_dpo = [t for t in hf if t.name != "dpo"]
        greedy = GenConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        battery = world_attacks(cfg, self.world if cfg.world_mode else None)

        def attacks_stage():  # three calls into the same run directory: one table, one set of rows
            self._eval("attacks", hf, battery["plain"], sets["harmful"], greedy)
            self._eval("attacks", no_dpo, battery["shifted"], sets["harmful"], greedy)
            if sets["unseen"]:
                self._eval("attacks", no_dpo, battery["unseen"], sets["unseen"], greedy)

        self.stages.run("eval attacks", False, attacks_stage, evaluation=True)
        if sets["benign"]:
            self.stages.run("eval benign+helpful", False,
                            lambda: self._eval("benign", hf, [Direct()], sets["benign"], greedy), evaluation=True)
        sampled = GenConfig(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=ED_TEMPERATURE, seed=cfg.seed,
                            num_samples=cfg.ed_samples)
        # both harmful splits: the ED claims are a question of power on one split (docs/study.md#power)
        self.stages.run("eval ED", False, lambda: self._eval("ed", ed_targets(cfg, self.base, self.models), [Direct()],
                                                             sets["harmful"][:1] + sets["unseen"], sampled,
                                                             batch_size=ED_BATCH),
                        evaluation=True)

    def finetune_attack(self) -> None:
        """The fine-tuning attack's evaluation (:mod:`deepalign.study.finetune`; its runs are
        among :meth:`trainings`) and harmful % step by step (world mode)."""
        from deepalign.decoding.base import GenConfig
        from deepalign.study import finetune as ft

        cfg = self.cfg
        greedy = GenConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)

        def evaluate():
            targets = ft.attacked_targets(self)
            self._eval("finetune", targets, [Direct(), Prefill(8)], self.sets["harmful"][:1] + self.sets["unseen"], greedy)
            self._eval("finetune", targets, [Direct()], [self.sets["helpful"], self.sets["task"]], greedy)
            self._eval("finetune-steps", ft.step_targets(self), [Direct()], list(self.sets["harmful"][:1]), greedy)

        self.stages.run("eval finetune", False, evaluate, evaluation=True)

    def adaptive_attacks(self) -> None:
        """The attacks that adapt to each model and the refusal-prefix fine-tuning attack
        (:mod:`deepalign.study.adaptive`; world mode; its runs are among :meth:`trainings`)."""
        from deepalign.attacks import make_attacks
        from deepalign.decoding.base import GenConfig
        from deepalign.study import adaptive as ad

        cfg = self.cfg
        greedy = GenConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        world = str(self.world)
        harmful = list(self.sets["harmful"][:1])

        def evaluate():
            targets = ad.targets(self)
            self._eval("adaptive", targets, make_attacks(ad.attack_specs(), world=world), harmful, greedy,
                       batch_size=self.step_batch)
            self._eval("gcg", targets, make_attacks([ad.gcg_spec(cfg.gcg_steps)], world=world), harmful, greedy,
                       limit=ad.GCG_ITEMS, batch_size=ad.GCG_BATCH)

        self.stages.run("eval adaptive", False, evaluate, evaluation=True)
        self.stages.run("eval refusal-prefix", False,
                        lambda: self._eval("refusal-prefix", ad.rp_targets(self), [Direct(), Prefill(8)],
                                           harmful + self.sets["unseen"], greedy), evaluation=True)

    def defence_axis(self) -> None:
        """ADA at inference time and PRESTO at training time under the study's attacks
        (:mod:`deepalign.study.defences`; world mode; the probe and PRESTO's run are among
        :meth:`trainings`)."""
        from deepalign.attacks import make_attacks
        from deepalign.decoding.base import GenConfig
        from deepalign.study import adaptive as ad
        from deepalign.study import defences as de

        cfg, sets = self.cfg, self.sets
        greedy = GenConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        battery = world_attacks(cfg, self.world)
        harmful = list(sets["harmful"][:1])

        def evaluate():
            targets, batch = de.targets(self), self.step_batch
            self._eval("defences", targets, battery["plain"] + (battery["shifted"] if cfg.defence_shapes else []),
                       harmful, greedy, batch_size=batch)
            self._eval("defences", targets, [Direct()], sets["benign"], greedy, batch_size=batch)
            if cfg.adaptive:
                self._eval("defences", targets, make_attacks(ad.attack_specs(), world=str(self.world)), harmful, greedy,
                           batch_size=batch)
            tuned = de.finetuned_targets(self)
            if tuned:
                self._eval("defences", tuned, [Direct(), Prefill(8)], harmful, greedy, batch_size=batch)

        self.stages.run("eval defences", False, evaluate, evaluation=True)

    def refusal_directions(self) -> None:
        """A refusal direction per aligned model and each model with its own direction ablated
        (:mod:`deepalign.study.direction`; world mode)."""
        from deepalign.decoding.base import GenConfig
        from deepalign.study import direction as rd

        for m in rd.MODELS:
            self.stages.run(f"direction {m}", rd.done(self, m), lambda m=m: rd.compute(self, m))
        greedy = GenConfig(max_new_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed)
        targets = rd.ablated_targets(self)
        if not targets:
            return

        def evaluate():
            self._eval("direction", targets, [Direct(), Prefill(8)], list(self.sets["harmful"][:1]), greedy)
            self._eval("direction", targets, [Direct()], [self.sets["helpful"]], greedy)

        self.stages.run("eval direction", False, evaluate, evaluation=True)
        kl = self.out / "direction" / "kl.json"
        self.stages.run("direction kl", kl.exists(), lambda: write_json(kl, rd.harmless_kl(self)))

    def depth(self) -> dict:
        """Per-token depth diagnostics of every recipe on the harmful (and unseen) queries, with
        the projection on each model's refusal direction on the first; and per-token KL of the
        fine-tuned vanilla models from vanilla."""
        depth, first = {}, True
        for spec in self.sets["harmful"][:1] + self.sets["unseen"]:
            dest = self.out / "depth" / _slug(spec)
            directions = self.out / "direction" if first and (self.out / "direction").is_dir() else None
            self.stages.run(f"depth {_slug(spec)}", (dest / "depth.json").exists(),
                            lambda s=spec, d=dest, r=directions: _depth_stage(self, s, d, r))
            depth[spec] = {**json.loads((dest / "depth.json").read_text(encoding="utf-8")),
                           "plot": str((dest / "depth.png").relative_to(self.out))}
            if (dest / "projection.png").exists():
                depth[spec]["projection_plot"] = str((dest / "projection.png").relative_to(self.out))
            first = False
        # the fine-tuning stage's runs (the adaptive stage's refusal-prefix runs live under finetune/ too)
        if self.cfg.finetune and (self.out / "finetune").is_dir():
            dest = self.out / "depth" / "finetune"
            self.stages.run("depth finetune", (dest / "depth.json").exists(), lambda: _finetune_depth(self, dest))
            depth["finetune"] = {**json.loads((dest / "depth.json").read_text(encoding="utf-8")),
                                 "plot": str((dest / "depth.png").relative_to(self.out))}
        return depth

    def report(self, depth: dict) -> dict:
        from deepalign.study.report import write_study_report

        cfg, stages = self.cfg, self.stages
        timing = {"stages_s": stages.times, "reused": stages.reused, "parallel": stages.parallel,
                  "wall_s": round(time.time() - self.started, 1)}
        results = write_study_report(self.out, depths=cfg.depths, alphas=cfg.alphas, judge=_judge(cfg),
                                     setup=_setup_line(cfg, stages, self.started), timing=timing, depth=depth)
        results.update(timing=timing, config=asdict(cfg), targets=self.paths)
        write_json(self.out / "study.json", results)
        stages.say(f"[study] report -> {self.out / 'report.md'} ({timing['wall_s']:.0f}s)")
        if not cfg.quiet:
            for claim in results["claims"]:
                print(f"  {claim['status']}  {claim['name']}: {claim['detail']}")
        return results


def _run_one(cfg: StudyOptions) -> dict:
    from deepalign.utils import no_weight_bars

    # the world's models load and save in milliseconds: no bar for each
    with no_weight_bars() if cfg.world_mode else contextlib.nullcontext():
        return _stages(cfg)


def _stages(cfg: StudyOptions) -> dict:
    study = _Study(cfg)
    study.check_workers()
    study.world_and_base()
    study.train_all()
    study.evaluate()
    if cfg.world_mode and cfg.finetune:
        study.finetune_attack()
    if cfg.world_mode and cfg.direction:
        study.refusal_directions()
    if cfg.world_mode and cfg.adaptive:
        study.adaptive_attacks()
    if cfg.world_mode and cfg.defences:
        study.defence_axis()
    return study.report(study.depth())


def _judges(cfg: StudyOptions) -> tuple[str, ...]:
    """The judges of every evaluation of the study; the first is the one its claims read."""
    return WORLD_JUDGES if cfg.world_mode else REAL_JUDGES


def _judge(cfg: StudyOptions) -> str:
    """The judge the claims read: the world's oracle, or the keyword judge on real models."""
    return _judges(cfg)[0]


def _slug(spec: str) -> str:
    return spec.split(":", 1)[-1].replace("/", "-") if spec.startswith("world:") else Path(spec.split(":", 1)[-1]).stem


def _refusal_words(study) -> list[str] | None:
    """On the world every word a refusal starts with, DeRTa's "sorry" first (its manifest)."""
    if not study.cfg.world_mode:
        return None
    from deepalign.world.generator import refusal_openers

    return refusal_openers(study.world)


def _depth_stage(study, spec: str, dest: Path, directions: Path | None) -> None:
    """Per-token KL and refusal-token probability of every recipe against the base; with
    ``directions`` (one per aligned model) also the projection on each model's direction."""
    from deepalign.data.datasets import load_dataset
    from deepalign.evaluation.depth import depth_profiles, write_depth

    cfg = study.cfg
    items = load_dataset(spec, world=str(study.world) if cfg.world_mode else None, limit=cfg.limit)
    results = depth_profiles(study.base, {m: str(study.models / m) for m in ALIGNED_MODELS}, items,
                             base_format="chat" if cfg.world_mode else None, refusal_words=_refusal_words(study),
                             max_tokens=cfg.max_new_tokens, batch_size=study.step_batch)
    projections = None
    if directions is not None:
        from deepalign.study import direction as rd

        projections = rd.projections(study, items)
    write_depth(dest, results, dataset=spec, projections=projections)


def _finetune_depth(study, dest: Path) -> None:
    """Per-token KL(fine-tuned || vanilla) along harmful responses: where each fine-tuning
    run on vanilla moved the model (Qi et al. 2025: fine-tuning moves the first tokens most)."""
    from deepalign.data.datasets import load_dataset
    from deepalign.evaluation.depth import depth_profiles, write_depth
    from deepalign.study import finetune as ft

    spec = study.sets["harmful"][0]
    items = load_dataset(spec, world=str(study.world), limit=study.cfg.limit)
    tuned = {ft.run_name(d, o): str(ft.run_dir(study.out / "finetune", "vanilla", d, o)) for d, o in ft.VANILLA_RUNS}
    results = depth_profiles(str(study.models / "vanilla"), tuned, items, refusal_words=_refusal_words(study),
                             max_tokens=study.cfg.max_new_tokens, batch_size=study.step_batch)
    write_depth(dest, results, dataset=f"{spec}: fine-tuned vanilla models against vanilla")


def _run_sweep(cfg: StudyOptions) -> dict:
    """One full study per seed, then the claims on every seed and on the pooled evidence."""
    from deepalign.study.evidence import load_evidence, pool_evidence
    from deepalign.study.report import claim_statuses, study_results, write_sweep_report

    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    per_seed, parts = {}, []
    for seed in cfg.seeds:
        if not cfg.quiet:
            print(f"[study] === seed {seed} -> {out / f'seed-{seed}'} ===", flush=True)
        res = _run_one(replace(cfg, seed=seed, seeds=None, fresh=False, out=str(out / f"seed-{seed}")))
        per_seed[seed] = res
        parts.append(load_evidence(out / f"seed-{seed}", judge=res["judge"], tag=f"s{seed}/"))
    pooled_ev = pool_evidence(parts)
    pooled = study_results(pooled_ev, depths=cfg.depths, alphas=cfg.alphas, judge=_judge(cfg))
    write_sweep_report(out, seeds=list(cfg.seeds), per_seed=per_seed, pooled=pooled,
                       shifted={a.label for a in pooled_ev.attacks if a.shifted}, alphas=cfg.alphas)
    results = {
        "seeds": list(cfg.seeds),
        "per_seed": {str(s): {"claims": r["claims"], "timing": r["timing"], "attack_table": r["attack_table"],
                              "ed": r["ed"], "ablation_means": r["ablation_means"]} for s, r in per_seed.items()},
        "pooled": pooled,
        "wall_s": round(time.time() - started, 1),
        "config": asdict(cfg),
    }
    write_json(out / "study.json", results)
    if not cfg.quiet:
        print(f"[study] claims over seeds -> {out / 'report.md'} ({results['wall_s']:.0f}s)")
        for name, statuses, status in claim_statuses(list(cfg.seeds), per_seed, pooled):
            print(f"  {' '.join(statuses)} | pooled {status}  {name}")
    return results


def _setup_line(cfg: StudyOptions, stages: _Stages, started: float) -> str:
    import os
    import platform

    import torch

    reused = f"; reused: {', '.join(stages.reused)}" if stages.reused else ""
    return (f"Generated by `deepalign study --out {cfg.out}`{' --scale' if cfg.scale else ''}"
            f"{' --split dev' if cfg.split == 'dev' else ''} (seed {cfg.seed}) on "
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {'CUDA' if torch.cuda.is_available() else 'no GPU'}; "
            f"{time.time() - started:.0f} s wall up to the report{reused}.")
