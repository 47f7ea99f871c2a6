"""``deepalign study``: the end-to-end replication of both seed papers (the main job).

On the embedded world (the default) it chains the public stages, each the same function a
user calls one by one:

1. ``build_world``  -> ``OUT/world``        (deepalign world)
2. ``pretrain``     -> ``OUT/base``         (deepalign pretrain)
3. ``train`` x 5    -> ``OUT/models/<recipe>`` for vanilla, harmful-prefix, rto, derta, and
   dpo on top of vanilla                    (deepalign train)
4. ``run_eval``     -> ``OUT/eval/attacks`` (every model x the attack battery on held-out
   harmful queries), ``OUT/eval/benign`` (over-refusal and helpfulness), ``OUT/eval/ed``
   (Emulated Disalignment of the base against each aligned model, sampled)  (deepalign eval)
5. the study report ``OUT/report.md`` with plots and a claims section that checks each seed
   claim from the measured numbers (PASS / FAIL, with the numbers).

Finished stages are reused on rerun (a model directory only exists once its training
finished; the evaluation runner skips finished rows); ``--fresh`` redoes everything.
``--scale`` makes a bigger, slower, more faithful run. With ``--base`` (a hub id or a local
model directory) the same stages run on real models and data.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deepalign.data.recipes import RECIPES
from deepalign.errors import DeepAlignError, OptionError
from deepalign.options import build, number
from deepalign.utils import write_json

DEPTHS = (0, 2, 4, 8, 16, 32)
ALPHAS = (0.3, 1.0)
MID, MID_DEPTHS = 24, (8, 16)  # prefills that start mid-response (24 tokens in): a shifted shape


@dataclass
class StudyConfig:
    out: str = field(default="runs/study", metadata={"help": "study directory (stages are reused on rerun)"})
    seed: int = 0
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
    batch_size: int = 64
    limit: int | None = field(default=None, metadata={"help": "items per evaluation dataset (default: all)"})
    train_steps: int = field(default=-1, metadata={"help": "optimizer steps per alignment run (-1: recipe default)"})
    pretrain_steps: int | None = field(default=None, metadata={"help": "pretraining steps (default: pretrain's default)"})
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
        for name in ("ed_samples", "max_new_tokens", "batch_size"):
            number(name, getattr(self, name), low=1, integer=True)
        number("limit", self.limit, low=1, integer=True, optional=True)
        number("train_steps", self.train_steps, low=-1, integer=True)
        number("pretrain_steps", self.pretrain_steps, low=1, integer=True, optional=True)
        number("checkpoint_every", self.checkpoint_every, low=0, high=1, low_open=True, high_open=True)
        if not self.world_mode and not (self.triples and self.helpful):
            raise OptionError("base", "needs --triples and --helpful (the alignment data of a real-model study)")
        if self.world_mode and (self.triples or self.helpful or self.eval_datasets):
            raise OptionError("triples", "/ --helpful / --eval_datasets are for real models: give --base too")


class _Stages:
    """Runs the stages in order, timing each and telling the user where it is."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.times: dict[str, float] = {}
        self.reused: list[str] = []

    def run(self, name: str, done: bool, fn) -> None:
        if done and not self.cfg.fresh:
            self.reused.append(name)
            self.say(f"[study] {name}: reusing finished output")
            return
        self.say(f"[study] {name} ...")
        start = time.time()
        fn()
        self.times[name] = round(time.time() - start, 1)
        self.say(f"[study] {name}: done in {self.times[name]:.0f}s")

    def say(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(msg, flush=True)


def run_study(options: StudyConfig | None = None, **kwargs) -> dict:
    """Run (or resume) the study and return its results (also written to OUT/study.json).

    Example (the README's main job; about 7 minutes on 2 CPU cores)::

        >>> results = run_study(out="runs/study")                        # doctest: +SKIP
        >>> [c["status"] for c in results["claims"]]                      # doctest: +SKIP
    """
    from deepalign.decoding.base import GenConfig
    from deepalign.evaluation.runner import run_eval
    from deepalign.training.finetune import train

    (cfg,) = build(kwargs, options=(StudyConfig, options))
    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(cfg)
    started = time.time()
    world = out / "world"
    models = out / "models"

    if cfg.world_mode:
        from deepalign.training.pretrain import pretrain
        from deepalign.world.generator import build_world

        world_opts = {"n_pretrain": 48000, "n_train_triples": 2000, "n_train_helpful": 4000} if cfg.scale else {}
        pre_opts = {"hidden_size": 256, "num_layers": 6, "num_heads": 8, "intermediate_size": 1024, "max_steps": 6000} if cfg.scale else {}
        if cfg.pretrain_steps is not None:
            pre_opts["max_steps"] = cfg.pretrain_steps
        stages.run("world", (world / "manifest.json").exists(),
                   lambda: build_world(out=str(world), seed=cfg.seed, quiet=cfg.quiet, **world_opts))
        base = out / "base"
        stages.run("pretrain", (base / "config.json").exists(),
                   lambda: pretrain(world=str(world), out=str(base), seed=cfg.seed, quiet=cfg.quiet, resume=True,
                                    save_steps=cfg.checkpoint_every, **pre_opts))
        base_spec = str(base)
    else:
        base_spec = cfg.base

    lora = cfg.lora if cfg.lora is not None else not cfg.world_mode
    data = {} if cfg.world_mode else {"triples": cfg.triples, "helpful": cfg.helpful}
    for recipe in RECIPES:
        dest = models / recipe
        start_from = str(models / "vanilla") if recipe == "dpo" else base_spec
        stages.run(f"train {recipe}", (dest / "config.json").exists(), lambda r=recipe, d=dest, m=start_from: train(
            recipe=r, model_name_or_path=m, output_dir=str(d), world=str(world), seed=cfg.seed, use_peft=lora,
            resume=True, max_steps=cfg.train_steps, save_steps=cfg.checkpoint_every, quiet=cfg.quiet, **data,
        ))

    targets = {"base": base_spec, **{r: str(models / r) for r in RECIPES}}
    hf = [f"hf:{p}" for p in targets.values()]
    greedy = GenConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    judges = ["oracle", "keyword:nocase"] if cfg.world_mode else ["keyword"]
    common = dict(judges=judges, world=str(world) if cfg.world_mode else None, batch_size=cfg.batch_size,
                  limit=cfg.limit, quiet=cfg.quiet)
    attacks = (["direct", "completion"] + [f"prefill:{k}" for k in cfg.depths]
               + [f"prefill:{k}:skip={MID}" for k in MID_DEPTHS]
               + ["code", "cipher:caesar"] + ([f"template:{world / 'templates'}"] if cfg.world_mode else []))
    harmful_sets = ["world:harmful"] if cfg.world_mode else [d for d in cfg.eval_datasets if not d.startswith(("benign:", "helpful:"))]
    benign_sets = ["world:benign", "world:helpful"] if cfg.world_mode else [d for d in cfg.eval_datasets if d.startswith(("benign:", "helpful:"))]
    if not harmful_sets:
        raise DeepAlignError("--eval-datasets has no harmful dataset (prefix benign:/helpful: marks the others)")
    stages.run("eval attacks", False, lambda: run_eval(targets=hf, attacks=attacks, datasets=harmful_sets,
                                                      out_dir=str(out / "eval" / "attacks"), generation=greedy,
                                                      **common))
    if benign_sets:
        stages.run("eval benign+helpful", False, lambda: run_eval(targets=hf, attacks=["direct"], datasets=benign_sets,
                                                                  out_dir=str(out / "eval" / "benign"),
                                                                  generation=greedy, **common))
    sampled = GenConfig(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=0.7, seed=cfg.seed,
                        num_samples=cfg.ed_samples)
    # the world base model's native format is the world chat format (its corpus is dialogs)
    base_format = ",base.format=chat" if cfg.world_mode else ""
    ed_specs = {(r, a): f"ed:base={base_spec},aligned={models / r},alpha={a}{base_format}"
                for a in cfg.alphas for r in RECIPES}
    ed_targets = [f"hf:{base_spec}"] + list(ed_specs.values())
    stages.run("eval ED", False, lambda: run_eval(targets=ed_targets, attacks=["direct"], datasets=harmful_sets,
                                                  out_dir=str(out / "eval" / "ed"), generation=sampled, **common))

    from deepalign.evaluation.study_report import write_study_report

    results = write_study_report(out, targets=targets, ed_specs=ed_specs, depths=cfg.depths, alphas=cfg.alphas,
                                 judge="oracle" if cfg.world_mode else "keyword", setup=_setup_line(cfg, stages, started))
    results["timing"] = {"stages_s": stages.times, "reused": stages.reused, "wall_s": round(time.time() - started, 1)}
    results["config"] = asdict(cfg)
    write_json(out / "study.json", results)
    stages.say(f"[study] report -> {out / 'report.md'} ({results['timing']['wall_s']:.0f}s)")
    if not cfg.quiet:
        for claim in results["claims"]:
            print(f"  {claim['status']}  {claim['name']}: {claim['detail']}")
    return results


def _setup_line(cfg: StudyConfig, stages: _Stages, started: float) -> str:
    import os
    import platform

    import torch

    reused = f"; reused: {', '.join(stages.reused)}" if stages.reused else ""
    return (f"Generated by `deepalign study --out {cfg.out}`{' --scale' if cfg.scale else ''} (seed {cfg.seed}) on "
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {'CUDA' if torch.cuda.is_available() else 'no GPU'}; "
            f"{time.time() - started:.0f} s wall up to the report{reused}.")
