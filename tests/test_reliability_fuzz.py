"""Every public function on arbitrary shapes, strides, dtypes, labels (valid or not), options
and non-finite values: the compiled backend gives the NumPy reference's answer or raises the
same kind of exception, never crashes, and never changes an input buffer (inplace=True only
writes the logits on success). Quick by default; the slow variant runs many more examples:
    python -m pytest -m slow tests/test_reliability_fuzz.py
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastxent

QUICK, THOROUGH = 60, 1500
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
try:
    import ml_dtypes

    DTYPES.append(np.dtype(ml_dtypes.bfloat16))
except ImportError:
    pass
LABEL_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
SPECIAL = [np.inf, -np.inf, np.nan, 0.0, -0.0]
# Tolerances against the float64 reference, per logits dtype (results are in that dtype).
TOL = {"float64": (1e-9, 1e-12), "float32": (2e-4, 2e-5), "float16": (4e-3, 2e-3), "bfloat16": (3e-2, 2e-2)}


@st.composite
def arrays_of_logits(draw):
    """A logits array (any layout: strided, transposed, non-contiguous) and its lead shape."""
    dtype = draw(st.sampled_from(DTYPES))
    lead = tuple(draw(st.lists(st.integers(0, 4), max_size=2)))
    classes = draw(st.integers(1, 40))
    shape = lead + (classes,)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.5, 5.0, 60.0]))
    # Drawn from a larger base then sliced with steps / transposed: arbitrary strides.
    step = draw(st.sampled_from([1, 1, 2]))
    base_shape = tuple(n * step for n in shape)
    base = rng.standard_normal(base_shape) * scale
    if draw(st.booleans()):
        flat = base.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            if flat.size:
                flat[rng.integers(flat.size)] = draw(st.sampled_from(SPECIAL))
    x = base.astype(dtype)[tuple(slice(None, None, step) for _ in shape)]
    if x.ndim >= 2 and draw(st.booleans()):
        # Transposed storage with the same logical shape: a non-unit class stride.
        x = np.ascontiguousarray(np.swapaxes(x, -1, -2)).swapaxes(-1, -2)
    assert x.shape == shape
    return x, lead, classes, rng


@st.composite
def problems(draw):
    x, lead, classes, rng = draw(arrays_of_logits())
    label_dtype = np.dtype(draw(st.sampled_from(LABEL_DTYPES)))
    ignore_index = draw(st.sampled_from([-100, -100, 0, classes - 1, -1, 2**63 - 1]))
    info = np.iinfo(label_dtype)
    high = min(classes + 2, int(info.max))
    labels = rng.integers(max(int(info.min), -2), high + 1, size=lead, endpoint=False)
    if not draw(st.booleans()):  # mostly valid labels, sometimes not
        labels = rng.integers(0, classes, size=lead)
    if labels.size and draw(st.booleans()):
        labels.reshape(-1)[0] = ignore_index if info.min <= ignore_index <= info.max else 0
    labels = labels.astype(label_dtype)
    if labels.ndim and draw(st.booleans()):
        labels = np.repeat(labels, 2, axis=-1)[..., ::2]  # strided labels
    weight = draw(st.sampled_from(["none", "ok", "ok", "zero", "shape", "nan"]))
    weight = {"none": None, "ok": rng.uniform(0.1, 3.0, classes), "zero": np.zeros(classes),
              "shape": np.ones(classes + 1), "nan": np.full(classes, np.nan)}[weight]
    options = dict(
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=draw(st.sampled_from([0.0, 0.0, 0.1, 1.0, -0.5, 2.0])),
        reduction=draw(st.sampled_from(["mean", "sum", "none", "max"])),
    )
    return x, labels, options, rng


def grad_output_for(draw_kind, lead, rng):
    if draw_kind == "scalar":
        return 0.5
    if draw_kind == "rows":
        return rng.standard_normal(lead)
    return rng.standard_normal(lead + (1,))  # the wrong shape


def run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs), None
    except (TypeError, ValueError, OverflowError) as exc:
        return None, exc


def assert_same_outcome(ref, got, dtype):
    """Equal results (NaN where the reference has NaN), or the same exception type."""
    (ref_value, ref_exc), (value, exc) = ref, got
    if ref_exc is not None or exc is not None:
        assert exc is not None and ref_exc is not None, f"reference: {ref_exc!r}, cpp: {exc!r}"
        assert type(exc) is type(ref_exc), f"reference raised {ref_exc!r}, cpp raised {exc!r}"
        assert str(exc), "exceptions must say what is wrong"
        return
    rtol, atol = TOL[np.dtype(dtype).name]
    ref_parts = ref_value if isinstance(ref_value, tuple) else (ref_value,)
    parts = value if isinstance(value, tuple) else (value,)
    for want, have in zip(ref_parts, parts):
        want, have = np.asarray(want, np.float64), np.asarray(have, np.float64)
        assert want.shape == have.shape
        scale = atol * max(1.0, float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0)))
        np.testing.assert_allclose(have, want, rtol=rtol, atol=scale, equal_nan=True)


def snapshot(*arrays):
    return [None if a is None else (np.array(a, copy=True), a.__array_interface__["data"][0]) for a in arrays]


def assert_unchanged(before, *arrays):
    for saved, a in zip(before, arrays):
        if saved is not None:
            copy, _ = saved
            assert copy.tobytes() == np.ascontiguousarray(a).tobytes(), "an input buffer was changed"


def check_cross_entropy(data):
    x, labels, options, rng = data.draw(problems())
    lead = labels.shape
    before = snapshot(x, labels, options["weight"])
    for fn in (fastxent.cross_entropy, fastxent.cross_entropy_forward):
        ref = run(fn, x, labels, backend="numpy", **options)
        assert_same_outcome(ref, run(fn, x, labels, backend="cpp", **options), x.dtype)
    kind = data.draw(st.sampled_from(["scalar", "rows", "bad"]))
    g = grad_output_for(kind, lead, rng)
    ref = run(fastxent.cross_entropy_with_grad, x, labels, grad_output=g, backend="numpy", **options)
    assert_same_outcome(ref, run(fastxent.cross_entropy_with_grad, x, labels, grad_output=g,
                                 backend="cpp", **options), x.dtype)
    # The backward pass from the reference's lse (or from a wrongly shaped one).
    fwd, _ = run(fastxent.cross_entropy_forward, x, labels, backend="numpy", **options)
    lse = fwd[1] if fwd is not None else np.zeros(lead, np.float32)
    if data.draw(st.booleans()):
        lse = np.zeros(lead + (2,), np.float32)
    ref = run(fastxent.cross_entropy_backward, x, labels, lse, grad_output=g, backend="numpy", **options)
    assert_same_outcome(ref, run(fastxent.cross_entropy_backward, x, labels, lse, grad_output=g,
                                 backend="cpp", **options), x.dtype)
    assert_unchanged(before, x, labels, options["weight"])

    # out= and inplace=True: the same gradient, written where asked, nothing else touched.
    out = np.full(x.shape, 7, x.dtype)
    got = run(fastxent.cross_entropy_with_grad, x, labels, grad_output=g, out=out, backend="cpp", **options)
    assert_same_outcome(ref_grad := run(fastxent.cross_entropy_with_grad, x, labels, grad_output=g,
                                        backend="numpy", **options), got, x.dtype)
    if got[1] is None:
        assert got[0][1] is out
    else:
        assert (out.view(np.uint8) == np.full(x.shape, 7, x.dtype).view(np.uint8)).all(), \
            "a failed call wrote to out="
    assert_unchanged(before, x, labels, options["weight"])
    target = x.copy()
    got = run(fastxent.cross_entropy_with_grad, target, labels, grad_output=g, inplace=True,
              backend="cpp", **options)
    assert_same_outcome(ref_grad, got, x.dtype)
    if got[1] is not None:
        assert target.tobytes() == x.tobytes(), "a failed inplace call changed the logits"


def check_rowops(data):
    x, _, _, _ = data.draw(arrays_of_logits())
    axis = data.draw(st.integers(-x.ndim - 1, x.ndim))
    before = snapshot(x)
    for fn in (fastxent.softmax, fastxent.log_softmax, fastxent.logsumexp):
        ref = run(fn, x, axis, backend="numpy")
        assert_same_outcome(ref, run(fn, x, axis, backend="cpp"), x.dtype)
    assert_unchanged(before, x)


SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@settings(max_examples=QUICK, **SETTINGS)
@given(st.data())
def test_cross_entropy_functions_match_reference_or_raise(data):
    check_cross_entropy(data)


@settings(max_examples=QUICK, **SETTINGS)
@given(st.data())
def test_row_functions_match_reference_or_raise(data):
    check_rowops(data)


@pytest.mark.slow
@settings(max_examples=THOROUGH, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_cross_entropy_functions_thorough(data):
    check_cross_entropy(data)


@pytest.mark.slow
@settings(max_examples=THOROUGH, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_row_functions_thorough(data):
    check_rowops(data)
