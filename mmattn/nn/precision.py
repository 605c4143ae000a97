"""Models whose convolutions and linear layers hold 16-bit weights (no autocast needed).

Under `torch.autocast` a model keeps float32 weights and casts each one to 16 bits in every
forward, and its gradient back to float32 in every backward: two dispatched operators per
weight and step (about 1,400 for paper-64), which on a GPU at small batches cost host time the
kernels cannot hide. `cast_weights` stores those weights in 16 bits instead, as the published
MM-Diffusion does in fp16 (`convert_to_fp16`); training then needs float32 master copies for
the optimizer (`mmdiffusion.training.MasterWeights`). Normalisation parameters stay float32:
the fused GroupNorm reads them in float32 next to 16-bit inputs.
"""
from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn as nn

M = TypeVar("M", bound=nn.Module)

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def cast_weights(module: M, dtype: torch.dtype) -> M:
    """Cast the parameters of every convolution, linear and embedding layer in `module` to
    `dtype` (float16, bfloat16, or float32 to undo it), in place; returns `module`."""
    if dtype not in HALF_DTYPES + (torch.float32,):
        raise ValueError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
    for m in module.modules():
        if isinstance(m, WEIGHT_LAYERS):
            m.to(dtype)
    return module
