"""Every backend (the NumPy reference included) against torch.nn.functional.cross_entropy and
its autograd gradient, computed in float64."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

import fastxent
from _helpers import (
    FLOAT_DTYPES,
    assert_grad_close,
    assert_loss_close,
    check_result_types,
    gradient_scale,
    make_labels,
    make_logits,
    make_weight,
    case,
    inner_options,
    option_case,
    option_grid,
)

torch = pytest.importorskip("torch")


def check_against_torch(logits, labels, backend, torch_ce, want=None, **opts):
    """fastxent with `backend` against torch; `want` = torch's (loss, grad) when already known."""
    dtype = np.asarray(logits).dtype
    reduction = opts.get("reduction", "mean")
    want_loss, want_grad = want if want is not None else torch_ce(logits, labels, **opts)
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend, **opts)
    check_result_types(loss, grad, np.shape(logits), dtype, reduction)
    assert_loss_close(loss, want_loss, dtype, logits, err_msg="loss vs torch")
    scale = gradient_scale(labels, np.shape(logits)[-1], **opts)
    assert_grad_close(grad, want_grad, dtype, scale, err_msg="grad vs torch")
    fwd = {k: v for k, v in opts.items() if k != "grad_output"}
    assert_loss_close(fastxent.cross_entropy(logits, labels, backend=backend, **fwd), want_loss,
                      dtype, logits, err_msg="cross_entropy vs torch")
    return loss, grad


_CASES: dict = {}


def shared_case(key, build, torch_ce):
    """The case `build(rng)` -> (logits, labels, opts) and torch's answer, made once per key and
    shared by every backend (PyTorch is the slow part of these tests)."""
    if key not in _CASES:
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        logits, labels, opts = build(rng)
        _CASES[key] = (logits, labels, opts, torch_ce(logits, labels, **opts))
    return _CASES[key]


@pytest.mark.parametrize(("weighted", "eps", "reduction"), option_grid())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_options(backend, dtype, weighted, eps, reduction, torch_ce):
    for ignore, gout in inner_options(reduction):
        key = f"options-{dtype}-{weighted}-{ignore}-{eps}-{reduction}-{gout}"
        with case(f"ignore={ignore} grad_output={gout}"):
            logits, labels, opts, want = shared_case(
                key, lambda rng: option_case(rng, (29,), 40, dtype, weighted, ignore, eps,
                                             reduction, gout),
                torch_ce)
            check_against_torch(logits, labels, backend, torch_ce, want=want, **opts)


@pytest.mark.parametrize(("weighted", "eps", "reduction"),
                         list(itertools.product([False, True], [0.0, 0.1], ["mean", "sum", "none"])))
def test_leading_dims(backend, weighted, eps, reduction, rng, torch_ce):
    c = 23
    logits = make_logits(rng, (2, 3, c), np.float64)
    labels = make_labels(rng, (2, 3), c, ignore_index=-100, ignore_frac=0.2)
    opts = {"label_smoothing": eps, "reduction": reduction}
    if weighted:
        opts["weight"] = make_weight(rng, c)
    if reduction == "none":
        opts["grad_output"] = rng.uniform(-1, 2, size=(2, 3))
    check_against_torch(logits, labels, backend, torch_ce, **opts)


SHAPES = [(n, c) for n in (0, 1, 3, 64) for c in (1, 2, 10, 1000)] + [(1, 32000), (3, 128256)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("n", "c"), SHAPES, ids=lambda v: str(v))
def test_shapes(backend, n, c, dtype, torch_ce):
    for reduction in ["mean", "sum", "none"]:
        def build(rng):
            logits = make_logits(rng, (n, c), dtype)
            labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.2)
            return logits, labels, {"reduction": reduction, "label_smoothing": 0.1,
                                    "weight": make_weight(rng, c)}

        with case(f"{reduction} rich"):
            logits, labels, opts, want = shared_case(f"shapes-{n}-{c}-{dtype}-{reduction}", build,
                                                     torch_ce)
            check_against_torch(logits, labels, backend, torch_ce, want=want, **opts)
        with case(f"{reduction} plain"):
            logits, labels, opts, want = shared_case(
                f"shapes-plain-{n}-{c}-{dtype}-{reduction}",
                lambda rng: (make_logits(rng, (n, c), dtype), make_labels(rng, (n,), c),
                             {"reduction": reduction}),
                torch_ce)
            check_against_torch(logits, labels, backend, torch_ce, want=want, **opts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_torch_tensors_as_input(backend, dtype, torch_ce):
    """CPU tensors are read through DLPack; the result equals the NumPy-input result."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 33, generator=gen, dtype=dtype) * 3
    y = torch.randint(0, 33, (16,), generator=gen)
    w = torch.rand(33, generator=gen, dtype=torch.float64) + 0.5
    before = x.clone()
    loss, grad = fastxent.cross_entropy_with_grad(x, y, weight=w, label_smoothing=0.1, backend=backend)
    assert torch.equal(x, before)
    want_loss, want_grad = fastxent.cross_entropy_with_grad(
        x.numpy(), y.numpy(), weight=w.numpy(), label_smoothing=0.1, backend=backend)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    ref_loss, ref_grad = torch_ce(x.numpy(), y.numpy(), weight=w.numpy(), label_smoothing=0.1)
    npdtype = np.float32 if dtype == torch.float32 else np.float64
    assert_loss_close(loss, ref_loss, npdtype, x.numpy())
    assert_grad_close(grad, ref_grad, npdtype, gradient_scale(y.numpy(), 33, weight=w.numpy(),
                                                               label_smoothing=0.1))


def test_torch_tensor_inplace(backend):
    """inplace=True on a tensor's NumPy view writes the gradient into the tensor's memory."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 12, generator=gen)
    y = torch.randint(0, 12, (8,), generator=gen)
    want_loss, want_grad = fastxent.cross_entropy_with_grad(x.numpy().copy(), y.numpy(), backend=backend)
    view = x.numpy()
    loss, grad = fastxent.cross_entropy_with_grad(view, y.numpy(), inplace=True, backend=backend)
    assert grad is view
    np.testing.assert_array_equal(x.numpy(), want_grad)
    np.testing.assert_array_equal(loss, want_loss)


def test_tensor_requiring_grad_is_rejected_with_hint():
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(TypeError, match="logits"):
        fastxent.cross_entropy(x, y)
