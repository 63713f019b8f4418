"""PyTorch glue: a drop-in ``cross_entropy`` / ``CrossEntropyLoss`` backed by the fastxent kernels.

    import fastxent.torch as fxt
    loss = fxt.cross_entropy(logits, target)            # like torch.nn.functional.cross_entropy
    loss.backward()                                     # gradient from the saved log-sum-exp

Same signature (options after ``weight`` are keyword-only, see below) and results as
``torch.nn.functional.cross_entropy`` / ``torch.nn.CrossEntropyLoss`` with class-index targets:
``weight``, ``ignore_index``, ``label_smoothing``, ``reduction``; inputs ``(N, C)``, unbatched
``(C,)`` with a 0-d target, and ``(N, C, d1, ..., dk)`` with targets ``(N, d1, ..., dk)``.
CPU tensors only.

How it runs
-----------
In eager mode a ``torch.autograd.Function`` hands the tensors' NumPy views (zero copy) to
``fastxent.cross_entropy_forward`` & co. Under ``torch.compile`` (and ``torch.export``) the same
kernels run as custom operators (``torch.ops.fastxent.ce_forward``, ``ce_backward``,
``ce_fused``, ``ce_scale_grad``) with fake (shape) implementations and autograd formulas, so the
compiler keeps them as opaque ops in its graph: no graph breaks, ``fullgraph=True`` works.
Eager mode does not use the ops because dispatching through them costs about twice the
per-call overhead, which is most of the time for small batches.

* Default: the forward computes the loss and keeps the per-row log-sum-exp; the backward makes
  the gradient from it in one read of the logits (no max/sum recomputed).
* Plain calls (2-D float32/float64 input, int64 targets, no weight, smoothing, ignore_index
  other than -100, z-loss, softcap or extras) take a fast path (``_torch_fast``) to the
  kernels' small-call entry, which skips most of the wrapper's per-call work. With a gradient
  to come and at most 2**20 logits, it runs the fused pass in the forward, as
  ``grad_in_forward`` does (one pass over the logits instead of two; the held gradient is at
  most 8 MiB). Above that size the default above applies.
* ``grad_in_forward=True``: the forward computes loss and gradient in one fused pass and keeps the
  gradient; the backward hands it on as it is when ``grad_output`` is 1 (``loss.backward()``)
  and scales it (a new tensor) otherwise. It holds a logits-sized gradient from forward to
  backward, wasted if you never call backward. Skipped when no gradient is needed.
* ``inplace=True`` (implies ``grad_in_forward``): the gradient is written over the logits' own
  storage, so no gradient buffer is allocated at all. See "In-place" below.

Layouts and dtypes
------------------
The kernels need the class axis contiguous and last. ``(N, C)`` inputs are used as they are
(row-strided slices too). ``(N, C, d1, ..., dk)`` inputs have their class axis moved last,
which makes a copy of the logits (and the gradient goes back through that copy).
float32, float64 and float16 run natively, and bfloat16 too when ml_dtypes is installed (NumPy
has no bfloat16 of its own; without ml_dtypes bfloat16 is upcast to float32, a copy, and the
loss cast back). 16-bit logits are computed in float32 inside the kernels: the loss and the
gradient come back in the input's dtype, each rounded once; the saved lse is float32.
Targets: any integer dtype (torch itself only takes int64/uint8), or class probabilities (a
float tensor of the input's shape). The gradient with respect to ``weight`` is not computed
(as in PyTorch), nor with respect to probability targets.

Why keyword-only options
------------------------
PyTorch's signatures still have the deprecated ``size_average`` and ``reduce`` between ``weight``
and ``ignore_index``. Making everything after ``weight`` keyword-only means code written for
PyTorch either means the same thing here or fails loudly, never silently shifts an argument.

In-place
--------
``inplace=True`` overwrites the input with the gradient during the forward, so it is only for
logits that nothing else needs afterwards: typically the output of a ``Linear`` layer (whose
backward needs its input and weight, not its output) that you do not read after the loss call
(compute accuracy/argmax *before* the loss). It is refused with a RuntimeError for leaf tensors
that require grad, for views (e.g. ``x.view(-1, C)`` or a 3-D ``Linear`` output; apply the layer
to a 2-D input instead), for non-contiguous inputs, for upcast bfloat16, for inputs with the
class axis not last (more than 2 dims) and under ``torch.compile``. The write bumps the tensor's
version counter, so if another autograd node saved the logits (``exp``, ``sigmoid``,
``softmax``...) PyTorch raises "modified by an inplace operation" at backward time instead of
computing a wrong gradient. When no gradient is needed (no_grad, or an input that does not
require grad) nothing is overwritten. The backward scales the gradient in place as well (when
``grad_output`` is not 1), so backpropagating twice through the same graph
(``retain_graph=True``) then raises.

Double backward (second derivatives) is not supported and raises a RuntimeError that says so:
when the backward runs with ``create_graph=True`` or, in the default mode under torch.compile,
when the gradient is differentiated.
"""

