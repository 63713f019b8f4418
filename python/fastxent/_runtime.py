"""Threads and build information: set_num_threads, get_num_threads, info."""

from __future__ import annotations

import os
from typing import Any

from . import _backends
from ._checks import check_integer

__version__ = "0.1.0"

_python_threads = None  # the thread count when the extension is not built


def _core():
    return _backends._core_or_none()


def set_num_threads(n: int) -> None:
    """Threads used by the cpp and numba backends (n >= 1); FASTXENT_NUM_THREADS sets the start value."""
    global _python_threads
    n = check_integer(n, "num_threads", 1)
    core = _core()
    if core is not None:
        core.set_num_threads(n)
    _python_threads = n


def get_num_threads() -> int:
    core = _core()
    if core is not None:
        return core.get_num_threads()
    if _python_threads is not None:
        return _python_threads
    env = os.environ.get("FASTXENT_NUM_THREADS")
    if env:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def info() -> dict[str, Any]:
    """What was built and what is in use: version, backends, isa, isas, num_threads."""
    core = _core()
    return {
        "version": __version__,
        "backends": _backends.available(),
        "default_backend": _backends.default_name(),
        "isa": core.isa() if core is not None else "scalar",
        "isas": list(core.isas()) if core is not None else ["scalar"],
        "num_threads": get_num_threads(),
    }
