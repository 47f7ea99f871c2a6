"""The residual stream of a decoder-only transformer: what writes into it, hooks that edit it,
and the same edit baked into the weights.

In the pre-norm decoders this module knows (:data:`KNOWN`), the residual stream is written
by exactly three kinds of module: the token embedding, each layer's attention output
projection (``self_attn.o_proj``) and each layer's MLP output projection (``mlp.down_proj``).
``hidden_states[l]`` of a forward pass (``output_hidden_states=True``) is the input of
decoder layer ``l``: the embedding plus everything layers ``0 .. l-1`` wrote.

* **Directional ablation** (Arditi et al. 2024, arXiv 2406.11717) removes a unit direction
  ``r`` from the stream at every layer and position, ``x <- x - r r^T x``. Because every
  write is projected (:class:`ResidualHooks` hooks the outputs of the writers), no
  ``hidden_states[l]`` has a component along ``r``.
* **Weight orthogonalisation** (:func:`orthogonalize`) does the same with the weights:
  ``W <- W - r r^T W`` for every writer (and ``b <- b - r r^T b`` for a bias; embedding rows
  ``e <- e - r r^T e``). A tied output layer is untied first (it keeps the original
  matrix), so the orthogonalised model gives the logits of the hooked one.
* **Activation addition** adds a vector to the input of one layer, at every position
  (:class:`ResidualHooks` ``add``).

Architectures whose layers write elsewhere (post-attention norms as in Gemma-2/3, parallel
blocks, mixtures of experts) are refused with one line rather than ablated wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from deepalign.errors import DeepAlignError

#: model types whose residual writers are the embedding, ``self_attn.o_proj`` and ``mlp.down_proj``
KNOWN = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")


@dataclass
class ResidualStream:
    """The modules of one model that matter for its residual stream."""

    model: Any
    embed: torch.nn.Module  #: the token embedding (its output is written into the stream)
    layers: list  #: decoder layers; the input of layer ``l`` is ``hidden_states[l]``
    writers: list  #: per layer, the attention and MLP output projections (``nn.Linear``)
    hidden_size: int

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _describe(model) -> str:
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None) if config is not None else None
    return f"model type {kind!r} ({type(model).__name__})" if kind else type(model).__name__


def residual_stream(model) -> ResidualStream:
    """The residual writers of ``model``; an architecture outside :data:`KNOWN` (or one whose
    modules are not where that architecture keeps them) raises :class:`DeepAlignError`."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    problem = None
    if kind not in KNOWN:
        problem = "is not one of them"
    inner = getattr(model, "model", None)
    layers = list(getattr(inner, "layers", None) or [])
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    writers = []
    if problem is None:
        for i, layer in enumerate(layers):
            o_proj = getattr(getattr(layer, "self_attn", None), "o_proj", None)
            down = getattr(getattr(layer, "mlp", None), "down_proj", None)
            if not isinstance(o_proj, torch.nn.Linear) or not isinstance(down, torch.nn.Linear):
                problem = f"has no self_attn.o_proj and mlp.down_proj linear layers in layer {i}"
                break
            writers.append((o_proj, down))
        if not layers or embed is None or getattr(embed, "weight", None) is None:
            problem = "has no decoder layers or token embedding where that architecture keeps them"
    if problem is not None:
        raise DeepAlignError(f"the residual stream of {_describe(model)} is not known to deepalign's hooks "
                             f"(known model types: {', '.join(KNOWN)}): it {problem}")
    hidden = int(embed.weight.shape[1])
    return ResidualStream(model, embed, layers, writers, hidden)


def unit(vector: torch.Tensor) -> torch.Tensor:
    """``vector`` scaled to unit norm in float32 (a zero vector is an error)."""
    v = vector.detach().to(torch.float32).reshape(-1)
    norm = v.norm()
    if not torch.isfinite(norm) or norm <= 0:
        raise DeepAlignError("a direction must be a finite, non-zero vector")
    return v / norm


