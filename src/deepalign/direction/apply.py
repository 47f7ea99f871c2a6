"""Using a refusal direction on a model: directional ablation or activation addition through
forward hooks (:func:`apply_direction`); a generation target built that way is
:func:`deepalign.decoding.hf.direction_target` (the ``ablate:`` and ``actadd:`` targets).

* ``ablate``: ``x <- x - r r^T x`` on every write into the residual stream, so at every layer
  and position (what ``deepalign ablate`` bakes into the weights).
* ``add``: ``x <- x + coeff * scale * r`` on the input of the direction's own layer, at every
  position, where ``scale`` is the norm of the difference of means the direction came from:
  with ``coeff=1`` this is the reference's activation addition that induces refusal on
  harmless prompts (the difference of means added as is); ``coeff=-1`` is the reference's
  subtraction on harmful prompts.
"""

from __future__ import annotations

from deepalign.errors import DeepAlignError

MODES = ("ablate", "add")


def apply_direction(model, direction, *, mode: str = "ablate", coeff: float = 1.0, name: str | None = None,
                    allow_foreign: bool = False):
    """Attach the hooks of ``direction`` (a :class:`~deepalign.direction.store.Direction` or
    its directory) to ``model``, after checking that it belongs to this model (its
    architecture, hidden size and weights). Returns the attached
    :class:`~deepalign.direction.residual.ResidualHooks` (``.remove()`` detaches them)."""
    import math

    from deepalign.direction.residual import ResidualHooks, residual_stream
    from deepalign.direction.store import load_direction

    if mode not in MODES:
        raise DeepAlignError(f"direction mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not math.isfinite(coeff):
        raise DeepAlignError(f"coeff must be a finite number, got {coeff}")
    d = load_direction(direction)
    stream = residual_stream(model)
    d.check_model(model, name, allow_foreign=allow_foreign)
    if mode == "ablate":
        hooks = ResidualHooks(stream, ablate=d.vector)
    else:
        if not 0 <= d.layer < stream.num_layers:
            raise DeepAlignError(f"{d.path}: layer {d.layer} is not a layer of this model ({stream.num_layers} layers)")
        hooks = ResidualHooks(stream, add={d.layer: (coeff * d.scale) * d.vector})
    return hooks.attach()
