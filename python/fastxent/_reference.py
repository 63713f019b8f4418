"""The NumPy reference backend: the executable spec, in float64, written to be read.

Per row with logits x (C classes), label y, smoothing eps and class weights w (ones if none):

    z      = softcap * tanh(x / softcap)            (only with softcap; else z = x)
    lse    = log(sum_j exp(z_j))                    (computed as m + log(sum exp(z - m)))
    loss   = (1 - eps) * w_y * (lse - z_y) + eps / C * sum_j w_j * (lse - z_j)
           + z_loss * lse**2
    d loss / d z_j = (1 - eps) * w_y * (p_j - [j == y]) + eps / C * (sum_k w_k * p_j - w_j)
                     + 2 * z_loss * lse * p_j
    d loss / d x_j = d loss / d z_j * (1 - (z_j / softcap)**2)

with p = softmax(z). Probability targets t (a row per row of logits) replace the label term:
with q_j = w_j * ((1 - eps) * t_j + eps / C),

    loss   = sum_j q_j * (lse - z_j)  (+ z_loss * lse**2),  a term with q_j = 0 counts 0
    d loss / d z_j = p_j * sum_k q_k - q_j  (+ 2 * z_loss * lse * p_j)

Ignored rows have loss 0 and gradient 0. "mean" divides the cross-entropy by the summed w_y of
the rows not ignored (by the number of rows for probability targets) and the z-loss by the
number of rows not ignored; "sum" adds; "none" keeps one loss per row. The gradient is that of
the reduced loss times grad_output. Without z_loss and softcap this is
torch.nn.functional.cross_entropy's definition.

Accuracy: the fraction of the rows not ignored whose argmax of z (the first index on ties) is
the label; a row with a NaN logit counts as wrong.
"""

from __future__ import annotations

import numpy as np

from ._checks import Problem

name = "numpy"


def _log_softmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = x.max(axis=-1, keepdims=True)
        # An all -inf row has lse = log(0) = -inf (its log-probabilities stay NaN).
        m = np.where(m == -np.inf, 0.0, m)
        log_s = np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
        # (x - m) - log s, not x - (m + log s): m + log s rounds to m for huge logits.
        return (x - m) - log_s, (m + log_s)[..., 0]


def _capped(problem: Problem) -> np.ndarray:
    """The logits as the softmax sees them, in float64."""
    x = problem.logits.astype(np.float64)
    if problem.softcap is not None:
        x = problem.softcap * np.tanh(x / problem.softcap)
    return x


class _Rows:
    """Per-row quantities of a problem: targets, weights, the not-ignored mask."""

    def __init__(self, problem: Problem):
        n, c = problem.rows, problem.classes
        self.w = problem.weight if problem.weight is not None else np.ones(c)
        eps = problem.smoothing
        if problem.soft:
            self.keep = np.ones(n, dtype=bool)
            t = problem.targets.astype(np.float64)
            self.q = self.w * ((1.0 - eps) * t + eps / c)  # (N, C)
            self.ce_denominator = float(n)
        else:
            labels = problem.labels64()
            self.keep = labels != problem.ignore_index
            self.target = np.where(self.keep, labels, 0)
            wy = self.w[self.target] * self.keep
            self.q = eps / c * np.broadcast_to(self.w, (n, c)).copy()
            self.q[np.arange(n), self.target] += (1.0 - eps) * self.w[self.target]
            self.q *= self.keep[:, None]
            self.ce_denominator = float(wy.sum())
        self.z_denominator = float(self.keep.sum())


def _row_losses(problem: Problem, rows: _Rows, z: np.ndarray):
    """Per-row cross-entropy, z-loss term, lse and log-probabilities."""
    logp, lse = _log_softmax(z)
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(rows.q != 0, rows.q * -logp, 0.0)  # 0 * -inf counts 0
        ce = terms.sum(axis=1)
        zl = problem.z_loss * lse**2 if problem.z_loss else np.zeros_like(lse)
    keep = rows.keep
    return np.where(keep, ce, 0.0), np.where(keep, zl, 0.0), np.where(keep, lse, 0.0), logp


