"""Synthetic sounding videos: determinism, the scene -> sound mapping, and the alignment score."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmdiffusion import media
from mmdiffusion.__main__ import main as cli
from mmdiffusion.data import synth
from mmdiffusion.data.synth import (
    FACTORS, Scene, SynthAVDataset, alignment, alignment_score, audio_signals,
    shuffled_alignment_score, synth_clip, synth_clips, visual_signals,
)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return synth_clips(64, seed=11)


def test_shapes_ranges_and_defaults(batch):
    video, audio = batch
    assert video.shape == (64, 16, 3, 64, 64) and audio.shape == (64, 1, 25600)
    assert video.dtype == audio.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1 and audio.abs().max() <= 1
    v, a = synth_clip(0, frames=32, size=32, fps=10, sample_rate=8000)
    assert v.shape == (32, 3, 32, 32) and a.shape == (1, 25600)


def test_same_seed_gives_identical_tensors(batch):
    video, audio = synth_clips(4, seed=11)
    assert torch.equal(video, batch[0][:4]) and torch.equal(audio, batch[1][:4])
    # A clip depends only on (seed, index), not on the batch it is drawn in.
    v, a = synth_clips(2, seed=11, start=5)
    assert torch.equal(v, batch[0][5:7]) and torch.equal(a, batch[1][5:7])
    other = synth_clips(4, seed=12)
    assert not torch.equal(other[0], video) and not torch.equal(other[1], audio)
    dataset = SynthAVDataset(8, seed=11)
    assert len(dataset) == 8
    assert torch.equal(dataset[3][0], batch[0][3]) and torch.equal(dataset[3][1], batch[1][3])
    with pytest.raises(IndexError):
        dataset[8]


def test_scene_sets_pitch_height_and_impacts():
    """Measured signals against the scene's closed forms: the ball centre height (pixels), the
    tone frequency 150 Hz * 8**height, and clicks in the segments where the ball hits the floor."""
    rng = np.random.default_rng([3, 1])
    scene = Scene.sample(rng)
    video, audio = synth.render(scene, rng, frames=32, size=64, fps=10, sample_rate=16000)
    t = (np.arange(32) + 0.5) / 10
    visual = visual_signals(video[None])[0]
    heard = audio_signals(audio[None], 32)[0]
    assert np.allclose(visual[1].numpy(), scene.height_at(t), atol=1.0 / 64)
    # Pitch: a 100 ms segment holds a sweeping tone; compare with its Hann-weighted mean frequency
    # (the spectral peak of a sweep through the impact kink is off by a few percent).
    ts = np.arange(32 * 1600).reshape(32, 1600) / 16000
    hann = np.hanning(1600)
    frequency = (150 * 8 ** scene.height_at(ts) * hann).sum(1) / hann.sum()
    error = np.abs(2 ** heard[1].numpy() / frequency - 1)
    assert error.max() < 0.05 and np.median(error) < 0.01
    # Clicks and flashes: the segment with an impact, or the next one (for an impact late in its
    # segment), has 3x the click energy of any segment more than 0.2 s after its last impact.
    envelope = scene.impact_envelope(ts)
    hits = np.flatnonzero(envelope.max(1) > 0.99)
    quiet = np.flatnonzero(envelope.max(1) < math.exp(-2))
    assert len(hits) >= 3 and len(quiet) >= 3
    events = torch.stack([heard[:, hits], heard[:, np.minimum(hits + 1, 31)]]).amax(0)
    flashes = torch.stack([visual[:, hits], visual[:, np.minimum(hits + 1, 31)]]).amax(0)
    assert events[0].min() > 3 * heard[0, quiet].max()
    assert flashes[0].min() > visual[0, quiet].max() + 0.3


def test_alignment_real_vs_shuffled(batch):
    video, audio = batch
    per_clip = alignment(video, audio)                       # [64, 3]
    per_factor, real = per_clip.mean(0), float(per_clip.mean())
    shuffled = shuffled_alignment_score(video, audio)
    print(f"\nalignment real {real:.3f} ({dict(zip(FACTORS, per_factor.tolist()))}), shuffled {shuffled:.3f}")
    assert per_factor.min() > 0.9 and real > 0.95
    assert abs(shuffled) < 0.08
    assert alignment_score(video[:3], audio[:3]) == pytest.approx(float(per_clip[:3].mean()), abs=1e-6)
    assert alignment_score(video[0], audio[0]) == pytest.approx(float(per_clip[0].mean()), abs=1e-6)


def test_alignment_is_robust_to_noise(batch):
    """Generated samples are noisy: Gaussian pixel noise (sigma 0.2 of the [-1, 1] range) and
    audio at 10 dB SNR keep most of the score, and shuffled pairs stay at chance."""
    video, audio = batch
    g = torch.Generator().manual_seed(0)
    noisy_video = video + 0.2 * torch.randn(video.shape, generator=g)
    power = audio.square().mean(-1, keepdim=True)
    noisy_audio = audio + (power / 10).sqrt() * torch.randn(audio.shape, generator=g)
    score = alignment_score(noisy_video, noisy_audio)
    print(f"\nalignment with noise {score:.3f}")
    assert score > 0.8
    assert abs(shuffled_alignment_score(noisy_video, noisy_audio)) < 0.08


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), gain=st.floats(0.05, 1.0))
def test_alignment_ignores_audio_gain(seed, gain):
    video, audio = synth_clip(seed, frames=16, size=32)
    assert torch.allclose(alignment(video, gain * audio), alignment(video, audio), atol=1e-4)


def test_alignment_validates_shapes():
    with pytest.raises(ValueError, match=r"\[B, F, C, H, W\]"):
        alignment(torch.zeros(2, 16, 3, 8, 8), torch.zeros(3, 1, 1600))
    with pytest.raises(ValueError, match="too short"):
        alignment(torch.zeros(16, 3, 8, 8), torch.zeros(1, 20))
    with pytest.raises(ValueError, match="at least 2"):
        shuffled_alignment_score(torch.zeros(1, 16, 3, 8, 8), torch.zeros(1, 1, 1600))
    with pytest.raises(ValueError, match="seed"):
        synth_clip(0, seed=-1)


def test_synth_command_writes_playable_mp4(tmp_path, capsys):
    assert cli(["synth", str(tmp_path), "--clips", "2", "--seed", "5", "--size", "32"]) == 0
    assert "alignment score" in capsys.readouterr().out
    assert (tmp_path / "preview.png").read_bytes().startswith(b"\x89PNG")
    info = media.probe(tmp_path / "clip-00001.mp4")
    assert (info.fps, info.width, info.sample_rate, info.channels) == (10, 32, 16000, 1)
    assert info.duration == pytest.approx(3.2, abs=0.01)
    clip = media.read_clip(tmp_path / "clip-00001.mp4", 0.0, None, 10, None, 16000)
    video, audio = synth_clip(1, seed=5, frames=32, size=32)
    assert clip.video.shape == (32, 3, 32, 32) and clip.audio.shape == (1, 51200)
    # Lossy codecs, same content: small pixel error, and the decoded pair is still aligned.
    assert (media.from_uint8(clip.video) - video).abs().mean() < 0.03
    assert alignment_score(media.from_uint8(clip.video), clip.audio) > 0.85
    assert math.isclose(float(clip.audio.std()), float(audio.std()), rel_tol=0.1)
