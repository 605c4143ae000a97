"""Dropout behind the `impl` switch."""
from __future__ import annotations

import torch
import torch.nn as nn

import mmattn
from mmattn.nn._ops import check_impl


class Dropout(nn.Dropout):
    """`nn.Dropout` whose CPU training path with `impl="fused"` is `mmattn.dropout`: the mask is
    regenerated from a seed in the backward instead of being saved, and is generated in
    parallel. Other devices, `impl="reference"` and code under `torch.compile` (which fuses
    torch's dropout itself) use torch's dropout. Any shape."""

    def __init__(self, p: float = 0.5, *, impl: str = "fused"):
        super().__init__(p)
        self.impl = check_impl(impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and self.impl == "fused" and x.device.type == "cpu"
                and not torch.compiler.is_compiling()):  # compiled: inductor's own fused dropout
            return mmattn.dropout(x, self.p)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"p={self.p}, impl={self.impl!r}"
