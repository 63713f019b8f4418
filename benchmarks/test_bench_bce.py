"""Binary cross-entropy with logits, loss + gradient in one call: fastxent's backends beside a
memory copy of the same bytes (logits and targets read, gradient written) and PyTorch eager
(forward + backward). Each benchmark checks its answer against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from bench_support import QUICK, run
from fastxent import bench as fb

bce = fastxent.binary_cross_entropy_with_logits_with_grad
SHAPES = [(65536, 10)] if QUICK else [(4096, 1), (65536, 10), (4096, 1000), (512, 32000)]


class _Case:
    """Float32 logits and {0, 1} targets with the reference answer; sized like the CE cases so
    bench_support.run reports bytes: 2 * nbytes = logits + targets read ... + gradient written
    (the copy below moves the same)."""

    def __init__(self, shape):
        rng = np.random.default_rng(0)
        self.shape = shape
        self.dtype = np.dtype(np.float32)
        self.logits = (rng.standard_normal(shape) * 3).astype(np.float32)
        self.targets = (rng.random(shape) < 0.3).astype(np.float32)
        self.pos_weight = rng.uniform(0.5, 2.0, shape[-1])
        self.nbytes = self.logits.nbytes * 3 // 2
        self.name = f"{shape[0]}x{shape[1]}"
        self.want_loss, self.want_grad = bce(self.logits.astype(np.float64), self.targets,
                                             pos_weight=self.pos_weight, backend="numpy")

    def check(self, loss, grad):
        np.testing.assert_allclose(float(loss), self.want_loss, rtol=1e-5)
        np.testing.assert_allclose(grad, self.want_grad, rtol=1e-4, atol=1e-9)


@pytest.fixture(params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}", scope="module")
def bce_case(request):
    return _Case(request.param)


def _group(case):
    return f"bce f32 {case.name}"


def test_bce_copy(benchmark, bce_case):
    """Copy logits and targets into a buffer of twice their size, and the logits once more: the
    bytes the fused call moves (two read streams, one write)."""
    benchmark.group = _group(bce_case)
    src = np.concatenate([bce_case.logits.ravel(), bce_case.targets.ravel(), bce_case.logits.ravel()])
    dst = np.empty_like(src)
    run(benchmark, lambda: np.copyto(dst, src), case=bce_case)
    assert np.array_equal(dst, src)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_bce_fastxent(benchmark, bce_case, backend):
    if backend == "numba" and fb.numba_missing():
        pytest.skip(fb.numba_missing())
    benchmark.group = _group(bce_case)
    c = bce_case
    out = np.empty_like(c.logits)
    fn = (lambda: bce(c.logits, c.targets, pos_weight=c.pos_weight, out=out, backend=backend))
    fn()  # JIT compile outside the timing
    loss, grad = run(benchmark, fn, case=c)
    c.check(loss, grad)


def test_bce_torch(benchmark, bce_case):
    torch = pytest.importorskip("torch")
    benchmark.group = _group(bce_case)
    c = bce_case
    x = torch.tensor(c.logits, requires_grad=True)
    t, pw = torch.tensor(c.targets), torch.tensor(c.pos_weight, dtype=torch.float32)

    def fn():
        x.grad = None
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x, t, pos_weight=pw)
        loss.backward()
        return loss

    loss = run(benchmark, fn, case=c)
    c.check(loss.item(), x.grad.numpy())
