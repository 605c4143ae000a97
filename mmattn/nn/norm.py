"""GroupNorm with optional FiLM and SiLU in one fused pass."""
from __future__ import annotations

import torch
import torch.nn as nn

from mmattn.functional import ACTIVATIONS, takes_param_dtype
from mmattn.nn._ops import check_impl, group_norm_act


class GroupNormAct(nn.Module):
    """`GroupNorm -> FiLM -> SiLU` through `mmattn.group_norm_act`.

    Input `x`: `[B, C, *S]` for `channel_dim=1`, or `[B, F, C, *S]` for `channel_dim=2` (video in
    the `[B, F, C, H, W]` layout: statistics per sample and group over frames and space, as one
    GroupNorm of the `[B, C, F, H, W]` video). `scale`, `shift`: optional `[B, C]`, applied as
    `norm(x) * (1 + scale) + shift` after the affine parameters. Output: the shape, dtype and
    memory layout of `x`. The parameters stay float32 under autocast (the kernels take float32
    parameters with bfloat16/float16 `x` and compute in float32, as the published GroupNorm32
    does; casting them would cost two host ops and a rounding per call and per gradient). Any
    other parameter or FiLM dtype is cast to `x.dtype`.
    """

    def __init__(self, num_groups: int, num_channels: int, act: str | None = "silu",
                 eps: float = 1e-5, channel_dim: int = 1, *, impl: str = "fused"):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be a multiple of num_groups ({num_groups})")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        if channel_dim not in (1, 2):
            raise ValueError(f"channel_dim must be 1 ([B, C, ...]) or 2 ([B, F, C, ...]), got {channel_dim}")
        self.num_groups, self.num_channels = num_groups, num_channels
        self.act, self.eps, self.channel_dim = act, eps, channel_dim
        self.impl = check_impl(impl)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        c = self.channel_dim
        if x.dim() < c + 1 or x.shape[c] != self.num_channels:
            layout = "[B, C, ...]" if c == 1 else "[B, F, C, ...]"
            raise ValueError(f"GroupNormAct expected x of layout {layout} with C={self.num_channels}, "
                             f"got shape {tuple(x.shape)}")
        for name, value in (("scale", scale), ("shift", shift)):
            if value is not None and value.shape != (x.shape[0], self.num_channels):
                raise ValueError(f"{name} must be [B, C] = [{x.shape[0]}, {self.num_channels}], "
                                 f"got shape {tuple(value.shape)}")
        # as the fused op takes them next to x (float32 stays float32 for bfloat16/float16 x)
        cast = lambda t: t if t is None or takes_param_dtype(t.dtype, x.dtype) else t.to(x.dtype)  # noqa: E731
        return group_norm_act(x, self.num_groups, cast(self.weight), cast(self.bias),
                              scale=cast(scale), shift=cast(shift), act=self.act, eps=self.eps,
                              channel_dim=c, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, act={self.act!r}, eps={self.eps}, "
                f"channel_dim={self.channel_dim}, impl={self.impl!r}")
