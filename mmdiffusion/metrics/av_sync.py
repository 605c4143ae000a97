"""A weights-free audio-visual synchrony score, in the spirit of AV-Align (Yariv et al. 2024).

Events are peaks of one envelope per modality, on a common clock in seconds:
- video: the mean absolute difference between consecutive frames (a motion proxy; AV-Align uses
  optical flow), at the time of the later frame, `f / fps`;
- audio: the onset strength, the mean over mel bands of the positive change of the dB mel
  spectrogram between 10 ms frames (librosa's onset envelope; AV-Align uses librosa's onsets).

Both envelopes go through the same peak picker. Each peak earns a credit
`exp(-d² / 2τ²)` from the distance `d` (s) to the nearest peak of the other modality, and
`score = (Σ audio credits + Σ video credits) / (#audio peaks + #video peaks)` in [0, 1]: 1 when
every event has a counterpart at the same instant, falling smoothly as they drift apart. AV-Align
counts a hit within ±1 frame instead; the Gaussian credit with `τ` = one frame interval (the
default) is its soft version, so that the score also ranks small offsets. The score is NaN when
neither modality has a peak (nothing happens: synchrony is undefined) and 0 when only one has.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .spectral import HOP_SECONDS, log_mel_db


@dataclass(frozen=True)
class SyncScore:
    """Synchrony of one clip: `score` in [0, 1] (NaN if no events) and the event times in seconds."""

    score: float
    audio_peaks: torch.Tensor
    video_peaks: torch.Tensor


def motion_envelope(video: torch.Tensor, fps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`video [F, C, H, W]` -> (mean |frame_f - frame_{f-1}| `[F-1]`, times `f / fps` `[F-1]`)."""
    x = video.float()
    envelope = (x[1:] - x[:-1]).abs().mean(dim=(1, 2, 3))
    return envelope, torch.arange(1, x.shape[0], dtype=torch.float64) / fps


def onset_envelope(audio: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`audio [C, L]` -> (onset strength `[T-1]`, times of the later frame `[T-1]`)."""
    db = log_mel_db(audio, sample_rate)                                    # [n_mels, T]
    envelope = F.relu(db[:, 1:] - db[:, :-1]).mean(0)
    return envelope, torch.arange(1, db.shape[-1], dtype=torch.float64) * HOP_SECONDS


def pick_peaks(envelope: torch.Tensor, times: torch.Tensor, *, min_separation: float,
               threshold: float = 0.3) -> torch.Tensor:
    """Times of the local maxima of `envelope` that stand out.

    A peak is the largest value within ±`min_separation`/2 seconds (the earliest of equal values)
    and rises above `median + threshold · (max - median)` of the envelope. A flat envelope has none.
    """
    e = envelope.double()
    if e.numel() == 0:
        return times[:0]
    median, top = e.median(), e.max()
    if top - median <= 1e-9 * max(float(top.abs()), 1.0):
        return times[:0]
    keep = []
    for i in torch.nonzero(e >= median + threshold * (top - median)).flatten().tolist():
        near = (times - times[i]).abs() <= min_separation / 2
        before = near & (torch.arange(e.numel()) < i)
        if e[i] >= e[near].max() and not bool((e[before] == e[i]).any()):
            keep.append(i)
    return times[keep]


def _credits(peaks: torch.Tensor, others: torch.Tensor, tolerance: float) -> torch.Tensor:
    if others.numel() == 0:
        return torch.zeros_like(peaks)
    nearest = (peaks[:, None] - others[None, :]).abs().amin(1)
    return torch.exp(-0.5 * (nearest / tolerance) ** 2)


def av_sync_score(video: torch.Tensor, audio: torch.Tensor, fps: float, sample_rate: int, *,
                  tolerance: float | None = None) -> SyncScore:
    """Synchrony of `video [F, C, H, W]` (in [-1, 1]; any scale works) and `audio [C, L]`.

    `tolerance`: τ of the credit in seconds, default one frame interval `1 / fps`.
    """
    if video.ndim != 4 or video.shape[0] < 2:
        raise ValueError(f"video must be [F >= 2, C, H, W], got {tuple(video.shape)}")
    if audio.ndim != 2:
        raise ValueError(f"audio must be [C, L], got {tuple(audio.shape)}")
    if fps <= 0 or sample_rate <= 0:
        raise ValueError(f"fps and sample_rate must be positive, got fps={fps}, sample_rate={sample_rate}")
    tau = 1.0 / fps if tolerance is None else tolerance
    video_peaks = pick_peaks(*motion_envelope(video, fps), min_separation=1.0 / fps)
    audio_peaks = pick_peaks(*onset_envelope(audio, sample_rate), min_separation=1.0 / fps)
    count = audio_peaks.numel() + video_peaks.numel()
    if count == 0:
        return SyncScore(float("nan"), audio_peaks, video_peaks)
    total = _credits(audio_peaks, video_peaks, tau).sum() + _credits(video_peaks, audio_peaks, tau).sum()
    return SyncScore(float(total) / count, audio_peaks, video_peaks)
