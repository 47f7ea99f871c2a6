"""A KV cache that grows in place: the same keys and values as transformers' ``DynamicCache``,
without copying the whole cache at every step.

``DynamicCache`` appends each step's keys and values with ``torch.cat``, which copies every
layer's cache, so a response of ``n`` tokens copies O(n^2) cache entries. On a small model
that copy is a large part of a decoding step (on the world's 4-layer model, batch 64, about a
third of the step's operator time under the profiler). :func:`reserved_cache` gives the model
a ``DynamicCache`` whose full-attention layers write into a buffer with room reserved for the
tokens to come and hand attention a view of the filled part: the same shapes, strides of the
same inner layout and the same values, so attention (and every token decoded after it) is
bit for bit what it is with ``DynamicCache``: ``benchmarks/bench_decode.py`` and
``tests/test_decoding.py`` check it. Layers of other kinds (sliding windows, linear attention,
quantised caches) are kept as transformers builds them.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in a buffer with ``reserve`` free
    positions after the filled ones (grown to at least twice its size when full)."""

    def __init__(self, reserve: int):
        super().__init__()
        self.reserve = max(1, int(reserve))
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def _owns(self) -> bool:
        """Whether ``keys`` / ``values`` are still views of this layer's buffers (transformers'
        own methods, e.g. beam reordering, may have replaced them)."""
        return (self._kbuf is not None and self.keys is not None and self.keys.numel() > 0
                and self.keys.data_ptr() == self._kbuf.data_ptr() and self.values.data_ptr() == self._vbuf.data_ptr()
                and self.keys.shape[0] == self._kbuf.shape[0])

    def _grow(self, keys: torch.Tensor, values: torch.Tensor, filled: int, needed: int) -> None:
        # at least the reserve past what is needed; at least double when a full buffer grows,
        # so that a response longer than foreseen costs O(log n) copies, not O(n)
        capacity = max(needed + self.reserve, 2 * self._kbuf.shape[-2] if self._kbuf is not None else 0)
        kbuf = keys.new_empty(keys.shape[0], keys.shape[1], capacity, keys.shape[3])
        vbuf = values.new_empty(values.shape[0], values.shape[1], capacity, values.shape[3])
        if filled:
            kbuf[:, :, :filled] = self.keys
            vbuf[:, :, :filled] = self.values
        self._kbuf, self._vbuf = kbuf, vbuf

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        filled = self.get_seq_length()
        if filled and not self._owns():
            self._kbuf = self._vbuf = None
        needed = filled + key_states.shape[-2]
        if self._kbuf is None or self._kbuf.shape[-2] < needed:
            self._grow(key_states, value_states, filled, needed)
        self._kbuf[:, :, filled:needed] = key_states
        self._vbuf[:, :, filled:needed] = value_states
        self.keys, self.values = self._kbuf[:, :, :needed], self._vbuf[:, :, :needed]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices``, room for the tokens to come included."""
        if self.get_seq_length() > 0 and self._owns():
            filled = self.keys.shape[-2]
            self._kbuf, self._vbuf = self._kbuf[indices, ...], self._vbuf[indices, ...]
            self.keys, self.values = self._kbuf[:, :, :filled], self._vbuf[:, :, :filled]
        else:
            super().batch_select_indices(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0 and self._owns():
            filled = self.keys.shape[-2]
            self._kbuf = self._kbuf.repeat_interleave(repeats, dim=0)
            self._vbuf = self._vbuf.repeat_interleave(repeats, dim=0)
            self.keys, self.values = self._kbuf[:, :, :filled], self._vbuf[:, :, :filled]
        else:
            super().batch_repeat_interleave(repeats)

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        super().reset()


def cache_kwarg(model) -> str:
    """The name ``model``'s forward (and ``generate``) takes its KV cache by: ``cache`` from
    transformers 5.24 (``past_key_values`` is deprecated there), else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def reserved_cache(model, reserve: int) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` whose plain (full-attention) layers grow in place with
    ``reserve`` free positions (e.g. the tokens still to decode): see the module doc."""
    cache = DynamicCache(config=model.config)
    if cache.layers:
        cache.layers = [ReservedLayer(reserve) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