def _reduce(problem: Problem, ce, zl, rows: _Rows):
    """(loss, z-loss term), each reduced as the call asks."""
    if problem.reduction == "none":
        return ce + zl, zl
    if problem.reduction == "sum":
        return float(ce.sum() + zl.sum()), float(zl.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        z_mean = np.float64(zl.sum()) / rows.z_denominator
        return float(np.float64(ce.sum()) / rows.ce_denominator + z_mean), float(z_mean)


def _row_scale(problem: Problem, grad_scalar, grad_rows, denominator):
    scale = np.full(problem.rows, grad_scalar, dtype=np.float64)
    if grad_rows is not None:
        scale = scale * grad_rows
    if problem.reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = scale / denominator
    return scale


def _gradient(problem: Problem, rows: _Rows, logp, lse, grad_scalar, grad_rows, z) -> np.ndarray:
    ce_scale = _row_scale(problem, grad_scalar, grad_rows, rows.ce_denominator)
    z_scale = _row_scale(problem, grad_scalar, grad_rows, rows.z_denominator)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(logp)
        grad = ce_scale[:, None] * (p * rows.q.sum(axis=1, keepdims=True) - rows.q)
        if problem.z_loss:
            grad += (z_scale * 2.0 * problem.z_loss * lse)[:, None] * p
        if problem.softcap is not None:
            grad *= 1.0 - (z / problem.softcap) ** 2
    grad[~rows.keep] = 0.0
    return grad


def accuracy(problem: Problem, rows: _Rows, z: np.ndarray) -> float:
    if problem.soft:
        raise ValueError("return_accuracy needs class-index labels, not probability targets")
    if z.shape[0] == 0:
        return float("nan")
    correct = (z.argmax(axis=1) == rows.target) & ~np.isnan(z).any(axis=1) & rows.keep
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(correct.sum()) / rows.z_denominator)


def forward(problem: Problem, want_accuracy=False, want_lse=True):
    """(loss, per-row lse, z-loss term, accuracy or None); losses float64. (lse is computed
    either way: want_lse is for backends that can skip it.)"""
    rows = _Rows(problem)
    z = _capped(problem)
    ce, zl, lse, _ = _row_losses(problem, rows, z)
    loss, z_term = _reduce(problem, ce, zl, rows)
    return loss, lse, z_term, (accuracy(problem, rows, z) if want_accuracy else None)


def fused(problem: Problem, grad_scalar, grad_rows, grad_out: np.ndarray, want_accuracy=False):
    """(loss, z-loss term, accuracy or None), with the gradient written to grad_out."""
    rows = _Rows(problem)
    z = _capped(problem)
    ce, zl, lse, logp = _row_losses(problem, rows, z)
    grad_out[...] = _gradient(problem, rows, logp, lse, grad_scalar, grad_rows, z)
    loss, z_term = _reduce(problem, ce, zl, rows)
    return loss, z_term, (accuracy(problem, rows, z) if want_accuracy else None)


def backward(problem: Problem, lse: np.ndarray, grad_scalar, grad_rows, grad_out: np.ndarray):
    rows = _Rows(problem)
    z = _capped(problem)
    lse = np.asarray(lse, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        logp = z - lse[:, None]
    grad_out[...] = _gradient(problem, rows, logp, lse, grad_scalar, grad_rows, z)


def rowop(x: np.ndarray, op: str) -> np.ndarray:
    """op on the last axis of a 2-D float array: 'softmax', 'log_softmax' or 'logsumexp'."""
    logp, lse = _log_softmax(x.astype(np.float64))
    if op == "logsumexp":
        return lse
    if op == "log_softmax":
        return logp
    return np.exp(logp)
