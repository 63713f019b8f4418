"""fastxent.torch's binary cross-entropy: an autograd Function over fastxent's BCE kernels.

Every element is independent, so nothing but the inputs is saved: with reduction "mean"/"sum"
and an input that requires grad, the forward computes the loss and the gradient in one pass
and the backward only scales it; otherwise the backward runs the gradient kernel. weight / pos_weight get no gradient (as fastxent's kernels do not
compute one). A plain autograd Function: torch.compile breaks the graph around it."""

from __future__ import annotations

import numpy as np
import torch

import fastxent

from ._checks import check_reduction, is_bfloat16
from ._types import Reduction


def _np(t):
    from .torch import _np as to_numpy  # the shared bfloat16-aware view

    return to_numpy(t)


def _tensor(a, like):
    from .torch import _loss_tensor

    return _loss_tensor(a).to(like.dtype)


def _opts(weight, pos_weight, reduction):
    return dict(weight=None if weight is None else _np(weight),
                pos_weight=None if pos_weight is None else _np(pos_weight), reduction=reduction)


class _BCEWithLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, pos_weight, reduction):
        x = input.detach()
        t = target.detach().to(input.dtype)
        opts = _opts(weight, pos_weight, reduction)
        ctx.reduction = reduction
        ctx.grad = None
        if input.requires_grad and reduction != "none":
            loss, grad = fastxent.binary_cross_entropy_with_logits_with_grad(_np(x), _np(t), **opts)
            ctx.grad = torch.from_numpy(grad.view(np.int16)).view(torch.bfloat16) \
                if is_bfloat16(grad.dtype) else torch.from_numpy(grad)
        else:
            loss = fastxent.binary_cross_entropy_with_logits(_np(x), _np(t), **opts)
            ctx.save_for_backward(x, t, weight, pos_weight)
        ctx.mark_non_differentiable()
        return _tensor(loss, input)

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.grad is not None:  # the forward's gradient (kept: a second backward gets the same)
            return ctx.grad * grad_output.to(ctx.grad.dtype), None, None, None, None
        x, t, weight, pos_weight = ctx.saved_tensors
        g = grad_output.detach().to(torch.float64).contiguous()
        grad = fastxent.binary_cross_entropy_with_logits_backward(
            _np(x), _np(t), grad_output=g.numpy() if ctx.reduction == "none" else float(g),
            **_opts(weight, pos_weight, ctx.reduction))
        return _tensor(grad, x), None, None, None, None


def binary_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor,
                                     weight: torch.Tensor | None = None,
                                     pos_weight: torch.Tensor | None = None,
                                     reduction: Reduction = "mean") -> torch.Tensor:
    """torch.nn.functional.binary_cross_entropy_with_logits on fastxent's kernels (CPU
    tensors). Infinite logits give the limit where PyTorch gives NaN."""
    check_reduction(reduction)
    if input.shape != target.shape:
        raise ValueError(f"target must have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}")
    return _BCEWithLogits.apply(input, target, weight, pos_weight, reduction)


class BCEWithLogitsLoss(torch.nn.Module):
    """``torch.nn.BCEWithLogitsLoss`` on fastxent's kernels; weight and pos_weight are buffers."""

    weight: torch.Tensor | None
    pos_weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, reduction: Reduction = "mean",
                 pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        check_reduction(reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return binary_cross_entropy_with_logits(input, target, self.weight, self.pos_weight,
                                                reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
