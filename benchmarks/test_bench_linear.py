"""Fused linear cross-entropy: loss + d_hidden + d_weight for hidden (N, H), weight (V, H).

One benchmark group per shape, all doing forward + backward of a mean cross-entropy:
  - "matmuls numpy" / "matmuls torch": the three products alone (z = h W^T, g W, g^T h) on
    the full arrays, the floor for any method that uses BLAS;
  - fastxent.linear_cross_entropy_with_grad (NumPy's BLAS) and fastxent.torch's autograd
    Function (PyTorch's BLAS);
  - torch.nn.functional.linear_cross_entropy and matmul + F.cross_entropy (PyTorch eager).
Each records in extra_info the peak extra resident memory of a call (RSS sampled every 2 ms
by a thread, minus the RSS before the call) and checks its loss against the others.

The default shape is small enough for quick runs. FASTXENT_BENCH_LINEAR_BIG=1 adds the
N=8192, H=1024, V=128256 case (a 4 GiB logits matrix for the unfused methods; minutes per
call on two cores, so each method is timed once there).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import fastxent

torch = pytest.importorskip("torch")
F = torch.nn.functional

BIG = os.environ.get("FASTXENT_BENCH_LINEAR_BIG", "").strip() not in ("", "0")
SHAPES = [(1024, 256, 8192)] + ([(8192, 1024, 128256)] if BIG else [])


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_bytes(fn):
    """(result of fn(), peak RSS during the call minus RSS before it)."""
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return result, max(peak[0], _rss()) - base


class Inputs:
    def __init__(self, n, h, v):
        rng = np.random.default_rng(0)
        self.shape = (n, h, v)
        self.hidden = rng.standard_normal((n, h), dtype=np.float32)
        self.weight = rng.standard_normal((v, h), dtype=np.float32) * np.float32(h ** -0.5)
        self.labels = rng.integers(0, v, n)
        self.th, self.tw = torch.from_numpy(self.hidden), torch.from_numpy(self.weight)
        self.ty = torch.from_numpy(self.labels)
        self.loss = None  # the first method's loss, the others are checked against it

    @property
    def name(self):
        n, h, v = self.shape
        return f"linear f32 {n}x{h}x{v}"

    def check(self, label, loss):
        loss = float(loss)
        if self.loss is None:
            self.loss = loss
        assert abs(loss - self.loss) <= 1e-4 * abs(self.loss), f"{label}: {loss} vs {self.loss}"


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def inputs(request):
    return Inputs(*request.param)


def _bench(benchmark, inputs, label, fn):
    """Time fn; each call also samples its peak extra memory (the largest goes to extra_info).
    The big shape gets one timed call and no warm-up (minutes each), the small one 5 + 1."""
    benchmark.group = inputs.name
    peaks, results = [], []

    def measured():
        result, extra = peak_extra_bytes(fn)
        peaks.append(extra)
        results[:] = [result]

    big = inputs.shape[0] * inputs.shape[2] > 1 << 26
    benchmark.pedantic(measured, rounds=1 if big else 5, iterations=1,
                       warmup_rounds=0 if big else 1)
    benchmark.extra_info.update(peak_extra_mib=max(peaks) / 2**20, shape=list(inputs.shape))
    return results[0]


def _torch_step(loss_fn, inputs):
    h = inputs.th.clone().requires_grad_()
    w = inputs.tw.clone().requires_grad_()

    def step():
        h.grad = w.grad = None
        loss = loss_fn(h, w)
        loss.backward()
        return loss.detach()

    return step


def test_matmuls_numpy(benchmark, inputs):
    h, w = inputs.hidden, inputs.weight

    def three():
        z = h @ w.T
        return z @ w, z.T @ h  # z stands in for the gradient: same shapes, same cost

    _bench(benchmark, inputs, "matmuls numpy", three)


def test_matmuls_torch(benchmark, inputs):
    h, w = inputs.th, inputs.tw

    def three():
        z = h @ w.T
        return z @ w, z.T @ h

    _bench(benchmark, inputs, "matmuls torch", three)


def test_fastxent_numpy(benchmark, inputs):
    def call():
        return fastxent.linear_cross_entropy_with_grad(inputs.hidden, inputs.weight, inputs.labels)

    loss, dh, dw = _bench(benchmark, inputs, "fastxent", call)
    inputs.check("fastxent", loss)
    n, h, v = inputs.shape
    chunk = fastxent._linear.chunk_rows("auto", n, v)
    # Outputs (d_hidden, d_weight) + one chunk's logits + the d_weight accumulation scratch,
    # with 25% slack for the sampling and the allocator.
    bound = 4 * (n * h + v * h + chunk * v + fastxent._linear._ACCUMULATE_ROWS * h)
    assert benchmark.extra_info["peak_extra_mib"] * 2**20 <= 1.25 * bound + 64 * 2**20


def test_fastxent_torch(benchmark, inputs):
    import fastxent.torch as fxt

    step = _torch_step(lambda h, w: fxt.linear_cross_entropy(h, w, inputs.ty), inputs)
    inputs.check("fastxent.torch", _bench(benchmark, inputs, "fastxent.torch", step))


@pytest.mark.skipif(not hasattr(F, "linear_cross_entropy"), reason="no F.linear_cross_entropy")
def test_torch_linear_cross_entropy(benchmark, inputs):
    step = _torch_step(lambda h, w: F.linear_cross_entropy(h, w, inputs.ty), inputs)
    inputs.check("F.linear_cross_entropy", _bench(benchmark, inputs, "torch lce", step))


def test_torch_matmul_cross_entropy(benchmark, inputs):
    step = _torch_step(lambda h, w: F.cross_entropy(h @ w.T, inputs.ty), inputs)
    inputs.check("matmul + F.cross_entropy", _bench(benchmark, inputs, "torch unfused", step))
