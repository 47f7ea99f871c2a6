"""The study's adaptive-attack stage: is deep alignment rank-deep, or only probability-deep?

Every other attack of the study is fixed in advance. Here the attacks adapt to each model
(:mod:`deepalign.attacks.rap`, :mod:`~deepalign.attacks.insertion`, :mod:`~deepalign.attacks.gcg`):

- rank-assisted prefilling (Vega & Singh 2025, arXiv 2512.05518) at the study's prefill depths
  8, 16 and 32 with the paper's selector: K tokens chosen from each model's own top 20, refusal
  tokens skipped (on the world: every word only its refusals use), then free decoding;
- random insertion (arXiv 2606.04168): 8 tokens of the model's own answer, then 8 tokens of
  the harmful reference, then free decoding;
- GCG (Zou et al. 2023) on a fixed subset with a fixed budget: the first ``GCG_ITEMS`` (12) held-out
  harmful queries, ``GCG_SPEC`` (10 steps of 64 candidates; ``--gcg_steps`` sets a larger one),
  aiming at the world's answer opener;

against vanilla, harmful-prefix (the data-augmentation defence RAP was built to break), RTO,
DeRTa, and vanilla after the constrained fine-tuning of the fine-tuning stage (where it ran).
And the refusal-prefix fine-tuning attack (arXiv 2601.19231): vanilla and DeRTa fine-tuned
with plain SFT, and vanilla with the constrained objective, on the benign fine-tuning pairs
whose answers begin with the world's refusal (``--recipe refusal-prefix``), with the
fine-tuning stage's settings, evaluated direct and prefilled on held-out and unseen misdeeds.
"""

from __future__ import annotations

from deepalign.decoding.registry import TargetSpec
from deepalign.study import finetune as ft

RAP_DEPTHS = (8, 16, 32)
INSERT = "insert:8"
GCG_ITEMS = 12
GCG_BATCH = 6  # two batches a model: the evaluation's two worker processes share every model's GCG
GCG_STEPS = 10
GCG_WIDTH = 64
MODELS = ("vanilla", "harmful-prefix", "rto", "derta")
#: the constrained-fine-tuned vanilla model of the fine-tuning stage (its target tags)
CONSTRAINED_TAGS = {"model": "vanilla", "finetune": "harmful", "objective": "constrained"}
#: the refusal-prefix fine-tuning runs: (model, objective)
RP_RUNS = (("vanilla", "sft"), ("derta", "sft"), ("vanilla", "constrained"))


def gcg_spec(steps: int) -> str:
    return f"gcg:steps={steps}:width={GCG_WIDTH}:topk={GCG_WIDTH}"


def attack_specs() -> list[str]:
    """The attacks of the adaptive run on every item (GCG runs on its subset, separately)."""
    return [f"rap:{k}" for k in RAP_DEPTHS] + [INSERT]


def targets(study) -> list[TargetSpec]:
    """The aligned models, and the constrained-fine-tuned vanilla model where it exists."""
    out = [TargetSpec.hf(study.models / m, name=m, tags={"model": m}) for m in MODELS]
    path = ft.run_dir(study.out / "finetune", "vanilla", "harmful", "constrained")
    if (path / "config.json").exists():
        out.append(TargetSpec.hf(path, name="vanilla after harmful constrained", tags=dict(CONSTRAINED_TAGS)))
    return out


def rp_dir(study, model: str, objective: str):
    return study.out / "finetune" / model / f"refusal-prefix-{objective}"


def train_rp(study, model: str, objective: str) -> None:
    """One refusal-prefix fine-tuning run, with the fine-tuning stage's settings (and its
    constrained objective's strengths)."""
    from deepalign.training.finetune import train

    cfg = study.cfg
    extra = dict(ft.CONSTRAINED) if objective == "constrained" else {}
    if cfg.finetune_steps > 0:
        extra["max_steps"] = cfg.finetune_steps
    train(recipe="refusal-prefix", model_name_or_path=str(study.models / model), dataset_name=ft.DATA["benign"],
          output_dir=str(rp_dir(study, model, objective)), world=str(study.world), seed=cfg.seed, quiet=cfg.quiet,
          resume=True, **ft.SETTINGS, **extra)


def rp_targets(study) -> list[TargetSpec]:
    """Vanilla and DeRTa before, and each refusal-prefix run after."""
    out = [TargetSpec.hf(study.models / m, name=m, tags={"model": m, "steps": 0}) for m in ("vanilla", "derta")]
    return out + [TargetSpec.hf(rp_dir(study, m, o), name=f"{m} after refusal-prefix {o}",
                                tags={"model": m, "finetune": "refusal-prefix", "objective": o}) for m, o in RP_RUNS]


def rap_ranks(run_dir) -> dict[str, dict]:
    """Per model of an adaptive run: at each step of the deepest RAP, the mean rank of the
    chosen token and how often the model's own top token was a refusal token, over items."""
    from deepalign.runs.rundir import RunDir

    run = RunDir(run_dir)
    if not run.is_run():
        return {}
    info = run.info()
    names = {t.label: (t.name or t.label) for t in info.targets}
    deepest = f"rap:{max(RAP_DEPTHS)}"
    out: dict[str, dict] = {}
    for row in run.rows():
        rap = (row.meta or {}).get("rap")
        if row.attack != deepest or not rap:
            continue
        acc = out.setdefault(names.get(row.target, row.target), {"ranks": [], "refusal_top": [], "first": []})
        acc["ranks"].append(list(rap["ranks"]))
        acc["refusal_top"].append(rap["refusal_top"] / max(1, len(rap["ranks"])))
        if rap["ranks"]:
            acc["first"].append(rap["ranks"][0])
    summary = {}
    for name, acc in out.items():
        depth = max((len(r) for r in acc["ranks"]), default=0)
        mean = []
        for step in range(depth):
            at = [r[step] for r in acc["ranks"] if len(r) > step]
            mean.append(sum(at) / len(at))
        summary[name] = {"mean_rank": mean, "refusal_top": sum(acc["refusal_top"]) / len(acc["refusal_top"]),
                         "first_rank": sum(acc["first"]) / len(acc["first"]) if acc["first"] else None,
                         "items": len(acc["ranks"])}
    return summary
