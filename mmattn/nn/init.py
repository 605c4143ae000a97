"""Parameter initialisation helpers."""
from __future__ import annotations

from typing import TypeVar

import torch.nn as nn

M = TypeVar("M", bound=nn.Module)


def zero_module(module: M) -> M:
    """Set every parameter of `module` to zero (residual branches start as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
