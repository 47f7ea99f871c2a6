"""``deepalign ablate``: a model with its refusal direction orthogonalised out of its weights
(Arditi et al. 2024, "weight orthogonalisation"): :func:`ablate_weights`.

Every matrix that writes into the residual stream (token embedding, attention output and MLP
output projections, with their biases) becomes ``W - r r^T W``, so the model computes what
directional ablation by hooks computes (``ablate:`` targets), with no hooks: the output is a
standard Hugging Face model directory (safetensors) that ``AutoModelForCausalLM`` loads, and
so does vLLM. An output layer tied to the embedding is untied by default (it keeps the
original matrix, as the hooks do); ``--tied shared`` orthogonalises the shared matrix instead
(the reference's behaviour for Gemma, and what vLLM's Gemma, which always ties, computes).
Weights are edited in float32 and saved in the checkpoint's own dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deepalign.errors import DeepAlignError, OptionError
from deepalign.options import choice


@dataclass
class AblateOptions:
    model: str | None = field(default=None, metadata={"help": "model directory or hub id (required)"})
    direction: str | None = field(default=None, metadata={
        "help": "refusal direction directory written by deepalign direction (required)"})
    out: str | None = field(default=None, metadata={"help": "output model directory, written atomically (required)"})
    tied: str = field(default="untie", metadata={
        "help": "an output layer tied to the embedding: untie (exactly the hooks' logits) or shared (orthogonalise "
                "the shared matrix, as the reference does for Gemma)"})
    allow_foreign: bool = field(default=False, metadata={
        "help": "accept a direction computed from another model of the same hidden size"})
    overwrite: bool = field(default=False, metadata={"help": "replace an ablated model already in --out"})
    quiet: bool = False

    def __post_init__(self):
        choice("tied", self.tied, ("untie", "shared"))

    def check(self) -> None:
        for name in ("model", "direction", "out"):
            if not getattr(self, name):
                raise OptionError(name, "is required")


#: the record of an ablation beside the weights (it marks a directory ``ablate`` may replace)
ABLATION_INFO = "deepalign_ablation.json"
#: how ``deepalign ablate`` is told to accept a direction of another model
FOREIGN_FLAG = "--allow_foreign"


def ablation_record(opts: AblateOptions, direction, changed: dict, source: str) -> dict:
    """``deepalign_ablation.json``: the source model, the direction (its file, layer, position,
    scale and selection scores) and the edit."""
    import os

    from deepalign import __version__

    return {"model": opts.model, "model_on_hub": source == opts.model and not os.path.exists(opts.model),
            "direction": str(direction.path), "layer": direction.layer, "position": direction.position,
            "scale": direction.scale, "direction_model": direction.model.get("name"),
            "selected": direction.info.get("selected"), "tied": opts.tied,
            "untied_output_layer": changed["untied_output_layer"], "layers": changed["layers"],
            "allow_foreign": opts.allow_foreign,
            "edit": "W <- W - r r^T W for the token embedding and every o_proj and down_proj (weights and biases)",
            "deepalign_version": __version__}


def _checkpoint_dtype(source: str):
    import torch
    from transformers import AutoConfig

    from deepalign.models import first_line

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:  # OSError, ValueError: the loader's one line
        raise DeepAlignError(f"cannot load a model config from {source}: {first_line(exc)}") from None
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def ablate_weights(options: AblateOptions | None = None, **kwargs) -> Path:
    """Write ``out``: ``model`` with ``direction`` orthogonalised out of its weights (module
    doc). Returns the output directory.

    Example (``runs/base2`` and ``runs/direction`` from the ``refusal_direction`` example)::

        >>> out = ablate_weights(model="runs/base2", direction="runs/direction", out="runs/base2-ablated", quiet=True)
        >>> sorted(p.name for p in out.glob("*.safetensors"))
        ['model.safetensors']
    """
    import os

    from transformers import AutoTokenizer

    from deepalign.direction.residual import orthogonalize
    from deepalign.direction.store import load_direction, public_files
    from deepalign.models import first_line, load_causal_lm, model_source
    from deepalign.options import build
    from deepalign.training.modelcard import CARD, render_ablation_card
    from deepalign.utils import atomic_dir, atomic_write, check_writable_dir, quiet_libraries, write_json

    (opts,) = build(kwargs, options=(AblateOptions, options))
    opts.check()
    source = model_source(opts.model)
    direction = load_direction(opts.direction)
    if os.path.isdir(source):
        direction.check_checkpoint(source, allow_foreign=opts.allow_foreign, allow=FOREIGN_FLAG)
    if os.path.isdir(source) and Path(source).resolve() == Path(opts.out).resolve():
        raise DeepAlignError(f"--out {opts.out} is the model being ablated; give another directory")
    out = check_writable_dir(opts.out, replaces=ABLATION_INFO)
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) and not opts.overwrite:
        raise DeepAlignError(f"{out} already holds an ablated model; pass --overwrite to ablate it again")
    with quiet_libraries(opts.quiet):
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception as exc:
            raise DeepAlignError(f"cannot load a tokenizer from {opts.model}: {first_line(exc)}") from None
        model = load_causal_lm(source, dtype=_checkpoint_dtype(source), device="cpu")
        direction.check_model(model, opts.model, allow_foreign=opts.allow_foreign, allow=FOREIGN_FLAG)
        changed = orthogonalize(model, direction.vector, tied=opts.tied)
        info = ablation_record(opts, direction, changed, source)
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / ABLATION_INFO, info)
            atomic_write(tmp / CARD, render_ablation_card(info, out))
            public_files(tmp)
    if not opts.quiet:
        note = "; the tied output layer was untied" if changed["untied_output_layer"] else ""
        print(f"{opts.model} with its refusal direction orthogonalised out of {changed['layers']} layers and the "
              f"embedding{note} -> {out}")
    return out
