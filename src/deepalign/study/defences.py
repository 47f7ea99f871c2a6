"""The study's defence axis: do the newer defences that claim depth another way hold under the
same attacks as DeRTa?

- **ADA** (Any-Depth Alignment, arXiv 2510.18081; :mod:`deepalign.decoding.ada`) on vanilla, at
  inference time: ADA-RK (the header re-inserted, the model's own lookahead read for a
  refusal) and ADA-LP (a linear probe at the re-inserted header, fitted on vanilla with
  ``deepalign ada-probe`` on the world's dev splits: ``OUT/defences/probe``);
- **PRESTO** (arXiv 2512.05518): the harmful-prefix recipe with the attention regulariser at
  the authors' weight (``--presto_weight 1``), trained with the alignment stage's settings
  (``OUT/defences/harmful-prefix-presto``).

They face the attack battery (prefill at every depth, the completion attack; the shifted shapes
with ``--defence_shapes``, cells no claim reads) and, with the adaptive stage, RAP and insertion on
the held-out harmful queries; over-refusal and
helpfulness on the benign and helpful sets. And the question no paper answered: vanilla after
each fine-tuning attack of the fine-tuning stage, defended by ADA (the probe fitted on vanilla
before the attack), direct and prefilled.

ADA's check interval on the world: the authors check every 25 tokens of responses they cut at
500; the world's answers are at most 64 tokens, so the study checks every 8, the smallest depth
of the claim (a rule written before any defended run: every deep prefill of the claim, 8, 16
and 32, then ends on a checkpoint, as a prefill in the authors' depth grid ends on one of
theirs). Everything else is the authors' (lookahead 20, threshold 0.5, the probe's settings).
"""

from __future__ import annotations

from deepalign.decoding.registry import TargetSpec
from deepalign.study import finetune as ft

#: ADA's check interval on the world (module doc)
EVERY = 8
#: PRESTO's weight: the authors' (their regulariser is added with weight 1)
PRESTO_WEIGHT = 1.0
MODES = ("ada-rk", "ada-lp")
#: items per dataset the probe is fitted on: the dev harmful set's 120, and as many of each
#: harmless set (the dev benign and helpful sets hold 360 each; all of them took 3.5 minutes)
PROBE_ITEMS = 120


def probe_dir(study):
    return study.out / "defences" / "probe"


def presto_dir(study):
    return study.out / "defences" / "harmful-prefix-presto"


def fit_probe(study) -> None:
    """ADA-LP's probe on vanilla, from the world's dev splits (harmful answers and vanilla's own
    answers to the benign and helpful queries)."""
    from deepalign.decoding.ada_probe import fit_probe as fit

    cfg = study.cfg
    fit(model=str(study.models / "vanilla"), harmful="world:dev/harmful",
        harmless=["world:dev/benign", "world:dev/helpful"], out=str(probe_dir(study)), world=str(study.world),
        every=EVERY, max_new_tokens=cfg.max_new_tokens, batch_size=study.step_batch, seed=cfg.seed,
        limit=min(cfg.limit or PROBE_ITEMS, PROBE_ITEMS), overwrite=True, quiet=cfg.quiet)


def train_presto(study, mix: dict) -> None:
    """harmful-prefix with PRESTO's regulariser, with the alignment stage's settings (``mix``)."""
    from deepalign.training.finetune import train

    cfg = study.cfg
    train(recipe="harmful-prefix", model_name_or_path=study.base, output_dir=str(presto_dir(study)),
          world=str(study.world), seed=cfg.seed, resume=True, max_steps=cfg.train_steps,
          save_steps=cfg.checkpoint_every, quiet=cfg.quiet, presto_weight=PRESTO_WEIGHT, **mix)


def ada(study, mode: str, path, name: str, **tags) -> TargetSpec:
    """``path`` defended by ADA (``mode``: ada-rk or ada-lp) with the study's settings."""
    options = {"every": EVERY, "world": str(study.world)}
    if mode == "ada-lp":
        options["probe"] = str(probe_dir(study))
    return TargetSpec(mode, str(path), tuple(options.items()), name=f"{name} + {mode.upper()}",
                      tags=tuple({**tags, "defence": mode}.items()))


def targets(study) -> list[TargetSpec]:
    """vanilla + ADA-RK, vanilla + ADA-LP, harmful-prefix + PRESTO."""
    vanilla = study.models / "vanilla"
    return [ada(study, m, vanilla, "vanilla", model="vanilla") for m in MODES] + [
        TargetSpec.hf(presto_dir(study), name="harmful-prefix + PRESTO",
                      tags={"model": "harmful-prefix", "defence": "presto"})]


def finetuned_targets(study) -> list[TargetSpec]:
    """vanilla after each fine-tuning attack of the fine-tuning stage (where it ran), with ADA."""
    out = []
    for data, objective in ft.VANILLA_RUNS:
        path = ft.run_dir(study.out / "finetune", "vanilla", data, objective)
        if (path / "config.json").exists():
            out += [ada(study, m, path, f"vanilla after {data} {objective}", model="vanilla", finetune=data,
                        objective=objective) for m in MODES]
    return out
