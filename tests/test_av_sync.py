"""The weights-free synchrony score on synthetic clips with known events and time-shifted audio."""
import math

import pytest
import torch

from mmdiffusion.metrics import av_sync_score
from mmdiffusion.metrics.av_sync import motion_envelope, onset_envelope, pick_peaks

FPS, SR, FRAMES = 10, 16000, 40
EVENTS = (5, 15, 22, 33)  # frames at which a square jumps and a click sounds


def synthetic_clip(shift_seconds: float = 0.0, events=EVENTS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A square that jumps at `events` (video [F, 3, 32, 32] in [-1, 1]) and decaying noise bursts at the
    same instants plus `shift_seconds` (audio [1, L]), over a faint noise floor."""
    g = torch.Generator().manual_seed(seed)
    video = -torch.ones(FRAMES, 3, 32, 32)
    pos = 0
    for f in range(FRAMES):
        pos = (pos + 11) % 24 if f in events else pos
        video[f, :, pos:pos + 8, pos:pos + 8] = 1.0
    length = FRAMES * SR // FPS
    audio = 1e-3 * torch.randn(1, length, generator=g)
    for f in events:
        start = round((f / FPS + shift_seconds) * SR)
        if 0 <= start < length:
            n = min(400, length - start)
            audio[0, start:start + n] += torch.randn(n, generator=g) * torch.exp(-torch.arange(n) / 80.0)
    return video, audio


def test_aligned_clip_scores_near_one_and_finds_the_events():
    result = av_sync_score(*synthetic_clip(), FPS, SR)
    expected = torch.tensor(EVENTS, dtype=torch.float64) / FPS
    torch.testing.assert_close(result.video_peaks, expected)
    assert (result.audio_peaks - expected).abs().max() <= 0.015   # within 1.5 audio hops of the click
    assert result.score > 0.98


def test_score_falls_with_the_audio_shift():
    shifts = [0.0, 0.05, 0.1, 0.2, 0.3]
    scores = [av_sync_score(*synthetic_clip(s), FPS, SR).score for s in shifts]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] < 0.05
    # a lag hurts like a lead of the same size (up to the 10 ms audio hop)
    lead = av_sync_score(*synthetic_clip(-0.1), FPS, SR).score
    assert lead == pytest.approx(scores[2], abs=0.1)


def test_credit_is_gaussian_in_the_offset():
    # one event per modality, offset by exactly one audio hop multiple: score = exp(-d^2 / 2 tau^2)
    result = av_sync_score(*synthetic_clip(0.2, events=(10,)), FPS, SR, tolerance=0.1)
    d = float((result.audio_peaks[0] - result.video_peaks[0]).abs())
    assert result.score == pytest.approx(math.exp(-0.5 * (d / 0.1) ** 2), rel=1e-6)


def test_static_silent_clip_is_undefined_and_one_sided_events_score_zero():
    video, audio = torch.zeros(FRAMES, 3, 16, 16), torch.zeros(1, FRAMES * SR // FPS)
    assert math.isnan(av_sync_score(video, audio, FPS, SR).score)
    moving, _ = synthetic_clip()
    assert av_sync_score(moving, audio, FPS, SR).score == 0.0


def test_envelopes_and_peak_picker():
    video, audio = synthetic_clip()
    env, times = motion_envelope(video, FPS)
    assert env.shape == times.shape == (FRAMES - 1,)
    onset, onset_times = onset_envelope(audio, SR)
    assert onset.shape == onset_times.shape and onset_times[1] - onset_times[0] == pytest.approx(0.01)
    # plateaus give one peak (the earliest); peaks closer than min_separation / 2 merge
    e = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.9, 0.0, 0.8, 0.0])
    t = torch.arange(9, dtype=torch.float64)
    assert pick_peaks(e, t, min_separation=2.0).tolist() == [1.0, 5.0, 7.0]
    assert pick_peaks(e, t, min_separation=4.0).tolist() == [1.0, 5.0]
    assert pick_peaks(torch.ones(9), t, min_separation=2.0).numel() == 0


def test_bad_inputs():
    video, audio = synthetic_clip()
    with pytest.raises(ValueError, match="video must be"):
        av_sync_score(video[0], audio, FPS, SR)
    with pytest.raises(ValueError, match="audio must be"):
        av_sync_score(video, audio[0], FPS, SR)
    with pytest.raises(ValueError, match="fps"):
        av_sync_score(video, audio, 0, SR)
