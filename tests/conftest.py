"""Fixtures: every backend (the cpp backend once per ISA this machine supports), thread counts,
a deterministic random generator, and the PyTorch oracle."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest

import fastxent
from _helpers import COMPILED_IMPLS, IMPLS, ISAS, torch_cross_entropy, using_impl

# When a hypothesis test fails, its pytest plugin writes a patch with libcst, whose import
# emits a DeprecationWarning (from mypy_extensions) that filterwarnings=error turns into an
# INTERNALERROR hiding the failure. Import it here once with that warning silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import libcst.metadata  # noqa: F401
    except ImportError:
        pass


@pytest.fixture(params=IMPLS)
def backend(request):
    """A backend name for backend=, with the cpp ISA switched for "cpp-<isa>" (restored after)."""
    with using_impl(request.param) as name:
        yield name


@pytest.fixture(params=COMPILED_IMPLS)
def fast_backend(request):
    """Like `backend` but without the NumPy reference (for comparisons against it)."""
    with using_impl(request.param) as name:
        yield name


@pytest.fixture(params=[f"cpp-{isa}" for isa in ISAS])
def cpp_isa(request):
    """The cpp backend with each compiled ISA in turn; yields the ISA name."""
    with using_impl(request.param):
        yield request.param[4:]


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def threads(request):
    """Run with 1 and with 2 threads (set_num_threads), restoring the previous count."""
    old = fastxent.get_num_threads()
    fastxent.set_num_threads(request.param)
    yield request.param
    fastxent.set_num_threads(old)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: deterministic, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def torch_ce():
    """torch_cross_entropy(logits, labels, **options) -> (loss, grad) in float64 via autograd."""
    pytest.importorskip("torch")
    return torch_cross_entropy


@pytest.fixture(autouse=True)
def _restore_runtime_state():
    """No test may leak a changed ISA or thread count into the next one."""
    core = fastxent._backends._core_or_none()
    isa = core.isa() if core is not None else None
    n = fastxent.get_num_threads()
    yield
    if core is not None:
        assert core.isa() == isa, "a test left a different ISA selected"
        core.set_isa(isa)
    assert fastxent.get_num_threads() == n, "a test left a different thread count"
    fastxent.set_num_threads(n)
