"""Shared helpers for the fastxent tests: case builders, the PyTorch oracle, tolerances.

Imported by the test modules as ``from _helpers import ...`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np

import fastxent

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
FLOAT_DTYPES = [F32, F64]
LABEL_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


def _isas():
    try:
        return list(fastxent.info()["isas"])
    except Exception:  # noqa: BLE001 - a broken FASTXENT_ISA must not break collection
        return ["scalar"]


ISAS = _isas()
# Every way of running a call: the cpp backend once per ISA the machine supports, then numba
# and the NumPy reference.
IMPLS = [f"cpp-{isa}" for isa in ISAS] + ["numba", "numpy"]
COMPILED_IMPLS = [name for name in IMPLS if name != "numpy"]


@contextlib.contextmanager
def using_impl(impl: str):
    """Select the ISA for "cpp-<isa>" (restored afterwards) and give the backend name."""
    if impl.startswith("cpp-"):
        import pytest

        if "cpp" not in fastxent.info()["backends"]:
            pytest.skip("the compiled extension fastxent._core is not built")
        from fastxent import _core

        old = _core.isa()
        _core.set_isa(impl[4:])
        try:
            yield "cpp"
        finally:
            _core.set_isa(old)
    elif impl == "numba":
        import pytest

        pytest.importorskip("numba")
        yield "numba"
    else:
        yield impl


@contextlib.contextmanager
def num_threads(n: int):
    old = fastxent.get_num_threads()
    fastxent.set_num_threads(n)
    try:
        yield n
    finally:
        fastxent.set_num_threads(old)


# ----------------------------------------------------------------------------------------------
# Building cases


def make_logits(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def make_labels(rng, lead, classes, dtype=np.int64, ignore_index=None, ignore_frac=0.0):
    """Random class indices with shape `lead`; the first row's label is 0 and the last's C-1;
    a fraction of the others set to ignore_index (when given)."""
    n = int(np.prod(lead, dtype=np.int64))
    labels = rng.integers(0, classes, size=n).astype(np.int64)
    if n:
        labels[0] = 0
        labels[-1] = classes - 1
    if ignore_index is not None and n > 2 and ignore_frac > 0:
        k = max(1, int(round(ignore_frac * n)))
        idx = rng.choice(np.arange(1, n - 1), size=min(k, n - 2), replace=False)
        labels[idx] = ignore_index
    return labels.reshape(lead).astype(dtype)


def make_weight(rng, classes, dtype=np.float64):
    return rng.uniform(0.2, 2.0, size=classes).astype(dtype)


IGNORE_MODES = ["none", "default", "3", "-1"]


def option_grid():
    """pytest params (weighted, eps, reduction); the test loops over inner_options(reduction)
    for the ignore_index mode and the grad_output kind (fewer, fuller tests)."""
    import pytest

    return [
        pytest.param(weighted, eps, reduction, id=f"{'w' if weighted else 'nw'}-eps{eps}-{reduction}")
        for weighted, eps, reduction in itertools.product(
            [False, True], [0.0, 0.1, 1.0], ["mean", "sum", "none"])
    ]


def inner_options(reduction):
    """(ignore, gout) pairs: ignore_index none / default -100 / custom 3 / custom -1, and
    grad_output default or scalar (mean, sum) or scalar or per-row array (none)."""
    gouts = ["scalar", "rows"] if reduction == "none" else ["default", "scalar"]
    return list(itertools.product(IGNORE_MODES, gouts))


@contextlib.contextmanager
def case(description):
    """Prefix an assertion failure inside the block with `description` (the loop's case)."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"[{description}] {exc}") from exc


def option_case(rng, lead, classes, dtype, weighted, ignore, eps, reduction, gout):
    logits = make_logits(rng, lead + (classes,), dtype)
    opts = {"label_smoothing": eps, "reduction": reduction}
    if ignore == "none":
        labels = make_labels(rng, lead, classes)
    elif ignore == "default":
        labels = make_labels(rng, lead, classes, ignore_index=-100, ignore_frac=0.3)
    else:
        value = int(ignore)
        labels = make_labels(rng, lead, classes, ignore_index=value, ignore_frac=0.3)
        opts["ignore_index"] = value
    if weighted:
        opts["weight"] = make_weight(rng, classes)
    if gout == "scalar":
        opts["grad_output"] = -1.75
    elif gout == "rows":
        opts["grad_output"] = rng.uniform(-2, 2, size=lead)
    return logits, labels, opts


# ----------------------------------------------------------------------------------------------
# Oracles


def reference(logits, labels, **opts):
    """fastxent's NumPy reference backend: (loss, grad) for the same options."""
    return fastxent.cross_entropy_with_grad(logits, labels, backend="numpy", **opts)


def torch_cross_entropy(logits, labels, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                        reduction="mean", grad_output=1.0, compute_dtype=np.float64):
    """(loss, grad) from torch.nn.functional.cross_entropy and autograd, in float64 (or
    `compute_dtype`), returned as float64 arrays.

    logits (..., C) are flattened to (N, C); loss is reshaped back for reduction="none".
    grad is d(loss * grad_output)/d logits (grad_output scalar or, for "none", shape (...))."""
    import torch

    x = np.asarray(logits)
    shape = x.shape
    classes = shape[-1]
    xt = torch.tensor(np.array(x, dtype=compute_dtype).reshape(-1, classes), requires_grad=True)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    yt = torch.tensor(y)
    wt = None if weight is None else torch.tensor(np.asarray(weight, dtype=compute_dtype))
    loss = torch.nn.functional.cross_entropy(
        xt, yt, weight=wt, ignore_index=int(ignore_index), label_smoothing=float(label_smoothing),
        reduction=reduction,
    )
    if reduction == "none":
        g = torch.tensor(np.broadcast_to(np.asarray(grad_output, dtype=compute_dtype), shape[:-1])
                         .reshape(-1).copy())
        loss.backward(g)
        loss_np = loss.detach().numpy().reshape(shape[:-1])
    else:
        loss.backward(torch.tensor(float(grad_output), dtype=xt.dtype))
        loss_np = np.float64(loss.detach().numpy())
    grad = xt.grad.numpy().astype(np.float64).reshape(shape)
    loss_np = np.asarray(loss_np, dtype=np.float64)[()]
    return loss_np, grad


def np_rowop(x, axis, op):
    """The float64 NumPy answer: max subtracted first, so huge values are exact."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.max(x, axis=axis, keepdims=True) if x.shape[axis] else np.full(
            tuple(1 if i == axis % x.ndim else s for i, s in enumerate(x.shape)), -np.inf)
        finite_m = np.where(np.isfinite(m), m, 0.0)
        shifted = x - finite_m
        s = np.sum(np.exp(shifted), axis=axis, keepdims=True)
        log_s = np.log(s)
        if op == "logsumexp":
            out = np.squeeze(finite_m + log_s, axis=axis)
            # A slice of all -inf sums to 0: log 0 = -inf (as torch.logsumexp); +inf stays +inf.
            return out
        if op == "log_softmax":
            return shifted - log_s
        return np.exp(shifted - log_s)


# ----------------------------------------------------------------------------------------------
# Tolerances


def tolerances(dtype):
    """(rtol, atol factor) for results computed in `dtype` and compared with float64 ones."""
    if np.dtype(dtype) == F32:
        return 1e-5, 1e-6
    return 1e-10, 1e-12


def _scale(values):
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    return max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0


def assert_loss_close(got, want, dtype, logits=None, err_msg=""):
    """Loss within rtol; absolute slack scaled by the logits' magnitude (lse - z_y cancels)."""
    rtol, atol = tolerances(dtype)
    scale = _scale(logits) if logits is not None else 1.0
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
        rtol=rtol, atol=atol * scale, equal_nan=True, err_msg=err_msg,
    )


