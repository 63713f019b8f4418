"""fastxent: fused softmax cross-entropy, loss and gradient in one call.

    loss, grad = fastxent.cross_entropy_with_grad(logits, labels)

Backends: "cpp" (SIMD C++ kernels, the default), "numba", "numpy" (the reference).
"""

from ._api import (
    cross_entropy,
    cross_entropy_backward,
    cross_entropy_forward,
    cross_entropy_with_grad,
)
from ._bce import (
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_backward,
    binary_cross_entropy_with_logits_with_grad,
)
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad, release_linear_buffer
from ._rowops import log_softmax, logsumexp, softmax
from ._runtime import __version__, get_num_threads, info, set_num_threads

__all__ = [
    "__version__",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_backward",
    "binary_cross_entropy_with_logits_with_grad",
    "cross_entropy",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "cross_entropy_with_grad",
    "get_num_threads",
    "info",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "release_linear_buffer",
    "set_num_threads",
    "softmax",
]
