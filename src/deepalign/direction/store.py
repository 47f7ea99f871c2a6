"""A refusal direction on disk, and the identity of the model it belongs to.

A direction directory (written by ``deepalign direction``) holds

* ``direction.safetensors``: ``direction`` (the unit vector, float32, the model's hidden
  size) and ``mean_diffs`` (every candidate's un-normalised difference of means,
  ``[positions, layers, hidden]``);
* ``direction.json``: its layer (index into ``hidden_states``), its position (counted from
  the end of the prompt, ``-1`` = the last prompt token), its ``scale`` (the norm of the
  difference of means: what activation addition adds), every candidate's scores, the
  identity of the model, and the token ids of the prompts it was computed from.

A model's identity is its configuration plus a sample of its weights (a few values of every
parameter tensor). Two loads of one checkpoint agree within bfloat16 rounding whatever dtype
they use; a fine-tuned or orthogonalised copy does not. Applying a direction to a model it
was not computed from is refused unless asked for (``allow_foreign``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from deepalign.errors import DeepAlignError

FORMAT = "deepalign-direction"
VERSION = 1
JSON_NAME = "direction.json"
WEIGHTS_NAME = "direction.safetensors"
_SAMPLES_PER_TENSOR = 4
_REL_TOL = 1e-2  # two loads of one checkpoint differ by dtype rounding only (bfloat16: 2**-8 relative)


def _sample_index(shape: Sequence[int], k: int) -> tuple[int, ...]:
    """The ``k``-th sampled element of a tensor of ``shape``: evenly spread along each dim."""
    return tuple((n * (2 * k + 1)) // (2 * _SAMPLES_PER_TENSOR) for n in shape)


def _named_tensors(model) -> dict[str, torch.Tensor]:
    """The tensors a fingerprint samples: the token embedding and every parameter of every
    decoder layer, keyed as in checkpoints (``embed``, ``layers.<i>.<name>``)."""
    from deepalign.direction.residual import residual_stream

    stream = residual_stream(model)
    out = {"embed": stream.embed.weight}
    for i, layer in enumerate(stream.layers):
        for sub, p in layer.named_parameters():
            out[f"layers.{i}.{sub}"] = p
    return out


def fingerprint(model) -> dict[str, list[float]]:
    """A few values of every tensor of :func:`_named_tensors` (same for every dtype a
    checkpoint is loaded in, within rounding)."""
    out = {}
    with torch.no_grad():
        for key, p in sorted(_named_tensors(model).items()):
            t = p.detach()
            out[key] = [float(t[_sample_index(t.shape, k)]) for k in range(_SAMPLES_PER_TENSOR)]
    return out


def checkpoint_fingerprint(model_dir: str | os.PathLike) -> dict[str, list[float]] | None:
    """:func:`fingerprint` read from a model directory's safetensors files without loading
    the model (only the sampled rows are read); None when it has none."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    pattern = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
    out = {}
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                m = pattern.search(name)
                key = f"layers.{m.group(1)}.{m.group(2)}" if m else ("embed" if name.endswith("embed_tokens.weight") else None)
                if key is None:
                    continue
                sl = fh.get_slice(name)
                shape = sl.get_shape()
                values = []
                for k in range(_SAMPLES_PER_TENSOR):
                    idx = _sample_index(shape, k)
                    row = sl[idx[0]: idx[0] + 1]
                    values.append(float(row.reshape(-1)[0] if len(shape) == 1 else row[(0,) + idx[1:]]))
                out[key] = values
    return out


