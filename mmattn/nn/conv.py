"""Video and audio convolutions with 'same' padding."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmattn.nn.layout import check_audio, check_video, flatten_frames, frames_last, unflatten_frames

VIDEO_CONV_KINDS: tuple[str, ...] = ("2d+1d", "3d")


def _check_kernel(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer ('same' padding), got {kernel_size}")


class VideoConv(nn.Module):
    """Video convolution: `[B, F, Cin, H, W] -> [B, F, Cout, H, W]`, zero 'same' padding.

    `kind="2d+1d"`: a `k x k` convolution per frame (`spatial`, `[Cout, Cin, k, k]`), then a
    `k`-tap convolution over frames per pixel (`temporal`, `[Cout, Cout, k]`).
    `kind="3d"`: one `k x k x k` convolution (`conv`, `[Cout, Cin, k, k, k]`).
    The output is in frames-last memory (see `mmattn.nn.layout`): the spatial step runs on a
    channels-last `[B*F, C, H, W]` view and the temporal step as a `(k, 1)` convolution on a
    channels-last `[B, C, F, H*W]` view, so no layout copy happens between them; a 1x1x1 "3d"
    convolution is a matrix product over channels (a backend-independent GEMM on that memory).
    """
    streams = "video"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, kind: str = "2d+1d"):
        super().__init__()
        _check_kernel(kernel_size)
        if kind not in VIDEO_CONV_KINDS:
            raise ValueError(f"kind must be one of {VIDEO_CONV_KINDS}, got {kind!r}")
        self.in_channels, self.out_channels, self.kind = in_channels, out_channels, kind
        pad = kernel_size // 2
        if kind == "2d+1d":
            self.spatial = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad)
            self.temporal = nn.Conv1d(out_channels, out_channels, kernel_size, padding=pad)
        else:
            self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=pad)

    @property
    def products(self) -> int:
        """Convolutions/matrix products a call runs (see `NormActConv`)."""
        return 2 if self.kind == "2d+1d" else 1

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        check_video(video, self.in_channels)
        x = frames_last(video)
        if self.kind == "3d":
            if self.conv.kernel_size == (1, 1, 1):  # [B, F, H, W, C] @ [C, Cout]
                y = F.linear(x.permute(0, 1, 3, 4, 2), self.conv.weight.flatten(1), self.conv.bias)
                return y.permute(0, 1, 4, 2, 3)
            return self.conv(x.transpose(1, 2)).transpose(1, 2)  # channels_last_3d [B, C, F, H, W]
        x = unflatten_frames(self.spatial(flatten_frames(x)), x.shape[0])
        h, w = x.shape[-2:]
        t = self.temporal
        # [B, C, F, H*W]; flattening before transposing keeps a batch of one's stride canonical,
        # which PyTorch's memory-format heuristics need to see the view as channels-last.
        y = F.conv2d(x.flatten(3).transpose(1, 2), t.weight.unsqueeze(-1), t.bias,
                     padding=(t.padding[0], 0))
        return y.transpose(1, 2).unflatten(3, (h, w))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kind={self.kind!r}"


class AudioConv(nn.Conv1d):
    """Dilated 1-D convolution: `[B, Cin, L] -> [B, Cout, L]`, zero 'same' padding.

    Parameters `weight` `[Cout, Cin, k]` and `bias` `[Cout]`.
    """
    streams = "audio"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1):
        _check_kernel(kernel_size)
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        super().__init__(in_channels, out_channels, kernel_size,
                         padding=dilation * (kernel_size - 1) // 2, dilation=dilation)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        check_audio(audio, self.in_channels)
        return super().forward(audio)
