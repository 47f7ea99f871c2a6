"""The study's models by name, and the key of an Emulated Disalignment result.

The study aligns its base model once with every alignment recipe and names each aligned model
after its recipe (``OUT/models/<recipe>``, ``tags["model"]`` in the run logs, the columns of the
report). Emulated Disalignment runs the base model against each aligned model at every alpha:
:class:`EDKey` names one of those results.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepalign.data.recipes import ALIGNMENT_RECIPES, RECORD_RECIPES

#: the pretrained model every aligned model starts from
BASE = "base"
#: the study's aligned models, one per alignment recipe (DPO on top of vanilla), in the report's order
ALIGNED_MODELS = ALIGNMENT_RECIPES
#: the aligned models trained on DeRTa's records (every one but DPO): the ablation claim compares
#: them, and each gets a refusal direction and the fine-tuning attack checkpoint by checkpoint
RECORD_MODELS = RECORD_RECIPES
#: every model of the study, in the report's order
MODELS = (BASE, *ALIGNED_MODELS)


@dataclass(frozen=True)
class EDKey:
    """One result of the ED stage: ED of the base model against the aligned ``model`` at
    ``alpha``, or the base model alone (``EDKey(BASE)``, no alpha)."""

    model: str
    alpha: float | None = None

    @property
    def label(self) -> str:
        """The key of the result in ``study.json``'s ``ed`` table: ``vanilla@0.3``, or ``base``."""
        return self.model if self.alpha is None else f"{self.model}@{self.alpha}"