from __future__ import annotations

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fastxent.torch needs PyTorch, which is not installed: pip install torch "
        "(the CPU build is enough; fastxent's kernels run on CPU)"
    ) from exc

from typing import Any

import numpy as np

import fastxent

from ._checks import check_reduction, check_softcap, check_z_loss, is_bfloat16
from ._types import Reduction

__all__ = ["CrossEntropyLoss", "cross_entropy", "linear_cross_entropy",
           "vocab_parallel_cross_entropy"]

ml_dtypes: Any
try:
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes comes with JAX and the test extras
    ml_dtypes = None
_HALF = (torch.float16, torch.bfloat16)
# Passed to the kernels as they are (16-bit ones computed in float32 inside) ...
_NATIVE = (torch.float32, torch.float64, torch.float16) + ((torch.bfloat16,) if ml_dtypes else ())
# ... or copied to float32 first: bfloat16 without ml_dtypes to view it as in NumPy.
_UPCAST = tuple(d for d in _HALF if d not in _NATIVE)
_OPTS = ("int ignore_index, float label_smoothing, str reduction, float z_loss, float softcap, "
         "bool want_accuracy")


def _options(ignore_index, label_smoothing, reduction, z_loss, softcap, want_accuracy):
    """The ops' option values as fastxent keywords (softcap 0 means none)."""
    return dict(ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                z_loss=z_loss, softcap=softcap or None)


def _extras_tensors(result, want_accuracy):
    """(z-loss term, accuracy) tensors from a fastxent result tuple ending in (z[, accuracy])."""
    z = _loss_tensor(result[-2] if want_accuracy else result[-1])
    # (0 when not asked for: a NaN placeholder would not compare equal to itself in opcheck)
    acc = torch.tensor(float(result[-1]) if want_accuracy else 0.0, dtype=torch.float64)
    return z, acc


# ----------------------------------------------------------------------------------------------
# Custom operators: the kernels as ops torch.compile can keep in its graph without tracing them.
# Their implementations see plain CPU tensors; everything is passed to fastxent as NumPy views.


def _np(t):
    # detach: the op bodies run below autograd but the tensors may still carry requires_grad.
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:  # NumPy cannot view it: through its bits (same memory)
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _out(grad):
    # NumPy gives empty arrays zero strides, which fastxent's out= check rejects as "class axis
    # not contiguous": let it allocate its own (empty) result then.
    return _np(grad) if grad.numel() else None


