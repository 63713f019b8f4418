"""Bad input: the right exception, a message naming the argument, and the caller's arrays
(logits, labels, weight, out, grad_output, lse) unchanged afterwards, even with inplace=True."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastxent

C = 10
N = 6


@pytest.fixture
def arrays(rng):
    logits = (rng.standard_normal((N, C)) * 2).astype(np.float32)
    labels = rng.integers(0, C, size=N)
    weight = rng.uniform(0.5, 2.0, size=C)
    out = np.full((N, C), 5.0, np.float32)
    return logits, labels, weight, out


@contextlib.contextmanager
def unchanged(*arrays):
    """The arrays hold the same values (and flags) after the block as before it."""
    copies = [np.array(a, copy=True) for a in arrays]
    yield
    for a, before in zip(arrays, copies):
        np.testing.assert_array_equal(a, before, err_msg="a caller's array was modified")


FUNCS = ["cross_entropy", "cross_entropy_with_grad", "cross_entropy_forward", "cross_entropy_backward"]


def call(func, logits, labels, backend, **kw):
    """Call `func`; cross_entropy_backward gets a correctly shaped lse unless given one."""
    f = getattr(fastxent, func)
    if func == "cross_entropy_backward":
        lse = kw.pop("lse", np.zeros(np.shape(labels), np.float32))
        return f(logits, labels, lse, backend=backend, **kw)
    kw.pop("lse", None)
    if func in ("cross_entropy", "cross_entropy_forward"):
        for key in ("out", "inplace", "grad_output"):
            kw.pop(key, None)
    return f(logits, labels, backend=backend, **kw)


def expect_error(exc, pattern, func, logits, labels, backend, *extra, **kw):
    """`func` raises `exc` matching `pattern`, with every array argument left as it was,
    both with and (for the gradient functions) without inplace=True."""
    variants = [{}]
    if func in ("cross_entropy_with_grad", "cross_entropy_backward") and "out" not in kw \
            and "inplace" not in kw and isinstance(logits, np.ndarray) and logits.flags.writeable:
        variants.append({"inplace": True})
    arrays = [a for a in (logits, labels, *extra, *kw.values()) if isinstance(a, np.ndarray)]
    for variant in variants:
        with unchanged(*arrays):
            with pytest.raises(exc, match=pattern):
                call(func, logits, labels, backend, **kw, **variant)


# ----------------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize("func", FUNCS)
def test_label_out_of_range(backend, func, arrays):
    logits, labels, weight, _ = arrays
    labels[3] = 12
    expect_error(ValueError, re.escape("labels[3] = 12"), func, logits, labels, backend, weight=weight)
    labels[3] = 1
    labels[5] = -1
    expect_error(ValueError, re.escape("labels[5] = -1"), func, logits, labels, backend)
    labels[5] = C  # one past the last class
    expect_error(ValueError, re.escape(f"labels[5] = {C}"), func, logits, labels, backend)


@pytest.mark.parametrize("func", FUNCS)
def test_label_out_of_range_nd_index(backend, func, rng):
    logits = rng.standard_normal((2, 3, C))
    labels = rng.integers(0, C, size=(2, 3))
    labels[1, 2] = 12
    expect_error(ValueError, re.escape("labels[1, 2] = 12"), func, logits, labels, backend)


def test_first_bad_label_is_reported(backend, rng):
    logits = rng.standard_normal((5, C))
    labels = np.array([0, 99, 1, -7, 2])
    with pytest.raises(ValueError, match=re.escape("labels[1] = 99")):
        fastxent.cross_entropy_with_grad(logits, labels, backend=backend)


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int8, np.uint32, np.uint64, np.int32])
def test_label_out_of_range_small_dtypes(backend, label_dtype, rng):
    logits = rng.standard_normal((4, C))
    labels = np.array([0, 1, 200 if label_dtype != np.int8 else 100, 2], dtype=label_dtype)
    value = int(labels[2])
    expect_error(ValueError, re.escape(f"labels[2] = {value}"), "cross_entropy_with_grad",
                 logits, labels, backend)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_negative_label_that_is_not_ignore_index(backend, label_dtype, rng):
    """int32 and int64 labels take the vectorised check; a negative label is named by it too,
    also long after the first vector and with ignored rows around it."""
    logits = rng.standard_normal((40, C))
    labels = np.zeros(40, label_dtype)
    labels[::3] = -100
    labels[37] = -5
    expect_error(ValueError, re.escape("labels[37] = -5"), "cross_entropy_with_grad", logits, labels,
                 backend)


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("bad_row", [3, 40000, 69999])
def test_bad_label_in_a_long_call(backend, label_dtype, bad_row, func, rng):
    """Long calls check their labels on every thread (a part each; int64 labels in the kernels'
    own tasks, all of them before a fused or backward task writes): a bad label in any part is
    named, the first one when there are several, and nothing is written."""
    n = 70000
    logits = rng.standard_normal((n, 3)).astype(np.float32)
    labels = rng.integers(0, 3, n).astype(label_dtype)
    labels[::7] = -100
    labels[bad_row] = 3
    if bad_row < 69999:
        labels[69999] = -2  # a later bad label: the first is the one named
    for reduction in ["mean", "none"]:
        expect_error(ValueError, re.escape(f"labels[{bad_row}] = 3"), func, logits, labels, backend,
                     reduction=reduction)


@pytest.mark.parametrize("func", FUNCS)
def test_bad_label_in_long_rows(backend, func, rng):
    """Rows long enough to be split across threads: their labels are checked before any part
    reads a row at its label or writes its gradient."""
    logits = rng.standard_normal((2, 300_000)).astype(np.float32)
    for labels, named in [([0, 300_000], "labels[1] = 300000"), ([-1, 5], "labels[0] = -1"),
                          ([2**40, 0], f"labels[0] = {2**40}")]:
        for weight in [None, np.ones(300_000)]:
            expect_error(ValueError, re.escape(named), func, logits, np.array(labels), backend,
                         weight=weight)


@pytest.mark.parametrize("bad", [3, -1, 2**31, 2**32 + 1, -(2**32) + 1, -(2**63)])
def test_label_scan_every_length_and_place(cpp_isa, bad, rng):
    """The ISAs' label scans (AVX-512: masked 64-bit maxima; AVX2: maxima of the 32-bit halves)
    at every length up to five vectors' worth, ignored rows among the labels: valid labels give
    the reference's mean (over the kept rows), and a bad one at any place is named, also one
    whose low half is a class index (2**32 + 1, -2**32 + 1)."""
    classes = 3
    for n in range(1, 42):
        logits = rng.standard_normal((n, classes)).astype(np.float32)
        labels = np.arange(n) % classes
        labels[1::3] = -100
        got = fastxent.cross_entropy(logits, labels, backend="cpp")
        want = fastxent.cross_entropy(logits, labels, backend="numpy")
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"n={n}")
        for place in range(n):
            wrong = labels.copy()
            wrong[place] = bad
            with pytest.raises(ValueError, match=re.escape(f"labels[{place}] = {bad}")):
                fastxent.cross_entropy(logits, wrong, backend="cpp")


def test_label_scan_all_ignored(cpp_isa):
    """Every label ignored: no bad label (the scans' zeroed lanes are not a class index when
    there are no classes to compare against, but nothing is kept); the mean is NaN, as PyTorch's."""
    for n in (1, 8, 17, 40):
        logits = np.zeros((n, 3), np.float32)
        labels = np.full(n, -100)
        assert np.isnan(fastxent.cross_entropy(logits, labels, backend="cpp"))
        assert fastxent.cross_entropy(logits, labels, reduction="sum", backend="cpp") == 0


