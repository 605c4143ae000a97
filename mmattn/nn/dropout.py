"""Dropout behind the `impl` switch."""
from __future__ import annotations

import torch
import torch.nn as nn

import mmattn
from mmattn.functional import draw_seed
from mmattn.nn._ops import check_impl


class Dropout(nn.Dropout):
    """`nn.Dropout` whose training path with `impl="fused"` on CPU and CUDA is `mmattn.dropout`:
    the mask is regenerated from a seed in the backward instead of being saved (on CUDA torch's
    dropout saves a byte per element). Other devices, `impl="reference"` and code under
    `torch.compile` (which fuses torch's dropout itself) use torch's dropout. Any shape.
    `stream` (default None; `set_dropout_stream`) selects the masks for one draw of the
    generator: data-parallel ranks whose generators must agree use their rank to drop different
    elements. Off the fused path a stream draws one seed too and a Bernoulli mask from a generator
    of its own, so the global generators advance alike on every rank (eager mode; compiled code
    uses torch's dropout as it is)."""

    def __init__(self, p: float = 0.5, *, impl: str = "fused"):
        super().__init__(p)
        self.impl = check_impl(impl)
        self.stream: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._seeded(x):
            return mmattn.dropout(x, self.p, stream=self.stream or 0)
        if self._streamed():
            generator = torch.Generator(x.device).manual_seed(draw_seed(self.stream) % 2**64)
            keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=generator)
            return x * keep / (1 - self.p)
        return super().forward(x)

    def _streamed(self) -> bool:
        return self.training and 0 < self.p < 1 and self.stream is not None and not torch.compiler.is_compiling()

    def _seeded(self, x: torch.Tensor) -> bool:
        # compiled: inductor's own fused dropout
        return (self.training and self.p > 0 and self.impl == "fused" and not torch.compiler.is_compiling()
                and (x.device.type == "cpu" or (x.is_cuda and mmattn._C.with_cuda)))

    def random_device(self, x: torch.Tensor) -> torch.device | None:
        """The device whose generator `forward(x)` draws from (the CPU one for a seeded mask:
        `mmattn.dropout` draws its seed there), or None if it draws nothing."""
        if not self.training or self.p == 0:
            return None
        return torch.device("cpu") if self._seeded(x) or self._streamed() else x.device

    def extra_repr(self) -> str:
        return f"p={self.p}, impl={self.impl!r}"


def set_dropout_stream(module: nn.Module, stream: int) -> nn.Module:
    """Set `stream` on every `Dropout` in `module` (e.g. to the data-parallel rank); returns it."""
    for m in module.modules():
        if isinstance(m, Dropout):
            m.stream = stream
    return module
