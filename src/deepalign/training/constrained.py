"""``ConstrainedTrainer``: fine-tuning with the token-wise constrained objective of Qi et al.
2025 ("Safety Alignment Should Be Made More Than Just a Few Tokens Deep", arXiv 2406.05946).

The loss is :func:`deepalign.training.losses.constrained_loss`: every response token's
cross-entropy weighted by a detached ``w_t`` that shrinks as the model's log-probability of
the token rises above the reference model's, strongly at the first response tokens. It is
computed like the DeRTa loss, on labelled positions only and one tile of logits at a time,
and normalised by the response tokens of the whole accumulated batch across devices.

The reference. ``log pi_ref`` of every label is computed once, before training, by one
no-grad pass over the training (and evaluation) records, as the reference implementation
does (Unispac/shallow-vs-deep-alignment precomputes them): with the starting model itself
(full fine-tuning: the weights have not moved yet, so no second copy is ever held), the model
with its LoRA adapter disabled (LoRA), or the model ``ref_model`` names (loaded for that pass
only). Processes share the pass and gather the results. The values are stored next to the
checkpoints (``reference_logps.safetensors``) and read back on ``--resume``: a resumed run
trains on exactly the reference values of the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from deepalign.errors import DeepAlignError
from deepalign.training.losses import IGNORE_INDEX, TokenWiseConstraint, constrained_loss, label_logprobs
from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer, _peft_base

REFERENCE_FILE = "reference_logps.safetensors"
_FORMAT = "deepalign-reference-logps-1"


class ConstrainedTrainer(DeRTaTrainer):
    """A :class:`~deepalign.training.trainer.DeRTaTrainer` whose loss is the token-wise
    constrained objective on (prompt, response) records (no RTO spans).

    ``constraint``: a :class:`~deepalign.training.losses.TokenWiseConstraint`. ``ref_model``:
    another model as the reference (same tokenizer), or a function without arguments that
    loads it (called only when the log-probs must be computed: a resumed run reads them back
    and never loads it), else the starting model (with LoRA: the model with its adapter
    disabled). ``reference_file``: where the reference log-probs are stored and, on resume,
    read back.
    """

    def __init__(self, model, args: DeRTaConfig | None = None, *, constraint: TokenWiseConstraint | None = None,
                 ref_model=None, reference_file: str | Path | None = None, **kwargs):
        super().__init__(model, args, **kwargs)
        self.constraint = constraint or TokenWiseConstraint()
        datasets = {"train": self.train_dataset, "eval": self.eval_dataset}
        datasets = {k: d for k, d in datasets.items() if d is not None}
        for d in datasets.values():
            if any(f["rto_start"] < f["mle_start"] for f in d.features):
                raise DeepAlignError("the constrained objective trains on (prompt, response) records; "
                                     "these records have RTO spans (use --recipe sft, identity-shift or refusal-prefix)")
        self.reference_source = "given model" if ref_model is not None else (
            "the model with its adapter disabled" if _peft_base(self.model)[1] else "the starting model")
        self._attach_reference(datasets, ref_model, Path(reference_file) if reference_file else None)

    # -- the reference log-probs -----------------------------------------------------------

    def _attach_reference(self, datasets: dict, ref_model, path: Path | None) -> None:
        keys = [(name, str(f.get("key", i)), f) for name, d in datasets.items() for i, f in enumerate(d.features)]
        stored = _read_reference(path, [(f"{n}:{k}", _n_labels(f)) for n, k, f in keys]) if path else None
        if stored is None:
            stored = self._compute_reference([f for _, _, f in keys], ref_model)
            if path is not None and self.accelerator.is_main_process:
                _write_reference(path, {f"{n}:{k}": v for (n, k, _), v in zip(keys, stored)})
            self.accelerator.wait_for_everyone()
        for (_, _, f), values in zip(keys, stored):
            f["ref_logps"] = values

    def _compute_reference(self, features: Sequence[dict[str, Any]], ref_model) -> list[np.ndarray]:
        """``log p_ref`` of each feature's labels (positions ``mle_start`` to the end), one
        no-grad pass shared by the processes."""
        from accelerate.utils import gather_object

        state = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if state is not None and getattr(state, "zero_stage", 0) == 3:
            raise DeepAlignError("the constrained objective computes the reference log-probs before training; "
                                 "DeepSpeed ZeRO-3 shards the weights by then: use ZeRO-2, FSDP or DDP")
        if ref_model is not None and not isinstance(ref_model, torch.nn.Module):
            ref_model = ref_model()  # a loader: the log-probs are needed now
        model = ref_model if ref_model is not None else self.model
        disable = (self.model.disable_adapter() if ref_model is None and _peft_base(self.model)[1]
                   else contextlib.nullcontext())
        device = self.args.device
        if ref_model is not None:
            ref_model.to(device)
        order = list(range(len(features)))
        batch = self.args.per_device_train_batch_size
        mine: list[tuple[int, np.ndarray]] = []
        was_training = model.training
        model.eval()
        try:
            with self.accelerator.split_between_processes(order) as part, disable, torch.no_grad():
                for s in range(0, len(part), batch):
                    idx = part[s:s + batch]
                    mine += list(zip(idx, self._reference_batch(model, [features[i] for i in idx], device)))
        finally:
            model.train(was_training)
        if ref_model is not None:
            ref_model.to("cpu")
        done = dict(gather_object(mine) if self.accelerator.num_processes > 1 else mine)
        return [done[i] for i in order]

    def _reference_batch(self, model, features: list[dict[str, Any]], device) -> list[np.ndarray]:
        collate = self.data_collator
        if getattr(collate, "padding_free", False):  # one row per feature: the values are read back by row
            collate = dataclasses.replace(collate, padding_free=False)
        batch = collate([{k: v for k, v in f.items() if k != "ref_logps"} for f in features])
        labels = batch["labels"].to(device)
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        with self.compute_loss_context_manager():
            hidden, head, softcap, _ = self.final_hidden(model, inputs)
            flat = label_logprobs(hidden, head, labels, chunk_rows=self.args.loss_chunk_rows, softcap=softcap,
                                  impl=self.args.loss_impl).float().cpu().numpy()
        out, at = [], 0
        mask = (labels[:, 1:] != IGNORE_INDEX).cpu()
        for i, f in enumerate(features):
            positions = mask[i].nonzero().flatten().numpy() + 1 - f["mle_start"]  # label position - mle_start
            values = np.zeros(_n_labels(f), dtype=np.float32)
            values[positions] = flat[at:at + len(positions)]
            at += len(positions)
            out.append(values)
        return out

    # -- the loss --------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        inputs.pop("rto_labels", None)
        ref = inputs.pop("ref_logps")
        hidden, head, softcap, outputs = self.final_hidden(model, inputs)
        loss, stats = constrained_loss(hidden, head, labels, ref, self.constraint, num_items=num_items_in_batch,
                                       chunk_rows=self.args.loss_chunk_rows, softcap=softcap, impl=self.args.loss_impl)
        return self._finish_loss(model, loss, stats, outputs, return_outputs, num_items_in_batch)


def _n_labels(feature: dict[str, Any]) -> int:
    return len(feature["input_ids"]) - feature["mle_start"]


def _write_reference(path: Path, values: dict[str, np.ndarray]) -> None:
    from safetensors.torch import save

    from deepalign.utils import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save({k: torch.from_numpy(v) for k, v in values.items()}, metadata={"format": _FORMAT}))


def _read_reference(path: Path, wanted: list[tuple[str, int]]) -> list[np.ndarray] | None:
    """The stored values for ``wanted`` (key, length), or None when the file is missing or
    does not hold exactly those records."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") != _FORMAT or set(f.keys()) != {k for k, _ in wanted}:
                return None
            out = [f.get_tensor(k).numpy() for k, _ in wanted]
    except (OSError, ValueError, RuntimeError):
        return None
    return out if all(len(v) == n for v, (_, n) in zip(out, wanted)) else None
