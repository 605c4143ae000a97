"""What autocast does to a block's tensors, for code that must do the same by hand."""
from __future__ import annotations

import torch


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast casts `x` to for a matrix product on `x`'s device, or None where it
    leaves `x` as it is (autocast off, or a dtype it spares such as float64)."""
    device = x.device.type
    if x.dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None
