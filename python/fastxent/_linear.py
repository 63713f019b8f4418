"""Fused linear cross-entropy: cross_entropy(hidden @ weight.T + bias, labels) without ever holding
the (N, V) logits. Rows go through in chunks; for each chunk

    block       = hidden[c] @ weight.T + bias         (BLAS, into one reused chunk x V buffer)
    loss, block = cross_entropy_with_grad(block, labels[c], inplace=True)   (block is now g)
    d_hidden[c] = g @ weight
    d_weight   += g.T @ hidden[c]                      (accumulated in float32, float64 for f64)
    d_bias     += g.sum(0)

so the extra memory is one chunk's logits (plus a small d_weight scratch for NumPy, which has
no accumulating matmul). "mean" needs the count (or class-weight sum) of all the rows: it is
computed first from the labels and each chunk runs with reduction="sum" and grad_output scaled
by it. The GEMMs are NumPy's (or PyTorch's, for fastxent.torch): never hand-written.
"""

from __future__ import annotations

import operator
import threading
from typing import Any, Literal

import numpy as np

from ._api import cross_entropy, cross_entropy_with_grad
from ._checks import as_array, check_integer, is_half
from ._types import ArrayLike, Results

# The chunk's logits (float32) stay under this many bytes with chunk_size="auto": big enough
# that the GEMMs run at full speed, small next to the 4+ GiB an (8192, 128256) block needs.
AUTO_CHUNK_BYTES = 256 * 2**20
# NumPy's matmul cannot accumulate (no beta=1), so chunk 2.. of d_weight goes through a scratch
# of this many rows of the vocabulary at a time.
_ACCUMULATE_ROWS = 4096

# Every array this module allocates starts on a 64-byte boundary. NumPy's large arrays start 16
# bytes into a page (after malloc's header), and MKL's GEMMs (PyTorch's BLAS) run 20-30% slower
# on such operands than on 64-byte aligned ones (2048 x 1024 x 32000 products, interleaved runs).
_ALIGN = 64

# Options this module runs itself (the rest go to the CE call on each chunk as they are).
_MANAGED = ("reduction", "grad_output")
_REFUSED = {
    "out": "the gradients are returned as new arrays",
    "inplace": "the chunk's logits are always overwritten in place (they are internal)",
}


def aligned_empty(shape, dtype, align=_ALIGN):
    """np.empty(shape, dtype) whose data starts on an `align`-byte boundary (a view into a
    slightly larger uint8 buffer)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype)  # nothing to align (and empty slices keep no offset)
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned_zeros(shape, dtype, align=_ALIGN):
    a = aligned_empty(shape, dtype, align)
    a.fill(0)
    return a


# The chunk's logits buffer is kept between calls, one per thread, when it is at most this big
# (so "auto" chunks always are). Fresh memory that size is mapped page by page on every call:
# at 4096 x 512 x 32768 its first touch cost ~2% of a call on bare metal and 8-14% on this
# project's VM (whose freed memory goes back to the host). release_linear_buffer() frees it.
KEEP_BUFFER_BYTES = AUTO_CHUNK_BYTES
_kept = threading.local()


def chunk_buffer(shape, dtype):
    """An uninitialised, 64-byte aligned array for a chunk's logits: a view of this thread's
    kept buffer (grown when too small) when it fits KEEP_BUFFER_BYTES, else a new array."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0 or nbytes > KEEP_BUFFER_BYTES:
        return aligned_empty(shape, dtype)
    raw = getattr(_kept, "buffer", None)
    if raw is None or raw.size < nbytes:
        _kept.buffer = None  # (the old one goes before the new one is mapped)
        raw = _kept.buffer = aligned_empty(nbytes, np.uint8)
    return raw[:nbytes].view(dtype).reshape(shape)


def release_linear_buffer() -> None:
    """Free the chunk buffer that linear_cross_entropy keeps on the calling thread between
    calls (up to 256 MiB; the next call maps a new one)."""
    _kept.buffer = None


def as_compute(a, dtype, out=None):
    """a as a C-contiguous array of dtype: a itself when it already is one, else a copy into
    `out` (when given, of the right shape) or into a new aligned array."""
    if a.dtype == dtype and a.flags.c_contiguous:
        return a
    if out is None:
        out = aligned_empty(a.shape, dtype)
    out[...] = a
    return out


