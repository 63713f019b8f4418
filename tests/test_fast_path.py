"""The small-call fast path (plain options, NumPy float32/float64 rows, cpp backend): same
answers as the full path, and every error still raised by the full path with its message."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import make_labels, make_logits

pytestmark = pytest.mark.skipif("cpp" not in fastxent.info()["backends"],
                                reason="the compiled extension is not built")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_same_answers_as_the_full_path(dtype, reduction, rng):
    x = make_logits(rng, (37, 11), dtype)
    y = make_labels(rng, (37,), 11).astype(np.int32)
    # label_smoothing=0.0 takes the fast path; a tiny z_loss of 0.0 passed as a list does not.
    fast = fastxent.cross_entropy_with_grad(x, y, reduction=reduction, grad_output=2)
    full = fastxent.cross_entropy_with_grad(x, list(y), reduction=reduction, grad_output=2)
    assert fast[0] == full[0] and type(fast[0]) is type(full[0])
    np.testing.assert_array_equal(fast[1], full[1])
    out = np.empty_like(x)
    assert fastxent.cross_entropy_with_grad(x, y, out=out, reduction=reduction)[1] is out
    assert fastxent.cross_entropy(x, y, reduction=reduction) == fastxent.cross_entropy(
        x, list(y), reduction=reduction)


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


@pytest.mark.parametrize("case", ["strided classes", "strided rows", "out strided classes",
                                  "out wrong shape", "one class", "labels too short",
                                  "int8 labels", "big-endian", "empty"])
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
    elif case == "out strided classes":
        make_out = lambda: np.full((9, 32), 7.0, np.float32)[:, ::2]  # noqa: E731
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
