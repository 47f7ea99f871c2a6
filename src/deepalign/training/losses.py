"""The DeRTa loss: next-token cross-entropy on MLE labels and RTO labels of one sequence,
computed only where a label exists.

Weighting. Every labelled (position, target) pair counts once: the loss is

    L = ( sum_{MLE pairs} CE  +  rto_weight * sum_{RTO pairs} CE ) / N

where ``N`` is the number of labelled pairs of both kinds in the (accumulated, and with
``average_tokens_across_devices`` all-device) batch. With ``rto_weight = 1`` this is the
reference's objective: it overwrites the labels of an RTO sequence with the refusal token
and takes the mean cross-entropy over all non-ignored labels. A position may carry both an
MLE and an RTO target (an RTO span followed by an appended safe response); each pair then
counts.

PRESTO (:func:`presto_term`, ``--presto_weight W``) adds ``W x`` its attention regulariser
to the CE sum before the division by the same ``N``.

Memory. The model's final hidden states ``[B, T, H]`` are gathered at labelled positions
(after the causal shift) into ``[N, H]`` rows, and the output projection is applied to these
rows only, one tile of logits at a time, so no ``[B, T, V]`` logits (nor ``[N, V]`` when
``N x V`` exceeds a tile) are ever materialised. Two implementations:

* fused (a plain ``nn.Linear`` head with its full weight present, the common case): one
  autograd function that computes the loss and, right away, the gradients with respect to
  the rows, the weight and the bias, tile by tile; backward only scales them in place.
  When all ``N x V`` logits fit one tile (``TILE_ELEMENTS``, 4x that on CUDA) it does the
  usual three matmuls in one pass. Otherwise the vocabulary is cut into column tiles (and the rows into blocks
  of ``BLOCK_ROWS``): a first pass over the tiles keeps a running log-sum-exp per row, a
  second pass recomputes each tile and turns it into its gradient (four matmuls in all).
  Extra memory: one tile of fp32 logits and the gradients themselves. The weight's gradient
  is allocated once, in the weight's own dtype (bf16 weights get a bf16 gradient), and each
  of its tiles is written once (accumulated in fp32 when the rows need several blocks);
  autograd then adopts it as ``.grad`` without a copy. With grad disabled, or when neither
  the rows nor the head require grad, only the forward tiles run (one matmul, no gradient
  buffers).
* module (any head: LoRA-wrapped, DeepSpeed ZeRO-3 or FSDP-sharded, logit soft-capping):
  calls the head module on each chunk of rows under activation checkpointing (one extra
  chunk forward in backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
#: per-row weights computed from the per-row losses: ``(CE [n] detached, first row) -> [n]``
WeightFn = Callable[[torch.Tensor, int], torch.Tensor]
# fused path: one tile of logits holds at most this many elements (64 MiB in fp32); on a
# GPU four times more, so that each tile's kernels run long enough to hide their launches
TILE_ELEMENTS = 1 << 24
TILE_ELEMENTS_CUDA = 1 << 26
# fused path: rows per block when the vocabulary is cut into tiles
BLOCK_ROWS = 4096
# module path: rows per chunk of about 2**26 logits (256 MiB in fp32)
CHUNK_ELEMENTS = 1 << 26


def _auto_chunk(vocab: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return chunk_rows
    return max(1, CHUNK_ELEMENTS // max(1, vocab))


def _tile_plan(n: int, vocab: int, hidden: int, chunk_rows: int | None, vocab_chunk: int | None,
               budget: int = TILE_ELEMENTS) -> tuple[int, int]:
    """``(rows per block, vocabulary columns per tile)`` for the fused path: a single tile when
    all ``n x vocab`` logits fit ``budget`` elements; otherwise blocks of ``BLOCK_ROWS`` rows
    and as many columns as keep both a logits tile and a ``[columns, hidden]`` slice of the
    weight within ``budget``."""
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if vocab_chunk is not None and vocab_chunk < 1:
        raise ValueError(f"vocab_chunk must be >= 1, got {vocab_chunk}")
    n = max(n, 1)
    if chunk_rows is not None:
        rows = min(n, chunk_rows)
    elif vocab_chunk is not None:
        rows = min(n, max(1, budget // vocab_chunk))
    elif n * vocab <= budget:
        return n, vocab
    else:
        rows = min(n, BLOCK_ROWS)
    cols = vocab_chunk if vocab_chunk is not None else max(1, min(budget // rows, budget // hidden))
    return rows, min(cols, vocab)


def label_rows(hidden: torch.Tensor, labels: torch.Tensor, rto_labels: torch.Tensor | None = None,
               rto_weight: float = 1.0):
    """Gather the rows of ``hidden`` that predict a label, after the causal shift.

    Returns ``rows [N, H]``, ``targets [N]``, ``weights [N]`` (fp32) and ``is_rto [N]``.
    MLE pairs come first, then RTO pairs.
    """
    h = hidden[:, :-1]
    mle_t = labels[:, 1:]
    mle_mask = mle_t != IGNORE_INDEX
    rows = [h[mle_mask]]
    targets = [mle_t[mle_mask]]
    n_mle = targets[0].numel()
    n_rto = 0
    if rto_labels is not None:
        rto_t = rto_labels[:, 1:]
        rto_mask = rto_t != IGNORE_INDEX
        rows.append(h[rto_mask])
        targets.append(rto_t[rto_mask])
        n_rto = targets[1].numel()
    rows = torch.cat(rows) if len(rows) > 1 else rows[0]
    targets = torch.cat(targets) if len(targets) > 1 else targets[0]
    weights = torch.ones(n_mle + n_rto, dtype=torch.float32, device=hidden.device)
    if n_rto and rto_weight != 1.0:
        weights[n_mle:] = rto_weight
    is_rto = torch.zeros(n_mle + n_rto, dtype=torch.bool, device=hidden.device)
    is_rto[n_mle:] = True
    return rows, targets, weights, is_rto


def count_label_tokens(labels: torch.Tensor, rto_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Number of labelled pairs after the causal shift (the loss denominator ``N``)."""
    n = (labels[..., 1:] != IGNORE_INDEX).sum()
    if rto_labels is not None:
        n = n + (rto_labels[..., 1:] != IGNORE_INDEX).sum()
    return n


