"""Tokenize training records and collate them into DeRTa batches.

:func:`encode_records` turns each :class:`~deepalign.data.recipes.TrainingRecord` into token
ids plus two span boundaries: ``rto_start`` (first token of the RTO span) and ``mle_start``
(first token of the MLE target). The ids are exactly the conversation as the model's own
format tokenises it (:meth:`deepalign.tokens.Encoder.spans`: prompt with the generation
prompt, then the response and its end-of-turn tokens); boundaries come from tokenising the
conversation cut after each span and taking the common prefix with the whole (the reference
does the same with ``prefix`` and ``prefix+text``), so a token that straddles a boundary
belongs to the later span.

:class:`DeRTaCollator` pads a batch (right padding), or with ``padding_free`` packs it into a few
rows with positions restarting at every record (the model keeps packed records apart by their
positions, as in pretraining: on the world's alignment data 58% of a padded batch was
padding), and builds, on the same sequence:

* ``labels``: the token id at MLE-target positions, ``-100`` elsewhere (Hugging Face
  convention: unshifted; position ``t`` is predicted from position ``t-1``);
* ``rto_labels``: the refusal token id at kept RTO positions, ``-100`` elsewhere. Position
  ``t`` of the RTO span means "at ``t-1`` (having read the query and ``r_harm[<t]``) predict
  the refusal token instead of the harmful token ``t``";
* ``ref_logps``, when the features carry them (the constrained objective): the reference
  model's log-probability of each MLE label, at the label's position, ``0`` elsewhere;
* ``presto_spans``, with ``presto`` on (PRESTO's attention regulariser,
  :func:`deepalign.training.losses.presto_term`): one row ``(row, prefix start, prefix end,
  sequence end)`` per record with a harmful prefix, in batch coordinates (packed rows
  included), as a ``[N, 4]`` LongTensor. Without ``presto`` the batch has no such entry.

RTO keep ratio: each RTO record keeps ``max(1, ceil(keep * n))`` of its ``n`` RTO positions
(reference: 5% for full fine-tuning, all for LoRA), drawn from a generator seeded with
``(seed, epoch, record id)``: the same run always keeps the same positions, a new epoch
draws new ones (like the reference's per-forward draw), and resuming reproduces them.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

from deepalign.training.losses import IGNORE_INDEX
from deepalign.tokens import Encoder, PromptFormat


def encode_records(records: Sequence, encoder: Encoder, *, max_length: int | None = None) -> list[dict[str, Any]]:
    """Tokenize records into ``{"input_ids", "rto_start", "mle_start", "key", "kind"}``, plus
    ``prefix_start`` and ``prefix_end`` (absolute token positions; the prefix ends where the
    next span starts) for a record with a harmful ``prefix`` span.

    Records marked ``verbatim`` (a reference line whose prompt did not use the reference
    template) are tokenised in the raw format. Sequences longer than ``max_length`` are cut
    on the right (as the reference's ``block_size``); span boundaries are clipped with them.
    """
    raw = None
    feats: list[dict[str, Any]] = []
    for r in records:
        enc = encoder
        if r.meta.get("verbatim"):
            raw = raw or Encoder(encoder.tokenizer, PromptFormat.raw(), name=encoder.name)
            enc = raw
        parts = r.parts()
        prompt, response, starts = enc.spans(r.query, parts, system=r.system, end=True)
        ids = prompt + response
        at = {}  # span name -> absolute start
        names = [n for n, span in (("prefix", r.prefix), ("rto", r.rto), ("target", r.target)) if span]
        for name, start in zip(names, starts):
            at[name] = len(prompt) + start
        mle_start = at.get("target", len(ids))
        rto_start = at.get("rto", mle_start)
        if max_length is not None and len(ids) > max_length:
            ids = ids[:max_length]
            rto_start, mle_start = min(rto_start, max_length), min(mle_start, max_length)
        feat = {"input_ids": ids, "rto_start": rto_start, "mle_start": mle_start, "key": r.id, "kind": r.kind}
        if "prefix" in at and at["prefix"] < len(ids):  # the prefix ends where the next span starts
            feat["prefix_start"], feat["prefix_end"] = at["prefix"], min(rto_start, len(ids))
        feats.append(feat)
    return feats


def prefix_spans(features: list[dict[str, Any]], places: list[tuple[int, int]]):
    """``[N, 4]`` LongTensor of ``(row, prefix start, prefix end, sequence end)`` in batch
    coordinates, one row per feature with a non-empty harmful prefix (``places``: each
    feature's row and start column)."""
    import torch

    spans = [(row, at + f["prefix_start"], at + f["prefix_end"], at + len(f["input_ids"]))
             for f, (row, at) in zip(features, places) if f.get("prefix_end", 0) > f.get("prefix_start", 0)]
    return torch.tensor(spans, dtype=torch.long).reshape(-1, 4)


class FeatureDataset:
    """A list of encoded features as a map-style dataset (what ``Trainer`` expects)."""

    def __init__(self, features: list[dict[str, Any]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def keep_positions(n: int, keep: float, seed: int, epoch: int, key: str):
    """Indices (0..n-1) of the RTO positions to keep for one record."""
    import numpy as np

    if n <= 0 or keep <= 0:
        return np.zeros(0, dtype=np.int64)
    if keep >= 1:
        return np.arange(n)
    n_keep = max(1, math.ceil(keep * n))
    rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch, zlib.crc32(key.encode("utf-8"))])
    return np.sort(rng.choice(n, size=n_keep, replace=False))


@dataclass
class DeRTaCollator:
    """Pad features and build ``input_ids``, ``attention_mask``, ``labels``, ``rto_labels``."""

    pad_token_id: int
    refusal_token_id: int | None = None
    rto_keep: float = 1.0
    seed: int = 0
    pad_to_multiple_of: int | None = None
    epoch: int = 0
    padding_free: bool = False
    presto: bool = False

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        places = self._places(features)  # per feature: (row, start column)
        rows = 1 + max(r for r, _ in places)
        width = max(at + len(f["input_ids"]) for f, (_, at) in zip(features, places))
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((rows, width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((rows, width), dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
        rto_labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
        for i, (f, (row, at)) in enumerate(zip(features, places)):
            ids = torch.as_tensor(f["input_ids"], dtype=torch.long)
            n = len(ids)
            input_ids[row, at:at + n] = ids
            attention[row, at:at + n] = 1
            positions[row, at:at + n] = torch.arange(n)
            ms, rs = f["mle_start"], f["rto_start"]
            labels[row, at + ms:at + n] = ids[ms:n]
            n_rto = min(ms, n) - rs
            if n_rto > 0:
                if self.refusal_token_id is None:
                    raise ValueError("the batch has RTO spans but the collator has no refusal token id")
                keep = keep_positions(n_rto, self.rto_keep, self.seed, self.epoch, str(f.get("key", i)))
                rto_labels[row, torch.as_tensor(keep, dtype=torch.long) + at + rs] = self.refusal_token_id
        if self.padding_free:
            for row in range(rows):  # a row's end padding goes on from its last record's positions
                used = int(attention[row].nonzero().max()) + 1 if attention[row].any() else 0
                last = int(positions[row, used - 1]) + 1 if used else 0
                positions[row, used:] = torch.arange(last, last + width - used)
            batch = {"input_ids": input_ids, "position_ids": positions, "labels": labels, "rto_labels": rto_labels}
        else:
            batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "rto_labels": rto_labels}
        if "ref_logps" in features[0]:  # the constrained objective: the reference's log p of each label
            ref = torch.zeros((rows, width), dtype=torch.float32)
            for f, (row, at) in zip(features, places):
                values = torch.as_tensor(f["ref_logps"], dtype=torch.float32)
                ref[row, at + f["mle_start"]:at + f["mle_start"] + len(values)] = values
            batch["ref_logps"] = ref
        if self.presto:
            batch["presto_spans"] = prefix_spans(features, places)
        return batch

    def _places(self, features: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """Where each feature goes: one row each (padded), or packed (``padding_free``): rows as
        long as the longest feature, filled first-fit, longest first (never more positions than
        the padded batch)."""
        if not self.padding_free:
            return [(i, 0) for i in range(len(features))]
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        sizes: list[int] = []
        places: list[tuple[int, int]] = [(0, 0)] * len(features)
        for i in sorted(range(len(features)), key=lambda j: -lengths[j]):
            row = next((r for r, used in enumerate(sizes) if used + lengths[i] <= width), len(sizes))
            if row == len(sizes):
                sizes.append(0)
            places[i] = (row, sizes[row])
            sizes[row] += lengths[i]
        return places
