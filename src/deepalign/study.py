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
5. ``depth_profiles`` -> ``OUT/depth/<dataset>``: per-token KL(aligned || base) and the
   refusal-token probability along harmful responses, every recipe  (deepalign depth)
6. the study report ``OUT/report.md`` with plots and a claims section that checks each seed
   claim from the measured numbers with its 95% interval (PASS / FAIL, with the numbers),
   and the time each stage took.

``--seeds 0,1,2`` runs the whole study once per seed into ``OUT/seed-<n>/`` and writes
``OUT/report.md`` with one claims table (each seed and pooled over seeds) and
``OUT/study.json``.

Finished stages are reused on rerun (a model directory only exists once its training
finished; the evaluation runner skips finished rows); ``--fresh`` redoes everything.
``--scale`` makes a bigger, slower, more faithful run. With ``--base`` (a hub id or a local
model directory) the same stages run on real models and data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deepalign.errors import DeepAlignError
from deepalign.utils import write_json

RECIPES = ("vanilla", "harmful-prefix", "rto", "derta", "dpo")
DEPTHS = (0, 2, 4, 8, 16, 32)
# ED alphas: the reference defaults for Llama-2 (0.3) and Llama / Vicuna / Mistral (0.6). On the
# world's dev split alpha 1.0 saturated (ED against vanilla 90-95% harmful), which leaves no
# room to see a better-aligned model make ED more harmful still.
ALPHAS = (0.3, 0.6)
MID, MID_DEPTHS = 24, (8, 16)  # prefills that start mid-response (24 tokens in): a shifted shape
ROLEPLAYS = ("trickster", "game", "story")  # the world's role-play templates (deepalign.world.lexicon)


@dataclass
class StudyConfig:
    out: str = "runs/study"
    seed: int = 0
    seeds: tuple[int, ...] | None = None  # several seeds: one full study each, then pooled claims
    scale: bool = False
    fresh: bool = False
    quiet: bool = False
    # real-model mode
    base: str | None = None
    triples: str | None = None
    helpful: str | None = None
    eval_datasets: list[str] = field(default_factory=list)
    lora: bool | None = None  # default: on for real models, off for the world
    # evaluation
    depths: tuple[int, ...] = DEPTHS
    alphas: tuple[float, ...] = ALPHAS
    ed_samples: int = 2
    max_new_tokens: int = 64
    batch_size: int = 64
    limit: int | None = None
    split: str = "test"  # world: report on "test"; tune on "dev" (its harmful, unseen and benign files)
    train_steps: int = -1  # -1: each recipe's default schedule
    pretrain_steps: int | None = None  # None: the pretraining default

    @property
    def world_mode(self) -> bool:
        return self.base is None

    def validate(self) -> None:
        if not self.world_mode and not (self.triples and self.helpful):
            raise DeepAlignError("--base needs --triples and --helpful (the alignment data of a real-model study)")
        if self.world_mode and (self.triples or self.helpful or self.eval_datasets):
            raise DeepAlignError("--triples / --helpful / --eval-datasets are for real models: give --base too")
        if any(a < 0 for a in self.alphas):
            raise DeepAlignError(f"--alphas must be >= 0, got {list(self.alphas)}")
        if any(k < 0 for k in self.depths):
            raise DeepAlignError(f"--depths must be >= 0, got {list(self.depths)}")
        if self.split not in ("test", "dev"):
            raise DeepAlignError(f"--split must be test or dev, got {self.split!r}")
        if self.ed_samples < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise DeepAlignError("--ed-samples, --max-new-tokens and --batch-size must be >= 1")
        if self.seeds is not None:
            if not self.seeds:
                raise DeepAlignError("--seeds needs at least one seed")
            if len(set(self.seeds)) != len(self.seeds):
                raise DeepAlignError(f"--seeds lists a seed twice: {list(self.seeds)}")
            if any(x < 0 for x in self.seeds):
                raise DeepAlignError(f"--seeds must be >= 0, got {list(self.seeds)}")