def _compute_dtype(rows: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    dev = rows.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return weight.dtype


def _matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """``out = a @ b`` (``accumulate``: ``out += a @ b``), where ``out`` may be wider than ``a``
    and ``b`` (fp32 from bf16). On CUDA the matmul writes the wide dtype itself, so products
    are never rounded to bf16 before they are summed; elsewhere the product is formed in the
    inputs' dtype (as any bf16 matmul) and then added, which keeps the temporaries small."""
    if a.dtype == out.dtype and b.dtype == out.dtype:
        if accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
    elif (out.device.type == "cuda" and out.dtype == torch.float32 and a.dtype == b.dtype
          and a.dtype in (torch.bfloat16, torch.float16)):
        torch.addmm(out, a, b, beta=1 if accumulate else 0, out_dtype=out.dtype, out=out)
    elif accumulate:
        out.add_(a @ b)
    else:
        out.copy_(a @ b)


class _Tiles:
    """The fp32 logits ``rows @ weight.T + bias``, one ``[block_rows, tile_cols]`` tile at a
    time, always written into the same buffer."""

    def __init__(self, rows, weight, bias, dtype, block_rows: int, tile_cols: int):
        self.rows, self.weight, self.bias, self.dtype = rows, weight, bias, dtype
        n, v = rows.shape[0], weight.shape[0]
        self.blocks = [(s, min(n, s + block_rows)) for s in range(0, n, block_rows)]
        self.cols = [(c, min(v, c + tile_cols)) for c in range(0, v, tile_cols)]
        self.size = min(n, block_rows) * min(v, tile_cols)
        self._buf = torch.empty(self.size, dtype=torch.float32, device=rows.device)
        self._low = None if dtype == torch.float32 else torch.empty(self.size, dtype=dtype, device=rows.device)
        self._single = None  # (exp(z - max), sum) of the only tile, kept for the gradient pass

    def x(self, s: int, e: int) -> torch.Tensor:
        return self.rows[s:e].to(self.dtype)

    def w(self, c0: int, c1: int) -> torch.Tensor:
        return self.weight[c0:c1].to(self.dtype)

    def logits(self, x: torch.Tensor, w_c: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
        """The fp32 logits of the rows ``x`` (a block, compute dtype) for columns ``c0:c1``
        (``w_c`` = those rows of the weight, compute dtype), in the shared buffer."""
        z = self._buf[: x.shape[0] * (c1 - c0)].view(x.shape[0], c1 - c0)
        if self._low is not None and z.device.type != "cuda":
            low = self._low[: z.numel()].view_as(z)
            torch.mm(x, w_c.t(), out=low)
            z.copy_(low)
        else:
            _matmul_into(z, x, w_c.t(), accumulate=False)
        if self.bias is not None:
            z.add_(self.bias[c0:c1])
        return z

    def narrow(self, g: torch.Tensor) -> torch.Tensor:
        """``g`` in the compute dtype (a view of a reused buffer when that is not fp32)."""
        if self._low is None:
            return g
        return self._low[: g.numel()].view_as(g).copy_(g)

    def log_normalisers(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the log-sum-exp of its logits and its target's logit (a running
        log-sum-exp over the vocabulary tiles)."""
        n, dev = self.rows.shape[0], self.rows.device
        top = torch.full((n,), float("-inf"), dtype=torch.float32, device=dev)
        total = torch.zeros(n, dtype=torch.float32, device=dev)
        picked = torch.zeros(n, dtype=torch.float32, device=dev)
        for c0, c1 in self.cols:
            w_c = self.w(c0, c1)
            for s, e in self.blocks:
                z = self.logits(self.x(s, e), w_c, c0, c1)
                t = targets[s:e]
                here = z.gather(1, (t - c0).clamp(0, c1 - c0 - 1)[:, None]).squeeze(1)
                picked[s:e] = torch.where((t >= c0) & (t < c1), here, picked[s:e])
                new_top = torch.maximum(top[s:e], z.amax(1))
                total[s:e] = total[s:e] * torch.exp(top[s:e] - new_top) + z.sub_(new_top[:, None]).exp_().sum(1)
                top[s:e] = new_top
        if len(self.blocks) == 1 and len(self.cols) == 1:
            self._single = (z, total)  # the tile now holds exp(z - top): the softmax up to `total`
        return top.add_(total.log()), picked

    def gradients(self, targets, lse, weights, need_x: bool, need_w: bool, need_b: bool):
        """Gradients of ``sum_i weights_i * CE_i`` with respect to the rows, the weight and the
        bias (``None`` where not needed), after :meth:`log_normalisers`."""
        rows, weight, bias = self.rows, self.weight, self.bias
        n, h = rows.shape
        dev = rows.device
        many_cols, many_blocks = len(self.cols) > 1, len(self.blocks) > 1
        grad_x = grad_w = grad_b = acc_w = None
        if need_x:
            # summed over vocabulary tiles: in fp32 when there are several
            wide = many_cols and rows.dtype != torch.float32
            grad_x = (torch.zeros if many_cols else torch.empty)(
                n, h, dtype=torch.float32 if wide else rows.dtype, device=dev)
        if need_w:
            grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
            if many_blocks and weight.dtype != torch.float32:
                acc_w = torch.empty(self.cols[0][1] - self.cols[0][0], h, dtype=torch.float32, device=dev)
        if need_b:
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        for c0, c1 in self.cols:
            w_c = self.w(c0, c1)
            for k, (s, e) in enumerate(self.blocks):
                x = self.x(s, e)
                if self._single is not None:
                    e_z, total = self._single
                    p = e_z.div_(total[:, None])  # softmax
                else:
                    p = self.logits(x, w_c, c0, c1).sub_(lse[s:e, None]).exp_()
                t = targets[s:e]
                inside = ((t >= c0) & (t < c1)).to(p.dtype)
                p.scatter_add_(1, (t - c0).clamp(0, c1 - c0 - 1)[:, None], -inside[:, None])
                p.mul_(weights[s:e, None])  # d (w * CE) / d logits
                if need_b:
                    grad_b[c0:c1] += p.sum(0)
                g = self.narrow(p)
                if need_x:
                    _matmul_into(grad_x[s:e], g, w_c, accumulate=many_cols)
                if need_w:
                    if acc_w is not None:
                        _matmul_into(acc_w[: c1 - c0], g.t(), x, accumulate=k > 0)
                    else:
                        _matmul_into(grad_w[c0:c1], g.t(), x, accumulate=k > 0)
            if acc_w is not None:
                grad_w[c0:c1].copy_(acc_w[: c1 - c0])
        self._single = None
        if grad_x is not None and grad_x.dtype != rows.dtype:
            grad_x = grad_x.to(rows.dtype)
        if grad_b is not None and grad_b.dtype != bias.dtype:
            grad_b = grad_b.to(bias.dtype)
        return grad_x, grad_w, grad_b


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """``sum_i w_i * CE(x_i W^T + b, t_i)``, its gradients computed tile by tile in forward."""

    @staticmethod
    def forward(ctx, rows, weight, bias, targets, weights, block_rows, tile_cols):
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        dtype = _compute_dtype(rows, weight)
        with torch.autocast(rows.device.type, enabled=False):
            tiles = _Tiles(rows, weight, bias, dtype, block_rows, tile_cols)
            lse, picked = tiles.log_normalisers(targets)
            if callable(weights):  # weights that depend on the losses (detached): known only now
                weights = weights(lse - picked, 0)
            ctx.grads = tiles.gradients(targets, lse, weights, need_x, need_w, need_b)
        losses = lse.sub_(picked)
        ctx.mark_non_differentiable(losses)
        return (losses * weights).sum(), losses

    @staticmethod
    def backward(ctx, grad_total, _grad_losses):
        grads = ctx.grads
        if grads is None:
            raise RuntimeError("the fused DeRTa loss supports one backward pass per forward")
        ctx.grads = None
        # scaled in place: autograd then adopts these very tensors as .grad (no copies)
        for g in grads:
            if g is not None:
                g.mul_(grad_total)
        return grads[0], grads[1], grads[2], None, None, None, None


def _forward_only(rows, weight, bias, targets, block_rows: int, tile_cols: int) -> torch.Tensor:
    """Per-row cross-entropy of the fused path without any gradient work."""
    dtype = _compute_dtype(rows, weight)
    with torch.autocast(rows.device.type, enabled=False):
        lse, picked = _Tiles(rows, weight, bias, dtype, block_rows, tile_cols).log_normalisers(targets)
    return lse.sub_(picked)


def _fusable(head: nn.Module) -> bool:
    """A plain Linear head whose full weight is present locally (not sharded, not wrapped)."""
    if type(head) is not nn.Linear:
        return False
    w = head.weight
    if type(w) not in (torch.Tensor, nn.Parameter):  # DTensor (FSDP2 / TP) and friends
        return False
    if hasattr(w, "ds_id") or hasattr(head, "_hf_hook") or head._forward_hooks or head._forward_pre_hooks:
        return False
    return tuple(w.shape) == (head.out_features, head.in_features)


def linear_cross_entropy(rows: torch.Tensor, head: nn.Module, targets: torch.Tensor,
                         weights: torch.Tensor | WeightFn | None = None, *, chunk_rows: int | None = None,
                         vocab_chunk: int | None = None, softcap: float | None = None, impl: str = "auto"):
    """``(sum_i w_i * CE(head(rows_i), t_i), per-row CE detached)`` without full logits.

    ``weights``: one per row, or a function ``(per-row CE [n] detached, first row index) ->
    weights [n]`` for weights that depend on the losses themselves (held constant in the
    gradient, as in the constrained objective); the losses are computed once either way.
    ``impl``: ``"fused"``, ``"module"`` or ``"auto"`` (fused when the head allows it and no
    soft-capping is needed). ``chunk_rows`` / ``vocab_chunk`` override the tile shape (rows
    per block, vocabulary columns per tile; the module path only cuts rows).
    """
    if weights is None:
        weights = torch.ones(rows.shape[0], dtype=torch.float32, device=rows.device)
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    chunk = _auto_chunk(vocab, chunk_rows)
    if impl == "auto":
        impl = "fused" if (softcap is None and _fusable(head)) else "module"
    if rows.shape[0] == 0:
        zero = rows.sum() * 0.0
        for p in head.parameters():
            zero = zero + p.reshape(-1)[:0].sum()
        return zero.float(), torch.zeros(0, dtype=torch.float32, device=rows.device)
    if impl == "fused":
        weight, bias = head.weight, head.bias
        budget = TILE_ELEMENTS_CUDA if rows.device.type == "cuda" else TILE_ELEMENTS
        block_rows, tile_cols = _tile_plan(rows.shape[0], vocab, rows.shape[1], chunk_rows, vocab_chunk, budget)
        if ((targets < 0) | (targets >= vocab)).any():
            raise IndexError(f"target id out of range [0, {vocab}): {int(targets.min())}..{int(targets.max())}")
        if not (torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (rows, weight, bias))):
            per_row = _forward_only(rows, weight, bias, targets, block_rows, tile_cols)
            return (per_row * (weights(per_row, 0) if callable(weights) else weights)).sum(), per_row
        return _FusedLinearCrossEntropy.apply(rows, weight, bias, targets, weights, block_rows, tile_cols)
    if impl != "module":
        raise ValueError(f"impl must be auto, fused or module, got {impl!r}")

    def chunk_loss(x, t, s):
        logits = head(x).float()
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        ce = F.cross_entropy(logits, t, reduction="none")
        w = weights(ce.detach(), s) if callable(weights) else weights[s:s + ce.shape[0]]
        return (ce * w).sum(), ce.detach()

    n = rows.shape[0]
    if n <= chunk:
        return chunk_loss(rows, targets, 0)
    from torch.utils.checkpoint import checkpoint

    total, per_row = None, []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        if torch.is_grad_enabled():
            part, ce = checkpoint(chunk_loss, rows[s:e], targets[s:e], s, use_reentrant=False)
        else:
            part, ce = chunk_loss(rows[s:e], targets[s:e], s)
        total = part if total is None else total + part
        per_row.append(ce)
    return total, torch.cat(per_row)


def derta_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor,
               rto_labels: torch.Tensor | None = None, *, num_items: int | torch.Tensor | None = None,
               rto_weight: float = 1.0, chunk_rows: int | None = None, vocab_chunk: int | None = None,
               softcap: float | None = None, impl: str = "auto"):
    """The DeRTa loss from final hidden states ``[B, T, H]`` and the output head.

    Returns ``(loss, stats)``: ``loss = weighted CE sum / N`` (``N = num_items`` when given,
    e.g. the token count of the whole accumulated batch, else the local count) and
    ``stats`` with detached ``mle_sum``, ``rto_sum``, ``n_mle``, ``n_rto`` for logging.
    """
    rows, targets, weights, is_rto = label_rows(hidden, labels, rto_labels, rto_weight)
    total, per_row = linear_cross_entropy(rows, head, targets, weights, chunk_rows=chunk_rows,
                                          vocab_chunk=vocab_chunk, softcap=softcap, impl=impl)
    n = normaliser(rows.shape[0] if num_items is None else num_items, total.device)
    stats = {"mle_sum": per_row[~is_rto].sum(), "rto_sum": per_row[is_rto].sum(),
             "n_mle": int((~is_rto).sum()), "n_rto": int(is_rto.sum())}
    return total / n, stats


def normaliser(n: int | torch.Tensor, device: torch.device) -> int | torch.Tensor:
    """The loss denominator ``N`` from a count of labelled pairs: at least 1, a tensor on
    ``device`` when the count is one."""
    if torch.is_tensor(n):
        return n.to(device).clamp_min(1)
    return max(int(n), 1)


# --------------------------------------------------------------------------------------
# PRESTO: the attention to a harmful prefill (Vega & Singh, arXiv 2512.05518)
# --------------------------------------------------------------------------------------


def presto_mask(spans: torch.Tensor, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``[B, T, T]`` 0/1 mask of the (query, key) pairs PRESTO sums: for each span ``(row,
    ps, pe, end)`` of ``spans`` (``[N, 4]``), the queries ``ps <= q < end`` and the keys ``ps
    <= k < pe`` of its row. Causal attention gives the keys ``k > q`` no probability, so a
    query's block holds exactly its prefill keys ``[ps, min(pe, q + 1))``."""
    spans = spans.to(device)
    row, ps, pe, end = spans.unbind(1)
    pos = torch.arange(length, device=device)
    queries = (pos >= ps[:, None]) & (pos < end[:, None])
    prefill = (pos >= ps[:, None]) & (pos < pe[:, None])
    blocks = (queries[:, :, None] & prefill[:, None, :]).to(dtype)
    return torch.zeros(batch, length, length, dtype=dtype, device=device).index_add_(0, row, blocks)


class _MaskedSum(torch.autograd.Function):
    """``(attn * mask[:, None]).sum()`` of a ``[B, heads, T, T]`` attention and a ``[B, T, T]``
    0/1 mask without a ``[B, heads, T, T]`` temporary: forward as one batched matrix-vector
    product, backward as a broadcast view of the mask (autograd adds it to the attention's
    other gradient)."""

    @staticmethod
    def forward(ctx, attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.shape = attn.shape
        b, heads = attn.shape[:2]
        return torch.bmm(attn.reshape(b, heads, -1), mask.reshape(b, -1, 1)).sum(dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return (grad.to(mask.dtype) * mask)[:, None].expand(ctx.shape), None


def presto_term(attentions, spans: torch.Tensor) -> tuple[torch.Tensor, int]:
    """PRESTO's regulariser: for every span ``(row, ps, pe, end)`` (``ps``: the first token of
    the harmful prefill, ``pe``: the first token after it, ``end``: the sequence's end) and
    every query position ``ps <= q < end``, twice the attention probability (summed over
    heads) from ``q`` to the prefill keys ``[ps, min(pe, q + 1))``; summed over spans and
    query positions and averaged over the layers of ``attentions`` (a ``[B, heads, T, T]``
    tensor per layer, eager attention's probabilities).

    The authors' code writes each query's term as ``prefill - (before + after) + heads``, the
    attention to the prefill minus that to the tokens before and after it plus the number of
    heads, which equals ``2 x prefill`` because each head's row sums to 1. Returns the term
    (an fp32 scalar that carries the attentions' graph) and the number of query positions.
    Extra memory: one ``[B, T, T]`` mask, shared by the layers."""
    first = attentions[0]
    n_queries = int((spans[:, 3] - spans[:, 1]).sum()) if spans.numel() else 0
    if not n_queries:
        return first.new_zeros((), dtype=torch.float32), 0
    mask = presto_mask(spans, first.shape[0], first.shape[-1], first.dtype, first.device)
    total = sum(_MaskedSum.apply(a, mask.to(a.dtype)) for a in attentions)
    return 2 * total / len(attentions), n_queries


def reference_loss(logits: torch.Tensor, labels: torch.Tensor, rto_labels: torch.Tensor | None = None, *,
                   rto_weight: float = 1.0, num_items: int | None = None) -> torch.Tensor:
    """The straightforward version over full ``[B, T, V]`` fp32 logits (tests, benchmarks)."""
    logp = torch.log_softmax(logits.float()[:, :-1], dim=-1)
    total = logp.new_zeros(())
    n = 0
    for lab, w in ((labels, 1.0), (rto_labels, rto_weight)):
        if lab is None:
            continue
        t = lab[:, 1:]
        mask = t != IGNORE_INDEX
        picked = logp.gather(-1, t.clamp_min(0)[..., None]).squeeze(-1)
        total = total - w * (picked * mask).sum()
        n += int(mask.sum())
    return total / max(num_items if num_items is not None else n, 1)


# --------------------------------------------------------------------------------------
# The token-wise constrained objective (Qi et al. 2025, arXiv 2406.05946)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenWiseConstraint:
    """The knobs of the token-wise constrained fine-tuning objective, with the reference
    implementation's defaults (Unispac/shallow-vs-deep-alignment: ``beta`` 0.1,
    ``bias_factor`` 20, ``first_token_bias_factor`` 5, ``bias_length`` 5).

    At response position ``t`` (0: the first response token) the constraint's strength is
    ``beta_t = beta * first_token_bias_factor`` for ``t = 0``, ``beta * bias_factor`` for
    ``0 < t < bias_length`` and ``beta`` after (``bias_length = 0``: ``beta`` everywhere).
    Each response token's cross-entropy is weighted by

        w_t = max(2 * (1 - sigmoid(beta_t * (log pi_theta(y_t) - log pi_ref(y_t)))), 1e-3),

    held constant (detached): the gradient of the paper's objective. A token the model already
    makes more likely than the reference gets a small weight, so the first tokens, where
    ``beta_t`` is large, can move only a little away from the reference."""

    beta: float = 0.1
    bias_factor: float = 20.0
    first_token_bias_factor: float = 5.0
    bias_length: int = 5
    min_weight: float = 1e-3

    def betas(self, positions: torch.Tensor) -> torch.Tensor:
        """``beta_t`` for response positions ``t`` (fp32)."""
        out = torch.full(positions.shape, float(self.beta), dtype=torch.float32, device=positions.device)
        if self.bias_length > 0:
            out[positions < self.bias_length] = self.beta * self.bias_factor
            out[positions == 0] = self.beta * self.first_token_bias_factor
        return out

    def weights(self, policy_logps: torch.Tensor, ref_logps: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
        """``w_t`` (detached, fp32)."""
        ratio = policy_logps.detach().float() - ref_logps.float()
        return (2.0 * (1.0 - torch.sigmoid(betas * ratio))).clamp_min(self.min_weight)


def response_positions(labels: torch.Tensor) -> torch.Tensor:
    """For each labelled pair (after the causal shift, in :func:`label_rows` order) its index
    among its sequence's labelled pairs: 0 for the first response token."""
    mask = labels[:, 1:] != IGNORE_INDEX
    return (mask.cumsum(1) - 1)[mask]


def label_logprobs(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, *, chunk_rows: int | None = None,
                   vocab_chunk: int | None = None, softcap: float | None = None, impl: str = "auto") -> torch.Tensor:
    """``log p(label)`` at every labelled pair, in :func:`label_rows` order (fp32, no grad),
    tile by tile like the loss: no full-vocabulary logits."""
    rows, targets, _, _ = label_rows(hidden, labels)
    with torch.no_grad():
        _, ce = linear_cross_entropy(rows, head, targets, chunk_rows=chunk_rows, vocab_chunk=vocab_chunk,
                                     softcap=softcap, impl=impl)
    return -ce


def constrained_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, ref_logps: torch.Tensor,
                     constraint: TokenWiseConstraint = TokenWiseConstraint(), *,
                     num_items: int | torch.Tensor | None = None, chunk_rows: int | None = None,
                     vocab_chunk: int | None = None, softcap: float | None = None, impl: str = "auto"):
    """The token-wise constrained loss from final hidden states ``[B, T, H]``.

    ``ref_logps [B, T]``: the reference model's ``log p`` of each label, at the label's
    (unshifted) position. Returns ``(loss, stats)``: ``loss = sum_t w_t * CE_t / N`` with
    ``N = num_items`` (the response tokens of the whole accumulated batch) when given, else
    the local count, i.e. the mean over all response tokens of ``-w_t log pi_theta(y_t)``;
    ``stats`` holds detached ``mle_sum`` (plain cross-entropy), ``weight_sum`` and ``n_mle``.
    """
    rows, targets, _, _ = label_rows(hidden, labels)
    mask = labels[:, 1:] != IGNORE_INDEX
    ref = ref_logps[:, 1:][mask].to(torch.float32)
    betas = constraint.betas(response_positions(labels))

    def weigh(ce: torch.Tensor, start: int) -> torch.Tensor:
        end = start + ce.shape[0]
        return constraint.weights(-ce, ref[start:end], betas[start:end])

    total, per_row = linear_cross_entropy(rows, head, targets, weigh, chunk_rows=chunk_rows, vocab_chunk=vocab_chunk,
                                          softcap=softcap, impl=impl)
    n = rows.shape[0] if num_items is None else num_items
    n = n.to(total.device).clamp_min(1) if torch.is_tensor(n) else max(int(n), 1)
    stats = {"mle_sum": per_row.sum(), "weight_sum": weigh(per_row, 0).sum(), "n_mle": int(per_row.shape[0]),
             "n_rto": 0, "rto_sum": per_row.new_zeros(())}
    return total / n, stats
