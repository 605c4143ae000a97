"""Synthetic sounding videos: a bouncing ball whose sound is caused by what is seen.

Each clip shows one ball on a plain background. Independent random factors per clip: background
and ball colour, base radius, depth oscillation (period, phase, amplitude), bounce period and
phase, apex height, horizontal drift. The sound is a function of the scene at the same instant:

* **impact -> click + flash**: each bounce starts an envelope `e(t) = exp(-(t - t_hit) / 0.1 s)`
  that drives a white-noise click in the audio and a flash (blend towards white) of the ball;
  the flash of frame `k` is the mean of `e` over the frame's display interval;
* **height -> pitch**: a continuous tone at `150 Hz * 8 ** y` for a ball centre at height `y`
  (fraction of the frame from the bottom, 0.2 .. 0.8: about 230 .. 790 Hz);
* **size -> loudness**: tone and click amplitudes are proportional to the current radius.

Video frame `k` (presentation time `k / fps`) is rendered at the middle of its display interval,
`(k + 0.5) / fps`, and is paired with audio samples `[k L / F, (k + 1) L / F)`.

The domain is built to be learnable by a tiny model in minutes: one object, strong low-frequency
visual events, and audio whose relevant structure lives in per-frame energies and one spectral peak.
`alignment` measures the audio-visual correspondence from pixels and waveform alone (no weights),
robustly enough to score imperfect generated samples.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

FLOOR = 0.2            # ball-centre height at impact (fraction of frame, from the bottom)
APEX = (0.5, 0.8)      # range of bounce apex heights
PITCH_LOW, PITCH_RATIO = 150.0, 8.0   # tone frequency = PITCH_LOW * PITCH_RATIO ** height
DECAY = 0.1            # seconds, impact envelope time constant
TONE_GAIN, CLICK_GAIN, FLASH_GAIN = 1.5, 4.0, 1.5
TONE_BAND = (150.0, 1200.0)   # Hz searched for the tone's spectral peak
CLICK_BAND = 2000.0           # Hz and above: click energy
FACTORS: tuple[str, ...] = ("onset", "pitch", "loudness")


@dataclass(frozen=True)
class Scene:
    """Random factors of one clip. Lengths are fractions of the frame size, times are seconds."""

    background: tuple[float, float, float]
    color: tuple[float, float, float]
    radius: float
    depth_amplitude: float
    depth_period: float
    depth_phase: float
    bounce_period: float
    bounce_phase: float
    apex: float
    x0: float
    vx: float
    tone_phase: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Scene:
        grey = rng.uniform(0.05, 0.3)
        background = tuple(float(np.clip(grey + rng.uniform(-0.04, 0.04), 0, 1)) for _ in range(3))
        color = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
        period = rng.uniform(0.5, 1.0)
        depth_period = rng.uniform(1.2, 2.4)
        return cls(
            background=background, color=tuple(float(c) for c in color),
            radius=rng.uniform(0.09, 0.13), depth_amplitude=rng.uniform(0.25, 0.4),
            depth_period=depth_period, depth_phase=rng.uniform(0, depth_period),
            bounce_period=period, bounce_phase=rng.uniform(0, period), apex=rng.uniform(*APEX),
            x0=rng.uniform(0.2, 0.8), vx=rng.uniform(-0.3, 0.3), tone_phase=rng.uniform(0, 2 * math.pi),
        )

    def radius_at(self, t: np.ndarray) -> np.ndarray:
        wave = np.sin(2 * np.pi * (t + self.depth_phase) / self.depth_period)
        return self.radius * (1 + self.depth_amplitude * wave)

    def _since_impact(self, t: np.ndarray) -> np.ndarray:
        return np.mod(t - self.bounce_phase, self.bounce_period)

    def height_at(self, t: np.ndarray) -> np.ndarray:
        u = self._since_impact(t) / self.bounce_period
        return FLOOR + (self.apex - FLOOR) * 4 * u * (1 - u)

    def x_at(self, t: np.ndarray) -> np.ndarray:
        lo, hi = 0.18, 0.82                      # reflect off the walls: a triangle wave
        s = np.mod(self.x0 - lo + self.vx * t, 2 * (hi - lo))
        return lo + np.where(s < hi - lo, s, 2 * (hi - lo) - s)

    def impact_envelope(self, t: np.ndarray) -> np.ndarray:
        return np.exp(-self._since_impact(t) / DECAY)


def _segment_bounds(length: int, frames: int) -> np.ndarray:
    """Audio segment boundaries `a_j = floor(j * L / F)`, `j = 0 .. F` (as in RS-MMA)."""
    return (np.arange(frames + 1) * length) // frames


def render(scene: Scene, rng: np.random.Generator, *, frames: int, size: int, fps: float,
           sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Video `[F, 3, size, size]` and audio `[1, L]` (L = round(F * sample_rate / fps)), both
    float32 in [-1, 1]; `rng` draws the click noise."""
    length = round(frames * sample_rate / fps)
    t = np.arange(length) / sample_rate
    radius, envelope = scene.radius_at(t), scene.impact_envelope(t)
    phase = scene.tone_phase + 2 * np.pi * np.cumsum(PITCH_LOW * PITCH_RATIO ** scene.height_at(t)) / sample_rate
    audio = radius * (TONE_GAIN * np.sin(phase) + CLICK_GAIN * envelope * rng.uniform(-1, 1, length))

    bounds = _segment_bounds(length, frames)
    flash = np.minimum(1.0, FLASH_GAIN * np.add.reduceat(envelope, bounds[:-1]) / np.diff(bounds))
    tf = (np.arange(frames) + 0.5) / fps
    centre = np.arange(size) + 0.5                                  # pixel centres
    dx = centre[None, None, :] - size * scene.x_at(tf)[:, None, None]
    dy = centre[None, :, None] - size * (1 - scene.height_at(tf))[:, None, None]
    coverage = np.clip(size * scene.radius_at(tf)[:, None, None] - np.hypot(dx, dy) + 0.5, 0, 1)
    ball = (1 - flash)[:, None] * np.asarray(scene.color) + flash[:, None]       # [F, 3]
    background = np.asarray(scene.background)
    video = background[None, :, None, None] + coverage[:, None] * (ball - background)[:, :, None, None]
    return (torch.from_numpy((video * 2 - 1).astype(np.float32)),
            torch.from_numpy(np.clip(audio, -1, 1)[None].astype(np.float32)))


