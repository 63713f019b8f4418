"""Every fast backend (cpp per ISA, numba) against the NumPy reference backend: shapes, dtypes,
options, label dtypes, leading dimensions, strided and non-contiguous inputs, thread paths."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastxent
from _helpers import (
    FLOAT_DTYPES,
    LABEL_DTYPES,
    assert_grad_close,
    assert_loss_close,
    check_result_types,
    make_labels,
    make_logits,
    make_weight,
    case,
    inner_options,
    option_case,
    option_grid,
    tolerances,
    gradient_scale,
)


def check_all_modes(logits, labels, backend, **opts):
    """cross_entropy, cross_entropy_with_grad, cross_entropy_forward and cross_entropy_backward
    of `backend` against the reference backend with the same options."""
    dtype = np.asarray(logits).dtype
    shape = np.shape(logits)
    reduction = opts.get("reduction", "mean")
    grad_opts = dict(opts)
    fwd_opts = {k: v for k, v in opts.items() if k != "grad_output"}

    want_loss, want_grad = fastxent.cross_entropy_with_grad(logits, labels, backend="numpy", **grad_opts)
    gscale = gradient_scale(labels, shape[-1], **grad_opts)
    _, want_lse = fastxent.cross_entropy_forward(logits, labels, backend="numpy", **fwd_opts)

    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend, **grad_opts)
    check_result_types(loss, grad, shape, dtype, reduction)
    assert_loss_close(loss, want_loss, dtype, logits, err_msg="fused loss")
    assert_grad_close(grad, want_grad, dtype, gscale, err_msg="fused grad")

    loss_only = fastxent.cross_entropy(logits, labels, backend=backend, **fwd_opts)
    check_result_types(loss_only, None, shape, dtype, reduction)
    assert_loss_close(loss_only, want_loss, dtype, logits, err_msg="cross_entropy loss")

    floss, lse = fastxent.cross_entropy_forward(logits, labels, backend=backend, **fwd_opts)
    check_result_types(floss, None, shape, dtype, reduction)
    assert_loss_close(floss, want_loss, dtype, logits, err_msg="forward loss")
    assert lse.shape == tuple(shape[:-1])
    assert_loss_close(lse, want_lse, dtype, logits, err_msg="forward lse")

    bgrad = fastxent.cross_entropy_backward(logits, labels, lse, backend=backend, **grad_opts)
    check_result_types(floss, bgrad, shape, dtype, reduction)
    # From the same saved lse the reference gives the same gradient...
    want_bgrad = fastxent.cross_entropy_backward(logits, labels, lse, backend="numpy", **grad_opts)
    assert_grad_close(bgrad, want_bgrad, dtype, gscale, err_msg="backward grad")
    # ...which differs from the fused one only by the rounding of lse to the logits' dtype:
    # no more than the reference's own backward differs from its fused gradient.
    rtol, atol = tolerances(dtype)
    intrinsic = np.abs(want_bgrad.astype(np.float64) - want_grad.astype(np.float64))
    slack = 2 * np.nan_to_num(intrinsic) + atol * gscale + rtol * np.abs(want_grad)
    diff = np.abs(bgrad.astype(np.float64) - want_grad.astype(np.float64))
    same_nan = np.isnan(bgrad) == np.isnan(want_grad)
    assert same_nan.all(), "backward vs fused: NaN in different places"
    assert np.all((diff <= slack) | np.isnan(want_grad) | (bgrad == want_grad)), (
        f"backward vs fused: max excess {np.nanmax(diff - slack)}")
    return loss, grad


# ----------------------------------------------------------------------------------------------
# Batch sizes x class counts

BATCHES = [0, 1, 3, 64, 4096]
CLASSES = [1, 2, 10, 1000, 32000, 128256]
DEFAULT_MAX = 400_000       # N*C above this is marked slow
SLOW_MAX = 1 << 24          # N*C above this is not run at all (memory)


def _shape_params():
    params = []
    for n, c in itertools.product(BATCHES, CLASSES):
        if n * c > SLOW_MAX:
            continue
        marks = [pytest.mark.slow] if n * c > DEFAULT_MAX else []
        params.append(pytest.param(n, c, marks=marks, id=f"N{n}-C{c}"))
    return params


OPTION_SETS = {
    "plain": {},
    "rich-mean": {"weight": True, "ignore": 0.25, "label_smoothing": 0.1, "reduction": "mean",
                  "grad_output": 0.75},
    "rich-none": {"weight": True, "ignore": 0.25, "label_smoothing": 0.1, "reduction": "none",
                  "grad_output": "rows"},
}


def build_options(rng, spec, lead, classes):
    """(labels, options) from an OPTION_SETS entry."""
    spec = dict(spec)
    ignore = spec.pop("ignore", 0.0)
    opts = {}
    labels = make_labels(rng, lead, classes, ignore_index=-100, ignore_frac=ignore)
    if spec.pop("weight", False):
        opts["weight"] = make_weight(rng, classes)
    g = spec.pop("grad_output", None)
    if isinstance(g, str):
        opts["grad_output"] = rng.uniform(-2, 2, size=lead)
    elif g is not None:
        opts["grad_output"] = g
    opts.update(spec)
    return labels, opts


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("n", "c"), _shape_params())
def test_shapes(fast_backend, threads, n, c, dtype, rng):
    logits = make_logits(rng, (n, c), dtype)
    for options, spec in OPTION_SETS.items():
        with case(options):
            labels, opts = build_options(rng, spec, (n,), c)
            check_all_modes(logits, labels, fast_backend, **opts)


# ----------------------------------------------------------------------------------------------
# Every option combination


@pytest.mark.parametrize(("weighted", "eps", "reduction"), option_grid())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_options(fast_backend, dtype, weighted, eps, reduction, rng):
    for ignore, gout in inner_options(reduction):
        with case(f"ignore={ignore} grad_output={gout}"):
            logits, labels, opts = option_case(rng, (37,), 50, dtype, weighted, ignore, eps,
                                               reduction, gout)
            check_all_modes(logits, labels, fast_backend, **opts)


# ----------------------------------------------------------------------------------------------
# Label dtypes


@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_label_dtypes(fast_backend, dtype, label_dtype, rng):
    c = 100
    logits = make_logits(rng, (40, c), dtype)
    labels = make_labels(rng, (40,), c, dtype=label_dtype)
    assert labels.dtype == label_dtype
    loss, grad = check_all_modes(logits, labels, fast_backend, reduction="none")
    # Same answer as int64 labels.
    loss64, grad64 = fastxent.cross_entropy_with_grad(
        logits, labels.astype(np.int64), backend=fast_backend, reduction="none")
    np.testing.assert_array_equal(loss, loss64)
    np.testing.assert_array_equal(grad, grad64)
    # An ignored row in the label dtype (ignore_index representable in it).
    labels[5] = 7
    check_all_modes(logits, labels, fast_backend, ignore_index=7, weight=make_weight(rng, c))
    if np.dtype(label_dtype).kind == "i":
        labels[6] = -100
        check_all_modes(logits, labels, fast_backend, label_smoothing=0.2)


def test_labels_at_bounds(fast_backend, rng):
    """Every label 0 or every label C-1 (the first and last class of a vector-width row)."""
    for c in (1, 7, 8, 16, 33, 1000):
        logits = make_logits(rng, (9, c), np.float32)
        for value in (0, c - 1):
            labels = np.full(9, value)
            check_all_modes(logits, labels, fast_backend, reduction="none", label_smoothing=0.1)
            check_all_modes(logits, labels, fast_backend)


# ----------------------------------------------------------------------------------------------
# Leading dimensions, strided rows, non-contiguous class axis


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_leading_dims(fast_backend, dtype, reduction, rng):
    c = 19
    logits = make_logits(rng, (2, 3, c), dtype)
    labels = make_labels(rng, (2, 3), c, ignore_index=-100, ignore_frac=0.2)
    opts = {"reduction": reduction, "weight": make_weight(rng, c), "label_smoothing": 0.05}
    if reduction == "none":
        opts["grad_output"] = rng.uniform(0.5, 2, size=(2, 3))
    loss, grad = check_all_modes(logits, labels, fast_backend, **opts)
    # Same as the flattened problem.
    flat_opts = dict(opts)
    if reduction == "none":
        flat_opts["grad_output"] = opts["grad_output"].reshape(-1)
    floss, fgrad = fastxent.cross_entropy_with_grad(
        logits.reshape(-1, c), labels.reshape(-1), backend=fast_backend, **flat_opts)
    np.testing.assert_array_equal(np.reshape(loss, -1), np.reshape(floss, -1))
    np.testing.assert_array_equal(grad.reshape(-1, c), fgrad)


def test_one_dim_logits(fast_backend, rng):
    """logits of shape (C,) with a 0-d label: a single row, loss shape () for "none"."""
    logits = make_logits(rng, (12,), np.float64)
    labels = np.array(4)
    loss, grad = check_all_modes(logits, labels, fast_backend, reduction="none")
    assert np.shape(loss) == ()
    assert grad.shape == (12,)


def _layouts(rng, n, c, dtype):
    base = make_logits(rng, (n, c), dtype)
    big = make_logits(rng, (n, c + 13), dtype)
    big[:, :c] = base
    every_other = make_logits(rng, (2 * n, c), dtype)
    every_other[::2] = base
    transposed = np.ascontiguousarray(base.T).T
    fortran = np.asfortranarray(base)
    reversed_rows = np.ascontiguousarray(base[::-1])[::-1]
    return base, {
        "sliced-columns": big[:, :c],
        "every-other-row": every_other[::2],
        "transposed": transposed,
        "fortran": fortran,
        "reversed-rows": reversed_rows,
    }


@pytest.mark.parametrize("layout", ["sliced-columns", "every-other-row", "transposed", "fortran",
                                    "reversed-rows"])
@pytest.mark.parametrize("c", [1, 10, 300, 5000])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_strided_logits(fast_backend, dtype, c, layout, rng):
    n = 11
    base, layouts = _layouts(rng, n, c, dtype)
    x = layouts[layout]
    np.testing.assert_array_equal(x, base)
    labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.2)
    opts = {"weight": make_weight(rng, c), "label_smoothing": 0.1}
    before = x.copy()
    loss, grad = check_all_modes(x, labels, fast_backend, **opts)
    np.testing.assert_array_equal(x, before)  # not written
    want_loss, want_grad = fastxent.cross_entropy_with_grad(base, labels, backend=fast_backend, **opts)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)


def test_strided_labels(fast_backend, rng):
    c = 30
    logits = make_logits(rng, (20, c), np.float32)
    labels = make_labels(rng, (20,), c, ignore_index=-100, ignore_frac=0.2)
    big = np.full(40, 10**6, dtype=np.int32)  # out-of-range values between the labels
    big[::2] = labels
    check_all_modes(logits, big[::2], fast_backend, reduction="none")
    rev = np.ascontiguousarray(labels[::-1])[::-1]
    check_all_modes(logits, rev, fast_backend)


def test_python_lists(fast_backend):
    logits = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    labels = [2, 0]
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=fast_backend)
    want_loss, want_grad = fastxent.cross_entropy_with_grad(np.array(logits), np.array(labels),
                                                            backend="numpy")
    assert_loss_close(loss, want_loss, np.float64)
    assert_grad_close(grad, want_grad, np.float64)


# ----------------------------------------------------------------------------------------------
# Thread paths of the C++ driver: serial (N*C < 32768 or 1 thread), rows split across threads
# (N*C >= 32768), and one long row split across threads (N < 2*threads and C >= 16384).

THREAD_SHAPES = [
    pytest.param(5, 100, id="serial-5x100"),
    pytest.param(64, 1000, id="rows-64x1000"),
    pytest.param(4096, 10, id="rows-4096x10"),
    pytest.param(1, 50000, id="split-1x50000"),
    pytest.param(3, 20000, id="split-3x20000"),
    pytest.param(2, 16384, id="split-2x16384"),
    pytest.param(1, 16383, id="nosplit-1x16383"),
    pytest.param(7, 16384, id="rows-7x16384"),
]


THREAD_OPTIONS = dict(OPTION_SETS, **{
    "weighted-sum": {"weight": True, "reduction": "sum", "grad_output": 3.0},
    "smooth-only": {"label_smoothing": 0.3, "reduction": "none", "grad_output": "rows"},
})


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("n", "c"), THREAD_SHAPES)
def test_thread_paths(fast_backend, threads, n, c, dtype, rng):
    logits = make_logits(rng, (n, c), dtype)
    for options, spec in THREAD_OPTIONS.items():
        with case(options):
            labels, opts = build_options(rng, spec, (n,), c)
            loss, grad = check_all_modes(logits, labels, fast_backend, **opts)
            # The same answer whatever the thread count (each path computes the same sums).
            old = fastxent.get_num_threads()
            fastxent.set_num_threads(3 - threads)
            try:
                loss2, grad2 = fastxent.cross_entropy_with_grad(logits, labels, backend=fast_backend,
                                                                **opts)
            finally:
                fastxent.set_num_threads(old)
            assert_loss_close(loss2, loss, dtype, logits)
            assert_grad_close(grad2, grad, dtype, gradient_scale(labels, c, **opts))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_ignored_rows_in_split_path(fast_backend, threads, dtype, rng):
    """Few long rows, some ignored: ignored rows get zero loss and zero gradient."""
    c = 40000
    logits = make_logits(rng, (3, c), dtype)
    labels = np.array([5, -100, c - 1])
    check_all_modes(logits, labels, fast_backend, reduction="none")
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=fast_backend,
                                                  label_smoothing=0.1)
    assert np.all(grad[1] == 0)
    check_all_modes(logits, labels, fast_backend, label_smoothing=0.1, weight=make_weight(rng, c))
