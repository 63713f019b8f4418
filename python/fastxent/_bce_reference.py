"""Binary cross-entropy with logits, the NumPy reference: the executable spec, in float64.

For a logit x, a target t (a probability, usually 0 or 1), a weight w and a positive-class
weight pw (both 1 when not given), with sigmoid s(x) = 1 / (1 + exp(-x)):

    loss = -w * (pw * t * log s(x) + (1 - t) * log(1 - s(x)))
         = w * (pw * t * softplus(-x) + (1 - t) * softplus(x))        softplus(x) = log(1 + e^x)
         = w * (pw * t * max(-x, 0) + (1 - t) * max(x, 0) + lw * log1p(exp(-|x|)))
    d loss / d x = w * (lw * s(x) - pw * t)                           lw = 1 + (pw - 1) * t

(softplus(x) = max(x, 0) + log1p(exp(-|x|)): nothing overflows and no two large terms cancel.)
The gradient is evaluated as w * ((1 - t) - lw * q) for x >= 0 and w * (lw * q - pw * t) for
x < 0, with q = s(-|x|) = exp(-|x|) / (1 + exp(-|x|)), so that neither form subtracts from a
rounded 1. A product with a zero coefficient is 0 even when the other factor is infinite (the
limit): x = +inf with t = 1, or x = -inf with t = 0, has loss 0, and weight 0 masks an element.
"mean" divides the summed loss by the number of elements, "sum" adds, "none" keeps them all.
This is torch.nn.functional.binary_cross_entropy_with_logits, except at infinite logits, where
PyTorch's form gives NaN and this one the limit.
"""

from __future__ import annotations

import numpy as np

from ._checks import BceProblem

name = "numpy"


def _times(coef, value):
    """coef * value, 0 where coef is 0 (even when value is inf)."""
    return np.where(coef == 0, 0.0, coef * value)


def _per_element(a, problem: BceProblem):
    """weight / pos_weight as float64 (n,) (ones when not given)."""
    n = problem.size
    if a is None:
        return np.ones(n)
    if a.shape[0] == n:
        return a
    return np.tile(a, n // a.shape[0])  # periodic along the last axis


def losses_and_grads(problem: BceProblem):
    """(loss, d loss / d x) per element, float64, unreduced and unscaled."""
    x = problem.logits.astype(np.float64)
    t = problem.targets.astype(np.float64)
    w = _per_element(problem.weight, problem)
    pw = _per_element(problem.pos_weight, problem)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(-np.abs(x))
        lw = 1.0 + (pw - 1.0) * t
        loss = _times(pw * t, np.maximum(-x, 0.0)) + _times(1.0 - t, np.maximum(x, 0.0))
        loss = _times(w, loss + lw * np.log1p(e))
        q = e / (1.0 + e)
        grad = w * np.where(x >= 0, (1.0 - t) - lw * q, lw * q - pw * t)
    return loss, grad


def compute(problem: BceProblem, loss_out, grad_out, grad_scale, grad_elems, want_total=True):
    """The backend entry point. loss_out (n,) gets the per-element losses (reduction "none"),
    grad_out (n,) gets grad_scale * grad_elems * d loss / d x; returns the summed loss."""
    loss, grad = losses_and_grads(problem)
    with np.errstate(over="ignore", invalid="ignore"):  # a float16 past 65504 is inf
        if loss_out is not None:
            loss_out[...] = loss
        if grad_out is not None:
            g = grad * grad_scale
            if grad_elems is not None:
                g = g * grad_elems
            grad_out[...] = g
    return float(loss.sum()) if want_total else 0.0
