"""Type aliases of the public API (annotations only)."""

from __future__ import annotations

from typing import Any, Literal, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ArrayLike", "Backend", "Loss", "NDArray", "Reduction", "Results", "Softcap"]

Reduction = Literal["mean", "sum", "none"]
Backend = Literal["auto", "cpp", "numba", "numpy"]
Softcap = Union[float, None]
# A loss: a NumPy scalar of the logits' dtype for "mean" / "sum", an array for "none".
Loss = Union[np.floating[Any], NDArray[np.floating[Any]]]
# A result whose length depends on flags (return_z_loss, return_accuracy, bias): unpack it.
Results = tuple[Any, ...]