def _loss_tensor(loss):
    # fastxent returns a NumPy scalar (mean/sum) or a freshly allocated array (none): wrap it
    # without a copy (np.asarray turns the scalar into a writable 0-d array).
    loss = np.asarray(loss)
    if is_bfloat16(loss.dtype):
        return torch.from_numpy(loss.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(loss)


def _lse_dtype(logits):
    return torch.float32 if logits.dtype in _HALF else logits.dtype


def _loss_shape(logits, reduction):
    return (logits.shape[0],) if reduction == "none" else ()


@torch.library.custom_op(
    "fastxent::ce_forward", mutates_args=(),
    schema=(f"(Tensor logits, Tensor labels, Tensor? weight, {_OPTS}) "
            "-> (Tensor, Tensor, Tensor, Tensor)"),
)
def _ce_forward(logits, labels, weight, *options):
    """(loss, lse, z-loss term, accuracy) for (N, C) logits and (N,) labels or (N, C) targets."""
    want_accuracy = options[-1]
    result = fastxent.cross_entropy_forward(
        _np(logits), _np(labels), weight=_np(weight), return_z_loss=True,
        return_accuracy=want_accuracy, **_options(*options),
    )
    return (_loss_tensor(result[0]), torch.from_numpy(result[1]),
            *_extras_tensors(result, want_accuracy))


def _fake_extras(logits, reduction):
    return (logits.new_empty(_loss_shape(logits, reduction)),
            logits.new_empty((), dtype=torch.float64))


@_ce_forward.register_fake
def _(logits, labels, weight, ignore_index, label_smoothing, reduction, *rest):
    return (logits.new_empty(_loss_shape(logits, reduction)),
            logits.new_empty((logits.shape[0],), dtype=_lse_dtype(logits)),
            *_fake_extras(logits, reduction))


@torch.library.custom_op(
    "fastxent::ce_backward", mutates_args=(),
    schema=(f"(Tensor grad_output, Tensor logits, Tensor labels, Tensor lse, Tensor? weight, "
            f"{_OPTS}) -> Tensor"),
)
def _ce_backward(grad_output, logits, labels, lse, weight, *options):
    """d(loss * grad_output)/d logits from the saved lse, written into a fresh tensor's buffer."""
    grad = torch.empty(logits.shape, dtype=logits.dtype)
    fastxent.cross_entropy_backward(
        _np(logits), _np(labels), _np(lse), weight=_np(weight), grad_output=_np(grad_output),
        out=_out(grad), **_options(*options),
    )
    return grad


@_ce_backward.register_fake
def _(grad_output, logits, labels, lse, weight, *options):
    # Always C-contiguous (not empty_like): the real op allocates it so, whatever the logits'
    # strides, and the kernels want a contiguous class axis in out=.
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


@torch.library.custom_op(
    "fastxent::ce_fused", mutates_args=(),
    schema=(f"(Tensor logits, Tensor labels, Tensor? weight, {_OPTS}) "
            "-> (Tensor, Tensor, Tensor, Tensor)"),
)
def _ce_fused(logits, labels, weight, *options):
    """(loss, grad, z-loss term, accuracy) in one pass, grad for grad_output=1: for "none" it is
    the unscaled per-row gradient, so any per-row grad_output can be applied later by scaling
    rows."""
    want_accuracy = options[-1]
    grad = torch.empty(logits.shape, dtype=logits.dtype)
    result = fastxent.cross_entropy_with_grad(
        _np(logits), _np(labels), weight=_np(weight), out=_out(grad), return_z_loss=True,
        return_accuracy=want_accuracy, **_options(*options),
    )
    return (_loss_tensor(result[0]), grad, *_extras_tensors(result, want_accuracy))


@_ce_fused.register_fake
def _(logits, labels, weight, ignore_index, label_smoothing, reduction, *rest):
    return (logits.new_empty(_loss_shape(logits, reduction)),
            torch.empty(logits.shape, dtype=logits.dtype, device=logits.device),
            *_fake_extras(logits, reduction))


@torch.library.custom_op("fastxent::ce_scale_grad", mutates_args=(),
                         schema="(Tensor grad, Tensor grad_output) -> Tensor")
def _ce_scale_grad(grad, grad_output):
    """grad * grad_output, per row when grad_output has one value per row. An op of its own only
    so that differentiating through it (double backward) raises instead of silently missing the
    dependence of grad on the logits."""
    return grad * _rows(grad_output, grad)


@_ce_scale_grad.register_fake
def _(grad, grad_output):
    return torch.empty_like(grad)


def _rows(grad_output, grad):
    # A scalar scales everything; a (N,) grad_output scales row i of the (N, C) gradient.
    return grad_output if grad_output.dim() == 0 else grad_output.unsqueeze(-1)


# Autograd formulas for the ops.


_NO_OPTION_GRADS = (None,) * 8  # labels, weight and the six options


def _forward_setup(ctx, inputs, output):
    logits, labels, weight, *options = inputs
    # lse, the z-loss term (for logging) and accuracy are by-products, not differentiable.
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(logits, labels, weight, output[1])
    ctx.options = options


def _forward_backward(ctx, grad_loss, *_by_products):
    logits, labels, weight, lse = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = torch.ops.fastxent.ce_backward(grad_loss, logits, labels, lse, weight, *ctx.options)
    return (grad, *_NO_OPTION_GRADS)


_ce_forward.register_autograd(_forward_backward, setup_context=_forward_setup)


def _fused_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(output[1])


def _fused_backward(ctx, grad_loss, *_by_products):
    if torch.is_grad_enabled():
        # create_graph=True: the saved gradient carries no history back to the logits, so a
        # derivative of what we return would silently miss the Hessian term. Refuse now.
        raise RuntimeError(_DOUBLE_BACKWARD)
    (grad,) = ctx.saved_tensors
    scaled = torch.ops.fastxent.ce_scale_grad(grad, grad_loss) if ctx.needs_input_grad[0] else None
    return (scaled, *_NO_OPTION_GRADS)


_ce_fused.register_autograd(_fused_backward, setup_context=_fused_setup)

_DOUBLE_BACKWARD = (
    "fastxent.torch.cross_entropy can be differentiated once: its second derivative (double "
    "backward: create_graph=True through it, then differentiating the gradient) is not "
    "implemented. Use torch.nn.functional.cross_entropy for higher-order gradients."
)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(_DOUBLE_BACKWARD)


def _no_setup(ctx, inputs, output):
    pass


_ce_backward.register_autograd(_no_double_backward, setup_context=_no_setup)
_ce_scale_grad.register_autograd(_no_double_backward, setup_context=_no_setup)


# ----------------------------------------------------------------------------------------------
# Eager mode: an autograd.Function calling fastxent directly. Same kernels as the ops above, but
# about half the per-call overhead of dispatching through custom ops (which matters for small
# batches), and the only way to do in-place: mark_dirty has no custom-op equivalent.


def _is_one(grad_output):
    # loss.backward() passes exactly 1 (or, for "none" then .sum(), a row of ones): the saved
    # gradient is then already the answer and needs no pass over it.
    if grad_output.dim() == 0:
        return grad_output.item() == 1.0
    return bool((grad_output == 1).all())


class _CrossEntropy(torch.autograd.Function):
    """mode "lse": keep lse, make the gradient in backward; "grad": keep the fused forward's
    gradient; "inplace": the fused forward writes the gradient over the logits."""

    @staticmethod
    def forward(ctx, logits, labels, weight, options, mode, extras):
        """options: the ops' option tuple; extras: a list that receives the z-loss term and
        accuracy tensors (by-products returned to the caller outside autograd)."""
        ctx.mode = mode
        want_accuracy = options[-1]
        ctx.options = dict(weight=_np(weight), **_options(*options))
        flags = dict(return_z_loss=True, return_accuracy=want_accuracy)
        x, y = _np(logits), _np(labels)
        if not ctx.needs_input_grad[0] or mode == "lse":  # no_grad, or nothing requires grad
            result = fastxent.cross_entropy_forward(x, y, **ctx.options, **flags)
            extras.extend(_extras_tensors(result, want_accuracy))
            if ctx.needs_input_grad[0]:
                ctx.save_for_backward(logits, labels, torch.from_numpy(result[1]))
            return _loss_tensor(result[0])
        if mode == "grad":
            # grad for grad_output=1 (per row for "none"); backward applies the real one.
            grad = torch.empty(logits.shape, dtype=logits.dtype)
            result = fastxent.cross_entropy_with_grad(x, y, out=_out(grad), **ctx.options, **flags)
            extras.extend(_extras_tensors(result, want_accuracy))
            ctx.save_for_backward(grad)
            return _loss_tensor(result[0])
        result = fastxent.cross_entropy_with_grad(x, y, inplace=True, **ctx.options, **flags)
        extras.extend(_extras_tensors(result, want_accuracy))
        loss = result[0]
        # mark_dirty rebases `logits` onto this node and bumps its version counter, so a node
        # that saved the old values fails loudly at backward. A dirty tensor must be returned.
        ctx.mark_dirty(logits)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits)
        return _loss_tensor(loss), logits

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        # *_unused: the overwritten logits returned by "inplace" mode; cross_entropy never hands
        # them to the caller, so their gradient is None.
        if torch.is_grad_enabled():
            # create_graph=True. once_differentiable is not enough: it only poisons the result
            # when grad_loss requires grad, so grad(loss * 2, x, create_graph=True) would give a
            # gradient that silently differentiates as a constant.
            raise RuntimeError(_DOUBLE_BACKWARD)
        nones = (None,) * 5
        if grad_loss is None:
            return (None,) + nones
        if ctx.mode == "lse":
            logits, labels, lse = ctx.saved_tensors
            grad = torch.empty(logits.shape, dtype=logits.dtype)
            fastxent.cross_entropy_backward(
                _np(logits), _np(labels), _np(lse), grad_output=_np(grad_loss), out=_out(grad),
                **ctx.options,
            )
        elif ctx.mode == "grad":
            (grad,) = ctx.saved_tensors
            if not _is_one(grad_loss):
                # Out of place: with retain_graph=True a second backward needs it unscaled.
                grad = grad * _rows(grad_loss, grad)
        else:
            (grad,) = ctx.saved_tensors
            grad = grad.detach()
            if not _is_one(grad_loss):
                # Scale where it lies (no allocation). A second backward through this node then
                # sees a newer version of the saved tensor and autograd raises.
                grad.mul_(_rows(grad_loss, grad))
        return (grad,) + nones