def gradient_scale(labels, classes, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                   reduction="mean", grad_output=1.0):
    """The largest per-row factor of the gradient, |grad_output_i| * (w_y (1-eps) + eps/C sum w)
    / denominator: the size of (softmax - one_hot) entries after scaling. Absolute tolerances
    on gradients are relative to it (an entry near 0 comes from 1 - p_y and carries the
    rounding of p_y, which is relative to 1, not to the entry)."""
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    keep = y != ignore_index
    if not keep.any():
        return 1.0
    w = np.ones(classes) if weight is None else np.abs(np.asarray(weight, dtype=np.float64))
    wy = w[np.where(keep, y, 0)][keep]
    g = np.broadcast_to(np.abs(np.asarray(grad_output, dtype=np.float64)), np.shape(labels))
    g = g.reshape(-1)[keep]
    coef = g * (wy * (1 - label_smoothing) + label_smoothing / classes * w.sum())
    if reduction == "mean":
        coef = coef / max(float(wy.sum()), 1e-300)
    scale = float(coef.max()) if coef.size else 1.0
    return scale if np.isfinite(scale) and scale > 0 else 1.0


def assert_grad_close(got, want, dtype, scale=None, err_msg=""):
    """Gradient within rtol, plus absolute slack relative to `scale` (gradient_scale(...)) or,
    when not given, to the gradient's largest entry."""
    rtol, atol = tolerances(dtype)
    if scale is None:
        scale = _scale_grad(want)
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
        rtol=rtol, atol=atol * scale, equal_nan=True, err_msg=err_msg,
    )


def _scale_grad(values):
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    return float(np.max(np.abs(finite))) if finite.size and np.max(np.abs(finite)) > 0 else 1.0


def check_result_types(loss, grad, logits_shape, dtype, reduction):
    dtype = np.dtype(dtype)
    if reduction == "none":
        assert isinstance(loss, np.ndarray)
        assert loss.shape == tuple(logits_shape[:-1])
        assert loss.dtype == dtype
    else:
        assert isinstance(loss, np.generic), type(loss)
        assert np.asarray(loss).dtype == dtype
    if grad is not None:
        assert isinstance(grad, np.ndarray)
        assert grad.shape == tuple(logits_shape)
        assert grad.dtype == dtype