def test_huge_uint64_label_is_not_ignore_index(backend, rng):
    """A uint64 label of 2**64 - 1 is out of range; it is not the value -1 (ignore_index=-1)."""
    logits = rng.standard_normal((3, C))
    labels = np.array([0, 2**64 - 1, 1], dtype=np.uint64)
    for ignore_index in (-100, -1):
        expect_error(ValueError, re.escape(f"labels[1] = {2**64 - 1}"), "cross_entropy_with_grad",
                     logits, labels, backend, ignore_index=ignore_index)


def test_ignore_index_that_is_out_of_range_still_allows_in_range(backend, rng):
    logits = rng.standard_normal((3, C))
    labels = np.array([0, 1000, 1])
    loss = fastxent.cross_entropy(logits, labels, ignore_index=1000, reduction="none", backend=backend)
    assert loss[1] == 0
    expect_error(ValueError, re.escape("labels[1] = 1000"), "cross_entropy", logits, labels, backend)


@pytest.mark.parametrize("func", FUNCS)
def test_labels_float_dtype(backend, func, arrays):
    logits, labels, _, _ = arrays
    expect_error(TypeError, "labels", func, logits, labels.astype(np.float64), backend)
    expect_error(TypeError, "labels", func, logits, labels.astype(bool), backend)


