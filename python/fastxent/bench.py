"""Benchmark report: ``python -m fastxent.bench``.

For each shape, times every implementation of the fused softmax cross-entropy (loss and
gradient) and prints median time, throughput and two kinds of ratio:

* "x copy": time / time of ``np.copyto`` of the same logits into a preallocated buffer. A fused
  forward+backward reads the logits once and writes the gradient once, exactly what a copy
  does, so a memory-bound kernel cannot beat ~1.0. The copy is timed in the same run,
  interleaved with the others, so machine noise hits both alike.
* "x torch" / "x jax": the peer's time / this time (above 1 means faster than the peer).

Every implementation's answer is checked once against the NumPy reference before it is timed;
a wrong answer aborts the run. Peers (PyTorch, JAX) are optional and skipped with a note.

The helpers here (make_data, reference, check, torch_step, jax_step, ...) are also used by the
pytest-benchmark suite in benchmarks/.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

import fastxent

DEFAULT_SHAPES = [(65536, 3), (65536, 10), (65536, 32), (16384, 100), (8192, 1000), (4096, 32000),
                  (512, 128256), (32, 262144)]
QUICK_SHAPES = [(16384, 10), (2048, 1000), (256, 32000)]
SCALING_SHAPES = [(4096, 32000), (2, 1_000_000)]
QUICK_SCALING_SHAPES = [(256, 32000), (2, 1_000_000)]
CAP_BYTES = 600e6  # the default grid halves the batch until the logits fit under this

# key -> (label, kind). kind decides the bytes counted for GB/s: "fused"/"backward"/"copy"
# read the logits and write a gradient (2x logits bytes), "forward" only reads them.
IMPLS = {
    "cpp": ("fastxent cpp fused (out=)", "fused"),
    "cpp-inplace": ("fastxent cpp fused inplace", "fused"),
    # out= timed after the inplace row's untimed restore of the logits: the like-for-like
    # comparison for inplace where the logits fit in cache (the restore leaves them dirty in the
    # calling thread's core, which costs the other thread either way).
    "cpp-restored": ("fastxent cpp out= after restore", "fused"),
    # inplace=True called again and again on one buffer, no restore: each call's logits are the
    # gradient the call before left there (finite; the kernels' work does not depend on the
    # values), so the buffer stays in the caches the threads left it in, as out= finds its
    # buffers. The like-for-like comparison with plain out= where the logits fit in cache.
    "cpp-inplace-chained": ("fastxent cpp inplace, chained", "fused"),
    "cpp-forward": ("fastxent cpp forward only", "forward"),
    "cpp-backward": ("fastxent cpp backward from lse", "backward"),
    "numba": ("fastxent numba fused (out=)", "fused"),
    "numpy": ("fastxent numpy reference fused", "fused"),
    "torch": ("PyTorch eager fwd+bwd", "fused"),
    "torch-compile": ("torch.compile fwd+bwd", "fused"),
    "jax": ("JAX jit value_and_grad", "fused"),
    # The drop-ins: what a PyTorch or JAX training loop gets from fastxent (autograd, jit).
    "fastxent-torch": ("fastxent.torch fwd+bwd", "fused"),
    "fastxent-jax": ("fastxent.jax jit value_and_grad", "fused"),
}
# Need PyTorch or JAX (--no-peers leaves them out), and pause after each sample (see Timed).
PEERS = ("torch", "torch-compile", "jax", "fastxent-torch", "fastxent-jax")
COPY_LABEL = "memory copy (np.copyto)"

LOSS_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
# Gradient: allclose with rtol and an atol relative to the largest reference entry (the small
# softmax entries of a long row carry an absolute, not a relative, error).
GRAD_RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}
GRAD_ATOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
BLOCK_ELEMS = 1 << 24  # reference and checks work in row blocks of about this many elements


class WrongAnswer(AssertionError):
    """An implementation disagrees with the NumPy reference."""


class Skip(Exception):
    """An implementation cannot run here (not installed, failed to compile); the text says why."""


# ---------------------------------------------------------------------------------------------
# Data, reference and checks (shared with benchmarks/)


def make_data(n: int, c: int, dtype=np.float32, seed: int = 0):
    """Logits ~ N(0, 2^2) and uniformly random int64 labels, reproducible per shape."""
    rng = np.random.default_rng([seed, n, c])
    logits = rng.standard_normal((n, c), dtype=np.dtype(dtype).type)
    logits *= 2
    labels = rng.integers(0, c, size=n, dtype=np.int64)
    return logits, labels


def reference(logits: np.ndarray, labels: np.ndarray):
    """(mean loss as float, gradient in the logits' dtype) from the NumPy reference backend.

    Large arrays go through in row blocks (reduction="sum" scaled by 1/N equals the mean) so the
    float64 temporaries stay small; the answer is the same as one call."""
    n, c = logits.shape
    if n * c <= BLOCK_ELEMS:
        loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend="numpy")
        return float(loss), grad
    grad = np.empty_like(logits)
    rows = max(1, BLOCK_ELEMS // c)
    total = 0.0
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        part, _ = fastxent.cross_entropy_with_grad(
            logits[start:stop], labels[start:stop], reduction="sum", grad_output=1.0 / n,
            out=grad[start:stop], backend="numpy",
        )
        total += float(part)
    return total / n, grad


class Case:
    """One shape's inputs and reference answer."""

    def __init__(self, n, c, dtype=np.float32, seed=0):
        self.n, self.c, self.dtype = n, c, np.dtype(dtype)
        self.logits, self.labels = make_data(n, c, dtype, seed)
        self.ref_loss, self.ref_grad = reference(self.logits, self.labels)
        self.grad_scale = float(np.abs(self.ref_grad).max()) if self.ref_grad.size else 0.0

    @property
    def shape(self):
        return (self.n, self.c)

    @property
    def name(self):
        return f"{self.n}x{self.c}"

    @property
    def nbytes(self):
        return self.logits.nbytes

    def check(self, label, loss, grad=None):
        check(label, self, loss, grad)


def _to_numpy(x):
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check(label: str, case: Case, loss, grad=None) -> None:
    """Raise WrongAnswer unless loss (and grad, if given) match the case's reference."""
    where = f"{label} at {case.name} {case.dtype.name}"
    loss = float(_to_numpy(loss))
    rtol = LOSS_RTOL[case.dtype]
    if not abs(loss - case.ref_loss) <= rtol * abs(case.ref_loss) + 1e-30:
        raise WrongAnswer(
            f"{where}: loss {loss!r} but the NumPy reference gives {case.ref_loss!r} "
            f"(relative error {abs(loss - case.ref_loss) / abs(case.ref_loss):.3g} > {rtol:g})"
        )
    if grad is None:
        return
    grad = _to_numpy(grad)
    ref = case.ref_grad
    if grad.shape != ref.shape:
        raise WrongAnswer(f"{where}: gradient has shape {grad.shape}, expected {ref.shape}")
    rtol, atol = GRAD_RTOL[case.dtype], GRAD_ATOL[case.dtype] * case.grad_scale
    rows = max(1, BLOCK_ELEMS // max(1, case.c))
    for start in range(0, case.n, rows):  # blocks: keep the temporaries small
        g = grad[start:start + rows].astype(np.float64)
        r = ref[start:start + rows].astype(np.float64)
        bad = ~(np.abs(g - r) <= atol + rtol * np.abs(r))  # NaN counts as bad
        if bad.any():
            i, j = np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape)
            raise WrongAnswer(
                f"{where}: gradient[{start + i}, {j}] = {g[i, j]!r} but the NumPy reference "
                f"gives {r[i, j]!r} ({int(bad.sum())} entries in rows {start}..{start + len(g) - 1} "
                f"differ beyond rtol={rtol:g}, atol={atol:.3g})"
            )


# ---------------------------------------------------------------------------------------------
# Peers


def numba_missing():
    """Why the numba backend cannot run, or None."""
    if importlib.util.find_spec("numba") is None:
        return "numba is not installed (pip install numba)"
    if importlib.util.find_spec("fastxent._numba_backend") is None:
        return "fastxent's numba backend (fastxent/_numba_backend.py) is not there yet"
    return None


def import_torch():
    if importlib.util.find_spec("torch") is None:
        raise Skip("PyTorch is not installed")
    import torch
    import torch.nn.functional as F  # noqa: N812

    return torch, F


def import_jax():
    if importlib.util.find_spec("jax") is None:
        raise Skip("JAX is not installed")
    import jax
    import jax.numpy as jnp

    return jax, jnp


def torch_inputs(torch, case: Case):
    """A leaf tensor sharing the logits' memory (no copy) and the labels as a tensor."""
    leaf = torch.from_numpy(case.logits).requires_grad_()
    return leaf, torch.from_numpy(case.labels)


def torch_step(loss_fn, leaf, labels):
    """One training-step loss: forward, backward into a fresh leaf.grad (as in eager training)."""
    leaf.grad = None
    loss = loss_fn(leaf, labels)
    loss.backward()
    return loss, leaf.grad


def torch_loss(logits, labels):
    import torch.nn.functional as F  # noqa: N812

    return F.cross_entropy(logits, labels)


def fastxent_torch_loss():
    """fastxent.torch.cross_entropy (imported here: it needs PyTorch)."""
    import fastxent.torch

    return fastxent.torch.cross_entropy


_JAX_FN = None
_FASTXENT_JAX_FN = None


def fastxent_jax_value_and_grad():
    """jit(value_and_grad) of fastxent.jax.cross_entropy (mean over rows)."""
    global _FASTXENT_JAX_FN
    if _FASTXENT_JAX_FN is None:
        jax, _ = import_jax()
        import fastxent.jax

        _FASTXENT_JAX_FN = jax.jit(jax.value_and_grad(fastxent.jax.cross_entropy))
    return _FASTXENT_JAX_FN


def jax_value_and_grad():
    """jit(value_and_grad) of a mean softmax cross-entropy on integer labels, in jax.nn terms."""
    global _JAX_FN
    if _JAX_FN is None:
        jax, jnp = import_jax()

        def loss(z, y):
            logp = jax.nn.log_softmax(z, axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

        _JAX_FN = jax.jit(jax.value_and_grad(loss))
    return _JAX_FN


def jax_inputs(case: Case):
    jax, jnp = import_jax()
    if case.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)  # else JAX silently computes in float32
    # int32 labels: int64 would be truncated (with a warning) when x64 is off.
    z = jax.device_put(case.logits)
    y = jax.device_put(case.labels.astype(np.int32))
    return z, y


def jax_step(fn, z, y):
    loss, grad = fn(z, y)
    grad.block_until_ready()
    return loss, grad


# ---------------------------------------------------------------------------------------------
# Timing


class Timed:
    """A callable timed in samples of `inner` calls; samples hold seconds per call."""

    def __init__(self, key, label, kind, fn, setup=None):
        self.key, self.label, self.kind = key, label, kind
        self.fn, self.setup = fn, setup
        # Seconds to pause after each sample. Peers run their own thread pools (OpenMP, XLA's
        # Eigen pool, Numba's), whose idle workers stay busy for a while after a call; without a
        # pause they steal the cores from whatever is timed next in the round. 0.3 s: after a
        # 4096 x 32000 JAX call a fastxent call took 86 ms 50 ms later, and 60-64 ms (as without
        # JAX) 0.3 s and 1 s later.
        self.settle = 0.3 if key in ("numba",) + PEERS else 0.0
        self.inner = 1
        self.samples: list[float] = []
        self.copy_samples: list[float] = []  # the copy's samples beside this item's (run_interleaved)
        self.spent = 0.0
        self.notes = []

    def _once(self) -> float:
        if self.setup is not None:
            self.setup()
        t0 = time.perf_counter()
        self.fn()
        return time.perf_counter() - t0

    def calibrate(self, target: float) -> None:
        """Choose `inner` so one sample takes about `target` seconds."""
        t = self._once()
        if t < target:  # cheap: a second look is free and steadier; slow: don't pay twice
            t = min(t, self._once())
        self.inner = max(1, min(1_000_000, int(target / max(t, 1e-8))))

    def sample(self) -> None:
        fn, setup = self.fn, self.setup
        gc_was_on = gc.isenabled()
        gc.disable()  # a collection in the middle of a sample is noise, not the kernel
        try:
            if setup is None:
                t0 = time.perf_counter()
                for _ in range(self.inner):
                    fn()
                t = time.perf_counter() - t0
            else:  # untimed setup before every call (inplace: restore the logits)
                t = 0.0
                for _ in range(self.inner):
                    setup()
                    t0 = time.perf_counter()
                    fn()
                    t += time.perf_counter() - t0
        finally:
            if gc_was_on:
                gc.enable()
        self.samples.append(t / self.inner)
        self.spent += t
        if self.settle:
            time.sleep(self.settle)

    def done(self, min_time, repeats) -> bool:
        return len(self.samples) >= repeats and self.spent >= min_time

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def stats(self) -> dict:
        s = sorted(self.samples)
        q1, q3 = (np.percentile(s, [25, 75]) if len(s) > 1 else (s[0], s[0]))
        return {"median_s": self.median, "min_s": s[0], "iqr_s": float(q3 - q1),
                "samples": len(s), "calls_per_sample": self.inner}


def run_interleaved(items, min_time=0.2, repeats=5) -> None:
    """Round-robin over the items, one sample each per round, until each has `repeats` samples
    and `min_time` seconds. The first item (the memory copy) is sampled in every round while
    anything is still running, so its median spans the same stretch of machine noise.
    The items that pause after each sample (the peers and Numba, whose thread pools outlive
    their calls) go in a second round-robin after the others: their after-effects can outlast
    the pause, and fastxent's samples taken between theirs paid for it (65536 x 3 fused beside
    JAX: median 68-71 us with an interquartile range of 19-36 us, against 52-53 us and 0.2-1.0
    us alone; the minimum 52-53 us in both)."""
    target = min_time / (2 * repeats)  # ~2x the repeats per item before min_time is reached
    for it in items:
        it.calibrate(target)
    anchor, rest = items[0], items[1:]
    quiet = [it for it in rest if not it.settle]
    pausing = [it for it in rest if it.settle]
    stretches = []
    for group in (quiet, pausing):
        start = len(anchor.samples)
        while True:
            pending = [it for it in group if not it.done(min_time, repeats)]
            if not pending and (group is pausing or anchor.done(min_time, repeats)):
                break
            anchor.sample()
            for it in pending:
                it.sample()
        # Each item is set against the copies of its own stretch: between fastxent's calls the
        # copy finds the logits in cache, after a peer's pause often not.
        copies = anchor.samples[start:]
        for it in group:
            it.copy_samples = copies
        stretches.append(copies)
    anchor.samples = stretches[0]  # the copy row: fastxent's stretch


def _bytes_moved(kind: str, nbytes: int) -> int:
    return nbytes if kind == "forward" else 2 * nbytes


# ---------------------------------------------------------------------------------------------
# Implementations for one shape


def build_impl(key, case: Case, bufs, opts):
    """A checked, warmed-up Timed for `key`, or raise Skip."""
    label, kind = IMPLS[key]
    x, y = case.logits, case.labels
    xent = fastxent.cross_entropy_with_grad
    out = bufs["out"]

    if key == "cpp":
        def fn():
            return xent(x, y, out=out, backend="cpp")
        loss, grad = fn()
        case.check(label, loss, grad)
        return Timed(key, label, kind, fn)

    if key in ("cpp-inplace", "cpp-restored"):
        # Both restore the logits into `work` before every call, off the clock (inplace
        # overwrites them; cpp-restored is out= under the same cache state, for comparison).
        work = bufs.setdefault("work", np.empty_like(x))
        inplace = key == "cpp-inplace"

        def restore():
            np.copyto(work, x)

        def fn():
            if inplace:
                return xent(work, y, inplace=True, backend="cpp")
            return xent(work, y, out=out, backend="cpp")
        restore()
        loss, grad = fn()
        if inplace and grad is not work:
            raise WrongAnswer(f"{label}: inplace=True returned a new array, not the logits buffer")
        case.check(label, loss, grad)
        return Timed(key, label, kind, fn, setup=restore)

    if key == "cpp-inplace-chained":
        chain = bufs.setdefault("chain", np.empty_like(x))
        np.copyto(chain, x)

        def fn():
            return xent(chain, y, inplace=True, backend="cpp")
        loss, grad = fn()
        if grad is not chain:
            raise WrongAnswer(f"{label}: inplace=True returned a new array, not the logits buffer")
        case.check(label, loss, grad)  # the first call, on the logits; later ones on gradients
        return Timed(key, label, kind, fn)

    if key == "cpp-forward":
        def fn():
            return fastxent.cross_entropy(x, y, backend="cpp")
        case.check(label, fn())
        return Timed(key, label, kind, fn)

    if key == "cpp-backward":
        loss, lse = fastxent.cross_entropy_forward(x, y, backend="cpp")

        def fn():
            return fastxent.cross_entropy_backward(x, y, lse, out=out, backend="cpp")
        case.check(label, loss, fn())
        return Timed(key, label, kind, fn)

    if key == "numba":
        why = numba_missing()
        if why:
            raise Skip(why)

        def fn():
            return xent(x, y, out=out, backend="numba")
        t0 = time.perf_counter()
        try:
            loss, grad = fn()  # the first call compiles
        except Exception as exc:  # noqa: BLE001 - the backend is optional; report and go on
            raise Skip(f"the numba backend failed: {type(exc).__name__}: {exc}") from None
        first = time.perf_counter() - t0
        case.check(label, loss, grad)
        timed = Timed(key, label, kind, fn)
        if first > 1.0:
            timed.notes.append(f"first call (JIT compile) {first:.1f} s")
        return timed

    if key == "numpy":
        def fn():
            return xent(x, y, out=out, backend="numpy")
        loss, grad = fn()
        case.check(label, loss, grad)
        return Timed(key, label, kind, fn)

    if key == "torch":
        torch, F = import_torch()
        leaf, yt = torch_inputs(torch, case)

        def fn():
            return torch_step(F.cross_entropy, leaf, yt)
        case.check(label, *fn())
        return Timed(key, label, kind, fn)

    if key == "fastxent-torch":
        torch, _ = import_torch()
        leaf, yt = torch_inputs(torch, case)
        loss_fn = fastxent_torch_loss()

        def fn():
            return torch_step(loss_fn, leaf, yt)
        case.check(label, *fn())
        return Timed(key, label, kind, fn)

    if key == "torch-compile":
        torch, _ = import_torch()
        leaf, yt = torch_inputs(torch, case)
        torch._dynamo.reset()  # compile afresh for this shape, so the first call is its compile
        compiled = torch.compile(torch_loss, dynamic=False)

        def fn():
            return torch_step(compiled, leaf, yt)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss, grad = fn()
        except Exception as exc:  # noqa: BLE001 - inductor needs a C++ toolchain; report and go on
            msg = str(exc).strip().splitlines()
            raise Skip(f"torch.compile failed: {type(exc).__name__}: {msg[0] if msg else ''}") from None
        first = time.perf_counter() - t0
        case.check(label, loss, grad)
        timed = Timed(key, label, kind, fn)
        timed.notes.append(f"first call (compile) {first:.1f} s")
        return timed

    if key in ("jax", "fastxent-jax"):
        z, yj = jax_inputs(case)
        vg = jax_value_and_grad() if key == "jax" else fastxent_jax_value_and_grad()

        def fn():
            return jax_step(vg, z, yj)
        t0 = time.perf_counter()
        loss, grad = fn()
        first = time.perf_counter() - t0
        case.check(label, loss, grad)
        timed = Timed(key, label, kind, fn)
        timed.notes.append(f"first call (trace + compile) {first:.2f} s")
        return timed

    raise ValueError(key)


def get_case(n, c, opts, cache=None) -> Case:
    """The shape's Case from `cache` (a dict) or a new one; the reference is the slow part."""
    key = (n, c, np.dtype(opts.dtype).name, opts.seed)
    if cache is not None and key in cache:
        return cache[key]
    return Case(n, c, opts.dtype, opts.seed)


def bench_shape(n, c, opts, log=print, cache=None, keep=False) -> dict:
    """Time every selected implementation at one shape; print and return its table.
    keep=True leaves the Case in `cache` for a later section (thread scaling) to reuse."""
    dtype = np.dtype(opts.dtype)
    t0 = time.perf_counter()
    case = get_case(n, c, opts, cache)
    if keep and cache is not None:
        cache[(n, c, dtype.name, opts.seed)] = case
    bufs = {"out": np.empty_like(case.logits)}
    out = bufs["out"]
    x = case.logits

    def copy():
        np.copyto(out, x)

    items = [Timed("copy", COPY_LABEL, "copy", copy)]
    skipped = {}
    for key in opts.impls:
        try:
            items.append(build_impl(key, case, bufs, opts))
        except Skip as why:
            skipped[key] = str(why)
    setup_s = time.perf_counter() - t0
    run_interleaved(items, opts.min_time, opts.repeats)

    rows = []
    by_key = {it.key: it for it in items}
    t_copy = by_key["copy"].median
    t_torch = by_key["torch"].median if "torch" in by_key else None
    t_jax = by_key["jax"].median if "jax" in by_key else None
    for it in items:
        t = it.median
        copy_beside = statistics.median(it.copy_samples) if it.copy_samples else t_copy
        rows.append({
            "key": it.key, "label": it.label, "kind": it.kind,
            "gbps": _bytes_moved(it.kind, case.nbytes) / t / 1e9,
            "x_copy": t / copy_beside,
            "x_torch": t_torch / t if t_torch else None,
            "x_jax": t_jax / t if t_jax else None,
            "notes": it.notes,
            **it.stats(),
        })
    result = {
        "shape": [n, c], "dtype": dtype.name, "logits_bytes": case.nbytes,
        "rows": rows, "skipped": skipped, "setup_s": setup_s,
    }
    log(format_table(result))
    return result


# ---------------------------------------------------------------------------------------------
# Output


def fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    if t < 1.0:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"


def _ratio(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_table(result: dict) -> str:
    n, c = result["shape"]
    lines = [f"\n{n} x {c} {result['dtype']}  (logits {result['logits_bytes'] / 1e6:.1f} MB)"]
    head = f"  {'implementation':<32} {'median':>10} {'GB/s':>7} {'x copy':>7} {'x torch':>8} {'x jax':>7}"
    lines += [head, "  " + "-" * (len(head) - 2)]
    for r in result["rows"]:
        lines.append(
            f"  {r['label']:<32} {fmt_time(r['median_s']):>10} {r['gbps']:>7.2f} "
            f"{r['x_copy']:>7.2f} {_ratio(r['x_torch']):>8} {_ratio(r['x_jax']):>7}"
        )
    for r in result["rows"]:
        for note in r["notes"]:
            lines.append(f"  note: {r['label']}: {note}")
    for key, why in result["skipped"].items():
        lines.append(f"  skipped: {IMPLS[key][0]}: {why}")
    return "\n".join(lines)


def plot(results: list, path: str, title: str) -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]  # (optional: only for --plot; typed when installed)

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for res in results:
        c = res["shape"][1]
        for r in res["rows"]:
            series.setdefault((r["key"], r["label"]), []).append((c, r["gbps"]))
    for (key, label), pts in series.items():
        pts.sort()
        xs, ys = zip(*pts)
        if key == "copy":
            ax.plot(xs, ys, "k--", lw=2.5, alpha=0.6, label=f"{label} (roofline)")
            for res in results:  # name each shape on the roofline: N changes along the axis too
                n, c = res["shape"]
                gbps = next(r["gbps"] for r in res["rows"] if r["key"] == "copy")
                ax.annotate(f"{n}x{c}", (c, gbps), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7, alpha=0.7)
        else:
            ax.plot(xs, ys, "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("classes C (log scale)")
    ax.set_ylabel("GB/s (logits read + gradient written; forward: logits read)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Tiny-call latency and thread scaling


def bench_latency(opts, log=print) -> dict:
    """Median per-call time of a 1x10 problem: the fixed cost a small batch pays."""
    case = Case(1, 10, opts.dtype, opts.seed)
    x, y = case.logits, case.labels
    out = np.empty_like(x)
    items = []

    def plain():
        return fastxent.cross_entropy_with_grad(x, y)

    def with_out():
        return fastxent.cross_entropy_with_grad(x, y, out=out)

    for label, fn in (("fastxent", plain), ("fastxent out=", with_out)):
        case.check(f"{label} 1x10", *fn())
        items.append(Timed(label, label, "fused", fn))
    skipped = {}
    if "torch" in opts.impls:
        try:
            torch, F = import_torch()
            leaf, yt = torch_inputs(torch, case)

            def eager():
                return torch_step(F.cross_entropy, leaf, yt)

            drop_in_loss = fastxent_torch_loss()

            def drop_in():
                return torch_step(drop_in_loss, leaf, yt)
            case.check("torch eager 1x10", *eager())
            case.check("fastxent.torch 1x10", *drop_in())
            items.append(Timed("torch", "torch eager", "fused", eager))
            items.append(Timed("fastxent-torch", "fastxent.torch", "fused", drop_in))
        except Skip as why:
            skipped["torch"] = str(why)
    if "jax" in opts.impls:
        try:
            z, yj = jax_inputs(case)
            vg = jax_value_and_grad()

            def jitted():
                return jax_step(vg, z, yj)
            case.check("jax jit 1x10", *jitted())
            items.append(Timed("jax", "jax jit", "fused", jitted))
        except Skip as jax_missing:
            skipped["jax"] = str(jax_missing)
    run_interleaved(items, opts.min_time, opts.repeats)
    res = {it.label: it.median for it in items}
    parts = [f"{k} {v * 1e6:.1f} us" for k, v in res.items()]
    log(f"\ntiny call 1x10 {case.dtype.name} (median per call, loss + gradient): " + ", ".join(parts))
    for reason in skipped.values():
        log(f"  skipped: {reason}")
    return {"shape": [1, 10], "median_s": res}


def bench_scaling(shapes, opts, log=print, cache=None) -> list:
    """cpp fused (out=) with 1 thread and with 2, restoring the thread count afterwards."""
    results = []
    before = fastxent.get_num_threads()
    log(f"\nthread scaling, fastxent cpp fused (out=), {np.dtype(opts.dtype).name}:")
    try:
        for n, c in shapes:
            case = get_case(n, c, opts, cache)
            out = np.empty_like(case.logits)
            x, y = case.logits, case.labels
            times = {}
            for threads in (1, 2):
                fastxent.set_num_threads(threads)

                def fn():
                    return fastxent.cross_entropy_with_grad(x, y, out=out, backend="cpp")
                case.check(f"cpp fused with {threads} thread(s)", *fn())
                it = Timed("cpp", "cpp", "fused", fn)
                run_interleaved([it], opts.min_time, opts.repeats)
                times[threads] = it.median
            gbps = {k: 2 * case.nbytes / v / 1e9 for k, v in times.items()}
            log(f"  {n} x {c}: 1 thread {fmt_time(times[1])} ({gbps[1]:.1f} GB/s), "
                f"2 threads {fmt_time(times[2])} ({gbps[2]:.1f} GB/s), "
                f"speedup {times[1] / times[2]:.2f}x")
            results.append({"shape": [n, c], "median_s": {str(k): v for k, v in times.items()}})
            del case, out
    finally:
        fastxent.set_num_threads(before)
    return results


# ---------------------------------------------------------------------------------------------
# Command line


def parse_shapes(text: str):
    shapes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            n, c = (int(v) for v in part.split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"shape {part!r} is not NxC (e.g. 4096x32000)") from None
        if n < 1 or c < 1:
            raise argparse.ArgumentTypeError(f"shape {part!r} must have N >= 1 and C >= 1")
        shapes.append((n, c))
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def parse_impls(text: str):
    if text.strip() == "all":
        return list(IMPLS)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in IMPLS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown implementation(s) {', '.join(unknown)}; choose from all, {', '.join(IMPLS)}")
    return keys


def capped(shapes, itemsize):
    out = []
    for n, c in shapes:
        while n > 1 and n * c * itemsize > CAP_BYTES:
            n //= 2
        out.append((n, c))
    return out


def build_parser(prog=None):
    p = argparse.ArgumentParser(
        prog=prog or "python -m fastxent.bench",
        description="Time fastxent's fused softmax cross-entropy against a memory copy and its peers.",
    )
    p.add_argument("--shapes", type=parse_shapes, metavar="NxC,...",
                   help="shapes to run, e.g. 8192x1000,4096x32000 (default: a grid up to 262144 classes)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads for fastxent and PyTorch (default: fastxent's current setting)")
    p.add_argument("--quick", action="store_true", help="a small grid that runs in seconds")
    p.add_argument("--impls", type=parse_impls, default=list(IMPLS), metavar="LIST",
                   help=f"comma-separated subset of: {', '.join(IMPLS)} (default: all)")
    p.add_argument("--no-peers", action="store_true", help="skip PyTorch and JAX")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-latency", action="store_true", help="skip the 1x10 call-latency line")
    p.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 thread comparison")
    p.add_argument("--min-time", type=float, default=0.2, metavar="S",
                   help="seconds of timing per implementation and shape (default 0.2)")
    p.add_argument("--repeats", type=int, default=5, metavar="K",
                   help="minimum timed samples per implementation (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="FILE.png", help="plot GB/s against classes to this file")
    p.add_argument("--json", metavar="FILE", help="write all results as JSON to this file")
    return p


def _versions() -> dict:
    v = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "jax", "numba"):
        if importlib.util.find_spec(mod) is not None:
            try:
                v[mod] = __import__(mod).__version__
            except Exception:  # noqa: BLE001 - a broken optional install is just not listed
                pass
    return v


def main(argv=None, prog=None, show_info=True) -> int:
    parser = build_parser(prog)
    opts = parser.parse_args(argv)
    if opts.threads is not None and opts.threads < 1:
        parser.error("--threads must be >= 1")
    if opts.repeats < 1 or opts.min_time < 0:
        parser.error("--repeats must be >= 1 and --min-time >= 0")
    if opts.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib, which is not installed: pip install matplotlib")
    if opts.no_peers:
        opts.impls = [k for k in opts.impls if k not in PEERS]
    if opts.no_compile:
        opts.impls = [k for k in opts.impls if k != "torch-compile"]
    itemsize = np.dtype(opts.dtype).itemsize
    if opts.shapes:
        shapes = opts.shapes
    else:
        shapes = capped(QUICK_SHAPES if opts.quick else DEFAULT_SHAPES, itemsize)
    scaling_shapes = QUICK_SCALING_SHAPES if opts.quick else SCALING_SHAPES

    threads_before = fastxent.get_num_threads()
    torch_threads_before = None
    jax_threads = "JAX uses XLA's own pool"
    if opts.threads is not None:
        fastxent.set_num_threads(opts.threads)
        if opts.threads == 1 and "jax" not in sys.modules:
            jax_threads = "JAX held to 1 thread by XLA_FLAGS"
            # XLA's CPU thread pool is fixed at import; this is the only way to match 1 thread.
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_cpu_multi_thread_eigen=false"
                                       + " intra_op_parallelism_threads=1").strip()
    threads = fastxent.get_num_threads()
    started = time.perf_counter()
    report = {"argv": sys.argv[1:] if argv is None else list(argv), "info": fastxent.info(),
              "versions": _versions(), "cpu_count": os.cpu_count(), "dtype": opts.dtype,
              "threads": threads, "shapes": [], "latency": None, "scaling": None}
    try:
        if any(k in opts.impls for k in ("torch", "torch-compile")) and importlib.util.find_spec("torch"):
            import torch

            torch_threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)  # same thread count as fastxent: a fair comparison
        if show_info:
            i = report["info"]
            print(f"fastxent {i['version']}: backends {', '.join(i['backends'])}; "
                  f"isa {i['isa']} (built: {', '.join(i['isas'])})")
        vers = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        print(f"{vers}; {threads} thread(s) for fastxent and torch, {jax_threads}")
        print("GB/s counts logits read + gradient written (forward only: logits read); "
              "x copy = time / np.copyto time (1.0 is the memory roofline); "
              "x torch, x jax = peer time / this time")
        scaling = not opts.no_scaling and "cpp" in opts.impls
        cache: dict = {}
        for n, c in shapes:
            keep = scaling and (n, c) in scaling_shapes
            report["shapes"].append(bench_shape(n, c, opts, cache=cache, keep=keep))
            gc.collect()  # free the last shape's arrays before allocating the next
        if not opts.no_latency:
            report["latency"] = bench_latency(opts)
        if scaling:
            report["scaling"] = bench_scaling(scaling_shapes, opts, cache=cache)
        cache.clear()
    except WrongAnswer as exc:
        print(f"\nfastxent.bench: WRONG ANSWER, aborting: {exc}", file=sys.stderr)
        return 1
    finally:
        fastxent.set_num_threads(threads_before)
        if torch_threads_before is not None:
            import torch

            torch.set_num_threads(torch_threads_before)
    report["elapsed_s"] = time.perf_counter() - started
    print(f"\n(total {report['elapsed_s']:.0f} s)")
    if opts.plot:
        title = f"fastxent fused softmax cross-entropy, {opts.dtype}, {threads} thread(s)"
        plot(report["shapes"], opts.plot, title)
        print(f"plot written to {opts.plot}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=1, default=_json_default)
        print(f"results written to {opts.json}")
    return 0


def _json_default(v):
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    raise TypeError(type(v).__name__)


if __name__ == "__main__":
    sys.exit(main())
