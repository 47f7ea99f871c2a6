"""Refusal directions (Arditi et al. 2024, arXiv 2406.11717): find a model's refusal
direction (:mod:`~deepalign.direction.select`), store it with the identity of its model
(:mod:`~deepalign.direction.store`), ablate or add it through hooks or bake the ablation into
the weights (:mod:`~deepalign.direction.residual`, :mod:`~deepalign.direction.ablate`), and
follow a response's projection on it (:mod:`~deepalign.evaluation.projection`)."""
