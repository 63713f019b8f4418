"""Argument checking shared by every backend: one place that turns what the caller passed into a
normalised problem (2-D logits with a contiguous class axis, 1-D labels) or raises an error that
names the argument and the problem. Nothing here writes to a caller's buffer."""

from __future__ import annotations

import operator

import numpy as np

REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_bfloat16(dtype) -> bool:
    """ml_dtypes' bfloat16, recognised by name (so ml_dtypes is not needed). The item size is
    read first: dtype.name is a slow Python property, and float32/float64 stop there."""
    return dtype.itemsize == 2 and dtype.name == "bfloat16"


def is_half(dtype) -> bool:
    """float16 or bfloat16."""
    return dtype.itemsize == 2 and (dtype == np.float16 or dtype.name == "bfloat16")


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
        "reduction", "source", "targets", "z_loss", "softcap",
    )

    def __init__(self, logits, labels, shape, weight, ignore_index, smoothing, reduction, source,
                 targets=None, z_loss=0.0, softcap=None):
        self.logits = logits        # (N, C) float16/bfloat16/float32/float64, class stride 1
        self.labels = labels        # (N,) any integer dtype, values not yet checked; None with targets
        self.shape = shape          # the caller's logits shape (..., C)
        self.classes = shape[-1]
        self.weight = weight        # (C,) float64 or None
        self.ignore_index = ignore_index
        self.smoothing = smoothing
        self.reduction = reduction
        self.source = source        # the caller's logits array (for inplace=True)
        self.targets = targets      # (N, C) class probabilities in the compute dtype, or None
        self.z_loss = z_loss        # coefficient of lse**2 per row (0: off)
        self.softcap = softcap      # logits pass through softcap * tanh(x / softcap); None: off

    @property
    def soft(self) -> bool:
        """Probability targets rather than class indices."""
        return self.targets is not None

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
    where: int | str = row
    lead = problem.shape[:-1]
    if len(lead) != 1:
        where = ", ".join(str(int(i)) for i in np.unravel_index(row, lead)) if lead else ""
    return ValueError(
        f"labels[{where}] = {value} is not a class index in [0, {problem.classes}) "
        f"nor ignore_index ({problem.ignore_index})"
    )


def check_integer(value, name: str, minimum: int, expected: str = "an integer") -> int:
    """value as a Python int >= minimum, or a TypeError / ValueError naming `name`."""
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {expected}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be {expected} >= {minimum}, got {number}")
    return number


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


def compute_dtype(dtype) -> np.dtype:
    """The dtype rows are computed in: float64 for float64 logits, float32 otherwise."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def check_z_loss(z_loss) -> float:
    try:
        z = float(z_loss)
    except (TypeError, ValueError):
        raise TypeError(f"z_loss must be a real number, got {z_loss!r}") from None
    if not (0.0 <= z < np.inf):  # also rejects NaN
        raise ValueError(f"z_loss must be finite and >= 0, got {z_loss!r}")
    return z


def check_softcap(softcap):
    if softcap is None:
        return None
    try:
        cap = float(softcap)
    except (TypeError, ValueError):
        raise TypeError(f"softcap must be None or a positive number, got {softcap!r}") from None
    if not (0.0 < cap < np.inf):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")
    return cap


def _soft_targets(y: np.ndarray, x: np.ndarray, ignore_index: int) -> np.ndarray:
    """Probability targets as (N, C) rows in the logits' compute dtype (copied only if needed)."""
    if y.shape == x.shape[:-1]:
        raise TypeError(
            f"labels of shape {y.shape} are class indices and need an integer dtype, got "
            f"{y.dtype} (class probabilities need the logits' shape {x.shape})"
        )
    if y.shape != x.shape:
        raise ValueError(
            f"labels of a float dtype are class probabilities and must have the logits' shape "
            f"{x.shape}, got {y.shape} (class indices need an integer dtype)"
        )
    if ignore_index >= 0:  # as torch.nn.functional.cross_entropy
        raise ValueError(
            f"ignore_index ({ignore_index}) is not supported with probability targets "
            "(labels of a float dtype)"
        )
    t = np.ascontiguousarray(y, dtype=compute_dtype(x.dtype))
    return t.reshape(-1, x.shape[-1])


