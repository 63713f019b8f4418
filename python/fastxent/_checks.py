"""Argument checking shared by every backend: one place that turns what the caller passed into a
normalised problem (2-D logits with a contiguous class axis, 1-D labels) or raises an error that
names the argument and the problem. Nothing here writes to a caller's buffer."""

from __future__ import annotations

import operator

import numpy as np

REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_half(dtype) -> bool:
    """float16, or bfloat16 (ml_dtypes' type; recognised by name, so ml_dtypes is not needed)."""
    return dtype == np.float16 or (dtype.name == "bfloat16" and dtype.itemsize == 2)


def lse_dtype(dtype) -> np.dtype:
    """The dtype of the per-row lse: float32 for 16-bit logits (computed in float32)."""
    return np.dtype(np.float32) if is_half(dtype) else dtype


def as_array(value, name: str) -> np.ndarray:
    """A NumPy view of `value` without copying when it speaks DLPack or the buffer protocol."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__dlpack__"):
        try:
            return np.from_dlpack(value)
        except (TypeError, BufferError, RuntimeError, ValueError) as exc:
            if "require" in str(exc) and "grad" in str(exc):
                raise TypeError(
                    f"{name} is a tensor that requires grad: pass {name}.detach(), "
                    "or use fastxent.torch for autograd"
                ) from None
    try:
        return np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
        raise TypeError(f"{name} could not be read as an array: {exc}") from None


class Problem:
    """A normalised cross-entropy call."""

    __slots__ = (
        "logits", "labels", "shape", "classes", "weight", "ignore_index", "smoothing",
        "reduction", "source",
    )

    def __init__(self, logits, labels, shape, weight, ignore_index, smoothing, reduction, source):
        self.logits = logits        # (N, C) float16/bfloat16/float32/float64, class stride 1
        self.labels = labels        # (N,) any integer dtype, values not yet checked
        self.shape = shape          # the caller's logits shape (..., C)
        self.classes = shape[-1]
        self.weight = weight        # (C,) float64 or None
        self.ignore_index = ignore_index
        self.smoothing = smoothing
        self.reduction = reduction
        self.source = source        # the caller's logits array (for inplace=True)

    @property
    def rows(self) -> int:
        return self.logits.shape[0]

    def labels64(self) -> np.ndarray:
        """Labels as int64, checked: each a class index or ignore_index."""
        if self.labels.dtype == np.uint64:
            too_big = self.labels > np.iinfo(np.int64).max  # no int64 holds them: never valid
            if too_big.any():
                row = int(np.flatnonzero(too_big)[0])
                raise label_error(self, row, int(self.labels[row]))
        labels = self.labels.astype(np.int64, copy=False)
        bad = ((labels < 0) | (labels >= self.classes)) & (labels != self.ignore_index)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise label_error(self, row, int(labels[row]))
        return labels


def label_error(problem: Problem, row: int, value: int) -> ValueError:
    where = row
    lead = problem.shape[:-1]
    if len(lead) != 1:
        where = ", ".join(str(int(i)) for i in np.unravel_index(row, lead)) if lead else ""
    return ValueError(
        f"labels[{where}] = {value} is not a class index in [0, {problem.classes}) "
        f"nor ignore_index ({problem.ignore_index})"
    )


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def check_smoothing(label_smoothing) -> float:
    try:
        eps = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(f"label_smoothing must be a real number, got {label_smoothing!r}") from None
    if not (0.0 <= eps <= 1.0):  # also rejects NaN
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return eps


def check_weight(weight, classes: int):
    if weight is None:
        return None
    w = as_array(weight, "weight")
    if w.dtype.kind not in "fiu" or w.dtype.kind == "b":
        raise TypeError(f"weight must be real numbers, got dtype {w.dtype}")
    if w.shape != (classes,):
        raise ValueError(f"weight must have shape ({classes},) (one per class), got {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float64)
    if not np.isfinite(w).all():
        raise ValueError("weight must be finite, got NaN or inf")
    return w


def check_logits(logits, name="logits") -> np.ndarray:
    x = as_array(logits, name)
    if x.dtype not in FLOAT_DTYPES and not is_half(x.dtype):
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have a class axis: shape (..., classes), got a scalar")
    return x


def make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction) -> Problem:
    x = check_logits(logits)
    y = as_array(labels, "labels")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype (class indices), got {y.dtype}")
    shape = x.shape
    if y.shape != shape[:-1]:
        raise ValueError(
            f"labels must have shape {shape[:-1]} to match logits of shape {shape}, got {y.shape}"
        )
    classes = shape[-1]
    if classes == 0:
        raise ValueError(f"logits must have at least one class, got shape {shape}")
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}") from None
    if not -(2**63) <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")
    # inplace=True can only write to the caller's memory when x views it (not for a list).
    source = x if isinstance(logits, np.ndarray) or hasattr(logits, "__dlpack__") else None
    if classes > 1 and x.strides[-1] != x.itemsize:
        x = np.ascontiguousarray(x)  # the kernels need a contiguous class axis: copy once
    if x.ndim != 2:
        x = x.reshape(-1, classes)
    if y.ndim != 1:
        y = y.reshape(-1)
    return Problem(
        x, y, shape, check_weight(weight, classes), ignore_index,
        check_smoothing(label_smoothing), check_reduction(reduction), source,
    )


def rows_view(array: np.ndarray, classes: int):
    """`array` as (rows, classes) without a copy, or None when its rows are not evenly spaced."""
    # (Not `view.shape = ...`: NumPy 2.5 deprecates setting shape; reshape copies instead of
    # failing when no view exists, so a result that shares no memory means "not evenly spaced".)
    view = array.reshape(-1, classes)
    if view.size and not np.may_share_memory(view, array):
        return None
    return view


def gradient_buffer(problem: Problem, out, inplace: bool):
    """The caller's array the gradient goes to and its (N, C) view, or (None, None) to allocate."""
    if inplace and out is not None:
        raise ValueError("pass either out= or inplace=True, not both")
    if inplace:
        src = problem.source
        if not isinstance(src, np.ndarray) or not src.flags.writeable:
            raise ValueError("inplace=True needs logits that are a writable array")
        view = problem.logits
        if not np.shares_memory(view, src) and view.size:
            raise ValueError(
                "inplace=True needs logits whose class axis is contiguous and whose rows are "
                "evenly spaced; this array would have to be copied"
            )
        return src, view
    if out is None:
        return None, None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != problem.shape:
        raise ValueError(f"out must have the logits' shape {problem.shape}, got {out.shape}")
    if out.dtype != problem.logits.dtype:
        raise TypeError(f"out must have the logits' dtype {problem.logits.dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out must be writable")
    classes = problem.classes
    if classes > 1 and out.size and out.strides[-1] != out.itemsize:
        raise ValueError("out must have a contiguous class (last) axis")
    view = rows_view(out, classes)
    if view is None:
        raise ValueError("out's rows must be evenly spaced (reshapeable to (rows, classes) without a copy)")
    if np.may_share_memory(view, problem.logits):
        # Reading and writing the same element of the same row is safe; any other overlap is not.
        same = (
            view.__array_interface__["data"][0] == problem.logits.__array_interface__["data"][0]
            and view.strides == problem.logits.strides
        )
        if not same:
            raise ValueError("out overlaps logits; use inplace=True to write the gradient over the logits")
    return out, view


def check_grad_output(grad_output, problem: Problem):
    """(scalar, per-row float64 array or None)."""
    if problem.reduction != "none" or np.ndim(grad_output) == 0:
        try:
            scalar = float(grad_output)
        except (TypeError, ValueError):
            raise TypeError(
                f"grad_output must be a real number for reduction={problem.reduction!r}, "
                f"got {type(grad_output).__name__}"
            ) from None
        return scalar, None
    g = as_array(grad_output, "grad_output")
    lead = problem.shape[:-1]
    if g.shape != lead:
        raise ValueError(f"grad_output must be a scalar or have shape {lead} (one per row), got {g.shape}")
    if g.dtype.kind not in "fiu" and not is_half(g.dtype):
        raise TypeError(f"grad_output must be real numbers, got dtype {g.dtype}")
    return 1.0, np.ascontiguousarray(g, dtype=np.float64).reshape(-1)