@pytest.mark.parametrize("func", FUNCS)
def test_labels_shape_mismatch(backend, func, arrays):
    logits, labels, _, _ = arrays
    expect_error(ValueError, "labels", func, logits, labels[:-1], backend)
    expect_error(ValueError, "labels", func, logits, labels.reshape(2, 3), backend)
    expect_error(ValueError, "labels", func, logits, labels[:, None], backend)


# ----------------------------------------------------------------------------------------------
# Logits


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.longdouble, np.complex64, bool])
def test_logits_bad_dtype(backend, func, dtype, arrays):
    logits, labels, _, _ = arrays
    expect_error(TypeError, "logits", func, logits.astype(dtype), labels, backend)


@pytest.mark.parametrize("func", FUNCS)
def test_logits_scalar_or_no_classes(backend, func):
    expect_error(ValueError, "logits", func, np.float64(1.0), np.array(0), backend)
    expect_error(ValueError, "logits", func, np.zeros((3, 0)), np.zeros(3, np.int64), backend)


# ----------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("reduction", ["avg", "MEAN", None, ""])
def test_bad_reduction(backend, func, reduction, arrays):
    logits, labels, _, _ = arrays
    expect_error(ValueError, "reduction", func, logits, labels, backend, reduction=reduction)


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("name", ["torch", "CPP", "", "numpy "])
def test_bad_backend(func, name, arrays):
    logits, labels, _, _ = arrays
    expect_error(ValueError, "backend", func, logits, labels, name)


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_label_smoothing(backend, func, eps, arrays):
    logits, labels, _, _ = arrays
    expect_error(ValueError, "label_smoothing", func, logits, labels, backend, label_smoothing=eps)


@pytest.mark.parametrize("func", FUNCS)
def test_label_smoothing_not_a_number(backend, func, arrays):
    logits, labels, _, _ = arrays
    expect_error(TypeError, "label_smoothing", func, logits, labels, backend, label_smoothing="0.1x")


@pytest.mark.parametrize("func", FUNCS)
def test_bad_ignore_index(backend, func, arrays):
    logits, labels, _, _ = arrays
    expect_error(TypeError, "ignore_index", func, logits, labels, backend, ignore_index=1.5)


@pytest.mark.parametrize("func", FUNCS)
def test_weight_wrong_length(backend, func, arrays):
    logits, labels, weight, _ = arrays
    expect_error(ValueError, "weight", func, logits, labels, backend, weight=weight[:-1])
    expect_error(ValueError, "weight", func, logits, labels, backend, weight=np.ones(C + 1))
    expect_error(ValueError, "weight", func, logits, labels, backend, weight=np.ones((1, C)))


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_weight_not_finite(backend, func, bad, arrays):
    logits, labels, weight, _ = arrays
    weight[2] = bad
    expect_error(ValueError, "weight", func, logits, labels, backend, weight=weight)


@pytest.mark.parametrize("func", FUNCS)
def test_weight_bad_dtype(backend, func, arrays):
    logits, labels, weight, _ = arrays
    expect_error(TypeError, "weight", func, logits, labels, backend, weight=weight.astype(complex))


