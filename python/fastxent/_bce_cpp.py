"""Binary cross-entropy with logits on the compiled kernels (fastxent._core.bce)."""

from __future__ import annotations

import numpy as np

from . import _core
from ._checks import BceProblem, is_half, tiled_weight
from ._cpp_backend import _kernel_view

name = "cpp"


def compute(problem: BceProblem, loss_out, grad_out, grad_scale, grad_elems, want_total=True):
    """As _bce_reference.compute: loss_out / grad_out are flat arrays of the logits' dtype."""
    if problem.size == 0:
        return 0.0
    x, code = _kernel_view(problem.logits)
    t, _ = _kernel_view(problem.targets)
    dtype = np.dtype(np.float32) if is_half(problem.logits.dtype) else problem.logits.dtype
    period, w, w_full = tiled_weight(problem.weight, problem, dtype)
    _, pw, pw_full = tiled_weight(problem.pos_weight, problem, dtype)
    ge = None if grad_elems is None else np.ascontiguousarray(grad_elems, dtype=dtype)
    return _core.bce(x, t, w, w_full, pw, pw_full, period, ge, float(grad_scale), bool(want_total),
                     _kernel_view(loss_out)[0], _kernel_view(grad_out)[0], code)