class ResidualHooks:
    """Forward hooks that edit the residual stream of one model; a context manager.

    ``ablate``: a unit direction ``[d]`` removed from every write into the stream, or one
    direction per batch row ``[batch, d]`` (a zero row leaves that row alone). ``add``: a
    mapping ``layer -> vector`` (``[d]`` or ``[batch, d]``) added to the input of that layer
    at every position. Both may be changed between forward passes; hooks stay attached
    until :meth:`remove` (or the end of the ``with`` block).
    """

    def __init__(self, stream: ResidualStream, *, ablate: torch.Tensor | None = None,
                 add: dict[int, torch.Tensor] | None = None):
        self.stream = stream
        self.ablate = ablate
        self.add = dict(add or {})
        self.handles: list = []

    # -- the edits ------------------------------------------------------------------------
    def _project_out(self, out: torch.Tensor) -> torch.Tensor:
        r = self.ablate.to(out.device)
        x = out.to(torch.float32)
        if r.dim() == 1:
            coef = x @ r
            return (x - coef.unsqueeze(-1) * r).to(out.dtype)
        shape = (r.shape[0],) + (1,) * (x.dim() - 2) + (r.shape[1],)
        r = r.reshape(shape)
        coef = (x * r).sum(-1, keepdim=True)
        return (x - coef * r).to(out.dtype)

    def _on_write(self, module, args, output):
        if self.ablate is None:
            return None
        if isinstance(output, tuple):
            return (self._project_out(output[0]),) + tuple(output[1:])
        return self._project_out(output)

    @staticmethod
    def _shifted(x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        v = vec.to(device=x.device, dtype=x.dtype)
        if v.dim() == 2:  # one vector per batch row
            v = v.reshape((v.shape[0],) + (1,) * (x.dim() - 2) + (v.shape[-1],))
        return x + v

    def _on_layer_input(self, index: int):
        def hook(module, args, kwargs):
            vec = self.add.get(index)
            if vec is None:
                return None
            if args:
                return (self._shifted(args[0], vec),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": self._shifted(kwargs["hidden_states"], vec)}

        return hook

    # -- attaching ------------------------------------------------------------------------
    def attach(self) -> ResidualHooks:
        if self.handles:
            return self
        s = self.stream
        modules = [s.embed] + [m for pair in s.writers for m in pair]
        self.handles = [m.register_forward_hook(self._on_write) for m in modules]
        self.handles += [layer.register_forward_pre_hook(self._on_layer_input(i), with_kwargs=True)
                         for i, layer in enumerate(s.layers)]
        return self

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> ResidualHooks:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()


def _orthogonal_rows(weight: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``weight`` whose rows (vectors in the stream's space) have no component along ``r``."""
    w = weight.detach().to(torch.float32)
    return (w - torch.outer(w @ r, r)).to(weight.dtype)


def orthogonalize(model, direction: torch.Tensor, *, tied: str = "untie") -> dict[str, Any]:
    """Bake directional ablation of ``direction`` into ``model``'s weights, in place:
    ``W <- W - r r^T W`` for every residual writer (embedding rows, ``o_proj`` and
    ``down_proj`` weights and biases). ``tied``: what to do with an output layer tied to the
    embedding: ``untie`` (the output layer keeps the original matrix: the model then gives
    exactly the logits of directional ablation by hooks) or ``shared`` (the shared matrix is
    orthogonalised for both, as the reference implementation does for Gemma). Returns what
    was changed (names and whether the output layer was untied)."""
    if tied not in ("untie", "shared"):
        raise DeepAlignError(f"tied must be untie or shared, got {tied!r}")
    stream = residual_stream(model)
    r = unit(direction)
    if r.numel() != stream.hidden_size:
        raise DeepAlignError(f"the direction has {r.numel()} entries but the model's hidden size is {stream.hidden_size}")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    untied = False
    with torch.no_grad():
        embed_w = stream.embed.weight
        if head is not None and getattr(head, "weight", None) is embed_w and tied == "untie":
            head.weight = torch.nn.Parameter(embed_w.detach().clone(), requires_grad=embed_w.requires_grad)
            for cfg in {id(model.config): model.config, id(model.config.get_text_config()): model.config.get_text_config()}.values():
                cfg.tie_word_embeddings = False
            untied = True
        rr = r.to(embed_w.device)
        embed_w.copy_(_orthogonal_rows(embed_w, rr))
        for o_proj, down in stream.writers:
            for lin in (o_proj, down):
                rl = r.to(lin.weight.device)
                # the output of a linear layer is W x (+ b): project the columns of W, i.e. the rows of W^T
                lin.weight.copy_(_orthogonal_rows(lin.weight.t(), rl).t())
                if lin.bias is not None:
                    b = lin.bias.detach().to(torch.float32)
                    lin.bias.copy_((b - (b @ rl) * rl).to(lin.bias.dtype))
    return {"layers": stream.num_layers, "untied_output_layer": untied, "tied": tied}