def model_identity(model, name: str | None = None) -> dict[str, Any]:
    """What identifies ``model``: its name, configuration and :func:`fingerprint`."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return {
        "name": name or getattr(model, "name_or_path", "") or type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "hidden_size": int(getattr(config, "hidden_size", 0) or 0),
        "num_layers": int(getattr(config, "num_hidden_layers", 0) or 0),
        "vocab_size": int(getattr(config, "vocab_size", 0) or 0),
        "fingerprint": fingerprint(model),
    }


def same_weights(a: dict, b: dict) -> bool:
    """Whether two fingerprints sample the same weights (within dtype rounding)."""
    if not a or set(a) != set(b):
        return False
    close = lambda x, y: abs(x - y) <= _REL_TOL * max(abs(x), abs(y)) + 1e-6  # noqa: E731
    return all(len(a[k]) == len(b[k]) and all(close(x, y) for x, y in zip(a[k], b[k])) for k in a)


def same_model(a: dict, b: dict) -> bool:
    """Whether two identities (:func:`model_identity`) describe the same weights."""
    keys = ("model_type", "hidden_size", "num_layers", "vocab_size")
    return all(a.get(k) == b.get(k) for k in keys) and same_weights(a.get("fingerprint") or {}, b.get("fingerprint") or {})


@dataclass
class Direction:
    """A refusal direction: the unit ``vector``, the ``layer`` / ``position`` it was taken
    at, its ``scale`` (norm of the difference of means), the ``model`` identity and the rest
    of ``direction.json`` in ``info``."""

    vector: torch.Tensor
    layer: int
    position: int
    scale: float
    model: dict
    info: dict = field(default_factory=dict)
    mean_diffs: torch.Tensor | None = None
    path: Path | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.vector.numel())

    def describe(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"refusal direction of {self.model.get('name')}{where}, layer {self.layer}, position {self.position}"

    def _mismatch(self, hidden: int, name: str) -> None:
        if hidden != self.hidden_size:
            raise DeepAlignError(f"{self.path or 'the direction'} has {self.hidden_size} entries but model {name} has "
                                 f"hidden size {hidden}")

    def _foreign(self, name: str, allow: str | None) -> DeepAlignError:
        how = f", or allow it explicitly ({allow})" if allow else ""
        return DeepAlignError(f"{self.path or 'the direction'} was computed from model {self.model.get('name')}, not "
                              f"from {name} (their weights differ); compute one for this model with deepalign "
                              f"direction{how}")

    def check_model(self, model, name: str | None = None, *, allow_foreign: bool = False,
                    allow: str | None = "allow_foreign=true") -> None:
        """Refuse a model whose hidden size differs, or (unless ``allow_foreign``) a model
        other than the one the direction was computed from. ``allow``: how the caller's user
        allows a foreign direction, named in the error (the target spec's ``allow_foreign=true``
        by default; ``--allow_foreign`` for ``deepalign ablate``)."""
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        name = name or getattr(model, "name_or_path", "") or type(model).__name__
        self._mismatch(int(getattr(config, "hidden_size", 0) or 0), name)
        if not allow_foreign and not same_model(self.model, model_identity(model, name)):
            raise self._foreign(name, allow)

    def check_checkpoint(self, model_dir: str | os.PathLike, *, allow_foreign: bool = False,
                         allow: str | None = "allow_foreign=true") -> None:
        """The checks of :meth:`check_model` on a local model directory, before loading it
        (its ``config.json`` and the sampled rows of its safetensors files); hub ids and
        directories without safetensors are checked when loaded."""
        from deepalign.direction.residual import KNOWN

        path = Path(model_dir)
        config_path = path / "config.json"
        if not config_path.is_file():
            return
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config = config.get("text_config", config) if isinstance(config, dict) else {}
        except (OSError, ValueError):
            return  # the loader says what is wrong with it
        kind = config.get("model_type")
        if kind not in KNOWN:
            raise DeepAlignError(f"the residual stream of model type {kind!r} ({model_dir}) is not known to "
                                 f"deepalign's hooks (known model types: {', '.join(KNOWN)})")
        self._mismatch(int(config.get("hidden_size") or 0), str(model_dir))
        if allow_foreign:
            return
        try:
            found = checkpoint_fingerprint(path)
        except Exception:  # a damaged checkpoint: the loader says what is wrong with it
            found = None
        if found is not None and not same_weights(self.model.get("fingerprint") or {}, found):
            raise self._foreign(str(model_dir), allow)

    def save(self, out: str | os.PathLike) -> Path:
        """Write ``direction.safetensors`` and ``direction.json`` into the new directory ``out``
        (atomically: all or nothing)."""
        from safetensors.torch import save_file

        from deepalign.utils import atomic_dir, write_json

        tensors = {"direction": self.vector.detach().to(torch.float32).contiguous().cpu()}
        if self.mean_diffs is not None:
            tensors["mean_diffs"] = self.mean_diffs.detach().to(torch.float32).contiguous().cpu()
        out = Path(out)
        with atomic_dir(out) as tmp:
            # one metadata key: safetensors writes a metadata map in no fixed order
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
            write_json(tmp / JSON_NAME, {"format": FORMAT, "version": VERSION, "layer": self.layer,
                                         "position": self.position, "scale": self.scale, "hidden_size": self.hidden_size,
                                         "model": self.model, **self.info})
            public_files(tmp)
        self.path = out
        return out


def public_files(directory: Path) -> None:
    """Give the files of a finished output directory the umask's permissions (libraries
    create some of them private)."""
    from deepalign.utils import current_umask

    mode = 0o666 & ~current_umask()
    for p in Path(directory).iterdir():
        if p.is_file():
            os.chmod(p, mode)


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(os.path.expanduser(os.fspath(path)))
    root = p.parent if p.name in (JSON_NAME, WEIGHTS_NAME) else p
    return root / JSON_NAME, root / WEIGHTS_NAME


def load_direction(path: str | os.PathLike | Direction) -> Direction:
    """A direction written by ``deepalign direction`` (its directory, or either file in it)."""
    if isinstance(path, Direction):
        return path
    meta_path, weights_path = _paths(path)
    if not meta_path.is_file() or not weights_path.is_file():
        raise DeepAlignError(f"no refusal direction at {path} (expected {JSON_NAME} and {WEIGHTS_NAME}; "
                             "make one with deepalign direction)")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from deepalign.utils import read_text

    try:
        meta = json.loads(read_text(meta_path, what="direction file"))
    except ValueError as exc:
        raise DeepAlignError(f"{meta_path}: malformed JSON ({exc})") from None
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DeepAlignError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DeepAlignError(f"{meta_path}: not a deepalign direction file (no \"format\": \"{FORMAT}\")")
    vec = tensors.get("direction")
    if vec is None or vec.dim() != 1 or not bool(torch.isfinite(vec).all()):
        raise DeepAlignError(f"{weights_path}: no finite one-dimensional tensor named \"direction\"")
    norm = float(vec.norm())
    if not math.isclose(norm, 1.0, rel_tol=1e-3):
        raise DeepAlignError(f"{weights_path}: the direction has norm {norm:.4g}, not 1")
    for key in ("layer", "position", "scale", "model"):
        if key not in meta:
            raise DeepAlignError(f"{meta_path}: missing field {key!r}")
    if meta.get("hidden_size") not in (None, vec.numel()):
        raise DeepAlignError(f"{meta_path}: hidden_size {meta['hidden_size']} but the direction has {vec.numel()} entries")
    info = {k: v for k, v in meta.items()
            if k not in ("format", "version", "layer", "position", "scale", "model", "hidden_size")}
    return Direction(vec.to(torch.float32) / norm, int(meta["layer"]), int(meta["position"]), float(meta["scale"]),
                     dict(meta["model"]), info, tensors.get("mean_diffs"), meta_path.parent)