class NumpyGemm:
    """The three products on NumPy's BLAS. Every array is float32 or float64."""

    name = "numpy"

    def __init__(self):
        self._scratch = None

    def logits(self, h, w, out):
        np.matmul(h, w.T, out=out)

    def d_hidden(self, g, w, out):
        np.matmul(g, w, out=out)

    def d_weight(self, g, h, acc, first):
        if first:
            np.matmul(g.T, h, out=acc)
            return
        rows = min(_ACCUMULATE_ROWS, acc.shape[0])
        if self._scratch is None or self._scratch.shape != (rows, acc.shape[1]):
            self._scratch = aligned_empty((rows, acc.shape[1]), acc.dtype)
        for start in range(0, acc.shape[0], rows):
            stop = min(start + rows, acc.shape[0])
            part = self._scratch[: stop - start]
            np.matmul(g[:, start:stop].T, h, out=part)
            acc[start:stop] += part


def _torch_gemm():
    import torch

    class TorchGemm:
        """The same products on PyTorch's BLAS through zero-copy tensors; addmm_ accumulates."""

        name = "torch"

        def logits(self, h, w, out):
            torch.matmul(torch.from_numpy(h), torch.from_numpy(w).T, out=torch.from_numpy(out))

        def d_hidden(self, g, w, out):
            torch.matmul(torch.from_numpy(g), torch.from_numpy(w), out=torch.from_numpy(out))

        def d_weight(self, g, h, acc, first):
            a, gt, ht = torch.from_numpy(acc), torch.from_numpy(g).T, torch.from_numpy(h)
            if first:
                torch.matmul(gt, ht, out=a)
            else:
                a.addmm_(gt, ht)

    return TorchGemm()


def _gemm(matmul):
    if matmul == "numpy":
        return NumpyGemm()
    if matmul == "torch":
        return _torch_gemm()
    raise ValueError(f"matmul must be 'numpy' or 'torch', got {matmul!r}")


def _float_array(value, name):
    a = as_array(value, name)
    if a.dtype not in (np.float32, np.float64) and not is_half(a.dtype):
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {a.dtype}")
    return a


class _Inputs:
    """Checked, flattened inputs: hidden (N, H), weight (V, H), bias (V,) or None, labels."""

    def __init__(self, hidden, weight, labels, bias, options):
        for key, why in _REFUSED.items():
            if key in options:
                raise TypeError(f"linear_cross_entropy does not take {key}=: {why}")
        for key, value in options.items():
            if key.startswith("return_") and value:
                raise ValueError(
                    f"linear_cross_entropy does not support {key}=True: the chunks' extra "
                    "results have no generic way to be combined"
                )
        h = _float_array(hidden, "hidden")
        w = _float_array(weight, "weight")
        if h.ndim < 1:
            raise ValueError("hidden must have shape (..., H), got a scalar")
        if w.ndim != 2 or w.shape[1] != h.shape[-1]:
            raise ValueError(
                f"weight must have shape (classes, {h.shape[-1]}) to match hidden of shape "
                f"{h.shape}, got {w.shape}"
            )
        self.lead = h.shape[:-1]
        self.hidden_dtype, self.weight_dtype = h.dtype, w.dtype
        # Math in float32, float64 when either input is float64.
        wide = np.float64 in (h.dtype, w.dtype)
        self.dtype = np.dtype(np.float64 if wide else np.float32)
        self.hidden = h.reshape(-1, h.shape[-1])  # converted chunk by chunk, not here
        # One copy of weight when it is not already in the compute dtype (e.g. bfloat16).
        self.weight = as_compute(w, self.dtype)
        self.classes = w.shape[0]
        self.bias = None
        self.bias_dtype = None
        if bias is not None:
            b = _float_array(bias, "bias")
            if b.shape != (self.classes,):
                raise ValueError(f"bias must have shape ({self.classes},), got {b.shape}")
            self.bias_dtype = b.dtype
            self.bias = as_compute(b, self.dtype)
        y = as_array(labels, "labels")
        self.soft = y.dtype.kind == "f" or is_half(y.dtype)
        want = self.lead + ((self.classes,) if self.soft else ())
        if y.shape != want:
            raise ValueError(f"labels must have shape {want} for hidden of shape {h.shape}, "
                             f"got {y.shape}")
        self.labels = y.reshape((-1, self.classes) if self.soft else (-1,))
        self.options = dict(options)
        self.reduction = options.get("reduction", "mean")
        self.rows = self.hidden.shape[0]
        # Check every option once on zero rows (cheap) so a bad one fails before any GEMM.
        cross_entropy(np.empty((0, self.classes), self.dtype), self.labels[:0], **self.options)

    def denominator(self):
        """What "mean" divides by: the rows not ignored (their class weights, if weighted)."""
        if self.soft:  # probability targets: every row counts, as in PyTorch
            return float(self.rows)
        y = self.labels
        if y.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers (class indices) or probabilities, got {y.dtype}")
        ignore = operator.index(self.options.get("ignore_index", -100))
        y64 = y.astype(np.int64, copy=False)
        keep = y64 != ignore
        bad = keep & ((y64 < 0) | (y64 >= self.classes))
        if y.dtype == np.uint64:
            bad |= y > np.iinfo(np.int64).max
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"labels[{row}] = {y[row]} is not a class index in "
                             f"[0, {self.classes}) nor ignore_index ({ignore})")
        w = self.options.get("weight")
        if w is None:
            return float(keep.sum())
        w = np.asarray(as_array(w, "weight"), dtype=np.float64)
        return float(w[np.where(keep, y64, 0)][keep].sum())


