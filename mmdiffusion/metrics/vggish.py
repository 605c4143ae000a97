"""VGGish (Hershey et al. 2017): the embedding network of the Fréchet Audio Distance (Kilgour et al. 2019).

`VGGishLogMel` is the front-end of the public model (`mel_features.py` / `vggish_input.py` of the
AudioSet release), written with torch: 16 kHz mono, 25 ms periodic-Hann frames every 10 ms, the
magnitude of a 512-point FFT, 64 mel bands over 125-7500 Hz (HTK mel scale, triangles in mel
space, DC bin dropped), `log(mel + 0.01)`, cut into non-overlapping 0.96 s examples of 96 frames.
`VGGish` maps each example to a 128-d embedding. Module names follow the PyTorch port
(harritaylor/torchvggish), so its `vggish-10086976.pth` loads unchanged
(`manifests/vggish.txt`). The embedding is the last linear layer without the ReLU the port
appends, and without the PCA/8-bit post-processing, as FAD implementations use it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn

SAMPLE_RATE = 16000
EMBEDDING_DIM = 128
_WINDOW, _HOP, _FFT = 400, 160, 512          # samples: 25 ms, 10 ms, next power of two
_MELS, _FMIN, _FMAX, _LOG_OFFSET = 64, 125.0, 7500.0, 0.01
_EXAMPLE_FRAMES = 96                         # 0.96 s of 10 ms frames, also the hop between examples


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_matrix() -> torch.Tensor:
    """`[FFT/2 + 1, 64]` triangular filters, linear in mel, as VGGish's `spectrogram_to_mel_matrix`."""
    bins_mel = _hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, _FFT // 2 + 1))
    edges = np.linspace(_hz_to_mel(_FMIN), _hz_to_mel(_FMAX), _MELS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(np.minimum(rising, falling), 0.0)
    weights[0] = 0.0  # the DC bin carries no mel weight
    return torch.from_numpy(weights.astype(np.float32))


def resample(audio: torch.Tensor, sample_rate: int, target_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (a Kaiser-windowed sinc, the parameters of
    resampy's `kaiser_best`, which VGGish's reference input pipeline uses)."""
    if sample_rate == target_rate:
        return audio
    return AF.resample(audio, sample_rate, target_rate, lowpass_filter_width=64, rolloff=0.9475937167399596,
                       resampling_method="sinc_interp_kaiser", beta=14.769656459379492)


class VGGishLogMel(nn.Module):
    """`forward(audio [B, L] at 16 kHz, in [-1, 1]) -> examples [B, E, 1, 96, 64]`.

    `E = max(1, 1 + (frames - 96) // 96)` with `frames = 1 + (L - 400) // 160`; a clip shorter
    than one example (0.975 s) is zero-padded to one, longer clips drop the incomplete tail.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(_WINDOW, periodic=True, dtype=torch.float64).float(),
                             persistent=False)
        self.register_buffer("mel", _mel_matrix(), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim != 2:
            raise ValueError(f"audio must be [B, L] at {SAMPLE_RATE} Hz, got {tuple(audio.shape)}")
        min_len = _WINDOW + (_EXAMPLE_FRAMES - 1) * _HOP
        if audio.shape[1] < min_len:
            audio = F.pad(audio, (0, min_len - audio.shape[1]))
        frames = audio.float().unfold(1, _WINDOW, _HOP) * self.window          # [B, frames, 400]
        magnitude = torch.fft.rfft(frames, n=_FFT).abs()                          # [B, frames, 257]
        log_mel = torch.log(magnitude @ self.mel + _LOG_OFFSET)                   # [B, frames, 64]
        return log_mel.unfold(1, _EXAMPLE_FRAMES, _EXAMPLE_FRAMES).transpose(2, 3).unsqueeze(2)


class VGGish(nn.Module):
    """`forward(examples [N, 1, 96, 64]) -> embeddings [N, 128]`; `embed` works from waveforms."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if cout == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True),
                                        nn.Linear(4096, EMBEDDING_DIM))
        self.front_end = VGGishLogMel()

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        if examples.ndim != 4 or examples.shape[1:] != (1, _EXAMPLE_FRAMES, _MELS):
            raise ValueError(f"examples must be [N, 1, {_EXAMPLE_FRAMES}, {_MELS}], got {tuple(examples.shape)}")
        x = self.features(examples)                       # [N, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)               # TensorFlow's NHWC flattening order
        return self.embeddings(x)

    def embed(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """`audio [B, C, L]` in [-1, 1] (channels averaged) -> `[B, E, 128]`, one row per 0.96 s example."""
        if audio.ndim != 3:
            raise ValueError(f"audio must be [B, C, L], got {tuple(audio.shape)}")
        examples = self.front_end(resample(audio.float().mean(1), sample_rate, SAMPLE_RATE))
        b, e = examples.shape[:2]
        return self.forward(examples.flatten(0, 1)).reshape(b, e, EMBEDDING_DIM)