def make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction, z_loss=0.0,
                 softcap=None) -> Problem:
    x = check_logits(logits)
    y: np.ndarray | None = as_array(labels, "labels")
    assert y is not None
    soft = y.dtype.kind == "f" or is_half(y.dtype)
    if not soft and y.dtype.kind not in "iu":
        raise TypeError(
            f"labels must have an integer dtype (class indices) or a float dtype (class "
            f"probabilities), got {y.dtype}"
        )
    shape = x.shape
    if not soft and y.shape != shape[:-1]:
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
    targets = _soft_targets(y, x, ignore_index) if soft else None
    # inplace=True can only write to the caller's memory when x views it (not for a list).
    source = x if isinstance(logits, np.ndarray) or hasattr(logits, "__dlpack__") else None
    if classes > 1 and x.strides[-1] != x.itemsize:
        x = np.ascontiguousarray(x)  # the kernels need a contiguous class axis: copy once
    if x.ndim != 2:
        x = x.reshape(-1, classes)
    if soft:
        y = None
    elif y.ndim != 1:
        y = y.reshape(-1)
    smoothing = check_smoothing(label_smoothing)
    if smoothing / classes == 0.0:
        # eps / C underflows (eps ~ 1e-323): every class's smoothing target is 0 and 1 - eps
        # is 1, so the call is unsmoothed; saying so keeps 0 * inf out of the kernels' sums.
        smoothing = 0.0
    return Problem(
        x, y, shape, check_weight(weight, classes), ignore_index,
        smoothing, check_reduction(reduction), source,
        targets=targets, z_loss=check_z_loss(z_loss), softcap=check_softcap(softcap),
    )


def rows_view(array: np.ndarray, classes: int):
    """`array` as (rows, classes) without a copy, or None when its rows are not evenly spaced."""
    # (Not `view.shape = ...`: NumPy 2.5 deprecates setting shape; reshape copies instead of
    # failing when no view exists, so a result that shares no memory means "not evenly spaced".)
    view = array.reshape(-1, classes)
    if view.size and not np.may_share_memory(view, array):
        return None
    return view


def inplace_source(problem, out) -> np.ndarray:
    """The caller's logits array for inplace=True (a writable NumPy array, and no out=)."""
    if out is not None:
        raise ValueError("pass either out= or inplace=True, not both")
    src = problem.source
    if not isinstance(src, np.ndarray) or not src.flags.writeable:
        raise ValueError("inplace=True needs logits that are a writable array")
    return src


def check_out_array(out, shape: tuple, dtype) -> None:
    """out= must be a writable NumPy array of the logits' shape and dtype."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have the logits' shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"out must have the logits' dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out must be writable")


def gradient_buffer(problem: Problem, out, inplace: bool):
    """The caller's array the gradient goes to and its (N, C) view, or (None, None) to allocate."""
    if inplace:
        src = inplace_source(problem, out)
        view = problem.logits
        if not np.shares_memory(view, src) and view.size:
            raise ValueError(
                "inplace=True needs logits whose class axis is contiguous and whose rows are "
                "evenly spaced; this array would have to be copied"
            )
        return src, view
    if out is None:
        return None, None
    check_out_array(out, problem.shape, problem.logits.dtype)
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


def check_grad_output_shaped(grad_output, reduction: str, shape: tuple, shape_words: str):
    """(scalar, float64 array of `shape` flattened, or None): a scalar for "mean"/"sum", a scalar
    or an array of `shape` (described as `shape_words` in errors) for "none"."""
    if reduction != "none" or np.ndim(grad_output) == 0:
        try:
            scalar = float(grad_output)
        except (TypeError, ValueError):
            raise TypeError(
                f"grad_output must be a real number for reduction={reduction!r}, "
                f"got {type(grad_output).__name__}"
            ) from None
        return scalar, None
    g = as_array(grad_output, "grad_output")
    if g.shape != shape:
        raise ValueError(f"grad_output must be a scalar or have {shape_words} {shape}, got {g.shape}")
    if g.dtype.kind not in "fiu" and not is_half(g.dtype):
        raise TypeError(f"grad_output must be real numbers, got dtype {g.dtype}")
    return 1.0, np.ascontiguousarray(g, dtype=np.float64).reshape(-1)


def check_grad_output(grad_output, problem: Problem):
    """(scalar, per-row float64 array or None)."""
    return check_grad_output_shaped(grad_output, problem.reduction, problem.shape[:-1],
                                    "one value per row: shape")



# ----------------------------------------------------------------------------------------------
# Binary cross-entropy (fastxent.binary_cross_entropy_with_logits): every element is its own
# problem, so the arrays are handled flat. weight / pos_weight / grad_output arrays are float64
# and either "periodic" (length C = the last axis, the same for every row) or "full" (one value
# per element, length n); the backends tell them apart by length (n == C means one row, where
# both readings agree).


class BceProblem:
    """A normalised binary cross-entropy call."""

    __slots__ = ("logits", "targets", "shape", "classes", "weight", "pos_weight", "reduction",
                 "source")

    def __init__(self, logits, targets, shape, weight, pos_weight, reduction, source):
        self.logits = logits          # (n,) contiguous, float16/bfloat16/float32/float64
        self.targets = targets        # (n,) contiguous, the logits' dtype
        self.shape = shape            # the caller's shape
        self.classes = shape[-1] if shape else 1
        self.weight = weight          # None, (C,) or (n,) float64
        self.pos_weight = pos_weight  # None, (C,) or (n,) float64
        self.reduction = reduction
        self.source = source          # the caller's logits array (for inplace=True)

    @property
    def size(self) -> int:
        return self.logits.shape[0]