def chunk_rows(chunk_size, rows, classes):
    """The rows per chunk: chunk_size, or for "auto" as many as keep the float32 logits of a
    chunk under AUTO_CHUNK_BYTES (at least one, at most all)."""
    if isinstance(chunk_size, str):
        if chunk_size != "auto":
            raise ValueError(f"chunk_size must be a positive integer or 'auto', got {chunk_size!r}")
        chunk = AUTO_CHUNK_BYTES // (4 * max(classes, 1))
    else:
        chunk = check_integer(chunk_size, "chunk_size", 1, "'auto' or an integer")
    return max(1, min(chunk, rows))


def _chunk_grad_output(inputs, grad_output, denom, start, stop):
    """(reduction, grad_output) for the CE call on rows [start, stop)."""
    if inputs.reduction == "none":
        if np.ndim(grad_output) == 0:
            return "none", grad_output
        g = as_array(grad_output, "grad_output").reshape(-1)
        return "none", g[start:stop]
    if np.ndim(grad_output) != 0:
        raise TypeError(f"grad_output must be a real number for reduction={inputs.reduction!r}")
    scale = float(grad_output)
    if inputs.reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = float(np.float64(scale) / denom) if denom else float("nan")
    return "sum", scale


def _check_grad_output(inputs, grad_output):
    if inputs.reduction == "none" and np.ndim(grad_output) != 0:
        g = as_array(grad_output, "grad_output")
        if g.shape != inputs.lead:
            raise ValueError(f"grad_output must be a scalar or have shape {inputs.lead} "
                             f"(one per row), got {g.shape}")


def _finish_loss(inputs, parts, total, denom):
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if inputs.reduction == "none":
            loss = np.concatenate(parts) if parts else np.empty(0, inputs.dtype)
            return loss.astype(inputs.hidden_dtype, copy=False).reshape(inputs.lead)
        if inputs.reduction == "mean":
            total = np.float64(total) / denom if denom else np.float64("nan")
        return inputs.hidden_dtype.type(total)


def _chunk_hidden(inputs, start, stop, scratch):
    """Rows [start, stop) of hidden in the compute dtype: a view when hidden already is one,
    else converted into `scratch` (chunk x H, reused by every chunk)."""
    out = None if scratch is None else scratch[: stop - start]
    return as_compute(inputs.hidden[start:stop], inputs.dtype, out)


def _logits_block(inputs, gemm, h, buffer):
    block = buffer[: h.shape[0]]
    gemm.logits(h, inputs.weight, block)
    if inputs.bias is not None:
        block += inputs.bias
    return block