def _check_inplace(x, use_ops):
    problem = None
    if use_ops:
        problem = "is not supported under torch.compile; use grad_in_forward=True there"
    elif x.is_leaf:
        problem = ("would overwrite a leaf tensor that requires grad (its .grad and the "
                   "optimizer need it)")
    elif x._base is not None:
        problem = ("would overwrite a view of another tensor; pass a tensor that owns its "
                   "storage (e.g. the output of a Linear layer applied to 2-D input)")
    elif x.dim() not in (1, 2):
        problem = (f"needs the class axis last and contiguous: input of shape (N, C) or (C,), "
                   f"got {tuple(x.shape)}")
    elif x.dtype not in _NATIVE:
        problem = f"needs input the kernels take as it is (no upcast copy), got {x.dtype}"
    elif not x.is_contiguous():
        problem = "needs a contiguous input"
    if problem is not None:
        raise RuntimeError(f"fastxent.torch.cross_entropy: inplace=True {problem}")


# ----------------------------------------------------------------------------------------------
# The public functions.


def _check_args(input, target, weight, reduction):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    check_reduction(reduction)
    if input.dtype not in _NATIVE + _UPCAST:
        raise TypeError(f"input must be a floating-point tensor (float32/float64, or "
                        f"float16/bfloat16 computed in float32), got {input.dtype}")
    if target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer tensor of class indices or a float tensor "
                        f"of class probabilities, got {target.dtype}")
    for name, t in (("input", input), ("target", target), ("weight", weight)):
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device}: fastxent's kernels run on CPU tensors only")
    if input.dim() == 0:
        raise ValueError("input must have a class dimension: (C,), (N, C) or (N, C, d1, ...); "
                         "got a 0-d tensor")
    if input.dim() == 1:
        classes, want = input.shape[0], ()
    else:
        classes, want = input.shape[1], (input.shape[0],) + tuple(input.shape[2:])
    if target.is_floating_point():  # class probabilities: the input's shape
        want = tuple(input.shape)
    if tuple(target.shape) != want:
        raise ValueError(
            f"target must have shape {want} for input of shape {tuple(input.shape)} "
            f"(class dimension {'0' if input.dim() == 1 else '1'}), got {tuple(target.shape)}"
        )
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
        if tuple(weight.shape) != (classes,):
            raise ValueError(f"weight must have shape ({classes},) (one per class), "
                             f"got {tuple(weight.shape)}")
        if weight.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("the gradient with respect to weight is not implemented "
                               "(as in PyTorch); pass weight.detach()")


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                  ignore_index: int = -100, reduction: Reduction = "mean",
                  label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                  return_z_loss: bool = False, return_accuracy: bool = False,
                  grad_in_forward: bool = False, inplace: bool = False) -> Any:
    """Cross-entropy between logits ``input`` and ``target``, as
    ``torch.nn.functional.cross_entropy`` computes it, on fastxent's fused CPU kernels.

    input: (C,), (N, C) or (N, C, d1, ..., dk) float tensor (class dimension 1, or 0 unbatched).
    (N, C, d1, ...) inputs are copied once to move the class axis last (the kernels need it
    contiguous); float16/bfloat16 are computed in float32 inside the kernels.
    target: () / (N,) / (N, d1, ..., dk) integer tensor of class indices (any integer dtype), or
    a float tensor of class probabilities with the input's shape.
    weight, ignore_index, reduction, label_smoothing: as in PyTorch (keyword-only after weight).
    z_loss: adds z_loss * logsumexp(logits)**2 per row (PaLM); softcap: logits pass through
    softcap * tanh(logits / softcap) first (Gemma 2). Both are in the gradient.
    return_z_loss / return_accuracy: also return the z-loss term (reduced like the loss, detached,
    for logging) / the fraction of rows not ignored whose argmax is the target (float64).
    grad_in_forward: compute the gradient in the forward's single pass and keep it for backward.
    inplace: like grad_in_forward, but the gradient overwrites ``input`` (see the module docs
    for when that is allowed; misuse raises RuntimeError).

    Returns the loss in the input's dtype: 0-d for "mean"/"sum", target-shaped for "none";
    with return_z_loss / return_accuracy a tuple (loss[, z_loss][, accuracy]).
    """
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                          grad_in_forward, inplace, use_ops=torch.compiler.is_compiling(),
                          z_loss=z_loss, softcap=softcap, return_z_loss=return_z_loss,
                          return_accuracy=return_accuracy)


