"""fastxent.linear_cross_entropy(_with_grad) and fastxent.torch.linear_cross_entropy against the
unfused computation in float64: logits = hidden @ weight.T + bias, the reference backend's loss
and logits gradient g, then d_hidden = g @ weight, d_weight = g.T @ hidden, d_bias = g.sum(0)."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from fastxent import _linear, _reference
from fastxent._checks import check_grad_output, make_problem

N, H, V = 37, 12, 45
OPTIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(label_smoothing=0.2),
    dict(weight=True),
    dict(weight=True, label_smoothing=0.1, reduction="sum"),
    dict(ignore_index=5),
    dict(reduction="none", weight=True, label_smoothing=0.3),
    dict(z_loss=1e-2, softcap=5.0),
    dict(z_loss=1e-2, weight=True, reduction="sum", ignore_index=5),
    dict(softcap=2.0, label_smoothing=0.1, reduction="none"),
]


def test_z_loss_with_weights_and_mean_is_refused(rng):
    hidden, weight, _, labels, _, _ = _case(rng, {})
    with pytest.raises(ValueError, match="z_loss with class weights"):
        fastxent.linear_cross_entropy_with_grad(hidden, weight, labels, z_loss=0.1,
                                                weight=np.ones(weight.shape[0]))


def _case(rng, options, dtype=np.float32, bias=True):
    hidden = rng.normal(size=(N, H)).astype(dtype)
    weight = (rng.normal(size=(V, H)) * 0.7).astype(dtype)
    b = rng.normal(size=V).astype(dtype) if bias else None
    labels = rng.integers(0, V, N)
    ignore = options.get("ignore_index", -100)
    labels[[2, 11, 30]] = ignore
    opts = dict(options)
    if opts.get("weight"):
        opts["weight"] = rng.uniform(0.2, 2.0, V)
    reduction = opts.get("reduction", "mean")
    grad_output = rng.normal(size=N) if reduction == "none" else 1.3
    return hidden, weight, b, labels, opts, grad_output


def _unfused(hidden, weight, bias, labels, opts, grad_output):
    """(loss, d_hidden, d_weight, d_bias) in float64 from the full logits."""
    h, w = hidden.astype(np.float64), weight.astype(np.float64)
    z = h @ w.T + (0.0 if bias is None else bias.astype(np.float64))
    problem = make_problem(z, labels, opts.get("weight"), opts.get("ignore_index", -100),
                           opts.get("label_smoothing", 0.0), opts.get("reduction", "mean"),
                           opts.get("z_loss", 0.0), opts.get("softcap"))
    g = np.empty_like(z)
    loss = _reference.fused(problem, *check_grad_output(grad_output, problem), g)[0]
    return loss, g @ w, g.T @ h, g.sum(axis=0)


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("options", OPTIONS, ids=[str(o) for o in OPTIONS])
@pytest.mark.parametrize("chunk_size", [1, 8, 37, "auto"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_with_grad_matches_unfused(rng, options, chunk_size, dtype):
    hidden, weight, bias, labels, opts, grad_output = _case(rng, options, dtype)
    loss, dh, dw, db = fastxent.linear_cross_entropy_with_grad(
        hidden, weight, labels, bias=bias, chunk_size=chunk_size, grad_output=grad_output, **opts)
    want = _unfused(hidden, weight, bias, labels, opts, grad_output)
    for got, ref in zip((loss, dh, dw, db), want):
        np.testing.assert_allclose(got, ref, **_tol(dtype))
    assert dh.dtype == dw.dtype == db.dtype == dtype
    only_loss = fastxent.linear_cross_entropy(hidden, weight, labels, bias=bias,
                                              chunk_size=chunk_size, **opts)
    np.testing.assert_allclose(only_loss, want[0], **_tol(dtype))


@pytest.mark.parametrize("matmul", ["numpy", "torch"])
def test_accumulation_paths(rng, matmul):
    # Many chunks and a vocabulary larger than the NumPy accumulation scratch.
    if matmul == "torch":
        pytest.importorskip("torch")
    rng_case = _case(rng, {}, np.float32, bias=False)
    hidden, _, _, labels, opts, g = rng_case
    weight = rng.normal(size=(_linear._ACCUMULATE_ROWS + 77, H)).astype(np.float32) * 0.3
    labels = rng.integers(0, weight.shape[0], N)
    loss, dh, dw, db = _linear.run(hidden, weight, labels, None, 5, dict(opts, grad_output=g),
                                   matmul=matmul)
    assert db is None
    want = _unfused(hidden, weight, None, labels, opts, g)
    for got, ref in zip((loss, dh, dw), want):
        np.testing.assert_allclose(got, ref, **_tol(np.float32))


def test_no_bias_returns_three(rng):
    hidden, weight, _, labels, opts, _ = _case(rng, {}, bias=False)
    result = fastxent.linear_cross_entropy_with_grad(hidden, weight, labels, chunk_size=4)
    assert len(result) == 3
    want = _unfused(hidden, weight, None, labels, opts, 1.0)
    for got, ref in zip(result, want):
        np.testing.assert_allclose(got, ref, **_tol(np.float32))


def test_leading_dims_and_mixed_dtype(rng):
    hidden, weight, bias, labels, opts, _ = _case(rng, {}, np.float64)
    # float32 hidden with float64 weight: computed in float64, each gradient in its input's dtype
    h3 = hidden.astype(np.float32)[:36].reshape(4, 9, H)
    y3 = labels[:36].reshape(4, 9)
    loss, dh, dw, db = fastxent.linear_cross_entropy_with_grad(h3, weight, y3, bias=bias,
                                                               reduction="none", chunk_size=7)
    assert loss.shape == (4, 9) and dh.shape == (4, 9, H) and dh.dtype == np.float32
    assert dw.dtype == np.float64
    want = _unfused(h3.reshape(36, H), weight, bias, labels[:36], {"reduction": "none"}, 1.0)
    np.testing.assert_allclose(loss.reshape(-1), want[0], rtol=1e-6)
    np.testing.assert_allclose(dh.reshape(36, H), want[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, want[2], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_hidden(rng, half):
    if half == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(np.float16)
    hidden, weight, bias, labels, opts, _ = _case(rng, {})
    h, w = hidden.astype(dtype), weight.astype(dtype)
    loss, dh, dw, db = fastxent.linear_cross_entropy_with_grad(h, w, labels, bias=bias,
                                                               chunk_size=10)
    assert dh.dtype == dw.dtype == dtype and loss.dtype == dtype
    # Math in float32 from the rounded inputs: only the final roundings differ.
    want = _unfused(h.astype(np.float32), w.astype(np.float32), bias, labels, opts, 1.0)
    rtol = 1e-2 if dtype.name == "bfloat16" else 2e-3
    np.testing.assert_allclose(np.float64(loss), want[0], rtol=rtol)
    for got, ref in zip((dh, dw), want[1:3]):
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rtol, atol=rtol * 1e-2)


def test_all_ignored_mean_is_nan_with_zero_gradients(rng):
    hidden, weight, bias, labels, opts, _ = _case(rng, {})
    labels[:] = -100
    loss, dh, dw, db = fastxent.linear_cross_entropy_with_grad(hidden, weight, labels, bias=bias)
    assert np.isnan(loss)
    assert not dh.any() and not dw.any() and not db.any()


def test_empty_rows(rng):
    weight = rng.normal(size=(V, H)).astype(np.float32)
    loss, dh, dw = fastxent.linear_cross_entropy_with_grad(
        np.empty((0, H), np.float32), weight, np.empty(0, np.int64), reduction="sum")
    assert loss == 0 and dh.shape == (0, H) and not dw.any()


def test_chunk_buffer_is_kept_per_thread(rng, monkeypatch):
    # The chunk's logits buffer is reused by the next call on the same thread (no fresh pages),
    # and the answers do not depend on what a previous call left in it.
    import threading

    fastxent.release_linear_buffer()
    hidden, weight, bias, labels, opts, g = _case(rng, {})
    want = _unfused(hidden, weight, bias, labels, opts, g)
    first = _linear.chunk_buffer((8, V), np.float32)
    for chunk in (8, 5, 8):  # (none needs more than the first buffer)
        got = fastxent.linear_cross_entropy_with_grad(hidden, weight, labels, bias=bias,
                                                      chunk_size=chunk, grad_output=g)
        for a, ref in zip(got, want):
            np.testing.assert_allclose(np.asarray(a, np.float64), ref, **_tol(np.float32))
        assert not any(np.shares_memory(a, first) for a in got[1:])  # results are new arrays
    again = _linear.chunk_buffer((4, V), np.float64)
    assert np.shares_memory(again, first) and again.ctypes.data % 64 == 0
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_linear.chunk_buffer((8, V), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(seen[0], first)  # each thread has its own
    fastxent.release_linear_buffer()
    assert not np.shares_memory(_linear.chunk_buffer((8, V), np.float32), first)
    # Larger than KEEP_BUFFER_BYTES: a new array each time, nothing kept.
    monkeypatch.setattr(_linear, "KEEP_BUFFER_BYTES", 64)
    big = _linear.chunk_buffer((8, V), np.float32)
    assert not np.shares_memory(big, _linear.chunk_buffer((8, V), np.float32))
    fastxent.release_linear_buffer()


def test_aligned_empty():
    for shape, dtype in (((3, 5), np.float32), (7, np.float64), ((0, 4), np.float32)):
        a = _linear.aligned_empty(shape, dtype)
        assert a.shape == (shape if isinstance(shape, tuple) else (shape,)) and a.dtype == dtype
        assert a.flags.c_contiguous and a.flags.writeable
        assert a.size == 0 or a.ctypes.data % 64 == 0
    assert not _linear.aligned_zeros((4, 3), np.float64).any()


@pytest.mark.parametrize("matmul", ["numpy", "torch"])
def test_gradients_are_64_byte_aligned(rng, matmul):
    # MKL (PyTorch's BLAS) and OpenBLAS run slower on NumPy's default 16-byte-offset arrays.
    if matmul == "torch":
        pytest.importorskip("torch")
    hidden, weight, bias, labels, opts, _ = _case(rng, {})
    loss, dh, dw, db = _linear.run(hidden, weight, labels, bias, 8, dict(opts), matmul=matmul)
    for g in (dh, dw, db):
        assert g.ctypes.data % 64 == 0


@pytest.mark.parametrize("layout", ["strided", "transposed", "float16", "float64"])
def test_hidden_copied_chunk_by_chunk(rng, layout):
    # Hidden that is not C-contiguous float32 goes through one reused (chunk, H) scratch.
    hidden, weight, bias, labels, opts, _ = _case(rng, {})
    if layout == "strided":
        wide = np.zeros((N, 2 * H), np.float32)
        wide[:, ::2] = hidden
        h = wide[:, ::2]
    elif layout == "transposed":
        h = np.asfortranarray(hidden)
    elif layout == "float16":
        hidden = hidden.astype(np.float16)
        h = hidden
    else:
        h = hidden.astype(np.float64)  # with float32 weight: computed in float64, no copy
    assert h.flags.c_contiguous == (layout in ("float16", "float64"))
    got = fastxent.linear_cross_entropy_with_grad(h, weight, labels, bias=bias, chunk_size=6)
    want = _unfused(np.asarray(hidden, np.float32), weight, bias, labels, opts, 1.0)
    tol = dict(rtol=2e-3, atol=1e-4) if layout == "float16" else _tol(np.float32)
    for g, ref in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float64), ref, **tol)
    assert got[1].dtype == h.dtype and got[1].shape == h.shape


def test_auto_chunk_budget():
    assert _linear.chunk_rows("auto", 10**6, 128256) * 128256 * 4 <= _linear.AUTO_CHUNK_BYTES
    assert _linear.chunk_rows("auto", 3, 128256) == 3
    assert _linear.chunk_rows("auto", 10, 10**9) == 1


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(labels=np.full(N, V)), ValueError, r"labels\[0\] = 45"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(chunk_size="big"), ValueError, "chunk_size"),
        (dict(chunk_size=2.5), TypeError, "chunk_size"),
        (dict(weight_matrix=np.zeros((V, H + 1), np.float32)), ValueError, "weight must have shape"),
        (dict(bias=np.zeros(V + 1, np.float32)), ValueError, "bias must have shape"),
        (dict(hidden=np.zeros((N, H), np.int32)), TypeError, "hidden must be"),
        (dict(labels=np.zeros(N + 1, np.int64)), ValueError, "labels must have shape"),
        (dict(label_smoothing=2.0), ValueError, "label_smoothing"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(weight=np.ones(V + 1)), ValueError, "weight must have shape"),
        (dict(out=np.zeros((N, V), np.float32)), TypeError, "out="),
        (dict(inplace=True), TypeError, "inplace="),
        (dict(return_accuracy=True), ValueError, "return_accuracy"),
        (dict(grad_output=np.ones(N)), TypeError, "grad_output"),
    ],
)
def test_bad_input_raises_before_writing(rng, change, error, match):
    hidden, weight, bias, labels, _, _ = _case(rng, {})
    args = dict(hidden=hidden, weight_matrix=weight, labels=labels, bias=bias)
    args.update(change)
    kept = [a.copy() for a in (hidden, weight, bias)]
    h, w, y = args.pop("hidden"), args.pop("weight_matrix"), args.pop("labels")
    with pytest.raises(error, match=match):
        fastxent.linear_cross_entropy_with_grad(h, w, y, **args)
    for before, after in zip(kept, (hidden, weight, bias)):
        np.testing.assert_array_equal(before, after)


# ---------------------------------------------------------------------------------------------
# fastxent.torch.linear_cross_entropy


def _torch_case(rng, options, dtype):
    torch = pytest.importorskip("torch")
    hidden, weight, bias, labels, opts, grad_output = _case(rng, options, dtype)
    t = dict(hidden=torch.from_numpy(hidden), weight=torch.from_numpy(weight),
             bias=torch.from_numpy(bias), labels=torch.from_numpy(labels))
    topts = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in opts.items()}
    return t, topts, torch.as_tensor(grad_output)


@pytest.mark.parametrize("options", OPTIONS, ids=[str(o) for o in OPTIONS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_matches_pytorch_autograd(rng, options, dtype):
    torch = pytest.importorskip("torch")
    import fastxent.torch as fxt

    t, opts, grad_output = _torch_case(rng, options, dtype)
    leaves = [t[k].clone().requires_grad_() for k in ("hidden", "weight", "bias")]
    loss = fxt.linear_cross_entropy(leaves[0], leaves[1], t["labels"], bias=leaves[2],
                                    chunk_size=8, **opts)
    loss.backward(grad_output.to(loss.dtype) if loss.dim() else grad_output.to(loss.dtype))

    ref = [t[k].double().clone().requires_grad_() for k in ("hidden", "weight", "bias")]
    ropts = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    # fastxent.torch.cross_entropy is checked against plain PyTorch (tests/test_torch_*.py) and
    # knows z_loss and softcap, which F.cross_entropy does not.
    plain = fxt.cross_entropy if ("z_loss" in ropts or "softcap" in ropts) else (
        torch.nn.functional.cross_entropy)
    want = plain(ref[0] @ ref[1].T + ref[2], t["labels"], **ropts)
    want.backward(grad_output.double())
    tol = _tol(dtype)
    np.testing.assert_allclose(loss.detach().double(), want.detach(), **tol)
    for got, exp in zip(leaves, ref):
        assert got.grad.dtype == got.dtype
        np.testing.assert_allclose(got.grad.double(), exp.grad, **tol)


def test_torch_frozen_weight_and_no_grad(rng):
    torch = pytest.importorskip("torch")
    import fastxent.torch as fxt

    t, opts, _ = _torch_case(rng, {}, np.float32)
    h = t["hidden"].clone().requires_grad_()
    loss = fxt.linear_cross_entropy(h, t["weight"], t["labels"], bias=t["bias"])
    loss.backward()
    assert t["weight"].grad is None and h.grad is not None
    ref = fastxent.linear_cross_entropy_with_grad(t["hidden"].numpy(), t["weight"].numpy(),
                                                  t["labels"].numpy(), bias=t["bias"].numpy())
    np.testing.assert_allclose(h.grad, ref[1], rtol=1e-6, atol=1e-8)
    with torch.no_grad():
        plain = fxt.linear_cross_entropy(h, t["weight"], t["labels"], bias=t["bias"])
    np.testing.assert_allclose(plain, loss.detach(), rtol=1e-6)


def test_torch_rejects_bad_input(rng):
    torch = pytest.importorskip("torch")
    import fastxent.torch as fxt

    t, _, _ = _torch_case(rng, {}, np.float32)
    with pytest.raises(TypeError, match="hidden must be a torch.Tensor"):
        fxt.linear_cross_entropy(t["hidden"].numpy(), t["weight"], t["labels"])
    with pytest.raises(TypeError, match="grad_output"):
        fxt.linear_cross_entropy(t["hidden"], t["weight"], t["labels"], grad_output=2.0)
    w = torch.ones(V, requires_grad=True)
    with pytest.raises(RuntimeError, match="weight.detach"):
        fxt.linear_cross_entropy(t["hidden"], t["weight"], t["labels"], weight=w)