# ----------------------------------------------------------------------------------------------
# out= and inplace=


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_out_wrong_shape(backend, func, arrays):
    logits, labels, _, _ = arrays
    for out in (np.zeros((N, C + 1), np.float32), np.zeros((N + 1, C), np.float32),
                np.zeros(N * C, np.float32), np.zeros((1, N, C), np.float32)):
        expect_error(ValueError, "out", func, logits, labels, backend, out=out)


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_out_wrong_dtype(backend, func, arrays):
    logits, labels, _, _ = arrays
    for dtype in (np.float64, np.float16, np.int32):
        expect_error(TypeError, "out", func, logits, labels, backend, out=np.zeros((N, C), dtype))


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_out_read_only(backend, func, arrays):
    logits, labels, _, out = arrays
    out.flags.writeable = False
    expect_error(ValueError, "out", func, logits, labels, backend, out=out)


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_out_not_an_array(backend, func, arrays):
    logits, labels, _, _ = arrays
    expect_error(TypeError, "out", func, logits, labels, backend, out=[[0.0] * C] * N)


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_out_non_contiguous_class_axis(backend, func, arrays):
    logits, labels, _, _ = arrays
    big = np.zeros((N, 2 * C), np.float32)
    expect_error(ValueError, "out", func, logits, labels, backend, out=big[:, ::2])
    expect_error(ValueError, "out", func, logits, labels, backend, out=np.zeros((C, N), np.float32).T)


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_out_overlapping_logits(backend, func, rng):
    buf = rng.standard_normal((N + 1, C)).astype(np.float32)
    logits = buf[:-1]
    labels = rng.integers(0, C, size=N)
    # Shifted by a row, by one element, and a reversed view of the same memory.
    expect_error(ValueError, "out", func, logits, labels, backend, buf, out=buf[1:])
    flat = rng.standard_normal(N * C + 1).astype(np.float32)
    expect_error(ValueError, "out", func, flat[:-1].reshape(N, C), labels, backend, flat,
                 out=flat[1:].reshape(N, C))
    expect_error(ValueError, "out", func, logits, labels, backend, buf, out=logits[::-1])


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_out_and_inplace_together(backend, func, arrays):
    logits, labels, _, out = arrays
    expect_error(ValueError, "out.*inplace|inplace.*out", func, logits, labels, backend,
                 out=out, inplace=True)


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_inplace_read_only(backend, func, arrays):
    logits, labels, _, _ = arrays
    logits.flags.writeable = False
    expect_error(ValueError, "inplace|logits", func, logits, labels, backend, inplace=True)


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_inplace_needs_copy(backend, func, arrays):
    """A logits array whose class axis is not contiguous cannot be written in place."""
    logits, labels, _, _ = arrays
    fortran = np.asfortranarray(logits)
    expect_error(ValueError, "inplace", func, fortran, labels, backend, inplace=True)


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_inplace_not_an_array(backend, func):
    logits = [[1.0, 2.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="inplace"):
        call(func, logits, [0, 1], backend, inplace=True)


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_errors_leave_inplace_logits_untouched(backend, func, arrays):
    """Each of these fails after inplace=True was accepted; logits must still be intact."""
    logits, labels, weight, _ = arrays
    bad = labels.copy()
    bad[2] = 77
    expect_error(ValueError, re.escape("labels[2] = 77"), func, logits, bad, backend, inplace=True)
    expect_error(ValueError, "grad_output", func, logits, labels, backend, inplace=True,
                 reduction="none", grad_output=np.ones(N + 1))
    expect_error(ValueError, "weight", func, logits, labels, backend, inplace=True,
                 weight=np.full(C, np.nan))
    expect_error(ValueError, "label_smoothing", func, logits, labels, backend, inplace=True,
                 label_smoothing=2.0)
    expect_error(ValueError, "backend", func, logits, labels, "gpu", inplace=True)


# ----------------------------------------------------------------------------------------------
# grad_output, lse


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_grad_output_wrong_shape(backend, func, arrays):
    logits, labels, _, _ = arrays
    expect_error(ValueError, "grad_output", func, logits, labels, backend, reduction="none",
                 grad_output=np.ones(N + 1))
    expect_error(ValueError, "grad_output", func, logits, labels, backend, reduction="none",
                 grad_output=np.ones((N, 1)))
    expect_error(TypeError, "grad_output", func, logits, labels, backend, reduction="mean",
                 grad_output=np.ones(N))
    expect_error(TypeError, "grad_output", func, logits, labels, backend, reduction="sum",
                 grad_output="1.0x")


@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "cross_entropy_backward"])
def test_grad_output_bad_dtype(backend, func, arrays):
    logits, labels, _, _ = arrays
    expect_error(TypeError, "grad_output", func, logits, labels, backend, reduction="none",
                 grad_output=np.array(["a"] * N))