def _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                   grad_in_forward, inplace, use_ops, z_loss=0.0, softcap=None,
                   return_z_loss=False, return_accuracy=False, fast_path=True):
    """use_ops: go through the custom ops (what torch.compile sees) instead of the eager
    autograd.Function; fast_path=False keeps plain calls off _torch_fast. The tests run all."""
    if (fast_path and weight is None and ignore_index == -100 and label_smoothing == 0.0
            and not z_loss and softcap is None and not return_z_loss and not return_accuracy
            and not inplace and not grad_in_forward and not use_ops
            and isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)):
        loss = _torch_fast.cross_entropy(input, target, reduction)
        if loss is not None:
            return loss
    _check_args(input, target, weight, reduction)
    if weight is not None:
        # fastxent reads weights as float64 anyway; NumPy has no bfloat16 to view them as.
        weight = weight.detach()
        if weight.dtype not in (torch.float32, torch.float64):
            weight = weight.to(torch.float64)
    softcap = check_softcap(softcap)
    options = (int(ignore_index), float(label_smoothing), reduction, check_z_loss(z_loss),
               softcap or 0.0, bool(return_accuracy))
    needs_grad = torch.is_grad_enabled() and input.requires_grad
    soft = target.is_floating_point()
    if soft and target.dtype in _UPCAST:
        target = target.float()

    if inplace and needs_grad:
        _check_inplace(input, use_ops)
        extras = []
        loss, _ = _CrossEntropy.apply(input, target, weight, options, "inplace", extras)
        return _with_extras(loss, extras, return_z_loss, return_accuracy)

    x = input.float() if input.dtype in _UPCAST else input
    if x.dim() == 1:            # unbatched: one row
        x, labels = x.unsqueeze(0), target.reshape(1, -1) if soft else target.reshape(1)
    elif x.dim() == 2:
        labels = target
    else:                       # (N, C, d...) -> (N * prod(d), C): a copy, class axis last
        x = x.movedim(1, -1).reshape(-1, x.shape[1])
        labels = target.movedim(1, -1).reshape(-1, x.shape[1]) if soft else target.reshape(-1)

    fused = (grad_in_forward or inplace) and needs_grad
    if use_ops:
        op = torch.ops.fastxent.ce_fused if fused else torch.ops.fastxent.ce_forward
        loss, _, *extras = op(x, labels, weight, *options)
    else:
        extras = []
        loss = _CrossEntropy.apply(x, labels, weight, options, "grad" if fused else "lse", extras)
    if reduction == "none":
        # The input's shape without the class dimension (= an integer target's shape).
        shape = tuple(input.shape[:1]) + tuple(input.shape[2:]) if input.dim() > 1 else ()
        loss = loss.reshape(shape)
        extras[0] = extras[0].reshape(shape)
    if loss.dtype != input.dtype:
        loss = loss.to(input.dtype)
        extras[0] = extras[0].to(input.dtype)
    return _with_extras(loss, extras, return_z_loss, return_accuracy)


