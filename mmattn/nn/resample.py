"""Parameter-free down/up-sampling of video (space only) and audio (time)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmattn.nn.layout import check_audio, check_video, flatten_frames, unflatten_frames

MODALITIES: tuple[str, ...] = ("video", "audio")
DEFAULT_FACTORS = {"video": 2, "audio": 4}


class _Resample(nn.Module):
    """Applies a pooling/interpolation `op` to the trailing dims of `[N, C, *S]`: video as its
    frame batch `[B*F, C, H, W]` (frames are never resampled), audio as `[B, C, L]`."""

    def __init__(self, modality: str, factor: int | None = None):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality = modality
        self.factor = DEFAULT_FACTORS[modality] if factor is None else factor
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        self.streams = modality

    def _map(self, x: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.modality == "audio":
            check_audio(x)
            return op(x)
        check_video(x)
        return unflatten_frames(op(flatten_frames(x)), x.shape[0])

    def extra_repr(self) -> str:
        return f"{self.modality!r}, factor={self.factor}"


class Downsample(_Resample):
    """Average pooling by `factor`: video `[B, F, C, H, W] -> [B, F, C, H/f, W/f]` (the published
    `(1, 2, 2)` pooling for f=2), audio `[B, C, L] -> [B, C, L/f]` (f=4 by default)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._map(x, self._pool)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if any(d % self.factor for d in x.shape[2:]):
            what = "H and W" if self.modality == "video" else "L"
            raise ValueError(f"Downsample({self.modality!r}) needs {what} divisible by {self.factor}, "
                             f"got {what} = {tuple(x.shape[2:])}")
        return (F.avg_pool2d if x.dim() == 4 else F.avg_pool1d)(x, self.factor)


class Upsample(_Resample):
    """Nearest-neighbour upsampling by `factor`: video `[B, F, C, H, W] -> [B, F, C, fH, fW]`,
    audio `[B, C, L] -> [B, C, fL]`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._map(x, lambda t: F.interpolate(t, scale_factor=self.factor, mode="nearest"))