def check_float_array(value, name: str) -> np.ndarray:
    """A float16/bfloat16/float32/float64 array of any shape (a 0-d array too)."""
    x = as_array(value, name)
    if x.dtype not in FLOAT_DTYPES and not is_half(x.dtype):
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    return x


def check_elementwise_weight(value, name: str, shape):
    """None, or `value` broadcast against logits of `shape`: float64 (C,) when it is the same
    for every row (a scalar, or leading axes of size 1), else float64 (n,)."""
    if value is None:
        return None
    a = as_array(value, name)
    if (a.dtype.kind not in "biuf" and not is_half(a.dtype)) or a.dtype.kind == "b":
        raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    try:
        fits = np.broadcast_shapes(a.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name} of shape {a.shape} does not broadcast to the logits' shape {shape}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    classes = shape[-1] if shape else 1
    if all(d == 1 for d in a.shape[:-1]):
        return np.ascontiguousarray(np.broadcast_to(a.reshape(a.shape[-1:]), (classes,)))
    return np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1)


def make_bce_problem(logits, targets, weight, pos_weight, reduction) -> BceProblem:
    x = check_float_array(logits, "logits")
    t = as_array(targets, "targets")
    if (t.dtype.kind not in "biuf" and not is_half(t.dtype)):
        raise TypeError(f"targets must be real numbers (probabilities in [0, 1]), got dtype {t.dtype}")
    shape = x.shape
    if t.shape != shape:
        raise ValueError(f"targets must have the logits' shape {shape}, got {t.shape}")
    # inplace=True can only write to the caller's memory when x views it (not for a list).
    source = x if isinstance(logits, np.ndarray) or hasattr(logits, "__dlpack__") else None
    return BceProblem(
        np.ascontiguousarray(x).reshape(-1),
        np.ascontiguousarray(t, dtype=x.dtype).reshape(-1),
        shape,
        check_elementwise_weight(weight, "weight", shape),
        check_elementwise_weight(pos_weight, "pos_weight", shape),
        check_reduction(reduction),
        source,
    )


def check_bce_grad_output(grad_output, problem: BceProblem):
    """(scalar, float64 (n,) per-element array or None)."""
    return check_grad_output_shaped(grad_output, problem.reduction, problem.shape,
                                    "the logits' shape")


def _same_elements(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b are contiguous views of exactly the same elements."""
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.size == b.size and a.itemsize == b.itemsize
        and a.flags.c_contiguous and b.flags.c_contiguous
    )


def bce_gradient_buffer(problem: BceProblem, out, inplace: bool, extra=()):
    """(array returned to the caller, flat contiguous array the kernel writes, or (None, None)
    to allocate). When the second is not a view of the first the caller copies it over
    afterwards. `extra` are other inputs (grad_output) that out must not overlap."""
    if inplace:
        src = inplace_source(problem, out)
        if not src.flags.c_contiguous:
            raise ValueError("inplace=True needs C-contiguous logits; this array would have to be copied")
        return src, src.reshape(-1)
    if out is None:
        return None, None
    check_out_array(out, problem.shape, problem.logits.dtype)
    flat = out.reshape(-1) if out.flags.c_contiguous else None
    # Each element's gradient is written after its logit and target are read, so out may be
    # exactly the logits (or targets) buffer; any other overlap would read written values.
    for arr, name in ((problem.logits, "logits"), (problem.targets, "targets")):
        if np.may_share_memory(out, arr) and out.size:
            if flat is None or not _same_elements(flat, arr):
                raise ValueError(f"out overlaps {name}; use inplace=True to write the gradient over the logits")
    for arr, name in ((problem.weight, "weight"), (problem.pos_weight, "pos_weight")) + tuple(extra):
        if arr is not None and np.may_share_memory(out, arr) and out.size:
            raise ValueError(f"out overlaps {name}")
    if flat is None:
        return out, np.empty(problem.size, out.dtype)
    return out, flat


BCE_PERIOD = 1024


def tiled_weight(a, problem: BceProblem, dtype):
    """(period, array in `dtype`, full?) for an elementwise kernel: a periodic weight (or ones
    when a is None) repeated to `period` values, a multiple of the last axis' length of at least
    BCE_PERIOD, so inner loops run over long segments even when that axis is short."""
    n, c = problem.size, max(problem.classes, 1)
    period = c * -(-BCE_PERIOD // c)
    if a is None:
        return period, np.ones(period, dtype), False
    if a.shape[0] == n and n != c:
        return period, a.astype(dtype), True
    return period, np.tile(a.astype(dtype), period // c), False