class _Stages:
    """Runs the stages in order, timing each and telling the user where it is. Times go to
    ``OUT/timing.json`` as each stage ends, so a resumed study still knows how long the
    stages it reuses took."""

    def __init__(self, cfg: StudyConfig, out: Path):
        self.cfg = cfg
        self.path = out / "timing.json"
        self.times: dict[str, float] = {}
        if self.path.exists() and not cfg.fresh:
            try:
                self.times = dict(json.loads(self.path.read_text(encoding="utf-8")))
            except (json.JSONDecodeError, TypeError, ValueError):
                self.times = {}
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
        write_json(self.path, self.times)
        self.say(f"[study] {name}: done in {self.times[name]:.0f}s")

    def say(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(msg, flush=True)


def world_attacks(cfg: StudyConfig, world: Path) -> dict[str, list[str]]:
    """The attack battery, in three parts: ``plain`` (direct, completion and the prefill depth
    profile on held-out queries for seen misdeeds; every model), ``shifted`` (the shifted
    shapes on the same queries) and ``unseen`` (queries for unseen misdeeds: direct, the
    prefills and the shapes). DPO, which the study needs for Emulated Disalignment, only
    gets the plain part. ``prefill:0`` is the direct query: the depth profile reads k = 0 there."""
    prefills = [f"prefill:{k}" for k in cfg.depths if k > 0]
    mids = [f"prefill:{k}:skip={MID}" for k in MID_DEPTHS]
    plain = ["direct", "completion"] + prefills
    if not cfg.world_mode:  # real models: the real attack families
        return {"plain": plain, "shifted": mids + ["code", "cipher:caesar"], "unseen": []}
    # the world's analogues of CodeAttack, cipher attacks and role-play templates, as the model
    # starts them and (":8") with 8 tokens of harm already under way in that shape
    shapes = ["ledger", "ledger:8", "oldtongue"] + [f"roleplay:{n}" for n in ROLEPLAYS] + ["roleplay:story:8"]
    return {"plain": plain, "shifted": mids + shapes,
            "unseen": ["direct"] + prefills + mids + ["ledger", "ledger:8", "oldtongue", "roleplay:story", "roleplay:story:8"]}


def run_study(cfg: StudyConfig | None = None, **overrides) -> dict:
    """Run (or resume) the study and return its results (also written to OUT/study.json).
    With ``seeds``: one study per seed in ``OUT/seed-<n>`` and the pooled claims."""
    cfg = cfg or StudyConfig(**overrides)
    cfg.validate()
    if cfg.seeds is not None:
        return _run_sweep(cfg)
    return _run_one(cfg)


def _run_one(cfg: StudyConfig) -> dict:
    from deepalign.decoding.base import GenConfig
    from deepalign.evaluation.runner import run_eval
    from deepalign.training.commands import train

    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(cfg, out)
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
                   lambda: build_world(world, seed=cfg.seed, quiet=cfg.quiet, **world_opts))
        base = out / "base"
        stages.run("pretrain", (base / "config.json").exists(),
                   lambda: pretrain(world, base, seed=cfg.seed, quiet=cfg.quiet, resume=True, **pre_opts))
        base_spec = str(base)
    else:
        base_spec = cfg.base

    lora = cfg.lora if cfg.lora is not None else not cfg.world_mode
    data = {} if cfg.world_mode else {"triples": cfg.triples, "helpful": cfg.helpful}
    for recipe in RECIPES:
        dest = models / recipe
        start_from = str(models / "vanilla") if recipe == "dpo" else base_spec
        stages.run(f"train {recipe}", (dest / "config.json").exists(), lambda r=recipe, d=dest, m=start_from: train(
            recipe=r, model=m, out=str(d), world=str(world), seed=cfg.seed, lora=lora, resume=True, max_steps=cfg.train_steps,
            quiet=cfg.quiet, **data,
        ))

    targets = {"base": base_spec, **{r: str(models / r) for r in RECIPES}}
    hf = [f"hf:{p}" for p in targets.values()]
    greedy = GenConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    judges = "oracle,keyword:nocase" if cfg.world_mode else "keyword"
    common = dict(judges=judges, world=str(world) if cfg.world_mode else None, batch_size=cfg.batch_size,
                  limit=cfg.limit, quiet=cfg.quiet)
    battery = world_attacks(cfg, world)
    if cfg.world_mode:
        # the dev split has no helpful file: helpfulness is always measured on test/helpful
        pre = "world:" if cfg.split == "test" else "world:dev/"
        harmful_sets, unseen_sets = [f"{pre}harmful"], [f"{pre}unseen"]
        benign_sets = [f"{pre}benign", "world:helpful"]
    else:
        harmful_sets = [d for d in cfg.eval_datasets if not d.startswith(("benign:", "helpful:"))]
        unseen_sets = []
        benign_sets = [d for d in cfg.eval_datasets if d.startswith(("benign:", "helpful:"))]
    if not harmful_sets:
        raise DeepAlignError("--eval-datasets has no harmful dataset (prefix benign:/helpful: marks the others)")

    def attacks_stage():  # three calls into the same run directory: one table, one set of rows
        no_dpo = [t for t in hf if t != f"hf:{models / 'dpo'}"]
        run_eval(hf, battery["plain"], harmful_sets, out_dir=out / "eval" / "attacks", gen_config=greedy, **common)
        run_eval(no_dpo, battery["shifted"], harmful_sets, out_dir=out / "eval" / "attacks", gen_config=greedy, **common)
        if unseen_sets:
            run_eval(no_dpo, battery["unseen"], unseen_sets, out_dir=out / "eval" / "attacks", gen_config=greedy, **common)

    stages.run("eval attacks", False, attacks_stage)
    if benign_sets:
        stages.run("eval benign+helpful", False, lambda: run_eval(hf, ["direct"], benign_sets, out_dir=out / "eval" / "benign",
                                                                  gen_config=greedy, **common))
    sampled = GenConfig(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=0.7, seed=cfg.seed,
                        num_samples=cfg.ed_samples)
    # the world base model's native format is the world chat format (its corpus is dialogs)
    base_format = ",base_format=chat" if cfg.world_mode else ""
    ed_specs = {(r, a): f"ed:base={base_spec},aligned={models / r},alpha={a}{base_format}"
                for a in cfg.alphas for r in RECIPES}
    ed_targets = [f"hf:{base_spec}"] + list(ed_specs.values())
    stages.run("eval ED", False, lambda: run_eval(ed_targets, ["direct"], harmful_sets[:1], out_dir=out / "eval" / "ed",
                                                  gen_config=sampled, **common))

    depth = {}
    for spec in harmful_sets[:1] + unseen_sets:
        dest = out / "depth" / _slug(spec)
        stages.run(f"depth {_slug(spec)}", (dest / "depth.json").exists(),
                   lambda s=spec, d=dest: _depth_stage(cfg, s, d, base_spec, models, world))
        depth[spec] = {**json.loads((dest / "depth.json").read_text(encoding="utf-8")),
                       "plot": str((dest / "depth.png").relative_to(out))}

    from deepalign.evaluation.study_report import write_study_report

    timing = {"stages_s": stages.times, "reused": stages.reused, "wall_s": round(time.time() - started, 1)}
    results = write_study_report(out, targets=targets, ed_specs=ed_specs, depths=cfg.depths, alphas=cfg.alphas,
                                 judge="oracle" if cfg.world_mode else "keyword", setup=_setup_line(cfg, stages, started),
                                 timing=timing, depth=depth)
    results["timing"] = timing
    results["config"] = asdict(cfg)
    results["targets"] = targets
    results["ed_specs"] = [[r, a, spec] for (r, a), spec in ed_specs.items()]
    write_json(out / "study.json", results)
    stages.say(f"[study] report -> {out / 'report.md'} ({results['timing']['wall_s']:.0f}s)")
    if not cfg.quiet:
        for claim in results["claims"]:
            print(f"  {claim['status']}  {claim['name']}: {claim['detail']}")
    return results


