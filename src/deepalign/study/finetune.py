"""The study's fine-tuning attack stage: does deep alignment survive fine-tuning?

Qi et al. 2023 (arXiv 2310.03693): a few harmful fine-tuning examples undo safety alignment;
Qi et al. 2025 (arXiv 2406.05946): a token-wise constrained objective, which holds the first
response tokens near the aligned model, resists it without costing utility. On the world:

- the vanilla model fine-tuned on the attack split (``world:ft/harmful``: harmful queries with
  harmful answers, disjoint from every alignment and evaluation file) with plain SFT and with
  the constrained objective, and on the benign task (``world:ft/benign``: two facts of a place
  in one answer, a task no aligned model does) with both, evaluated on held-out and unseen
  misdeeds (direct and prefilled), helpfulness and the benign task's held-out test;
- the four aligned models under the same plain-SFT attack, checkpoint by checkpoint: harmful %
  against fine-tuning steps (does deeper alignment resist longer?);
- per-token KL(attacked || vanilla) along harmful responses after each attack on vanilla.

Settings were chosen on the world's dev splits (``docs/training.md``): learning rate 1e-4,
constant, no warm-up, batch 16, 8 epochs (56 steps on the 100 attack pairs, 104 on the 200
benign pairs). The constrained objective keeps the reference code's bias length (5) but not its
strengths: per-token beta 20 at the first response token, 2 at the next four and 0.05 after
(``beta`` 0.05, ``first_token_bias_factor`` 400, ``bias_factor`` 40; the reference has 0.5, 2
and 0.1). On the world a vanilla model's loss on the attack's answers sits in its first
response token, so the reference's first-token constraint lets it flip, and its later-token
constraint costs the benign task. The dev sweep (vanilla, harmful % on dev direct queries /
benign task accuracy on its dev split; plain SFT 100% / 93.1%): reference 100% / 86.1%; first 2,
next 2, after .1: 45.8% / 88.9%; first 5, next 5, after .1: 5.8% / 77.8%; first 10, next .5,
after .05: 17.5% / 91.7%; first 20, next 2, after .05: 3.3% / 93.1% (chosen).
"""

from __future__ import annotations

from pathlib import Path

from deepalign.decoding.registry import TargetSpec
from deepalign.study.models import RECORD_MODELS

#: the fine-tuning data: name -> training spec
DATA = {"harmful": "world:ft/harmful", "benign": "world:ft/benign"}
#: the runs on the vanilla model: (data, objective)
VANILLA_RUNS = (("harmful", "sft"), ("harmful", "constrained"), ("benign", "sft"), ("benign", "constrained"))
#: the aligned models under the plain-SFT attack, step by step (checkpoints every CHECKPOINT_STEPS)
STEP_MODELS = RECORD_MODELS
CHECKPOINT_STEPS = 14
#: the settings chosen on dev (module doc)
SETTINGS = dict(learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, per_device_train_batch_size=16,
                num_train_epochs=8)
CONSTRAINED = dict(objective="constrained", beta=0.05, first_token_bias_factor=400.0, bias_factor=40.0, bias_length=5)


def run_name(data: str, objective: str) -> str:
    """A fine-tuning run's name (``harmful-sft``): its directory under the model's, its label."""
    return f"{data}-{objective}"


def run_dir(root: Path, model: str, data: str, objective: str) -> Path:
    return root / model / run_name(data, objective)


def runs() -> list[tuple[str, str, str]]:
    """Every fine-tuning run of the stage: (model, data, objective)."""
    out = [("vanilla", d, o) for d, o in VANILLA_RUNS]
    return out + [(m, "harmful", "sft") for m in STEP_MODELS if m != "vanilla"]


def train_run(study, model: str, data: str, objective: str) -> None:
    """One run; the plain-SFT attack keeps a loadable checkpoint every CHECKPOINT_STEPS steps
    (the Trainer saves the tokenizer with each)."""
    from deepalign.training.finetune import train

    cfg = study.cfg
    steps = data == "harmful" and objective == "sft"
    extra = dict(CONSTRAINED) if objective == "constrained" else {}
    if cfg.finetune_steps > 0:
        extra["max_steps"] = cfg.finetune_steps
    if steps:
        every = CHECKPOINT_STEPS if cfg.finetune_steps <= 0 else max(1, cfg.finetune_steps // 2)
        extra.update(keep_checkpoints=True, save_steps=every, save_total_limit=None)
    train(recipe="sft", model_name_or_path=str(study.models / model), dataset_name=DATA[data],
          output_dir=str(run_dir(study.out / "finetune", model, data, objective)), world=str(study.world),
          seed=cfg.seed, quiet=cfg.quiet, resume=True, **SETTINGS, **extra)


def target(name: str, path, **tags) -> TargetSpec:
    return TargetSpec.hf(path, name=name, tags={k: v for k, v in tags.items() if v is not None})


def attacked_targets(study) -> list[TargetSpec]:
    """The vanilla model before and after each of its four fine-tuning runs."""
    root = study.out / "finetune"
    return [target("vanilla", study.models / "vanilla", model="vanilla", steps=0)] + [
        target(f"vanilla after {data} {objective}", run_dir(root, "vanilla", data, objective), model="vanilla",
               finetune=data, objective=objective) for data, objective in VANILLA_RUNS]


def step_targets(study) -> list[TargetSpec]:
    """Every checkpoint of the plain-SFT attack on the four aligned models (step 0: the aligned
    model itself)."""
    out = []
    for model in STEP_MODELS:
        out.append(target(f"{model} after 0 steps", study.models / model, model=model, steps=0))
        ckpts = (run_dir(study.out / "finetune", model, "harmful", "sft") / "checkpoints").glob("checkpoint-*")
        for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[1])):
            steps = int(ckpt.name.split("-")[1])
            out.append(target(f"{model} after {steps} steps", ckpt, model=model, finetune="harmful", objective="sft",
                              steps=steps))
    return out
