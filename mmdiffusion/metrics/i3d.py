"""Inflated 3D ConvNet (I3D, Carreira & Zisserman 2017): the video network of FVD and KVD.

An Inception-v1 network inflated to 3D, whose 400 Kinetics logits at 224x224 px are the FVD
features (Unterthiner et al. 2018). Module names follow the PyTorch port used by the published
evaluation (`evaluations/fvd/pytorch_i3d.py` of MM-Diffusion), so its `i3d_pretrained_400.pt`
loads unchanged; `manifests/i3d_400.txt` lists the names and shapes of that file.

Numerics kept from that port for parity: TensorFlow "SAME" padding (zero padding, also before
max pooling), BatchNorm eps 1e-5 (the TF original uses 1e-3), logits averaged over time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Inception-v1 blocks: name -> (input channels, (b0, b1a, b1b, b2a, b2b, b3b) output channels).
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}
FEATURE_DIM = 1024  # channels entering the logits layer
INPUT_SIZE = 224    # the spatial size the logits are defined at


def _same_pad(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad `x: [B, C, T, H, W]` as TensorFlow's "SAME" padding does (extra pixel at the end)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class MaxPoolSame(nn.Module):
    """3D max pooling with "SAME" padding."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d ("SAME" padding) -> BatchNorm3d -> ReLU; the logits unit has a bias and neither."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, *, logits: bool = False):
        super().__init__()
        self.kernel, self.stride = (kernel,) * 3, (stride,) * 3
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=logits)
        self.bn = None if logits else nn.BatchNorm3d(cout, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return x if self.bn is None else F.relu(self.bn(x))


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1), concatenated on channels."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(cin, widths[0])
        self.b1a, self.b1b = Unit3D(cin, widths[1]), Unit3D(widths[1], widths[2], 3)
        self.b2a, self.b2b = Unit3D(cin, widths[3]), Unit3D(widths[3], widths[4], 3)
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, widths[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class I3D(nn.Module):
    """I3D classifier: `forward(video [B, 3, T, 224, 224] in [-1, 1]) -> logits [B, num_classes]`.

    Needs `T >= 9` (the trunk divides time by 8 and the head pools 2 steps); use
    `preprocess_video` to bring clips of any size to this input.
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, 7, 2)
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3)
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        for name in ("Mixed_3b", "Mixed_3c"):
            self.add_module(name, InceptionBlock(*_MIXED[name]))
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            self.add_module(name, InceptionBlock(*_MIXED[name]))
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        for name in ("Mixed_5b", "Mixed_5c"):
            self.add_module(name, InceptionBlock(*_MIXED[name]))
        self.logits = Unit3D(FEATURE_DIM, num_classes, logits=True)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """The trunk: `[B, 3, T, H, W] -> [B, 1024, ceil(T/8), ceil(H/32), ceil(W/32)]`."""
        x = video
        for name, module in self.named_children():
            if name != "logits":
                x = module(x)
        return x

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[-2:] != (INPUT_SIZE, INPUT_SIZE) or video.shape[2] < 9:
            raise ValueError(f"video must be [B, 3, T >= 9, {INPUT_SIZE}, {INPUT_SIZE}], got {tuple(video.shape)}")
        x = F.avg_pool3d(self.features(video), (2, 7, 7), stride=1)  # [B, 1024, T', 1, 1]
        return self.logits(x).flatten(2).mean(2)  # dropout (identity at evaluation) omitted


def preprocess_video(video: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Clips for I3D: `[B, F, C, H, W]` uint8 (0..255) or float in [-1, 1] -> `[B, 3, F, size, size]` in [-1, 1].

    Resizes the shorter side to `size` (bilinear, no antialiasing, `ceil` for the longer side) and
    centre-crops, as the FVD reference implementations do.
    """
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be [B, F, 3, H, W], got {tuple(video.shape)}")
    x = video.float() / 127.5 - 1.0 if video.dtype == torch.uint8 else video.float()
    b, f, c, h, w = x.shape
    scale = size / min(h, w)
    target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
    x = F.interpolate(x.reshape(b * f, c, h, w), size=target, mode="bilinear", align_corners=False)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    return x.reshape(b, f, c, size, size).transpose(1, 2).contiguous()
