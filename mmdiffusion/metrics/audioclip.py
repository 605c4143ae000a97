"""AudioCLIP's audio head (ESResNeXt-fbsp, Guzhov et al. 2021): the FAD network of the published evaluation.

Kept for parity with the published numbers only; `vggish.VGGish` is the standard FAD network.
The head turns 44.1 kHz audio, in the int16 range the model was trained on, into a 1024-d
AudioCLIP embedding:

1. Frames of 1654 samples every 561 (the signal zero-padded on both sides to a whole number of
   frames), a periodic Blackman-Harris window, each frame zero-padded to 2048 on both sides.
2. A trainable "frequency B-spline" transform (`LinearFBSP`): 1025 complex filters
   `sqrt(fb) · sinc(fb·t/m)^m · exp(-i·fc·t)` over `t = π·linspace(-1, 1, 2048)`, divided by
   `sqrt(2048)` (normalized).
3. Power in dB, `10·log10(|X|²)` (zeros replaced by 1e-18), the lowest 1023 bins split into 3
   bands of 341 bins that act as the three input channels of
4. a ResNeXt-50 (32x4d) with the five attention side-branches of ESResNet and a 2048 -> 1024 linear
   layer.

Module names follow the original (`model/esresnet/*.py` of AudioCLIP), so the `audio.*` entries
of `AudioCLIP-Full-Training.pt` load unchanged (`manifests/audioclip_audio.txt`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 44100
EMBEDDING_DIM = 1024
INT16_SCALE = 32768.0  # the model's input unit: audio in [-1, 1] times this
_FFT, _HOP, _WINDOW = 2048, 561, 1654
_BANDS = 3
_EPS = 1e-8


def blackman_harris(length: int) -> torch.Tensor:
    """Periodic 4-term Blackman-Harris window (`scipy.signal.get_window('blackmanharris', n)`)."""
    phase = 2 * math.pi * torch.arange(length, dtype=torch.float64) / length
    coeffs = (0.35875, -0.48829, 0.14128, -0.01168)
    return sum(c * torch.cos(k * phase) for k, c in enumerate(coeffs))


class LinearFBSP(nn.Module):
    """Frequency B-spline filters: `forward(frames [..., n]) -> [..., out_features, 2]` (re, im).

    The parameters `m` (window order), `fb` (bandwidth) and `fc` (centre frequency) are learnt.
    `sinc(x)^m` of a negative base is the principal complex power `|x|^m · exp(i·π·m)`.
    """

    def __init__(self, out_features: int):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))

    def filters(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary parts of the `[out_features, n]` filter bank."""
        t = math.pi * torch.linspace(-1.0, 1.0, n, device=self.m.device) + _EPS
        m, fb, fc = self.m[:, None], self.fb[:, None], self.fc[:, None]
        x = fb * t / (m + _EPS)
        base = torch.where(x == 0, torch.ones_like(x), torch.sin(x) / x)
        magnitude = fb.sqrt() * base.abs() ** m / math.sqrt(n)
        phase = torch.where(base < 0, math.pi * m, torch.zeros_like(base)) - fc * t
        return magnitude * torch.cos(phase), magnitude * torch.sin(phase)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        real, imag = self.filters(frames.shape[-1])
        return torch.stack((F.linear(frames, real), F.linear(frames, imag)), dim=-1)


class Attention2d(nn.Module):
    """ESResNet attention branch: max-pool to `size`, depthwise + pointwise conv, BN, sigmoid."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int]):
        super().__init__()
        self.conv_depth = nn.Conv2d(cin, cin, kernel, padding=(kernel[0] // 2, kernel[1] // 2), groups=cin)
        self.conv_point = nn.Conv2d(cin, cout, 1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(F.adaptive_max_pool2d(x, size)))))


class Bottleneck(nn.Module):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3 (stride) -> 1x1 (x4), residual, ReLU."""

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 32, width_per_group: int = 4):
        super().__init__()
        width, cout = planes * width_per_group // 64 * groups, planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _stage(cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(Bottleneck(cin, planes, stride), *(Bottleneck(planes * 4, planes) for _ in range(blocks - 1)))


class AudioCLIPAudio(nn.Module):
    """`forward(audio [B, L] at 44.1 kHz, int16 range) -> raw (unnormalised) embedding [B, 1024]`."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", blackman_harris(_WINDOW).float())
        self.fbsp = LinearFBSP(_FFT // 2 + 1)
        self.conv1 = nn.Conv2d(_BANDS, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.att1 = _stage(64, 64, 3, 1), Attention2d(64, 256, (3, 1))
        self.layer2, self.att2 = _stage(256, 128, 4, 2), Attention2d(256, 512, (1, 5))
        self.layer3, self.att3 = _stage(512, 256, 6, 2), Attention2d(512, 1024, (3, 1))
        self.layer4, self.att4 = _stage(1024, 512, 3, 2), Attention2d(1024, 2048, (1, 5))
        self.att5 = Attention2d(2048, 2048, (3, 5))
        self.fc = nn.Linear(2048, EMBEDDING_DIM)

    def log_power(self, audio: torch.Tensor) -> torch.Tensor:
        """`audio [B, L]` (int16 range) -> dB spectrogram `[B, 3, 341, T]`, `T = 1 + ceil((L - 1654) / 561)`."""
        x = audio.float() / (INT16_SCALE - 0.5) + 0.5 / (INT16_SCALE - 0.5)  # [-32768, 32767] -> [-1, 1]
        length = x.shape[-1]
        frames = 1 if length <= _WINDOW else 1 + math.ceil((length - _WINDOW) / _HOP)
        pad = (frames - 1) * _HOP + _WINDOW - length
        x = F.pad(x, (pad // 2, pad - pad // 2)) if pad > 0 else x
        x = x.unfold(-1, _WINDOW, _HOP) * self.window                             # [B, T, 1654]
        x = F.pad(x, ((_FFT - _WINDOW) // 2, _FFT - _WINDOW - (_FFT - _WINDOW) // 2))
        spec = self.fbsp(x)                                                      # [B, T, 1025, 2]
        power = spec.square().sum(-1).transpose(1, 2)                            # [B, 1025, T]
        bins = power.shape[1] // _BANDS
        power = power[:, :bins * _BANDS].reshape(power.shape[0], _BANDS, bins, -1)
        return 10.0 * torch.log10(torch.where(power > 0, power, torch.full_like(power, 1e-18)))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim != 2:
            raise ValueError(f"audio must be [B, L] at {SAMPLE_RATE} Hz in the int16 range, got {tuple(audio.shape)}")
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(self.log_power(audio)))), 3, 2, padding=1)
        for layer, att in ((self.layer1, self.att1), (self.layer2, self.att2),
                           (self.layer3, self.att3), (self.layer4, self.att4)):
            y = layer(x)
            x = y * att(x, y.shape[-2:])
        x = F.adaptive_avg_pool2d(x, 1) * self.att5(x, (1, 1))
        return self.fc(x.flatten(1))
