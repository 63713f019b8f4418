"""The eager fast path of fastxent.torch.cross_entropy: the common call straight to the kernels.

A 2-D float32/float64 CPU input, int64 class indices of shape (N,), torch's default options (no
weight, ignore_index -100, no smoothing), no z-loss, softcap or extras, and no torch.compile:
the kernels' small-call entry (fastxent._core.fast_cross_entropy) reads the arrays' fields
itself, so the wrapper's own work is a few attribute reads. Without a gradient to come it only
computes the loss. With one, and at most FUSED_UP_TO logits, the forward runs the fused pass
and keeps the gradient for backward (as grad_in_forward=True does): one pass over the logits
instead of two, and the held gradient is at most 8 MiB. Anything else returns None and takes
the general path, which also words every error."""

from __future__ import annotations

import torch

from . import _backends
from .torch import _DOUBLE_BACKWARD, _is_one, _loss_tensor, _rows

FUSED_UP_TO = 1 << 20  # logits
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_DTYPES = (torch.float32, torch.float64)
_FORWARD, _FUSED = 0, 1


def _qualifies(input, target) -> bool:
    return (input.dtype in _DTYPES and target.dtype == torch.int64 and input.dim() == 2
            and target.dim() == 1 and input.is_cpu and target.is_cpu
            and input.layout == torch.strided and not input.is_neg()
            and (input.stride(1) == 1 or input.shape[1] <= 1))


class _FusedLoss(torch.autograd.Function):
    """The fused forward; backward hands on the kept gradient, scaled by grad_output unless it
    is 1 (out of place: with retain_graph=True a second backward needs it unscaled)."""

    @staticmethod
    def forward(ctx, logits, labels, core, reduction_code):
        # The kernels' entry makes the gradient array itself: cheaper than torch.empty + .numpy()
        loss, grad = core.fast_cross_entropy(_FUSED, logits.detach().numpy(), labels.numpy(),
                                             reduction_code, 1.0, None)
        grad = torch.from_numpy(grad)
        ctx.save_for_backward(grad)
        return _loss_tensor(loss)

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():  # create_graph=True: see torch.py's _CrossEntropy.backward
            raise RuntimeError(_DOUBLE_BACKWARD)
        (grad,) = ctx.saved_tensors
        if grad_loss is not None and not _is_one(grad_loss):
            grad = grad * _rows(grad_loss, grad)
        return grad, None, None, None


def cross_entropy(input, target, reduction):
    """The loss tensor, or None when the call is not one the fast path takes (or the kernels
    refuse its values: the general path then raises with the argument's name)."""
    code = _REDUCTIONS.get(reduction)
    if code is None or not _qualifies(input, target):
        return None
    core = _backends.fast_core("auto")
    if core is None:
        return None
    needs_grad = input.requires_grad and torch.is_grad_enabled()
    try:
        if needs_grad:
            if input.numel() > FUSED_UP_TO:
                return None
            return _FusedLoss.apply(input, target, core, code)
        loss = core.fast_cross_entropy(_FORWARD, input.detach().numpy(), target.numpy(), code,
                                       1.0, None)
    except (ValueError, TypeError):
        return None
    return None if loss is None else _loss_tensor(loss)
