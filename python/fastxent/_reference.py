"""The NumPy reference backend: the executable spec, in float64, written to be read.

Per row with logits z (C classes), label y, smoothing eps and class weights w (ones if none):

    lse    = log(sum_j exp(z_j))                    (computed as m + log(sum exp(z - m)))
    loss   = (1 - eps) * w_y * (lse - z_y) + eps / C * sum_j w_j * (lse - z_j)
    d loss / d z_j = (1 - eps) * w_y * (p_j - [j == y]) + eps / C * (sum_k w_k * p_j - w_j)

with p = softmax(z). Ignored rows have loss 0 and gradient 0. "mean" divides by the summed
w_y of the rows not ignored, "sum" adds, "none" keeps one loss per row; the gradient is that
of the reduced loss times grad_output. This is torch.nn.functional.cross_entropy's definition.
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


def _row_losses(problem: Problem):
    """Per-row loss, lse, log-probabilities, clamped labels, the not-ignored mask, the weights."""
    x = problem.logits.astype(np.float64)
    labels = problem.labels64()
    keep = labels != problem.ignore_index
    target = np.where(keep, labels, 0)
    n, c = x.shape
    w = problem.weight if problem.weight is not None else np.ones(c)
    logp, lse = _log_softmax(x)
    eps = problem.smoothing
    rows = np.arange(n)
    with np.errstate(invalid="ignore", over="ignore"):
        loss = (1.0 - eps) * w[target] * -logp[rows, target]
        if eps > 0:
            loss = loss + eps / c * -(logp * w).sum(axis=1)
    loss = np.where(keep, loss, 0.0)
    return loss, np.where(keep, lse, 0.0), logp, target, keep, w


def _denominator(problem: Problem, target, keep, w) -> float:
    return float((w[target] * keep).sum())


def _reduce(problem: Problem, loss, target, keep, w):
    if problem.reduction == "none":
        return loss
    total = loss.sum()
    if problem.reduction == "sum":
        return float(total)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(total) / _denominator(problem, target, keep, w))


def _row_scale(problem: Problem, grad_scalar, grad_rows, target, keep, w):
    scale = np.full(problem.rows, grad_scalar, dtype=np.float64)
    if grad_rows is not None:
        scale = scale * grad_rows
    if problem.reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = scale / _denominator(problem, target, keep, w)
    return scale


def _gradient(problem: Problem, logp, target, keep, w, scale) -> np.ndarray:
    n, c = logp.shape
    eps = problem.smoothing
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(logp)
        grad = (1.0 - eps) * w[target][:, None] * p
        grad[np.arange(n), target] -= (1.0 - eps) * w[target]
        if eps > 0:
            grad += eps / c * (w.sum() * p - w)
        grad *= scale[:, None]
    grad[~keep] = 0.0
    return grad


def forward(problem: Problem):
    """(reduced loss or per-row losses, per-row lse), both float64."""
    loss, lse, _, target, keep, w = _row_losses(problem)
    return _reduce(problem, loss, target, keep, w), lse


def fused(problem: Problem, grad_scalar, grad_rows, grad_out: np.ndarray):
    loss, _, logp, target, keep, w = _row_losses(problem)
    scale = _row_scale(problem, grad_scalar, grad_rows, target, keep, w)
    grad_out[...] = _gradient(problem, logp, target, keep, w, scale)
    return _reduce(problem, loss, target, keep, w)


def backward(problem: Problem, lse: np.ndarray, grad_scalar, grad_rows, grad_out: np.ndarray):
    labels = problem.labels64()
    keep = labels != problem.ignore_index
    target = np.where(keep, labels, 0)
    w = problem.weight if problem.weight is not None else np.ones(problem.classes)
    with np.errstate(invalid="ignore", over="ignore"):
        logp = problem.logits.astype(np.float64) - np.asarray(lse, dtype=np.float64)[:, None]
    scale = _row_scale(problem, grad_scalar, grad_rows, target, keep, w)
    grad_out[...] = _gradient(problem, logp, target, keep, w, scale)


def rowop(x: np.ndarray, op: str) -> np.ndarray:
    """op on the last axis of a 2-D float array: 'softmax', 'log_softmax' or 'logsumexp'."""
    logp, lse = _log_softmax(x.astype(np.float64))
    if op == "logsumexp":
        return lse
    if op == "log_softmax":
        return logp
    return np.exp(logp)