def _with_extras(loss, extras, return_z_loss, return_accuracy):
    """loss, or (loss[, z-loss term][, accuracy]) as the caller asked."""
    chosen = (extras[0],) * bool(return_z_loss) + (extras[1],) * bool(return_accuracy)
    return (loss, *chosen) if chosen else loss


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` (class-index targets) on fastxent's kernels.

    CrossEntropyLoss(weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                     z_loss=0.0, softcap=None, return_z_loss=False, return_accuracy=False,
                     grad_in_forward=False, inplace=False)

    ``weight`` is a buffer (it follows ``.to()``/``.double()`` and is in the state dict), as in
    PyTorch. See :func:`cross_entropy` for the options and the module docs for ``inplace``.
    """

    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, *, ignore_index: int = -100,
                 reduction: Reduction = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                 softcap: float | None = None, return_z_loss: bool = False,
                 return_accuracy: bool = False, grad_in_forward: bool = False,
                 inplace: bool = False) -> None:
        super().__init__()
        check_reduction(reduction)
        self.z_loss = check_z_loss(z_loss)
        self.softcap = check_softcap(softcap)
        self.return_z_loss = return_z_loss
        self.return_accuracy = return_accuracy
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.grad_in_forward = grad_in_forward
        self.inplace = inplace

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Any:
        return cross_entropy(
            input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            return_z_loss=self.return_z_loss, return_accuracy=self.return_accuracy,
            grad_in_forward=self.grad_in_forward, inplace=self.inplace,
        )

    def extra_repr(self) -> str:
        parts = [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}",
                 f"label_smoothing={self.label_smoothing}"]
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        if self.grad_in_forward:
            parts.append("grad_in_forward=True")
        if self.inplace:
            parts.append("inplace=True")
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# Binary cross-entropy with logits (issue 5): in its own module.

from ._torch_bce import BCEWithLogitsLoss, binary_cross_entropy_with_logits  # noqa: E402

__all__ += ["BCEWithLogitsLoss", "binary_cross_entropy_with_logits"]

# The eager fast path for the common call (see its docstring).
from . import _torch_fast  # noqa: E402

# Fused linear cross-entropy and vocabulary-parallel cross-entropy live in their own modules.
from ._linear_torch import linear_cross_entropy  # noqa: E402
from ._vocab_parallel import vocab_parallel_cross_entropy  # noqa: E402