def test_lse_wrong_shape(backend, arrays):
    logits, labels, _, _ = arrays
    for lse in (np.zeros(N + 1, np.float32), np.zeros((N, 1), np.float32), np.zeros((), np.float32)):
        expect_error(ValueError, "lse", "cross_entropy_backward", logits, labels, backend, lse=lse)


def test_lse_wrong_dtype(backend, arrays):
    logits, labels, _, _ = arrays
    expect_error(TypeError, "lse", "cross_entropy_backward", logits, labels, backend,
                 lse=np.zeros(N, np.int32))


# ----------------------------------------------------------------------------------------------
# Row operations


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_rowop_errors(backend, op):
    f = getattr(fastxent, op)
    x = np.ones((3, 4))
    with pytest.raises(TypeError, match="x"):
        f(np.ones((3, 4), np.int64), backend=backend)
    with pytest.raises(ValueError, match="axis"):
        f(x, axis=2, backend=backend)
    with pytest.raises(ValueError, match="axis"):
        f(x, axis=-3, backend=backend)
    with pytest.raises(TypeError, match="axis"):
        f(x, axis=1.0, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        f(x, backend="cuda")
    np.testing.assert_array_equal(x, np.ones((3, 4)))


# ----------------------------------------------------------------------------------------------
# Environment variables (fresh interpreters: they are read once)


def run_python(code, **env):
    full_env = dict(os.environ)
    for key in ("FASTXENT_ISA", "FASTXENT_BACKEND", "FASTXENT_NUM_THREADS"):
        full_env.pop(key, None)
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=120)


CALL = """
import numpy as np, fastxent
try:
    fastxent.cross_entropy_with_grad(np.zeros((2, 3), np.float32), np.array([0, 1]))
except Exception as exc:
    print("ERROR", type(exc).__name__, exc)
else:
    print("OK")
"""


@pytest.mark.parametrize("value", ["bogus", "AVX2x", "avx512" if "avx512" not in fastxent.info()["isas"]
                                   else "neon"])
def test_bad_fastxent_isa(value):
    if "cpp" not in fastxent.info()["backends"]:
        pytest.skip("the compiled extension is not built")
    res = run_python(CALL, FASTXENT_ISA=value)
    out = res.stdout + res.stderr
    assert "ERROR ValueError" in res.stdout, out
    assert "FASTXENT_ISA" in res.stdout and value in res.stdout, out


@pytest.mark.parametrize("value", ["torch", "cuda", "NUMPY"])
def test_bad_fastxent_backend(value):
    res = run_python(CALL, FASTXENT_BACKEND=value)
    out = res.stdout + res.stderr
    assert "ERROR ValueError" in res.stdout, out
    assert "FASTXENT_BACKEND" in res.stdout and value in res.stdout, out


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_fastxent_num_threads(value):
    code = """
    import fastxent
    try:
        n = fastxent.get_num_threads()
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc)
    else:
        print("OK", n)
    """
    res = run_python(code, FASTXENT_NUM_THREADS=value)
    assert "ERROR ValueError" in res.stdout, res.stdout + res.stderr
    assert "FASTXENT_NUM_THREADS" in res.stdout