def run(hidden, weight, labels, bias, chunk_size, options, *, grads=True, need_hidden=True,
        need_weight=True, need_bias=True, matmul="numpy"):
    """The chunked loop behind linear_cross_entropy(_with_grad) and fastxent.torch.

    Returns (loss, d_hidden, d_weight, d_bias); the gradients are None when not asked for.
    need_*: skip the products for inputs that need no gradient (frozen weight, say).
    """
    grad_output = options.pop("grad_output", 1.0)
    inputs = _Inputs(hidden, weight, labels, bias, options)
    _check_grad_output(inputs, grad_output)
    ce_options = {k: v for k, v in inputs.options.items() if k not in _MANAGED}
    if (inputs.reduction == "mean" and ce_options.get("z_loss") and not inputs.soft
            and ce_options.get("weight") is not None):
        # "mean" divides the z-loss by the rows kept but the cross-entropy by their summed class
        # weight: one per-chunk scale cannot do both.
        raise ValueError("z_loss with class weights and reduction='mean' is not supported by "
                         "linear_cross_entropy; use reduction='sum' (and divide) instead")
    denom = inputs.denominator() if inputs.reduction == "mean" or not inputs.soft else None
    gemm = _gemm(matmul)
    n, h_dim, v = inputs.rows, inputs.weight.shape[1], inputs.classes
    chunk = chunk_rows(chunk_size, n, v)
    need_hidden, need_weight = grads and need_hidden, grads and need_weight
    need_bias = grads and need_bias and inputs.bias is not None

    buffer = chunk_buffer((chunk, v), inputs.dtype)
    d_hidden = aligned_empty((n, h_dim), inputs.hidden_dtype) if need_hidden else None
    # The first chunk's product overwrites d_weight; it only needs zeros when there is none.
    d_weight = None
    if need_weight:
        d_weight = (aligned_empty if n else aligned_zeros)((v, h_dim), inputs.dtype)
    d_bias = aligned_zeros(v, inputs.dtype) if need_bias else None
    dh_scratch = None
    if need_hidden and inputs.hidden_dtype != inputs.dtype:
        dh_scratch = aligned_empty((chunk, h_dim), inputs.dtype)

    h_scratch = None
    if inputs.hidden.dtype != inputs.dtype or not inputs.hidden.flags.c_contiguous:
        h_scratch = aligned_empty((chunk, h_dim), inputs.dtype)

    parts, total = [], 0.0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        h = _chunk_hidden(inputs, start, stop, h_scratch)
        block = _logits_block(inputs, gemm, h, buffer)
        reduction, scale = _chunk_grad_output(inputs, grad_output, denom, start, stop)
        y = inputs.labels[start:stop]
        if not grads:
            loss = cross_entropy(block, y, reduction=reduction, **ce_options)
        else:
            loss, _ = cross_entropy_with_grad(block, y, reduction=reduction, grad_output=scale,
                                              inplace=True, **ce_options)
            if need_hidden:
                if dh_scratch is None:
                    gemm.d_hidden(block, inputs.weight, d_hidden[start:stop])
                else:
                    part = dh_scratch[: stop - start]
                    gemm.d_hidden(block, inputs.weight, part)
                    d_hidden[start:stop] = part
            if need_weight:
                gemm.d_weight(block, h, d_weight, first=start == 0)
            if need_bias:
                d_bias += block.sum(axis=0, dtype=inputs.dtype)
        if reduction == "none":
            parts.append(np.asarray(loss, dtype=inputs.dtype))
        else:
            total += float(loss)

    if d_hidden is not None:
        d_hidden = d_hidden.reshape(inputs.lead + (h_dim,))
    if d_weight is not None and d_weight.dtype != inputs.weight_dtype:
        d_weight = d_weight.astype(inputs.weight_dtype)
    if d_bias is not None and d_bias.dtype != inputs.bias_dtype:
        d_bias = d_bias.astype(inputs.bias_dtype)
    return _finish_loss(inputs, parts, total, denom), d_hidden, d_weight, d_bias


def linear_cross_entropy(hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike, /, *,
                         bias: ArrayLike | None = None, chunk_size: int | Literal["auto"] = "auto",
                         **options: Any) -> Any:
    """cross_entropy(hidden @ weight.T + bias, labels, **options) without the (N, V) logits.

    hidden (..., H) and weight (V, H): float32/float64 (float16/bfloat16 are computed in float32:
    weight is copied once to float32, hidden chunk by chunk). labels (...) class indices (or
    (..., V) probabilities when the CE functions take them). The keyword `weight=` is the
    per-class weight of cross_entropy, like every other keyword option (ignore_index,
    label_smoothing, reduction, backend, ...): they are passed to the CE call on each chunk.
    chunk_size: rows per chunk, or "auto" (a chunk's float32 logits under 256 MiB).
    """
    options.pop("grad_output", None)  # no gradient here: the option has nothing to scale
    loss, *_ = run(hidden, weight, labels, bias, chunk_size, options, grads=False)
    return loss


def linear_cross_entropy_with_grad(hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike, /, *,
                                   bias: ArrayLike | None = None,
                                   chunk_size: int | Literal["auto"] = "auto",
                                   **options: Any) -> Results:
    """(loss, d_hidden, d_weight) — and d_bias last when bias is given — of
    linear_cross_entropy, in one pass over the rows: the gradients of loss * grad_output, each in
    its input's dtype (accumulated in float32, float64 for float64 inputs). Options as for
    cross_entropy_with_grad except out= and inplace= (the chunk is always done in place).
    """
    loss, d_hidden, d_weight, d_bias = run(hidden, weight, labels, bias, chunk_size, options)
    if bias is None:
        return loss, d_hidden, d_weight
    return loss, d_hidden, d_weight, d_bias
