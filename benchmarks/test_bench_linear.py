"""Fused linear cross-entropy: loss + d_hidden + d_weight for hidden (N, H), weight (V, H).

One benchmark group per shape, all doing forward + backward of a mean cross-entropy:
  - "matmuls numpy" / "matmuls torch": the three products alone (z = h W^T, g W, g^T h) on
    the full arrays, into outputs allocated before the timing: the floor for any method that
    uses that BLAS;
  - fastxent.linear_cross_entropy_with_grad (NumPy's BLAS) and fastxent.torch's autograd
    Function (PyTorch's BLAS);
  - torch.nn.functional.linear_cross_entropy and matmul + F.cross_entropy (PyTorch eager).
Each records in extra_info the peak extra resident memory of a call (RSS sampled every 2 ms
by a thread, minus the RSS before the call; on an untimed call of its own, except at the big
shape) and checks its answer (the loss against the other
methods'; the floors, a few entries of their products against float64).

Shapes:
  - 1024 x 256 x 8192 (N x H x V): quick, a few ms per call;
  - 4096 x 512 x 32768: the measurement. The GEMMs dominate (the CE kernel is ~2% of a call),
    "auto" makes two chunks of 2048 rows, and a call takes ~2.5 s on two cores: 5 timed rounds
    each (3 for the two PyTorch baselines, which are slower and are only compared against)
    after the memory-sampling call; the shape adds about two minutes to a run. fastxent's two methods have their rounds paired: before
    each timed round the same-BLAS floor runs (off the clock) and its time is kept, so
    extra_info also holds the median of the per-round ratios method / floor, which machine
    load drifting between benchmarks cannot skew. The summary at the end of the run prints
    that and the ratios of the medians.
  - FASTXENT_BENCH_LINEAR_BIG=1 adds N=8192, H=1024, V=128256 (a 4 GiB logits matrix for the
    unfused methods; minutes per call on two cores, so each method is timed once there).

Every array the methods and floors read is 64-byte aligned and shared by NumPy and PyTorch:
MKL's GEMMs (PyTorch's BLAS) are 20-30% slower on NumPy's default 16-byte-offset allocations.
The floors write into buffers allocated and touched before the timing, so they are the GEMMs
alone; the methods allocate what they use in every call. On this VM memory freed for more than
~2 s goes back to the host (virtio-balloon free page reporting) and costs ~1.3 ms per MiB to
touch again, which a paired round (a floor of ~2.5 s between two calls) always pays.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import fastxent
from fastxent._linear import aligned_empty, chunk_rows

torch = pytest.importorskip("torch")
F = torch.nn.functional

BIG = os.environ.get("FASTXENT_BENCH_LINEAR_BIG", "").strip() not in ("", "0")
MID = (4096, 512, 32768)
SHAPES = [(1024, 256, 8192), MID] + ([(8192, 1024, 128256)] if BIG else [])


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


def _aligned_copy(a):
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


class Inputs:
    def __init__(self, n, h, v):
        rng = np.random.default_rng(0)
        self.shape = (n, h, v)
        self.hidden = _aligned_copy(rng.standard_normal((n, h), dtype=np.float32))
        self.weight = _aligned_copy(rng.standard_normal((v, h), dtype=np.float32)
                                    * np.float32(h ** -0.5))
        self.labels = rng.integers(0, v, n)
        self.th, self.tw = torch.from_numpy(self.hidden), torch.from_numpy(self.weight)
        self.ty = torch.from_numpy(self.labels)
        self.loss = None  # the first method's loss, the others are checked against it

    @property
    def name(self):
        n, h, v = self.shape
        return f"linear f32 {n}x{h}x{v}"

    @property
    def big(self):
        return self.shape[0] * self.shape[2] > 1 << 26 and self.shape != MID

    @property
    def paired(self):
        return self.shape == MID

    def check(self, label, loss):
        loss = float(loss)
        if self.loss is None:
            self.loss = loss
        assert abs(loss - self.loss) <= 1e-4 * abs(self.loss), f"{label}: {loss} vs {self.loss}"


def floor(inputs, blas):
    """(three, check): the three products on `blas` ("numpy" or "torch") into outputs allocated
    here (64-byte aligned, already touched), and a spot check of their last results."""
    n, h, v = inputs.shape
    z, dh, dw = (aligned_empty(s, np.float32) for s in ((n, v), (n, h), (v, h)))
    for a in (z, dh, dw):
        a.fill(0)
    if blas == "numpy":
        x, w = inputs.hidden, inputs.weight

        def three():  # z stands in for the gradient: same shapes, same cost
            np.matmul(x, w.T, out=z)
            np.matmul(z, w, out=dh)
            np.matmul(z.T, x, out=dw)
    else:
        x, w = inputs.th, inputs.tw
        tz, tdh, tdw = (torch.from_numpy(a) for a in (z, dh, dw))

        def three():
            torch.matmul(x, w.T, out=tz)
            torch.matmul(tz, w, out=tdh)
            torch.matmul(tz.T, x, out=tdw)

    def check():
        hd, wd = inputs.hidden.astype(np.float64), inputs.weight.astype(np.float64)
        rows, cols = [0, n // 2, n - 1], [0, v // 3, v - 1]
        zr = hd[rows] @ wd.T  # whole rows and columns of z, for some rows of dh and dw
        zc = hd @ wd[cols].T
        for got, want in ((z[rows], zr), (dh[rows], zr @ wd), (dw[cols], zc.T @ hd)):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())

    return three, check


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def inputs(request, torch_mod):
    return Inputs(*request.param)


def _bench(benchmark, inputs, label, fn, floor_blas=None, before=None, baseline=False):
    """Time fn. Its peak extra memory is sampled on one untimed call first (which is also the
    warm-up): the sampling thread wakes every 2 ms and, on two cores, delays the BLAS threads'
    barriers, so no timed call runs beside it, and neither does any floor. The big shape (minutes
    per call) gets one call, timed and sampled both. The paired shape gets 5 timed rounds (3 for
    the PyTorch baselines, `baseline`), the small one 5. On the paired shape, floor_blas names
    the floor that runs before each timed round (off the clock); extra_info gets the median of
    the per-round ratios. before(): run ahead of each call, off the clock and before the memory
    baseline (to drop the previous call's gradients)."""
    benchmark.group = inputs.name
    peaks, results, times = [], [], []

    def sampled():
        if before is not None:
            before()
        fastxent.release_linear_buffer()  # its peak counts the chunk buffer, kept or not
        result, extra = peak_extra_bytes(fn)
        peaks.append(extra)
        results[:] = [result]

    def timed():
        if before is not None:
            before()
        t0 = time.perf_counter()
        results[:] = [fn()]
        times.append(time.perf_counter() - t0)

    if inputs.big:
        benchmark.pedantic(sampled, rounds=1, iterations=1)
    else:
        sampled()
        setup, floor_times = None, []
        if floor_blas is not None and inputs.paired:
            three, _ = floor(inputs, floor_blas)

            def setup():
                t0 = time.perf_counter()
                three()
                floor_times.append(time.perf_counter() - t0)

        rounds = (3 if baseline else 5) if inputs.paired else 5
        benchmark.pedantic(timed, setup=setup, rounds=rounds, iterations=1)
        if floor_times:
            benchmark.extra_info.update(
                floor=f"matmuls {floor_blas}",
                paired_floor_median_s=float(np.median(floor_times)),
                paired_ratio_median=float(np.median(np.array(times) / np.array(floor_times))),
            )
    benchmark.extra_info.update(peak_extra_mib=max(peaks) / 2**20, shape=list(inputs.shape),
                                linear=label)
    return results[0]


def _torch_step(loss_fn, inputs):
    """(step, reset): one forward + backward on leaf copies of the inputs, and the function
    that drops their gradients (so each step starts from none, as after zero_grad)."""
    h = inputs.th.clone().requires_grad_()
    w = inputs.tw.clone().requires_grad_()

    def step():
        loss = loss_fn(h, w)
        loss.backward()
        return loss.detach()

    def reset():
        h.grad = w.grad = None

    return step, reset


@pytest.mark.parametrize("blas", ["numpy", "torch"])
def test_matmuls(benchmark, inputs, blas):
    three, check = floor(inputs, blas)
    _bench(benchmark, inputs, f"matmuls {blas}", three)
    benchmark.extra_info["outputs_preallocated_mib"] = 4 * (
        inputs.shape[0] * inputs.shape[2] + sum(inputs.shape[:2]) * inputs.shape[1]) / 2**20
    check()


def test_fastxent_numpy(benchmark, inputs):
    def call():
        return fastxent.linear_cross_entropy_with_grad(inputs.hidden, inputs.weight, inputs.labels)

    loss, dh, dw = _bench(benchmark, inputs, "fastxent", call, floor_blas="numpy")
    inputs.check("fastxent", loss)
    n, h, v = inputs.shape
    chunk = chunk_rows("auto", n, v)
    # Outputs (d_hidden, d_weight) + one chunk's logits + the d_weight accumulation scratch,
    # with 25% slack for the sampling and the allocator.
    bound = 4 * (n * h + v * h + chunk * v + fastxent._linear._ACCUMULATE_ROWS * h)
    assert benchmark.extra_info["peak_extra_mib"] * 2**20 <= 1.25 * bound + 64 * 2**20


def test_fastxent_torch(benchmark, inputs):
    import fastxent.torch as fxt

    step, reset = _torch_step(lambda h, w: fxt.linear_cross_entropy(h, w, inputs.ty), inputs)
    loss = _bench(benchmark, inputs, "fastxent.torch", step, floor_blas="torch", before=reset)
    inputs.check("fastxent.torch", loss)
    n, h, v = inputs.shape
    # Outputs + one chunk's logits (no scratch: addmm_ accumulates), 25% slack as above.
    bound = 4 * (n * h + v * h + chunk_rows("auto", n, v) * v)
    assert benchmark.extra_info["peak_extra_mib"] * 2**20 <= 1.25 * bound + 64 * 2**20


@pytest.mark.skipif(not hasattr(F, "linear_cross_entropy"), reason="no F.linear_cross_entropy")
def test_torch_linear_cross_entropy(benchmark, inputs):
    step, reset = _torch_step(lambda h, w: F.linear_cross_entropy(h, w, inputs.ty), inputs)
    loss = _bench(benchmark, inputs, "F.linear_cross_entropy", step, before=reset, baseline=True)
    inputs.check("F.linear_cross_entropy", loss)


def test_torch_matmul_cross_entropy(benchmark, inputs):
    step, reset = _torch_step(lambda h, w: F.cross_entropy(h @ w.T, inputs.ty), inputs)
    loss = _bench(benchmark, inputs, "matmul + F.cross_entropy", step, before=reset,
                  baseline=True)
    inputs.check("matmul + F.cross_entropy", loss)
