"""Vocabulary-parallel cross-entropy: the classes are split across the processes of a
torch.distributed group (tensor parallelism, as in Megatron-LM), each holding
logits[:, vocab_start:vocab_start + local_classes] and the same (replicated) labels.

Forward, per row i (z the full row, split across processes):
    m_r      = logsumexp of the local slice          (the kernel: fastxent.logsumexp)
    m        = all_reduce(m_r, MAX)
    lse      = m + log(all_reduce(exp(m_r - m), SUM))
    z_y      = all_reduce(z_y if y is local else 0, SUM)  (one SUM call carries all the partials)
    loss     = (1 - eps) w_y (lse - z_y) + eps / C (lse * sum_j w_j - sum_j w_j z_j)
with C the global class count (the sum of the local counts). Backward, on the local slice only:
    d z_j    = a p_j - b [j == y] - c w_j,   p_j = exp(z_j - lse)
    a = s ((1 - eps) w_y + eps / C sum_k w_k),  b = s (1 - eps) w_y,  c = s eps / C
where s is the row's grad_output (divided by the global weight sum for "mean"; 0 if ignored).
The a p_j term is the kernel's backward from the global lse (fastxent.cross_entropy_backward with
reduction="none" and grad_output=a, for a label that is local or, if the row's label lives
elsewhere, column 0); the one column it subtracts a from is then corrected, and the smoothing
term subtracted. No communication in the backward.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import fastxent

from ._checks import check_integer, check_reduction, check_smoothing
from ._linear_torch import _np
from ._types import Backend, Reduction


def _check(local_logits, labels, vocab_start, weight):
    if not isinstance(local_logits, torch.Tensor):
        raise TypeError(f"local_logits must be a torch.Tensor, got {type(local_logits).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if local_logits.dim() != 2:
        raise ValueError(f"local_logits must have shape (N, local_classes), got "
                         f"{tuple(local_logits.shape)}")
    if not local_logits.is_floating_point():
        raise TypeError(f"local_logits must be a float tensor, got {local_logits.dtype}")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor of global class indices, got {labels.dtype}")
    if tuple(labels.shape) != (local_logits.shape[0],):
        raise ValueError(f"labels must have shape ({local_logits.shape[0]},), got {tuple(labels.shape)}")
    vocab_start = check_integer(vocab_start, "vocab_start", 0)
    if weight is not None and not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
    for name, t in (("local_logits", local_logits), ("labels", labels), ("weight", weight)):
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device}: fastxent's kernels run on CPU tensors only")
    return vocab_start


def _local_view(local_logits):
    """The local slice as a float32/float64 NumPy array (16-bit logits are copied to float32)."""
    x = local_logits.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return _np(x)


class _Rows:
    """Per-row quantities the forward finds and the backward needs."""


def _forward(x, y, start, weight, ignore_index, eps, reduction, group, backend):
    n, local = x.shape
    lse_local = fastxent.logsumexp(x, backend=backend).astype(np.float64) if local else \
        np.full(n, -np.inf)
    m = torch.from_numpy(lse_local.copy())
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m = m.numpy()
    m_safe = np.where(np.isfinite(m), m, 0.0)  # an all -inf row must not give -inf - -inf

    y64 = y.astype(np.int64, copy=False)
    mine = (y64 >= start) & (y64 < start + local) & (y64 != ignore_index)
    local_y = np.where(mine, y64 - start, 0)
    rows = np.arange(n)
    w_local = None
    if weight is not None:
        w_all = np.asarray(weight, dtype=np.float64)
        w_local = w_all[start:start + local]
    partial = np.zeros(3 * n + 1)
    with np.errstate(over="ignore"):
        partial[:n] = np.exp(lse_local - m_safe)
    if local:
        partial[n:2 * n] = np.where(mine, x[rows, local_y], 0.0)
        if eps > 0:
            partial[2 * n:3 * n] = (x.sum(axis=1, dtype=np.float64) if w_local is None
                                    else x.astype(np.float64) @ w_local)
    partial[-1] = local
    total = torch.from_numpy(partial)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    total = total.numpy()
    classes = int(round(total[-1]))

    keep = y64 != ignore_index
    bad = keep & ((y64 < 0) | (y64 >= classes))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"labels[{row}] = {int(y64[row])} is not a class index in "
                         f"[0, {classes}) nor ignore_index ({ignore_index})")
    if weight is None:
        w_y, w_sum = keep.astype(np.float64), float(classes)
    else:
        if w_all.shape != (classes,):
            raise ValueError(f"weight must have shape ({classes},) (one per class of the whole "
                             f"vocabulary), got {w_all.shape}")
        w_y, w_sum = np.where(keep, w_all[np.where(keep, y64, 0)], 0.0), float(w_all.sum())
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lse = m_safe + np.log(total[:n])
        lse = np.where(np.isfinite(m), lse, m)
        loss = (1.0 - eps) * w_y * (lse - total[n:2 * n])
        if eps > 0:
            loss = loss + eps / classes * (lse * w_sum - total[2 * n:3 * n])
    loss = np.where(keep, loss, 0.0)
    denom = float(w_y.sum())
    if reduction == "none":
        result = loss
    elif reduction == "sum":
        result = loss.sum()
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            result = np.float64(loss.sum()) / denom if denom else np.float64("nan")

    r = _Rows()
    r.lse, r.keep, r.mine, r.local_y, r.w_y, r.w_sum, r.w_local = lse, keep, mine, local_y, w_y, \
        w_sum, w_local
    r.classes, r.denom = classes, denom
    return result, r


def _backward(x, r, grad_output, eps, reduction, backend):
    n, local = x.shape
    s = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), (n,)).copy()
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            s = s / r.denom if r.denom else np.full(n, np.nan)
    s = np.where(r.keep, s, 0.0)
    a = s * ((1.0 - eps) * r.w_y + eps / r.classes * r.w_sum)
    b = np.where(r.mine, s * (1.0 - eps) * r.w_y, 0.0)
    if not local:
        return np.empty((n, 0), x.dtype)
    lse = r.lse.astype(x.dtype)
    grad = fastxent.cross_entropy_backward(x, r.local_y, lse, reduction="none", grad_output=a,
                                           backend=backend)
    # Column local_y: the kernel treated it as the label of a full row (and may renormalise its
    # entry by the local sum); the true entry is p * a minus the one-hot term b (0 when the
    # label is on another process), written here from the logit in float64.
    rows = np.arange(n)
    with np.errstate(over="ignore", invalid="ignore"):
        p_label = np.exp(x[rows, r.local_y].astype(np.float64) - r.lse.astype(np.float64))
        grad[rows, r.local_y] = np.where(r.keep, p_label * a - b, 0.0).astype(x.dtype)
    if eps > 0:
        c = s * eps / r.classes
        grad -= (c[:, None] if r.w_local is None else np.multiply.outer(c, r.w_local)).astype(x.dtype)
    return grad


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local_logits, labels, vocab_start, weight, ignore_index, eps, reduction,
                group, backend):
        x = _local_view(local_logits)
        loss, rows = _forward(x, _np(labels), vocab_start, _np(weight), ignore_index, eps,
                              reduction, group, backend)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(local_logits)
            ctx.rows, ctx.eps, ctx.reduction, ctx.backend = rows, eps, reduction, backend
        return torch.from_numpy(np.asarray(loss)).to(local_logits.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():
            raise RuntimeError("fastxent.torch.vocab_parallel_cross_entropy can be "
                               "differentiated once (double backward is not implemented)")
        (local_logits,) = ctx.saved_tensors
        x = _local_view(local_logits)
        grad = _backward(x, ctx.rows, grad_loss.detach().double().numpy(), ctx.eps,
                         ctx.reduction, ctx.backend)
        grad = torch.from_numpy(grad).to(local_logits.dtype)
        return (grad,) + (None,) * 8


def vocab_parallel_cross_entropy(local_logits: torch.Tensor, labels: torch.Tensor, vocab_start: int,
                                 group: Any = None, *, weight: torch.Tensor | None = None,
                                 ignore_index: int = -100, label_smoothing: float = 0.0,
                                 reduction: Reduction = "mean",
                                 backend: Backend = "auto") -> torch.Tensor:
    """Cross-entropy of logits split by vocabulary across the processes of `group` (default: the
    whole torch.distributed job). Every process of the group must call it with the same labels.

    local_logits: (N, local_classes) this process's columns [vocab_start, vocab_start +
    local_classes) of the full (N, C) logits; the slices of the group must tile [0, C), in any
    sizes (uneven, even empty). labels: (N,) global class indices. weight: (C,) per-class
    weights of the whole vocabulary (the same on every process). ignore_index, label_smoothing
    (over the global C classes), reduction: as torch.nn.functional.cross_entropy.
    Returns the full loss (identical on every process); its backward writes only the gradient of
    the local slice and needs no communication. Two all_reduce calls per forward (MAX, then SUM).
    """
    vocab_start = _check(local_logits, labels, vocab_start, weight)
    check_reduction(reduction)
    eps = check_smoothing(label_smoothing)
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}") from None
    if weight is not None:
        if weight.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("the gradient with respect to weight is not implemented; "
                               "pass weight.detach()")
        weight = weight.detach().double()
    return _VocabParallelCE.apply(local_logits, labels, vocab_start, weight, ignore_index, eps,
                                  reduction, group, backend)
