"""info(), thread count, ISA selection and the FASTXENT_* environment variables."""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastxent
from _helpers import IMPLS

HAVE_CPP = "cpp" in fastxent.info()["backends"]
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="the compiled extension is not built")


def run_python(code, **env):
    full_env = dict(os.environ)
    for key in ("FASTXENT_ISA", "FASTXENT_BACKEND", "FASTXENT_NUM_THREADS"):
        full_env.pop(key, None)
    full_env.update(env)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


# ----------------------------------------------------------------------------------------------
# info()


def test_info_keys_and_types():
    info = fastxent.info()
    for key, kind in [("version", str), ("backends", list), ("isa", str), ("isas", list),
                      ("num_threads", int)]:
        assert key in info, key
        assert isinstance(info[key], kind), (key, info[key])
    assert all(isinstance(name, str) for name in info["backends"])
    assert all(isinstance(name, str) for name in info["isas"])
    assert "scalar" in info["isas"]
    assert info["isa"] in info["isas"]
    assert info["num_threads"] >= 1
    assert info["num_threads"] == fastxent.get_num_threads()
    assert "numpy" in info["backends"]
    assert set(info["backends"]) <= {"cpp", "numba", "numpy"}
    assert len(set(info["isas"])) == len(info["isas"])
    assert set(info["isas"]) <= {"scalar", "avx2", "avx512", "neon"}


def test_version():
    assert fastxent.info()["version"] == fastxent.__version__
    assert fastxent.__version__ == importlib.metadata.version("fastxent")


def test_numba_listed_when_installed():
    try:
        import numba  # noqa: F401
    except ImportError:
        assert "numba" not in fastxent.info()["backends"]
    else:
        assert "numba" in fastxent.info()["backends"]


@needs_cpp
def test_default_isa_is_best_supported():
    """Without FASTXENT_ISA the last (widest) supported ISA is picked."""
    out = run_python("import fastxent; i = fastxent.info(); print(i['isa'], i['isas'][-1])")
    isa, best = out.split()
    assert isa == best


@needs_cpp
def test_set_isa_each(rng):
    from fastxent import _core

    old = _core.isa()
    x = rng.standard_normal((5, 40))
    labels = rng.integers(0, 40, size=5)
    try:
        for isa in fastxent.info()["isas"]:
            _core.set_isa(isa)
            assert fastxent.info()["isa"] == isa
            assert _core.isa() == isa
            fastxent.cross_entropy_with_grad(x, labels)
        with pytest.raises(ValueError, match="isa"):
            _core.set_isa("sse9")
    finally:
        _core.set_isa(old)
    assert _core.isa() == old


# ----------------------------------------------------------------------------------------------
# Threads


def test_set_get_num_threads_round_trip():
    old = fastxent.get_num_threads()
    try:
        for n in (1, 2, 3, 1, 8):
            fastxent.set_num_threads(n)
            assert fastxent.get_num_threads() == n
            assert fastxent.info()["num_threads"] == n
        fastxent.set_num_threads(np.int64(2))
        assert fastxent.get_num_threads() == 2
    finally:
        fastxent.set_num_threads(old)
    assert fastxent.get_num_threads() == old


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                            ("2", TypeError), (None, TypeError)])
def test_set_num_threads_errors(value, exc):
    old = fastxent.get_num_threads()
    with pytest.raises(exc, match="num_threads"):
        fastxent.set_num_threads(value)
    assert fastxent.get_num_threads() == old


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_more_threads_than_cores_same_answer(fast_name, n, rng):
    """Any thread count gives the same result (within rounding) on every path."""
    for shape in [(3, 20000), (64, 1000), (5, 10)]:
        x = rng.standard_normal(shape).astype(np.float32)
        labels = rng.integers(0, shape[1], size=shape[0])
        want = fastxent.cross_entropy_with_grad(x, labels, reduction="none", backend="numpy")
        old = fastxent.get_num_threads()
        fastxent.set_num_threads(n)
        try:
            got = fastxent.cross_entropy_with_grad(x, labels, reduction="none", backend=fast_name)
        finally:
            fastxent.set_num_threads(old)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(100_000, 3), (3000, 700), (4, 40_000)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduced_loss_same_bits_for_any_thread_count(shape, reduction, rng):
    """The cpp backend sums row losses in fixed blocks of rows, so the loss (and z-loss term) is
    the same number for 1, 2 or 3 threads, not just close."""
    x = rng.standard_normal(shape).astype(np.float32) * 5
    labels = rng.integers(0, shape[1], size=shape[0])
    labels[::7] = -100
    old = fastxent.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            fastxent.set_num_threads(n)
            results.append(fastxent.cross_entropy(x, labels, reduction=reduction, z_loss=1e-3,
                                                  return_z_loss=True, backend="cpp"))
    finally:
        fastxent.set_num_threads(old)
    assert all(r == results[0] for r in results), results
    want = fastxent.cross_entropy(x, labels, reduction=reduction, z_loss=1e-3, return_z_loss=True,
                                  backend="numpy")
    np.testing.assert_allclose(results[0], want, rtol=1e-5)


def test_core_refuses_labels_of_the_wrong_length():
    """The extension checks the label count itself (it reads one label per row)."""
    from fastxent import _core

    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="labels must have one entry per row"):
        _core.cross_entropy(0, x, np.zeros(3, np.int64), None, -100, 0.0, 1, 1.0, None, None,
                            None, None, -1, None, 0.0, 0.0, None, None)


