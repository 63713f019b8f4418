"""fastxent.torch.linear_cross_entropy: the chunked loop of _linear.py as an autograd Function.

The tensors are handed over as zero-copy NumPy views and the products run on PyTorch's BLAS.
For "mean" and "sum" the forward computes the loss and all the gradients in one pass and keeps
them; the backward only scales them by grad_output (when it is not 1). For "none" the per-row
grad_output is not known until the backward, and it weights every row's share of d_weight, so
the forward computes the loss alone and the backward runs the pass again (four matmuls, not
three).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from . import _linear
from ._checks import is_bfloat16

try:
    import ml_dtypes  # noqa: F401 - NumPy views of bfloat16 tensors need its dtype
    _BF16 = True
except ImportError:  # pragma: no cover - ml_dtypes comes with the test extras
    _BF16 = False


def _np(t):
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:
        if not _BF16:
            return t.float().numpy()
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _tensor(a, dtype):
    """a NumPy result as a tensor of `dtype` (no copy when it already is one)."""
    if a is None:
        return None
    a = np.asarray(a)
    if is_bfloat16(a.dtype):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    t = torch.from_numpy(a)
    return t if t.dtype == dtype else t.to(dtype)


def _options(options):
    """Tensors among the options (the class weight, a grad_output) as NumPy views."""
    out = {}
    for key, value in options.items():
        if isinstance(value, torch.Tensor):
            if value.requires_grad and torch.is_grad_enabled():
                raise RuntimeError(f"the gradient with respect to {key} is not implemented; "
                                   f"pass {key}.detach()")
            value = _np(value)
        out[key] = value
    return out


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, bias, chunk_size, options):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[3]
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.needs = (need_h, need_w, need_b)
        ctx.set_materialize_grads(False)
        args = (_np(hidden), _np(weight), _np(labels), _np(bias), chunk_size)
        reduction = options.get("reduction", "mean")
        grads = (need_h or need_w or need_b) and reduction != "none"
        loss, dh, dw, db = _linear.run(
            *args, dict(options), grads=grads, need_hidden=need_h, need_weight=need_w,
            need_bias=need_b, matmul="torch",
        )
        if grads:
            ctx.mode = "saved"
            ctx.save_for_backward(*(_tensor(g, d) for g, d in zip((dh, dw, db), ctx.dtypes)))
        else:
            ctx.mode = "rerun"
            ctx.save_for_backward(hidden, weight, labels, bias)
            ctx.chunk_size, ctx.options = chunk_size, options
        return _tensor(loss, hidden.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():
            raise RuntimeError("fastxent.torch.linear_cross_entropy can be differentiated once "
                               "(double backward is not implemented)")
        nones = (None, None, None, None)
        if grad_loss is None:
            return (None, None) + nones
        if ctx.mode == "saved":
            grads = list(ctx.saved_tensors)
            if grad_loss.item() != 1.0:
                # Out of place: retain_graph=True may backpropagate through here again.
                grads = [None if g is None else g * grad_loss.to(g.dtype) for g in grads]
            dh, dw, db = grads
        else:
            hidden, weight, labels, bias = ctx.saved_tensors
            need_h, need_w, need_b = ctx.needs
            options = dict(ctx.options, grad_output=_np(grad_loss.double()))
            _, dh, dw, db = _linear.run(
                _np(hidden), _np(weight), _np(labels), _np(bias), ctx.chunk_size, options,
                need_hidden=need_h, need_weight=need_w, need_bias=need_b, matmul="torch",
            )
            dh, dw, db = (_tensor(g, d) for g, d in zip((dh, dw, db), ctx.dtypes))
        return (dh, dw, None, db, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, /, *,
                         bias: torch.Tensor | None = None, chunk_size: int | Literal["auto"] = "auto",
                         **options: Any) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T + bias, labels) without the (N, V) logits, differentiable
    with respect to hidden, weight and bias. Same arguments as fastxent.linear_cross_entropy:
    the keyword weight= is the per-class weight; the other keyword options (ignore_index,
    label_smoothing, reduction, ...) go to the CE call on each chunk. CPU tensors only.
    """
    for name, t in (("hidden", hidden), ("weight", weight), ("labels", labels), ("bias", bias)):
        if t is None and name == "bias":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device}: fastxent's kernels run on CPU tensors only")
    if "grad_output" in options:
        raise TypeError("grad_output= is not an option here: call .backward(grad) on the loss")
    return _LinearCrossEntropy.apply(hidden, weight, labels, bias, chunk_size, _options(options))
