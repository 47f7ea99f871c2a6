"""ADA-LP's linear probe (Any-Depth Alignment, arXiv 2510.18081): fitted on a model's hidden
states at a re-inserted assistant header, saved as a small directory, checked against the model
it is loaded for.

How it is fitted (:func:`fit_probe`, ``deepalign ada-probe``), following the authors' code
(javyduck/any-depth-alignment, ``ada/probe``):

- **the states**: each response of the harmful set (its reference harmful answer) and of the
  harmless set (the model's own greedy answer, as the authors' harmless corpus holds the target
  model's own answers) is cut to ``max_tokens`` (the authors' 500); after every ``every`` tokens
  (25; depth 0 left out, as theirs) the header up to its role token is inserted and the hidden
  state of its last token entering layer L (the output of that block's input norm) is read;
- **the probe**: scikit-learn's ``LogisticRegression`` with the authors' settings (L2, C=1,
  lbfgs, ``max_iter`` 1000, ``tol`` 1e-4, balanced class weights, seed 42), fitted on 80% of
  the items and scored on the other 20% (split by item, so no response is on both sides);
- **the layer**: given, or (the authors' rule for a model outside their table) the one of
  best held-out accuracy, every layer tried (the earliest of equals).

The directory holds ``probe.safetensors`` (the weight vector and bias) and ``probe.json``: the
layer, the header ids and how many of them are read, the check interval it was fitted for, the
tokenizer's identity, the model it was fitted on, the data (specs, item counts and a hash of the
item ids), and the accuracy of every layer tried. :func:`load_probe` refuses, in one line, a probe
whose width, layer or tokenizer does not fit the model; a probe fitted on another checkpoint of
the same model (e.g. before a fine-tuning attack) is accepted and said so in the row's record.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from deepalign.errors import DeepAlignError

PROBE_FILE = "probe.json"
WEIGHTS_FILE = "probe.safetensors"
FORMAT = 1
#: the authors' logistic-regression settings (ada/probe/train.py)
LR_SETTINGS = {"C": 1.0, "solver": "lbfgs", "max_iter": 1000, "tol": 1e-4, "class_weight": "balanced",
               "random_state": 42}
MAX_TOKENS = 500  # responses are cut here before the header is inserted (the authors' 500)
VAL_SHARE = 0.2


def tokenizer_identity(tokenizer) -> str:
    """A hash of the tokenizer's vocabulary (token -> id)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def input_norm(layer, index: int):
    """The norm a decoder block applies to its input (Llama's ``input_layernorm``)."""
    for name in ("input_layernorm", "ln_1", "pre_feedforward_layernorm"):
        module = getattr(layer, name, None)
        if module is not None:
            return module
    raise DeepAlignError(f"layer {index} of this model has no input norm (input_layernorm) for ADA-LP to read")