def test_core_refuses_strided_classes_and_a_misshapen_grad():
    """The kernels step through classes one element at a time and write grad row by row: _core
    refuses what they cannot walk, before writing anything."""
    from fastxent import _core

    labels = np.zeros(4, np.int64)
    x = np.zeros((4, 6), np.float32)

    def fused(logits, grad):
        return _core.cross_entropy(1, logits, labels, None, -100, 0.0, 1, 1.0, None, None, None,
                                   grad, -1, None, 0.0, 0.0, None, None)

    grad = np.full((4, 3), 7.0, np.float32)
    with pytest.raises(ValueError, match="logits must have a contiguous class axis"):
        fused(x[:, ::2], grad)
    wide = np.full((4, 6), 7.0, np.float32)
    with pytest.raises(ValueError, match="grad must have a contiguous class axis"):
        fused(x[:, :3], wide[:, ::2])
    with pytest.raises(ValueError, match="grad must have the shape of logits"):
        fused(x, grad)
    assert np.all(grad == 7.0) and np.all(wide == 7.0)


@pytest.fixture(params=[name for name in IMPLS if name.startswith("cpp-")][-1:] + ["numba"])
def fast_name(request):
    from _helpers import using_impl

    with using_impl(request.param) as name:
        yield name


def test_concurrent_calls_from_python_threads(fast_name, rng):
    """Calls from several Python threads at once (the GIL is released in the kernels) give
    the same answers as one at a time."""
    cases = []
    for k in range(16):
        shape = [(64, 1000), (2, 30000), (7, 33)][k % 3]
        x = rng.standard_normal(shape).astype(np.float32 if k % 2 else np.float64)
        labels = rng.integers(0, shape[1], size=shape[0])
        cases.append((x, labels))
    serial = [fastxent.cross_entropy_with_grad(x, y, label_smoothing=0.1, backend=fast_name)
              for x, y in cases]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(fastxent.cross_entropy_with_grad, x, y, label_smoothing=0.1,
                               backend=fast_name) for x, y in cases * 3]
        results = [f.result() for f in futures]
    for k, (loss, grad) in enumerate(results):
        want_loss, want_grad = serial[k % len(cases)]
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-9)


@needs_cpp
def test_set_num_threads_while_other_threads_compute(rng):
    x = rng.standard_normal((64, 2000))
    labels = rng.integers(0, 2000, size=64)
    want = fastxent.cross_entropy_with_grad(x, labels, backend="cpp")
    old = fastxent.get_num_threads()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(fastxent.cross_entropy_with_grad, x, labels, backend="cpp")
                       for _ in range(30)]
            for n in (1, 2, 3, 2, 1, 2) * 3:
                fastxent.set_num_threads(n)
            for f in futures:
                loss, grad = f.result()
                np.testing.assert_allclose(loss, want[0], rtol=1e-12)
                np.testing.assert_allclose(grad, want[1], rtol=1e-10, atol=1e-15)
    finally:
        fastxent.set_num_threads(old)


@needs_cpp
def test_fork_after_threads_started():
    """A child forked after the thread pool started can still compute (no deadlock)."""
    code = """
    import os, sys, warnings
    import numpy as np, fastxent
    warnings.simplefilter("ignore")
    x = np.random.default_rng(0).standard_normal((64, 2000))
    y = np.zeros(64, np.int64)
    want = fastxent.cross_entropy(x, y)
    pid = os.fork()
    if pid == 0:
        got = fastxent.cross_entropy(x, y)
        os._exit(0 if abs(got - want) < 1e-9 else 3)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    """
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    out = run_python(code, FASTXENT_NUM_THREADS="2")
    assert "child 0" in out


# ----------------------------------------------------------------------------------------------
# Environment variables (read in a fresh interpreter)


def test_env_num_threads():
    out = run_python("import fastxent; print(fastxent.get_num_threads(), fastxent.info()['num_threads'])",
                     FASTXENT_NUM_THREADS="1")
    assert out.split() == ["1", "1"]
    out = run_python("import fastxent; print(fastxent.get_num_threads())", FASTXENT_NUM_THREADS="3")
    assert out.split() == ["3"]


@needs_cpp
def test_env_isa_scalar():
    code = """
    import numpy as np, fastxent
    print(fastxent.info()["isa"])
    loss, grad = fastxent.cross_entropy_with_grad(np.array([[1.0, 2.0, 3.0]]), np.array([2]))
    print(fastxent.info()["isa"], repr(float(loss)))
    """
    out = run_python(code, FASTXENT_ISA="scalar").split()
    assert out[0] == "scalar" and out[1] == "scalar"
    want = float(fastxent.cross_entropy(np.array([[1.0, 2.0, 3.0]]), np.array([2]), backend="numpy"))
    assert abs(float(out[2]) - want) < 1e-12


@needs_cpp
@pytest.mark.parametrize("isa", fastxent.info()["isas"])
def test_env_isa_each(isa):
    out = run_python("import fastxent; print(fastxent.info()['isa'])", FASTXENT_ISA=isa)
    assert out.split() == [isa]


@pytest.mark.parametrize("name", ["numpy", "cpp", "numba", "auto"])
def test_env_backend(name):
    if name != "auto" and name not in fastxent.info()["backends"]:
        pytest.skip(f"{name} is not available")
    code = """
    import numpy as np, fastxent
    from fastxent import _backends
    print(fastxent.info()["default_backend"], _backends.get("auto").name)
    loss = fastxent.cross_entropy(np.array([[1.0, 2.0]]), np.array([0]))
    print(repr(float(loss)))
    """
    out = run_python(code, FASTXENT_BACKEND=name).split()
    expected = fastxent.info()["backends"][0] if name == "auto" else name
    assert out[:2] == [expected, expected]
    assert abs(float(out[2]) - np.log1p(np.e)) < 1e-12


def test_default_backend_prefers_cpp():
    out = run_python("import fastxent; print(fastxent.info()['default_backend'])")
    assert out.strip() == fastxent.info()["backends"][0]
    if HAVE_CPP:
        assert out.strip() == "cpp"