def _slug(spec: str) -> str:
    return spec.split(":", 1)[-1].replace("/", "-") if spec.startswith("world:") else Path(spec.split(":", 1)[-1]).stem


def _depth_stage(cfg: StudyConfig, spec: str, dest: Path, base_spec: str, models: Path, world: Path) -> None:
    """Per-token KL and refusal-token probability of every recipe against the base."""
    from deepalign.evaluation.datasets import load_dataset
    from deepalign.evaluation.depth import depth_profiles, write_depth

    items = load_dataset(spec, world=str(world) if cfg.world_mode else None, limit=cfg.limit)
    # on the world both refusal openers: "sorry" (DeRTa's refusal token) and "i"
    words = ["sorry", "i"] if cfg.world_mode else None
    results = depth_profiles(base_spec, {r: str(models / r) for r in RECIPES}, items,
                             base_format="chat" if cfg.world_mode else None, refusal_words=words,
                             max_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    write_depth(dest, results, dataset=spec)


def _run_sweep(cfg: StudyConfig) -> dict:
    """One full study per seed, then the claims on every seed and on the pooled evidence."""
    from dataclasses import replace

    from deepalign.evaluation.study_report import (MODEL_ORDER, check_claims, load_evidence, numbers, pool_evidence,
                                                   write_sweep_report)

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
        ed_specs = {(r, a): spec for r, a, spec in res["ed_specs"]}
        parts.append(load_evidence(out / f"seed-{seed}", targets=res["targets"], ed_specs=ed_specs,
                                   judge=res["judge"], tag=f"s{seed}/"))
    pooled_ev = pool_evidence(parts)
    names = [n for n in MODEL_ORDER if n in per_seed[cfg.seeds[0]]["targets"]]
    pooled_claims = check_claims(pooled_ev, depths=cfg.depths, alphas=cfg.alphas)
    pooled = numbers(pooled_ev, names=names, depths=cfg.depths, alphas=cfg.alphas)
    write_sweep_report(out, seeds=list(cfg.seeds), per_seed=per_seed, pooled_claims=pooled_claims,
                       pooled_numbers=pooled, names=names, alphas=cfg.alphas)
    results = {
        "seeds": list(cfg.seeds),
        "per_seed": {str(s): {"claims": r["claims"], "timing": r["timing"], "attack_table": r["attack_table"],
                              "ed": r["ed"], "ablation_means": r["ablation_means"]} for s, r in per_seed.items()},
        "pooled": {"claims": pooled_claims, **pooled},
        "wall_s": round(time.time() - started, 1),
        "config": asdict(cfg),
    }
    write_json(out / "study.json", results)
    if not cfg.quiet:
        print(f"[study] claims over seeds -> {out / 'report.md'} ({results['wall_s']:.0f}s)")
        for i, c in enumerate(pooled_claims):
            marks = " ".join(per_seed[s]["claims"][i]["status"] for s in cfg.seeds)
            print(f"  {marks} | pooled {c['status']}  {c['name']}")
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


def configure(p) -> None:
    p.add_argument("--out", default="runs/study", help="study directory (stages are reused on rerun)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=_seed_list, default=None, metavar="LIST",
                   help="several seeds, e.g. 0,1,2: one full study each in OUT/seed-<n>, then one claims table "
                        "(each seed and pooled) in OUT/report.md")
    p.add_argument("--fresh", action="store_true", help="redo every stage")
    p.add_argument("--scale", action="store_true", help="bigger world and model: slower, more faithful")
    p.add_argument("--base", default=None, help="real-model mode: base model (hub id or local dir)")
    p.add_argument("--triples", default=None, help="real-model mode: harmful triples file / dataset")
    p.add_argument("--helpful", default=None, help="real-model mode: helpful instruction pairs")
    p.add_argument("--eval-datasets", nargs="+", default=[], metavar="SPEC",
                   help="real-model mode: evaluation datasets (deepalign eval specs; benign:/helpful: prefixes for non-harmful)")
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=None,
                   help="LoRA fine-tuning (default: on for real models, off for the world)")
    p.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS), help="prefill depths (tokens)")
    p.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS), help="ED alphas")
    p.add_argument("--ed-samples", type=int, default=2, help="samples per query for the ED evaluation")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="items per evaluation dataset (default: all)")
    p.add_argument("--split", choices=("test", "dev"), default="test",
                   help="world: evaluate on the test split (report) or the dev split (tune); helpfulness uses test")
    p.add_argument("--train-steps", type=int, default=-1, help="optimizer steps per alignment run (-1: recipe default)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (default: pretrain's default)")
    p.add_argument("--quiet", action="store_true")


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def run(args) -> int:
    cfg = StudyConfig(
        out=args.out, seed=args.seed, seeds=args.seeds, scale=args.scale, fresh=args.fresh, quiet=args.quiet, base=args.base,
        triples=args.triples, helpful=args.helpful, eval_datasets=args.eval_datasets, lora=args.lora,
        depths=tuple(args.depths), alphas=tuple(args.alphas), ed_samples=args.ed_samples,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit, split=args.split,
        train_steps=args.train_steps, pretrain_steps=args.pretrain_steps,
    )
    run_study(cfg)
    return 0
