"""The peers in the same "fused" groups: PyTorch eager, torch.compile and JAX jit, each doing
forward + backward of a mean cross-entropy on the same logits (zero-copy where possible), and
fastxent's drop-ins for them (fastxent.torch through autograd, fastxent.jax under jit)."""

from __future__ import annotations

import time

import pytest

from bench_support import COMPILE_SHAPES, group, run
from fastxent import bench as fb

# Inductor imports torch.jit.script_method, deprecated in this torch: a warning from torch's own
# modules, not from anything the benchmark does.
TORCH_JIT_DEPRECATION = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def test_torch_eager(benchmark, case, torch_mod):
    torch, F = torch_mod  # noqa: N806
    benchmark.group = group("fused", case)
    leaf, y = fb.torch_inputs(torch, case)
    loss, grad = run(benchmark, lambda: fb.torch_step(F.cross_entropy, leaf, y), case=case)
    case.check("torch eager", loss, grad)


def test_fastxent_torch(benchmark, case, torch_mod):
    torch, _ = torch_mod
    benchmark.group = group("fused", case)
    leaf, y = fb.torch_inputs(torch, case)
    loss_fn = fb.fastxent_torch_loss()
    loss, grad = run(benchmark, lambda: fb.torch_step(loss_fn, leaf, y), case=case)
    case.check("fastxent.torch", loss, grad)


@pytest.mark.filterwarnings(TORCH_JIT_DEPRECATION)
def test_torch_compile(benchmark, case, torch_mod):
    if case.shape not in COMPILE_SHAPES:
        pytest.skip("torch.compile only on " + ", ".join(f"{n}x{c}" for n, c in sorted(COMPILE_SHAPES)))
    torch, _ = torch_mod
    benchmark.group = group("fused", case)
    leaf, y = fb.torch_inputs(torch, case)
    torch._dynamo.reset()  # a fresh static-shape compile per shape
    compiled = torch.compile(fb.torch_loss, dynamic=False)
    t0 = time.perf_counter()
    try:
        fb.torch_step(compiled, leaf, y)
    except Exception as exc:  # noqa: BLE001 - inductor needs a working C++ toolchain
        pytest.skip(f"torch.compile failed here: {type(exc).__name__}: {exc}")
    benchmark.extra_info["compile_s"] = time.perf_counter() - t0
    loss, grad = run(benchmark, lambda: fb.torch_step(compiled, leaf, y), case=case)
    case.check("torch.compile", loss, grad)


def test_jax_jit(benchmark, case):
    pytest.importorskip("jax")
    benchmark.group = group("fused", case)
    z, y = fb.jax_inputs(case)
    vg = fb.jax_value_and_grad()
    t0 = time.perf_counter()
    fb.jax_step(vg, z, y)  # trace + compile for this shape, off the clock
    benchmark.extra_info["compile_s"] = time.perf_counter() - t0
    loss, grad = run(benchmark, lambda: fb.jax_step(vg, z, y), case=case)
    case.check("jax jit value_and_grad", loss, grad)


def test_fastxent_jax(benchmark, case):
    pytest.importorskip("jax")
    benchmark.group = group("fused", case)
    z, y = fb.jax_inputs(case)
    vg = fb.fastxent_jax_value_and_grad()
    fb.jax_step(vg, z, y)  # trace for this shape, off the clock
    loss, grad = run(benchmark, lambda: fb.jax_step(vg, z, y), case=case)
    case.check("fastxent.jax jit value_and_grad", loss, grad)
