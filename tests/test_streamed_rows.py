"""Long rows of a large gradient (over 32 MB, rows too long to keep in cache), whose gradient the
C++ kernels write with streaming stores after an aligned peel: the same answer as the
reference, into aligned and misaligned outputs, out= views and inplace."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import FLOAT_DTYPES, assert_grad_close, assert_loss_close, gradient_scale, make_labels


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_streamed_gradient(cpp_isa, threads, dtype, rng):
    # Odd: rows start at every alignment. Long enough that a row's logits and gradient pass
    # kernel_body.h's kCachedRowBytes (4 MiB) even in float16, so the fused pass streams too.
    c = 1_100_003
    n = (34 << 20) // (c * np.dtype(dtype).itemsize) + 1
    logits = rng.standard_normal((n, c)).astype(dtype)
    labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.1)
    opts = {"label_smoothing": 0.1, "reduction": "sum"}
    want_loss, want = fastxent.cross_entropy_with_grad(logits, labels, backend="numpy", **opts)
    scale = gradient_scale(labels, c, **opts)

    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend="cpp", **opts)
    assert_loss_close(loss, want_loss, dtype, logits)
    assert_grad_close(grad, want, dtype, scale)

    # Into a view one element off the buffer's alignment: the peel and tail are scalar.
    big = np.full((n, c + 3), 7.0, dtype)
    out = big[:, 1:c + 1]
    fastxent.cross_entropy_with_grad(logits, labels, out=out, backend="cpp", **opts)
    np.testing.assert_array_equal(out, grad)
    assert np.all(big[:, 0] == 7.0) and np.all(big[:, c + 1:] == 7.0)

    _, lse = fastxent.cross_entropy_forward(logits, labels, backend="cpp", **opts)
    bgrad = fastxent.cross_entropy_backward(logits, labels, lse, backend="cpp", **opts)
    assert_grad_close(bgrad, want, dtype, scale)

    x = logits.copy()
    fastxent.cross_entropy_with_grad(x, labels, inplace=True, backend="cpp", **opts)
    np.testing.assert_array_equal(x, grad)


@pytest.mark.parametrize("options", [
    {"reduction": "mean"},
    {"label_smoothing": 0.1, "reduction": "sum"},
    {"weight": "random", "label_smoothing": 0.05, "reduction": "mean"},
    {"z_loss": 1e-3, "reduction": "none", "grad_output": "rows"},
], ids=["plain", "smoothing", "weighted", "z_loss"])
def test_streamed_cached_rows(cpp_isa, threads, options, rng):
    """Rows that fit in cache, of a gradient over 32 MB: the fused pass keeps each row's exp
    values in a scratch row and streams the scaled gradient out from it. Every row must come
    out whole, the label entries after the streamed stores, with ignored rows (some
    consecutive) and a masked (-inf) block."""
    for dtype in FLOAT_DTYPES:
        c = 8191  # odd: rows start at every alignment
        n = (34 << 20) // (c * np.dtype(dtype).itemsize) + 3
        logits = rng.standard_normal((n, c)).astype(dtype)
        logits[5, :2000] = -np.inf
        labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.1)
        labels[5] = 2500
        labels[6:9] = -100  # consecutive ignored rows between two pending rows
        opts = dict(options)
        if opts.get("weight") == "random":
            opts["weight"] = rng.uniform(0.5, 2.0, c).astype(dtype)
        if opts.get("grad_output") == "rows":
            opts["grad_output"] = rng.uniform(-2, 2, n)
        want_loss, want = fastxent.cross_entropy_with_grad(logits, labels, backend="numpy", **opts)
        scale = gradient_scale(labels, c, **{k: v for k, v in opts.items() if k != "z_loss"})
        loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend="cpp", **opts)
        assert_loss_close(loss, want_loss, dtype, logits)
        assert_grad_close(grad, want, dtype, scale)
        assert np.all(grad[labels == -100] == 0)
        if not opts.get("label_smoothing"):
            assert np.all(grad[5, :2000] == 0)  # p = 0 at -inf (smoothing would add -eps/C w_j)
        # A strided out= view, misaligned by one element.
        big = np.full((n, c + 5), 7.0, dtype)
        out = big[:, 1:c + 1]
        fastxent.cross_entropy_with_grad(logits, labels, out=out, backend="cpp", **opts)
        np.testing.assert_array_equal(out, grad)
        assert np.all(big[:, 0] == 7.0) and np.all(big[:, c + 1:] == 7.0)
