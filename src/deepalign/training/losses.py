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

Memory. The model's final hidden states ``[B, T, H]`` are gathered at labelled positions
(after the causal shift) into ``[N, H]`` rows, and the output projection is applied to these
rows only, in chunks of ``chunk_rows`` rows, so no ``[B, T, V]`` logits (nor ``[N, V]``
when ``N`` exceeds a chunk) are ever materialised. Two implementations:

* fused (a plain ``nn.Linear`` head with its full weight present, the common case): one
  autograd function that computes each chunk's logits in fp32, its loss and, right away,
  its gradients with respect to the rows and the weight; backward only scales them. Same
  FLOPs as the usual three matmuls, peak extra memory one chunk of logits plus a
  weight-sized fp32 gradient buffer.
* module (any head: LoRA-wrapped, DeepSpeed ZeRO-3 or FSDP-sharded, logit soft-capping):
  calls the head module on each chunk under activation checkpointing (one extra chunk
  forward in backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
# default chunk: about 2**26 logits (256 MiB in fp32)
CHUNK_ELEMENTS = 1 << 26


def _auto_chunk(vocab: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return chunk_rows
    return max(1, CHUNK_ELEMENTS // max(1, vocab))


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


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(x_i W^T + b, t_i), with the gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, rows, weight, bias, targets, weights, chunk_rows):
        n, h = rows.shape
        v = weight.shape[0]
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        dtype = _compute_dtype(rows, weight)
        dev = rows.device.type
        losses = torch.empty(n, dtype=torch.float32, device=rows.device)
        grad_x = torch.empty_like(rows) if need_x else None
        grad_w = torch.zeros(v, h, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(v, dtype=torch.float32, device=weight.device) if need_b else None
        with torch.autocast(dev, enabled=False):
            w = weight.to(dtype)
            b = bias.float() if bias is not None else None
            for s in range(0, n, chunk_rows):
                e = min(n, s + chunk_rows)
                x = rows[s:e].to(dtype)
                t = targets[s:e]
                logits = (x @ w.t()).float()
                if b is not None:
                    logits += b
                lse = torch.logsumexp(logits, dim=-1)
                losses[s:e] = lse - logits.gather(1, t[:, None]).squeeze(1)
                if need_x or need_w or need_b:
                    # d CE / d logits = softmax - onehot, scaled by the row weight
                    logits.sub_(lse[:, None]).exp_()
                    logits[torch.arange(e - s, device=logits.device), t] -= 1.0
                    logits.mul_(weights[s:e, None])
                    g = logits.to(dtype)
                    if need_x:
                        grad_x[s:e] = (g @ w).to(rows.dtype)
                    if need_w:
                        grad_w += (g.t() @ x).float()
                    if need_b:
                        grad_b += logits.sum(0)
                    del g
                del logits
        ctx.grads = (grad_x, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(losses)
        return (losses * weights).sum(), losses

    @staticmethod
    def backward(ctx, grad_loss, _grad_losses):
        grad_x, grad_w, grad_b = ctx.grads
        ctx.grads = None
        wdt, bdt = ctx.dtypes
        gx = (grad_x * grad_loss.to(grad_x.dtype)) if grad_x is not None else None
        gw = (grad_w * grad_loss).to(wdt) if grad_w is not None else None
        gb = (grad_b * grad_loss).to(bdt) if grad_b is not None else None
        return gx, gw, gb, None, None, None


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
                         weights: torch.Tensor | None = None, *, chunk_rows: int | None = None,
                         softcap: float | None = None, impl: str = "auto"):
    """``(sum_i w_i * CE(head(rows_i), t_i), per-row CE detached)`` without full logits.

    ``impl``: ``"fused"``, ``"module"`` or ``"auto"`` (fused when the head allows it and no
    soft-capping is needed).
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
        return _FusedLinearCrossEntropy.apply(rows, head.weight, head.bias, targets, weights, chunk)
    if impl != "module":
        raise ValueError(f"impl must be auto, fused or module, got {impl!r}")

    def chunk_loss(x, t, w):
        logits = head(x).float()
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        ce = F.cross_entropy(logits, t, reduction="none")
        return (ce * w).sum(), ce.detach()

    n = rows.shape[0]
    if n <= chunk:
        return chunk_loss(rows, targets, weights)
    from torch.utils.checkpoint import checkpoint

    total, per_row = None, []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        if torch.is_grad_enabled():
            part, ce = checkpoint(chunk_loss, rows[s:e], targets[s:e], weights[s:e], use_reentrant=False)
        else:
            part, ce = chunk_loss(rows[s:e], targets[s:e], weights[s:e])
        total = part if total is None else total + part
        per_row.append(ce)
    return total, torch.cat(per_row)


def derta_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor,
               rto_labels: torch.Tensor | None = None, *, num_items: int | torch.Tensor | None = None,
               rto_weight: float = 1.0, chunk_rows: int | None = None, softcap: float | None = None,
               impl: str = "auto"):
    """The DeRTa loss from final hidden states ``[B, T, H]`` and the output head.

    Returns ``(loss, stats)``: ``loss = weighted CE sum / N`` (``N = num_items`` when given,
    e.g. the token count of the whole accumulated batch, else the local count) and
    ``stats`` with detached ``mle_sum``, ``rto_sum``, ``n_mle``, ``n_rto`` for logging.
    """
    rows, targets, weights, is_rto = label_rows(hidden, labels, rto_labels, rto_weight)
    total, per_row = linear_cross_entropy(rows, head, targets, weights, chunk_rows=chunk_rows, softcap=softcap,
                                          impl=impl)
    n = rows.shape[0] if num_items is None else num_items
    if torch.is_tensor(n):
        n = n.to(total.device).clamp_min(1)
    else:
        n = max(int(n), 1)
    stats = {"mle_sum": per_row[~is_rto].sum(), "rto_sum": per_row[is_rto].sum(),
             "n_mle": int((~is_rto).sum()), "n_rto": int(is_rto.sum())}
    return total / n, stats


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
