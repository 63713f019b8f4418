"""The small-call fast path (plain options, NumPy float32/float64 rows, cpp backend): same
answers as the full path, and every error still raised by the full path with its message."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import make_labels, make_logits

pytestmark = pytest.mark.skipif("cpp" not in fastxent.info()["backends"],
                                reason="the compiled extension is not built")


def assert_same_loss(fast, full):
    assert type(fast) is type(full)
    if isinstance(full, np.ndarray):  # "none": per-row losses
        assert fast.dtype == full.dtype and fast.shape == full.shape and fast.flags.writeable
        np.testing.assert_array_equal(fast, full)
    else:
        assert fast == full


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_same_answers_as_the_full_path(dtype, reduction, rng):
    x = make_logits(rng, (37, 11), dtype)
    y = make_labels(rng, (37,), 11).astype(np.int32)
    # plain labels take the fast path; the same labels as a list do not.
    fast = fastxent.cross_entropy_with_grad(x, y, reduction=reduction, grad_output=2)
    full = fastxent.cross_entropy_with_grad(x, list(y), reduction=reduction, grad_output=2)
    assert_same_loss(fast[0], full[0])
    np.testing.assert_array_equal(fast[1], full[1])
    out = np.empty_like(x)
    assert fastxent.cross_entropy_with_grad(x, y, out=out, reduction=reduction)[1] is out
    assert_same_loss(fastxent.cross_entropy(x, y, reduction=reduction),
                     fastxent.cross_entropy(x, list(y), reduction=reduction))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_forward_and_backward_same_answers_as_the_full_path(dtype, reduction, rng):
    x = make_logits(rng, (37, 11), dtype)
    y = make_labels(rng, (37,), 11)
    loss, lse = fastxent.cross_entropy_forward(x, y, reduction=reduction)
    full_loss, full_lse = fastxent.cross_entropy_forward(x, list(y), reduction=reduction)
    assert_same_loss(loss, full_loss)
    assert lse.dtype == full_lse.dtype == dtype and lse.shape == (37,) and lse.flags.writeable
    np.testing.assert_array_equal(lse, full_lse)
    # lse as a list takes the full path.
    full_grad = fastxent.cross_entropy_backward(x, y, list(lse), reduction=reduction, grad_output=3)
    grad = fastxent.cross_entropy_backward(x, y, lse, reduction=reduction, grad_output=3)
    assert grad.dtype == dtype and grad.shape == x.shape
    np.testing.assert_array_equal(grad, full_grad)
    out = np.empty_like(x)
    assert fastxent.cross_entropy_backward(x, y, lse, out=out, reduction=reduction, grad_output=3) is out
    np.testing.assert_array_equal(out, full_grad)
    work = x.copy()
    assert fastxent.cross_entropy_backward(work, y, lse, inplace=True, reduction=reduction,
                                           grad_output=3) is work
    np.testing.assert_array_equal(work, full_grad)


def test_backward_lse_the_fast_path_cannot_read(rng):
    """lse of another dtype, not contiguous or not one per row: _core hands the call back
    untouched, and the full path converts it or names the problem."""
    from fastxent import _core

    x = make_logits(rng, (6, 5), np.float32)
    y = make_labels(rng, (6,), 5)
    _, lse = fastxent.cross_entropy_forward(x, y)
    want = fastxent.cross_entropy_backward(x, y, list(lse))
    spaced = np.zeros(12, np.float32)
    spaced[::2] = lse
    for case, other in {"float64": lse.astype(np.float64), "strided": spaced[::2],
                        "2-D": lse[:, None], "short": lse[:5]}.items():
        out = np.full_like(x, 7.0)
        assert _core.fast_cross_entropy(2, x, y, 1, 1.0, out, other) is None, case
        assert (out == 7.0).all(), case
        if case in ("float64", "strided"):
            np.testing.assert_allclose(fastxent.cross_entropy_backward(x, y, other), want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"lse must have shape \(6,\)"):
        fastxent.cross_entropy_backward(x, y, lse[:5])
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match=r"labels\[2\] = 9 is not a class index"):
        fastxent.cross_entropy_backward(x, np.array([0, 1, 9, 2, 3, 4]), lse, out=out)
    assert (out == 7.0).all()


def test_errors_keep_their_messages_and_buffers():
    x = np.zeros((4, 5), np.float32)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match=r"labels\[2\] = 5 is not a class index"):
        fastxent.cross_entropy_with_grad(x, np.array([0, 1, 5, 2]), out=out)
    assert (out == 7.0).all()
    with pytest.raises(ValueError, match=r"labels\[1\] = -3"):
        fastxent.cross_entropy(x, np.array([0, -3, 1, 1]))
    big = np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match="out overlaps logits"):
        fastxent.cross_entropy_with_grad(big[:4], np.zeros(4, np.int64), out=big[1:])
    assert (big == 0).all()


def test_kernels_refuse_a_partly_overlapping_gradient():
    """_core itself refuses it (the fast path relies on that), and allows the exact alias."""
    from fastxent import _core

    big = np.zeros((5, 5), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="overlaps"):
        _core.cross_entropy(1, big[:4], y, None, -100, 0.0, 1, 1.0, None, None, None, big[1:], -1,
                            None, 0.0, 0.0, None, None)
    _core.cross_entropy(1, big[:4], y, None, -100, 0.0, 1, 1.0, None, None, None, big[:4], -1,
                        None, 0.0, 0.0, None, None)
    assert big[4].tolist() == [0.0] * 5 and big[0, 0] != 0.0


@pytest.mark.parametrize("case", ["strided classes", "strided rows", "reversed rows",
                                  "out strided classes", "out reversed rows", "out wrong shape",
                                  "one class", "labels too short", "int8 labels", "big-endian",
                                  "empty"])
def test_what_the_fast_path_hands_to_core_comes_out_right(case, rng):
    """The fast path leaves these checks to _core; each case is answered exactly as the full path
    answers it (a NumPy scalar grad_output forces the full path), or refused with its message,
    the out buffer untouched."""
    import re

    x = make_logits(rng, (9, 16), np.float32)
    y = make_labels(rng, (9,), 8)
    make_out = lambda: None  # noqa: E731
    if case == "strided classes":
        x = x[:, ::2]
    elif case == "strided rows":
        x = x[::2, :8]
        y = y[:5]
    elif case == "reversed rows":  # negative row strides, labels too
        x, y = x[::-1], y[::-1]
    elif case == "out strided classes":
        make_out = lambda: np.full((9, 32), 7.0, np.float32)[:, ::2]  # noqa: E731
    elif case == "out reversed rows":
        make_out = lambda: np.full((18, 16), 7.0, np.float32)[::-2]  # noqa: E731
    elif case == "out wrong shape":
        make_out = lambda: np.full((9, 15), 7.0, np.float32)  # noqa: E731
    elif case == "one class":
        x = x[:, :1]
        y = np.zeros(9, np.int64)
    elif case == "labels too short":
        y = y[:8]
    elif case == "int8 labels":
        y = y.astype(np.int8)
    elif case == "big-endian":
        x = x.astype(">f4")
    elif case == "empty":
        x, y = x[:0], y[:0]
    out, full_out = make_out(), make_out()
    try:
        want = fastxent.cross_entropy_with_grad(x, y, reduction="sum", out=full_out,
                                                grad_output=np.float64(1.0))
    except (ValueError, TypeError) as error:
        with pytest.raises(type(error), match=re.escape(str(error))):
            fastxent.cross_entropy_with_grad(x, y, reduction="sum", out=out)
        if out is not None:
            assert (out == 7.0).all()
        return
    loss, grad = fastxent.cross_entropy_with_grad(x, y, reduction="sum", out=out)
    assert loss == want[0]
    np.testing.assert_array_equal(grad, want[1])
    if out is not None:
        assert grad is out
    assert fastxent.cross_entropy(x, y, reduction="sum") == want[0]


def _full_path_forbidden(monkeypatch):
    """Makes the full path fail, so that a call that passes went through the fast path."""
    from fastxent import _api

    def refuse(*args, **kwargs):
        raise AssertionError("the call left the fast path")

    monkeypatch.setattr(_api, "make_problem", refuse)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8, np.intp])
def test_plain_calls_stay_on_the_fast_path(dtype, label_dtype, rng, monkeypatch):
    x = make_logits(rng, (7, 10), dtype)
    y = make_labels(rng, (7,), 10).astype(label_dtype)
    want_loss, want_grad = fastxent.cross_entropy_with_grad(x, list(y))
    _full_path_forbidden(monkeypatch)
    loss, grad = fastxent.cross_entropy_with_grad(x, y)
    assert type(loss) is dtype and loss == want_loss
    assert grad.dtype == dtype and grad.shape == x.shape and grad.flags.c_contiguous
    np.testing.assert_array_equal(grad, want_grad)
    out = np.empty_like(x)
    loss_out, grad_out = fastxent.cross_entropy_with_grad(x, y, out=out)
    assert grad_out is out and loss_out == want_loss
    assert fastxent.cross_entropy(x, y) == want_loss
    assert type(fastxent.cross_entropy(x, y)) is dtype
    row_losses = fastxent.cross_entropy(x, y, reduction="none")
    assert row_losses.dtype == dtype and row_losses.shape == (7,)
    assert row_losses.sum(dtype=np.float64) == pytest.approx(7 * want_loss, rel=1e-6)


def test_a_float32_loss_past_its_range_is_inf_without_a_warning(monkeypatch):
    import warnings

    x = np.array([[3e38, -3e38]], np.float32)  # loss 6e38 in double, past float32's range
    _full_path_forbidden(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = fastxent.cross_entropy_with_grad(x, np.array([1]), reduction="sum")
        assert type(loss) is np.float32 and loss == np.inf
        assert fastxent.cross_entropy(-x, np.array([0]), reduction="sum") == np.inf
    np.testing.assert_array_equal(grad, [[1.0, -1.0]])


def test_core_hands_back_what_it_cannot_read_as_it_is(rng):
    """fast_cross_entropy answers None (the caller then takes the full path) for arrays the
    kernels cannot read in place, and for options it does not take; it never writes then."""
    from fastxent import _core

    x = make_logits(rng, (4, 6), np.float32)
    y = np.array([0, 5, 2, 1])

    class Sub(np.ndarray):
        pass

    misaligned = np.zeros(4 * 6 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(4, 6)
    assert not misaligned.flags.aligned
    pairs = np.zeros((4, 6), [("a", np.float32), ("b", np.int8)])
    refused = {
        "subclass logits": (x.view(Sub), y, None),
        "subclass labels": (x, y.view(Sub), None),
        "float16 logits": (x.astype(np.float16), y, None),
        "misaligned logits": (misaligned, y, None),
        "byte-swapped logits": (x.astype(">f4"), y, None),
        "odd byte strides": (pairs["a"], y, None),
        "3-D logits": (x[None], y, None),
        "2-D labels": (x, y[:, None], None),
        "bool labels": (x, y.astype(bool), None),
        "float labels": (x, y.astype(np.float32), None),
        "float64 out for float32 logits": (x, y, np.zeros((4, 6), np.float64)),
        "read-only out": (x, y, np.zeros((4, 6), np.float32)),
        "out not an array": (x, y, [[0.0] * 6] * 4),
    }
    refused["read-only out"][2].flags.writeable = False
    for case, (logits, labels, out) in refused.items():
        before = None if not isinstance(out, np.ndarray) else out.copy()
        assert _core.fast_cross_entropy(1, logits, labels, 1, 1.0, out) is None, case
        if before is not None:
            np.testing.assert_array_equal(out, before)
    assert _core.fast_cross_entropy(2, x, y, 1, 1.0, np.empty_like(x)) is None  # backward, no lse
    assert _core.fast_cross_entropy(4, x, y, 1, 1.0, None) is None  # no such mode
    assert _core.fast_cross_entropy(0, x, y, 3, 1.0, None) is None  # no such reduction
    assert isinstance(_core.fast_cross_entropy(0, x, y, 2, 1.0, None), np.float32)
    row_losses = _core.fast_cross_entropy(0, x, y, 0, 1.0, None)  # reduction="none"
    assert row_losses.dtype == np.float32 and row_losses.shape == (4,)


def test_core_keeps_reference_counts(rng):
    """No reference leaked or stolen: the out buffer, the logits, the dtype of the scalars."""
    import sys

    from fastxent import _core

    x = make_logits(rng, (3, 5), np.float32)
    y = np.array([0, 4, 2])
    out = np.empty_like(x)
    dtype = np.dtype(np.float32)
    lse = np.zeros(3, np.float32)
    counts = [sys.getrefcount(v) for v in (x, y, out, dtype, lse)]
    for _ in range(1000):
        _core.fast_cross_entropy(1, x, y, 1, 1.0, out)
        _core.fast_cross_entropy(1, x, y, 1, 1.0, None)
        _core.fast_cross_entropy(0, x, y, 1, 1.0, None)
        _core.fast_cross_entropy(1, x, y, 0, 1.0, None)
        _core.fast_cross_entropy(3, x, y, 1, 1.0, None)
        _core.fast_cross_entropy(2, x, y, 1, 1.0, out, lse)
        _core.fast_cross_entropy(2, x, y, 1, 1.0, None, lse)
    assert [sys.getrefcount(v) for v in (x, y, out, dtype, lse)] == counts
    loss, grad = _core.fast_cross_entropy(1, x, y, 1, 1.0, None)
    assert sys.getrefcount(grad) == 2  # this name and the call's argument: the array is ours
    row_losses, grad = _core.fast_cross_entropy(1, x, y, 0, 1.0, None)
    assert sys.getrefcount(row_losses) == 2 and sys.getrefcount(grad) == 2
    loss, new_lse = _core.fast_cross_entropy(3, x, y, 1, 1.0, None)
    assert sys.getrefcount(new_lse) == 2
    grad = _core.fast_cross_entropy(2, x, y, 1, 1.0, None, new_lse)
    assert sys.getrefcount(grad) == 2


def test_the_fast_path_follows_the_backend(rng, monkeypatch):
    from fastxent import _backends

    x = make_logits(rng, (3, 5), np.float64)
    y = np.array([0, 4, 2])
    assert _backends.fast_core("numpy") is None
    assert _backends.fast_core("cpp") is not None
    with pytest.raises(ValueError, match="backend must be"):
        fastxent.cross_entropy_with_grad(x, y, backend="fortran")
    monkeypatch.setenv("FASTXENT_BACKEND", "numpy")
    _backends.reset()
    try:
        assert _backends.fast_core("auto") is None
        reference = fastxent.cross_entropy_with_grad(x, y)
    finally:
        monkeypatch.delenv("FASTXENT_BACKEND")
        _backends.reset()
    assert _backends.fast_core("auto") is not None
    fast = fastxent.cross_entropy_with_grad(x, y)
    np.testing.assert_allclose(fast[0], reference[0], rtol=1e-12)
    np.testing.assert_allclose(fast[1], reference[1], rtol=1e-12, atol=1e-17)
