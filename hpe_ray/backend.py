"""One implementation for numpy and torch: pick the array module from the input's type.

Geometry and metrics run on numpy arrays in data conversion and evaluation, and on torch
tensors inside losses and the train loop; writing them once keeps the two from drifting.
"""

from __future__ import annotations

import numpy as np


def array_module(x):
    """numpy or torch, whichever `x` belongs to; torch is imported only when given a tensor."""
    if type(x).__module__.startswith("torch"):
        import torch
        return torch
    return np


def as_array_like(values, like):
    """`values` as an array of the same backend as `like` (and, for torch, same dtype/device)."""
    if array_module(like) is np:
        return np.asarray(values)
    import torch
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)
