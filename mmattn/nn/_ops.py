"""The fused operators behind an `impl` switch.

`impl="fused"` calls `mmattn.group_norm_act` / `mmattn.rs_attention` (C++/CUDA kernels);
`impl="reference"` calls the pure-PyTorch references of `mmattn.reference` with the same
semantics (`rs_attention_gather` is the published algorithm). Blocks take `impl` at
construction; a model passes one value to all of its blocks.
"""
from __future__ import annotations

import torch

import mmattn
from mmattn import reference

IMPLS: tuple[str, ...] = ("fused", "reference")


def check_impl(impl: str) -> str:
    """Return `impl` if it names an implementation, else raise ValueError."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def group_norm_act(x: torch.Tensor, num_groups: int, weight, bias, *, scale, shift,
                   act: str | None, eps: float, channel_dim: int, impl: str) -> torch.Tensor:
    """`mmattn.group_norm_act` or its reference (DESIGN.md §2)."""
    fn = mmattn.group_norm_act if impl == "fused" else reference.group_norm_act_reference
    return fn(x, num_groups, weight, bias, scale=scale, shift=shift, act=act, eps=eps,
              channel_dim=channel_dim)


def rs_attention(q_video, k_video, v_video, q_audio, k_audio, v_audio, *, frames: int,
                 window: int, shift: int, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`mmattn.rs_attention` or the published gather algorithm (DESIGN.md §1)."""
    fn = mmattn.rs_attention if impl == "fused" else reference.rs_attention_gather
    return fn(q_video, k_video, v_video, q_audio, k_audio, v_audio, frames=frames,
              window=window, shift=shift)