class _Capture:
    """Forward hooks on the input norms of ``layers``: what each wrote in the last forward."""

    def __init__(self, model, layers: Sequence[int]):
        from deepalign.direction.residual import residual_stream

        stream = residual_stream(model)
        self.states: dict[int, torch.Tensor] = {}
        self.handles = []
        for i in layers:
            if not 0 <= i < stream.num_layers:
                raise DeepAlignError(f"the probe reads layer {i}, but the model has {stream.num_layers} layers")
            self.handles.append(input_norm(stream.layers[i], i).register_forward_hook(self._hook(i)))

    def _hook(self, i: int):
        def grab(_module, _args, output):
            self.states[i] = (output[0] if isinstance(output, tuple) else output).detach()
        return grab

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class Probe:
    """A fitted probe: ``probability(state) = sigmoid(state . weight + bias)`` at ``layer``;
    the header's first ``cut`` ids are what ADA-LP inserts."""

    layer: int
    weight: torch.Tensor
    bias: float
    cut: int
    record: dict[str, Any] = field(default_factory=dict)

    def read(self, model, forward: Callable[[], Any]) -> torch.Tensor:
        """The states entering the probe's layer during ``forward()`` (rows x positions x width)."""
        cap = _Capture(model, [self.layer])
        try:
            forward()
        finally:
            cap.remove()
        return cap.states[self.layer]

    def probability(self, states: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(device=states.device, dtype=torch.float32)
        return torch.sigmoid(states.float() @ w + self.bias).cpu()


def load_probe(path, model, tokenizer, header: Sequence[int]) -> Probe:
    """The probe saved in ``path``, checked against ``model`` (width, layer), its ``tokenizer``
    (vocabulary) and the ``header`` its prompt format gives."""
    from safetensors.torch import load_file

    from deepalign.direction.residual import residual_stream

    where = Path(path)
    meta_path, weights_path = where / PROBE_FILE, where / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise DeepAlignError(f"not an ADA-LP probe directory (no {PROBE_FILE} and {WEIGHTS_FILE}): {where}; "
                             "fit one with deepalign ada-probe")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(weights_path))
        weight, bias = tensors["weight"], float(tensors["bias"].reshape(-1)[0])
        layer, cut, ids = int(meta["layer"]), int(meta["cut"]), [int(i) for i in meta["header_ids"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DeepAlignError(f"{meta_path}: not a readable ADA-LP probe ({type(exc).__name__}: {exc})") from None
    stream = residual_stream(model)
    if weight.numel() != stream.hidden_size:
        raise DeepAlignError(f"{where}: the probe reads width {weight.numel()}, the model's hidden size is "
                             f"{stream.hidden_size}: it was fitted on another model")
    if not 0 <= layer < stream.num_layers:
        raise DeepAlignError(f"{where}: the probe reads layer {layer}, the model has {stream.num_layers} layers")
    if meta.get("tokenizer") != tokenizer_identity(tokenizer):
        raise DeepAlignError(f"{where}: the probe was fitted with another tokenizer than the model's "
                             f"(vocabulary hash {meta.get('tokenizer')} vs {tokenizer_identity(tokenizer)})")
    if list(header)[:cut] != ids[:cut]:
        raise DeepAlignError(f"{where}: the probe was fitted at the header ids {ids[:cut]}, the model's prompt format "
                             f"gives {list(header)[:cut]}; give the target the format the probe was fitted with")
    return Probe(layer, weight.reshape(-1).float(), bias, cut, meta)


# -- fitting --------------------------------------------------------------------------------


@dataclass
class ProbeOptions:
    """The options of ``deepalign ada-probe``."""

    model: str = field(default="runs/vanilla", metadata={"help": "the model (dir or hub id) the probe reads"})
    harmful: str = field(default="world:dev/harmful", metadata={
        "help": "harmful items with reference harmful answers (a dataset spec)"})
    harmless: list[str] = field(default_factory=lambda: ["world:dev/benign", "world:dev/helpful"], metadata={
        "help": "harmless items (dataset specs); their responses are the model's own greedy answers"})
    out: str = field(default="runs/ada-probe", metadata={"help": "the probe directory to write"})
    layer: int | None = field(default=None, metadata={
        "help": "the layer whose input the probe reads (default: every layer tried, the best on held-out items)"})
    every: int = field(default=25, metadata={"help": "tokens between two header insertions (the authors' 25)"})
    max_tokens: int = field(default=MAX_TOKENS, metadata={"help": "responses are cut to this many tokens"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens of the model's own harmless answers"})
    prompt_format: str | None = field(default=None, metadata={"help": "the model's prompt format (as hf:'s format=)"})
    world: str | None = field(default=None, metadata={"help": "world directory for world: dataset specs"})
    limit: int | None = field(default=None, metadata={"help": "items per dataset (default: all)"})
    batch_size: int = 32
    seed: int = 0
    overwrite: bool = field(default=False, metadata={"help": "replace an existing probe directory"})
    quiet: bool = False

    def __post_init__(self):
        from deepalign.options import number

        if isinstance(self.harmless, str):
            self.harmless = [self.harmless]
        number("layer", self.layer, low=0, integer=True, optional=True)
        for name in ("every", "max_tokens", "max_new_tokens", "batch_size"):
            number(name, getattr(self, name), low=1, integer=True)
        number("limit", self.limit, low=1, integer=True, optional=True)
        if not self.harmless:
            from deepalign.errors import OptionError

            raise OptionError("harmless", "needs at least one dataset")


def _items(spec: str, opts: ProbeOptions):
    from deepalign.data.datasets import load_dataset

    items = load_dataset(spec, world=opts.world, limit=opts.limit)
    if not items:
        raise DeepAlignError(f"ada-probe: {spec} has no items")
    return items


def _states(target, rows: list[tuple[str, str | None, list[int]]], header: list[int], layers: list[int],
            every: int, batch_size: int) -> tuple[dict[int, list[torch.Tensor]], list[int]]:
    """Per layer the states at the header's last token after every ``every`` tokens of each
    response; and per state the index of its row."""
    from deepalign.decoding.hf import chunks
    from deepalign.models import left_pad

    seqs, owner = [], []
    for r, (query, system, resp) in enumerate(rows):
        prompt = target.encoder.prompt_ids(query, system)
        for d in range(every, len(resp) + 1, every):
            seqs.append(prompt + resp[:d] + header)
            owner.append(r)
    out: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    cap = _Capture(target.model, layers)
    try:
        with torch.inference_mode():
            for batch in chunks(seqs, batch_size):
                ids, mask = left_pad(batch, target.pad, target.device)
                pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
                target.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
                for i in layers:
                    out[i].append(cap.states[i][:, -1, :].float().cpu())
    finally:
        cap.remove()
    return out, owner


def fit_probe(options: ProbeOptions | None = None, **kwargs) -> Path:
    """Fit ADA-LP's probe for a model and save it (see the module doc); returns its directory."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from deepalign.decoding.ada import header_ids, role_cut
    from deepalign.decoding.base import GenConfig, Request
    from deepalign.decoding.hf import HFTarget
    from deepalign.direction.residual import residual_stream
    from deepalign.direction.store import model_identity
    from deepalign.options import build

    (opts,) = build(kwargs, options=(ProbeOptions, options))
    out = Path(opts.out)
    if out.exists() and any(out.iterdir()) and not opts.overwrite:
        raise DeepAlignError(f"{out} exists and is not empty; give --overwrite to replace it")
    harmful = _items(opts.harmful, opts)
    missing = [it.id for it in harmful if not it.harmful]
    if missing:
        raise DeepAlignError(f"ada-probe: {len(missing)} item(s) of {opts.harmful} have no reference harmful answer "
                             f"(first: {missing[0]!r}); the harmful set needs one per item")
    harmless = [it for spec in opts.harmless for it in _items(spec, opts)]
    target = HFTarget(opts.model, prompt_format=opts.prompt_format, batch_size=opts.batch_size)
    stream = residual_stream(target.model)
    if opts.layer is not None and opts.layer >= stream.num_layers:
        raise DeepAlignError(f"--layer {opts.layer}: the model has {stream.num_layers} layers (0..{stream.num_layers - 1})")
    header = header_ids(target.encoder)
    cut = role_cut(target.tokenizer, header)
    enc = target.encoder
    answers = target.generate([Request(f"h{i}", query=it.prompt, system=it.system) for i, it in enumerate(harmless)],
                              GenConfig(max_new_tokens=opts.max_new_tokens, seed=opts.seed))
    rows = [(it.prompt, it.system, enc.response_ids(it.prompt, it.harmful, system=it.system, end=False)[: opts.max_tokens])
            for it in harmful]
    labels = [1] * len(rows)
    for it, (g,) in zip(harmless, answers):
        rows.append((it.prompt, it.system, enc.response_ids(it.prompt, g.text, system=it.system, end=False)
                     [: opts.max_tokens]) if g.text.strip() else (it.prompt, it.system, []))
        labels.append(0)
    layers = [opts.layer] if opts.layer is not None else list(range(stream.num_layers))
    states, owner = _states(target, rows, header[:cut], layers, opts.every, opts.batch_size)
    y = np.array([labels[r] for r in owner])
    for cls, name in ((1, "harmful"), (0, "harmless")):
        if not (y == cls).any():
            raise DeepAlignError(f"ada-probe: no {name} response reaches {opts.every} tokens, so no {name} state to fit "
                                 "on; lower --every")
    rng = random.Random(opts.seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    val_rows = set(order[: max(1, round(VAL_SHARE * len(rows)))])
    val = np.array([r in val_rows for r in owner])
    if val.all() or not val.any() or len(set(y[~val])) < 2:
        raise DeepAlignError("ada-probe: too few items to hold out a validation share with both classes; give more")
    accuracy, fitted = {}, {}
    for layer in layers:
        x = torch.cat(states[layer]).numpy()
        clf = LogisticRegression(**LR_SETTINGS).fit(x[~val], y[~val])
        accuracy[layer] = float(clf.score(x[val], y[val])) if val.any() else float("nan")
        fitted[layer] = clf
    best = max(layers, key=lambda i: (accuracy[i], -i))
    clf = fitted[best]
    record = {
        "format": FORMAT, "method": "ADA-LP (Any-Depth Alignment, arXiv 2510.18081)", "layer": best,
        "position": "the last inserted header token, at the input norm of the layer", "header_ids": header,
        "cut": cut, "header_text": target.tokenizer.decode(header[:cut], skip_special_tokens=False),
        "every": opts.every, "max_tokens": opts.max_tokens, "tokenizer": tokenizer_identity(target.tokenizer),
        "prompt_format": enc.format.describe(), "model": model_identity(target.model, opts.model),
        "data": {"harmful": opts.harmful, "harmless": list(opts.harmless), "items": {"harmful": len(harmful),
                 "harmless": len(harmless)}, "states": {"harmful": int((y == 1).sum()), "harmless": int((y == 0).sum())},
                 "item_ids_sha256": hashlib.sha256("\n".join([it.id for it in harmful] + [it.id for it in harmless])
                                                   .encode("utf-8")).hexdigest()[:16],
                 "validation_share": VAL_SHARE, "seed": opts.seed},
        "classifier": {"sklearn.linear_model.LogisticRegression": {**LR_SETTINGS}},
        "validation_accuracy": {str(i): round(accuracy[i], 4) for i in layers},
    }
    _write(out, clf, record)
    if not opts.quiet:
        print(f"ADA-LP probe: layer {best} (held-out accuracy {accuracy[best]:.3f}; {int((y == 1).sum())} harmful and "
              f"{int((y == 0).sum())} harmless states) -> {out}")
    return out


def _write(out: Path, clf, record: dict) -> None:
    """Both files into a fresh directory, then moved into place: never half a probe."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".probe-", dir=out.parent))
    try:
        save_file({"weight": torch.tensor(clf.coef_.reshape(-1), dtype=torch.float32),
                   "bias": torch.tensor([float(clf.intercept_[0])], dtype=torch.float32)}, str(tmp / WEIGHTS_FILE))
        (tmp / PROBE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
