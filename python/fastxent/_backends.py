"""Which backend runs a call: "cpp" (compiled SIMD kernels), "numba" or "numpy" (the reference).

"auto" means FASTXENT_BACKEND if set, else cpp when the extension is built, else numba when it
is installed, else numpy. Backends are imported on first use, so Numba is never required."""

from __future__ import annotations

import importlib
import importlib.util
import os

NAMES = ("cpp", "numba", "numpy")
_MODULES = {"cpp": "._cpp_backend", "numba": "._numba_backend", "numpy": "._reference"}
_loaded: dict = {}
_fast_cores: dict = {}  # name -> the compiled module when the name resolves to cpp, else None


def _core_or_none():
    try:
        from . import _core
    except ImportError:
        return None
    return _core


def _numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def available() -> list:
    names = []
    if _core_or_none() is not None:
        names.append("cpp")
    if _numba_installed():
        names.append("numba")
    names.append("numpy")
    return names


def default_name() -> str:
    env = os.environ.get("FASTXENT_BACKEND", "").strip()
    if env and env != "auto":
        if env not in NAMES:
            raise ValueError(f"FASTXENT_BACKEND must be one of auto, {', '.join(NAMES)}; got {env!r}")
        return env
    return available()[0]


def get(name: str):
    """The backend module for `name` ("auto" resolved), imported on first use."""
    module = _loaded.get(name)
    if module is not None:
        return module
    if name == "auto":
        resolved = default_name()
    elif name in NAMES:
        resolved = name
    else:
        raise ValueError(f"backend must be 'auto', 'cpp', 'numba' or 'numpy', got {name!r}")
    if resolved == "cpp" and _core_or_none() is None:
        raise RuntimeError("backend='cpp' needs the compiled extension fastxent._core, which is not built")
    if resolved == "numba" and not _numba_installed():
        raise RuntimeError("backend='numba' needs Numba: pip install numba")
    module = importlib.import_module(_MODULES[resolved], __package__)
    _loaded[name] = module
    return module


def fast_core(name: str):
    """fastxent._core when `name` resolves to the cpp backend, else None (the small-call fast
    path). Raises as get() does for a bad name."""
    core = _fast_cores.get(name, _fast_cores)
    if core is _fast_cores:  # not resolved yet
        module = get(name)
        core = module.core if module.name == "cpp" else None
        _fast_cores[name] = core
    return core


def reset() -> None:
    """Forget resolved backends (after FASTXENT_BACKEND changes)."""
    _loaded.clear()
    _fast_cores.clear()