def _rng(seed: int, index: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError(f"seed and clip index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([seed, index])


def synth_clip(index: int, *, seed: int = 0, frames: int = 16, size: int = 64, fps: float = 10,
               sample_rate: int = 16000) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip `index` of the stream `seed`: video `[F, 3, S, S]`, audio `[1, L]`, float in [-1, 1].
    A pure function of `(seed, index)` and the shape arguments."""
    if frames < 1 or size < 1 or fps <= 0 or sample_rate < 1:
        raise ValueError(f"frames, size, fps, sample_rate must be positive, got "
                         f"{frames}, {size}, {fps}, {sample_rate}")
    rng = _rng(seed, index)
    scene = Scene.sample(rng)
    return render(scene, rng, frames=frames, size=size, fps=fps, sample_rate=sample_rate)


def synth_clips(n: int, *, seed: int = 0, start: int = 0, frames: int = 16, size: int = 64,
                fps: float = 10, sample_rate: int = 16000) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips `start .. start + n - 1` of stream `seed`, stacked: video `[n, F, 3, S, S]`,
    audio `[n, 1, L]`; clip `i` equals `synth_clip(i, seed=seed, ...)` whatever the batch."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    clips = [synth_clip(start + i, seed=seed, frames=frames, size=size, fps=fps, sample_rate=sample_rate)
             for i in range(n)]
    return torch.stack([v for v, _ in clips]), torch.stack([a for _, a in clips])


class SynthAVDataset(Dataset):
    """`length` synthetic clips of stream `seed`; item `i` is `synth_clip(i, seed=seed, ...)`.
    Deterministic per index, so it is safe with any number of DataLoader workers."""

    def __init__(self, length: int, *, seed: int = 0, frames: int = 16, size: int = 64,
                 fps: float = 10, sample_rate: int = 16000) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.length, self.seed = length, seed
        self.clip_args = dict(frames=frames, size=size, fps=fps, sample_rate=sample_rate)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} clips")
        return synth_clip(index, seed=self.seed, **self.clip_args)


# --------------------------------------------------------------------------- alignment score

def _batched(video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    video, audio = torch.as_tensor(video).float(), torch.as_tensor(audio).float()
    if video.ndim == 4 and audio.ndim == 2:
        video, audio = video[None], audio[None]
    if video.ndim != 5 or audio.ndim != 3 or video.shape[0] != audio.shape[0]:
        raise ValueError(f"expected video [B, F, C, H, W] and audio [B, C, L] (or both unbatched), "
                         f"got {tuple(video.shape)} and {tuple(audio.shape)}")
    return video, audio


def visual_signals(video: torch.Tensor) -> torch.Tensor:
    """Per-frame visual factors `[B, 3, F]` of videos `[B, F, C, H, W]` in [-1, 1]:
    (flash: whiteness of the ball, height: centre height, size: sqrt of ball area).

    The ball is a soft mask of pixels far from the clip's median colour (the background), so the
    measures degrade gracefully on noisy or blurry generated frames."""
    x = ((video + 1) / 2).clamp(0, 1)
    b, f, c, h, w = x.shape
    background = x.permute(0, 2, 1, 3, 4).reshape(b, c, -1).median(dim=-1).values   # [B, C]
    distance = (x - background[:, None, :, None, None]).square().sum(2).sqrt()       # [B, F, H, W]
    mask = ((distance - 0.12) / 0.18).clamp(0, 1)
    mass = mask.sum((-2, -1)) + 1e-6
    rows = 1 - (torch.arange(h, dtype=x.dtype) + 0.5) / h                             # height of each row
    height = (mask * rows[:, None]).sum((-2, -1)) / mass
    whiteness = (mask * x.min(dim=2).values).sum((-2, -1)) / mass
    return torch.stack([whiteness, height, mass.sqrt()], dim=1)


def audio_signals(audio: torch.Tensor, frames: int, sample_rate: int = 16000) -> torch.Tensor:
    """Per-segment audio factors `[B, 3, F]` of audio `[B, C, L]` cut into `frames` segments
    (boundaries `floor(j L / F)`): (onset: RMS above 2 kHz, pitch: log2 frequency of the spectral
    peak in 150-1200 Hz, loudness: magnitude around that peak)."""
    mono = audio.mean(dim=1)
    length = mono.shape[-1]
    bounds = _segment_bounds(length, frames)
    n = int(np.diff(bounds).min())
    segments = torch.stack([mono[:, a:a + n] for a in bounds[:-1]], dim=1)        # [B, F, n]
    power = torch.fft.rfft(segments * torch.hann_window(n, periodic=False), dim=-1).abs().square()
    freqs = torch.fft.rfftfreq(n, d=1 / sample_rate)
    band = torch.nonzero((freqs >= TONE_BAND[0]) & (freqs <= TONE_BAND[1])).flatten()
    if band.numel() < 3:
        raise ValueError(f"audio segments of {n} samples at {sample_rate} Hz are too short to "
                         f"resolve the tone band {TONE_BAND} Hz")
    onset = power[..., freqs >= CLICK_BAND].sum(-1).sqrt()
    lo, hi = int(band[0]), int(band[-1]) + 1
    peak = power[..., lo:hi].argmax(-1) + lo                                        # [B, F]
    # Parabolic interpolation of the log power around the peak for a sub-bin frequency.
    logp = (power + 1e-12).log()
    last = power.shape[-1] - 1
    left, mid, right = (logp.gather(-1, (peak + d).clamp(0, last)[..., None])[..., 0] for d in (-1, 0, 1))
    curvature = left - 2 * mid + right
    offset = torch.where(curvature < 0, 0.5 * (left - right) / curvature, torch.zeros_like(mid))
    pitch = torch.log2((peak + offset.clamp(-0.5, 0.5)) * sample_rate / n)
    window = peak[..., None] + torch.arange(-2, 3)
    loudness = power.gather(-1, window.clamp(0, last)).sum(-1).sqrt()
    return torch.stack([onset, pitch, loudness], dim=1)


def _pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the last dim; 0 where either signal is constant."""
    x, y = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
    denominator = (x.square().sum(-1) * y.square().sum(-1)).sqrt()
    ok = denominator > 1e-12
    return torch.where(ok, (x * y).sum(-1) / denominator.clamp_min(1e-12), torch.zeros_like(denominator))


def alignment(video: torch.Tensor, audio: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """Per-clip audio-visual correspondence `[B, 3]` for the factors `FACTORS`
    (flash-onset, height-pitch, size-loudness): Pearson correlation over the clip's frames.

    `video` `[B, F, C, H, W]` in [-1, 1], `audio` `[B, C, L]` (or both unbatched)."""
    video, audio = _batched(video, audio)
    return _pearson(visual_signals(video), audio_signals(audio, video.shape[1], sample_rate))


def alignment_score(video: torch.Tensor, audio: torch.Tensor, sample_rate: int = 16000) -> float:
    """Mean of `alignment` over clips and factors: about 0.9 for real clips of this domain,
    about 0 for unrelated audio. Weights-free; see `alignment` for the inputs."""
    return float(alignment(video, audio, sample_rate).mean())


def shuffled_alignment_score(video: torch.Tensor, audio: torch.Tensor, sample_rate: int = 16000) -> float:
    """`alignment_score` with each clip's audio taken from the next clip (a derangement of the
    batch): the chance level a generator must beat."""
    video, audio = _batched(video, audio)
    if video.shape[0] < 2:
        raise ValueError("shuffled_alignment_score needs a batch of at least 2 clips")
    return alignment_score(video, audio.roll(1, dims=0), sample_rate)
