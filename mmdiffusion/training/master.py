"""Float32 master weights for training a model that computes with 16-bit weights.

The published MM-Diffusion trains in fp16 this way: the model holds 16-bit weights, the
optimizer float32 copies. Here the float32 model stays the one the optimizer, EMA and
checkpoints see (`master`), and a 16-bit copy (`work`) runs the forward and backward passes,
which spares autocast's per-weight casts (`mmattn.nn.cast_weights`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from mmattn.nn import cast_weights

__all__ = ["MasterWeights"]


class MasterWeights:
    """`work`: a copy of `master` with its convolution and linear weights in `dtype`.

    A step: forward and backward through `work`; `grads_to_master()` (the float32 gradients on
    `master`'s parameters; `work`'s are cleared); the optimizer step on `master`; then
    `master_to_work()` (the new weights, rounded to `dtype`). Call `master_to_work()` too after
    loading weights into `master`.
    """

    def __init__(self, master: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        self.master = master
        self.work = cast_weights(copy.deepcopy(master), dtype)
        self._pairs = list(zip(master.parameters(), self.work.parameters()))

    def grads_to_master(self) -> None:
        """Move the gradients of `work` onto `master`, in float32 (one multi-tensor copy)."""
        pairs = [(m, w) for m, w in self._pairs if w.grad is not None]
        grads = [torch.empty_like(m) for m, _ in pairs]
        torch._foreach_copy_(grads, [w.grad for _, w in pairs])
        for (m, w), g in zip(pairs, grads):
            m.grad, w.grad = g, None

    @torch.no_grad()
    def master_to_work(self) -> None:
        """Copy `master`'s weights into `work` (rounded to its dtypes)."""
        torch._foreach_copy_([w for _, w in self._pairs], [m for m, _ in self._pairs])
