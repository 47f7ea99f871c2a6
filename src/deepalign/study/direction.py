"""The study's refusal-direction stage: is safety deep in the representation too?

Arditi et al. 2024 (arXiv 2406.11717): refusal is mediated by one direction of the residual
stream; ablating it removes refusal. On the world, one direction per aligned model (vanilla,
harmful-prefix, RTO, DeRTa), then each model with its own direction ablated at every layer and
position (``ablate:`` targets), on the held-out harmful queries (direct and prefilled) and the
helpful tasks; the KL of each model's first response token on helpful queries under ablation;
and the projection on the direction along teacher-forced harmful responses, next to the
per-token KL and refusal probability (``deepalign depth``).

Selection as the reference does it, with two world-specific choices, both measured on the
study's own models (``docs/direction.md``): the harmless prompts are helpful tasks
(``world:dev/helpful``: with the benign look-alikes, the difference of means is "misdeed vs
chore", not "refuse vs comply"), and the induced-refusal filter is off (adding RTO's and DeRTa's
best candidates raises the refusal score on harmless prompts from about -11 to about -0.5,
short of the reference's threshold of 0, although they do induce refusal). The directions come
from the dev splits; everything measured with them uses the study's evaluation split.
"""

from __future__ import annotations

from pathlib import Path

from deepalign.decoding.registry import TargetSpec
from deepalign.study.models import RECORD_MODELS

#: the models that get a refusal direction
MODELS = RECORD_MODELS
HARMFUL, HARMLESS = "world:dev/harmful", "world:dev/helpful"
#: KL under ablation is measured on this many helpful test queries (the first of the file)
KL_QUERIES = 120


def direction_dir(study, model: str) -> Path:
    return study.out / "direction" / model


def skipped_file(study, model: str) -> Path:
    """Where the study notes why a model has no direction (a model that refuses nothing)."""
    return study.out / "direction" / f"{model}.skipped"


def done(study, model: str) -> bool:
    return (direction_dir(study, model) / "direction.json").exists() or skipped_file(study, model).exists()


def compute(study, model: str) -> None:
    """Select and write ``model``'s refusal direction (see the module doc). When the selection
    finds none (after the reference's filters no prompt is left, or no candidate passes), the
    reason is noted and the model is left out of the stage: the study goes on."""
    from deepalign.direction.select import refusal_direction
    from deepalign.errors import DeepAlignError
    from deepalign.utils import atomic_write

    cfg = study.cfg
    try:
        refusal_direction(model=str(study.models / model), harmful=HARMFUL, harmless=HARMLESS, world=str(study.world),
                          out=str(direction_dir(study, model)), induce_refusal_threshold=None, seed=cfg.seed,
                          quiet=True)
    except DeepAlignError as exc:
        atomic_write(skipped_file(study, model), f"{exc}\n")


def with_direction(study) -> list[str]:
    return [m for m in MODELS if (direction_dir(study, m) / "direction.json").exists()]


def ablated_targets(study) -> list[TargetSpec]:
    """Each aligned model with its own direction ablated (tagged like the study's models, plus
    ``ablated``)."""
    return [TargetSpec.ablate(study.models / m, direction_dir(study, m), name=f"{m} ablated",
                              tags={"model": m, "ablated": True}) for m in with_direction(study)]


def harmless_kl(study) -> dict[str, dict]:
    """Per model: KL of its first response token on helpful test queries, plain vs ablated."""
    from deepalign.data.datasets import load_dataset
    from deepalign.direction.select import harmless_kl as kl

    queries = load_dataset(study.sets["helpful"], world=str(study.world), limit=KL_QUERIES)
    out = {}
    for m in with_direction(study):
        result = kl(str(study.models / m), str(direction_dir(study, m)), queries, device="cpu")
        out[m] = {k: v for k, v in result.items() if k != "per_query"}
    return out


def projections(study, items) -> dict[str, dict] | None:
    from deepalign.evaluation.projection import projection_profiles

    models = with_direction(study)
    if not models:
        return None
    return projection_profiles({m: str(study.models / m) for m in models},
                               {m: str(direction_dir(study, m)) for m in models}, items,
                               max_tokens=study.cfg.max_new_tokens, batch_size=study.step_batch)
