"""Fréchet and kernel distances against closed forms, and the memorisation check."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mmdiffusion.metrics import (frechet_distance, kernel_distance, memorization_check, nearest_distances,
                                 pixel_mel_embedding)


def exact_gaussian_sample(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """`n` points whose sample mean and unbiased sample covariance are exactly `mean` and `cov`."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)  # sample covariance = I
    return z @ np.linalg.cholesky(cov).T + mean


def random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --- Fréchet distance -------------------------------------------------------------------------

def test_frechet_identical_sets_is_zero():
    x = np.random.default_rng(0).standard_normal((300, 32)) * 3 + 1
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-9)


def test_frechet_rank_deficient_identical_sets_is_zero():
    # fewer samples than dimensions: singular covariances (the case the eigenvalue tolerance handles)
    x = np.random.default_rng(1).standard_normal((20, 64))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(2)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    a = exact_gaussian_sample(rng, 200, mu1, np.diag(s1))
    b = exact_gaussian_sample(rng, 150, mu2, np.diag(s2))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_frechet_non_commuting_2d_closed_form():
    # For 2x2 PSD M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); with M ~ S1 S2 this gives FD in closed form.
    rng = np.random.default_rng(3)
    c1 = np.array([[2.0, 0.3], [0.3, 0.5]])
    rot = np.array([[math.cos(0.7), -math.sin(0.7)], [math.sin(0.7), math.cos(0.7)]])
    c2 = rot @ np.diag([3.0, 0.2]) @ rot.T
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    a, b = exact_gaussian_sample(rng, 100, mu1, c1), exact_gaussian_sample(rng, 120, mu2, c2)
    tr_sqrt = math.sqrt(np.trace(c1 @ c2) + 2 * math.sqrt(np.linalg.det(c1) * np.linalg.det(c2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_frechet_scaled_covariance_closed_form():
    # Σ2 = c² Σ1  =>  FD = |Δμ|² + (1 - c)² tr Σ1
    rng = np.random.default_rng(4)
    cov = random_spd(rng, 16)
    a = exact_gaussian_sample(rng, 400, np.zeros(16), cov)
    b = exact_gaussian_sample(rng, 300, np.full(16, 0.25), 2.5 ** 2 * cov)
    expected = 16 * 0.25 ** 2 + (1 - 2.5) ** 2 * np.trace(cov)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_invariant_to_orthogonal_rotation_and_accepts_torch():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((256, 48)) @ random_spd(rng, 48)
    b = rng.standard_normal((200, 48)) + 0.3
    q = random_orthogonal(rng, 48)
    reference = frechet_distance(a, b)
    assert frechet_distance(a @ q, b @ q) == pytest.approx(reference, rel=1e-9)
    as_float32 = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    assert frechet_distance(*as_float32) == pytest.approx(reference, rel=1e-4)
    assert isinstance(frechet_distance(torch.from_numpy(a), b), float)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2 ** 31 - 1), st.floats(-5, 5))
def test_frechet_properties(dim, seed, offset):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((30, dim)) @ rng.standard_normal((dim, dim))
    b = rng.standard_normal((25, dim)) * 2
    fd = frechet_distance(a, b)
    assert fd >= 0
    assert frechet_distance(b, a) == pytest.approx(fd, rel=1e-8, abs=1e-9)
    assert frechet_distance(a + offset, b + offset) == pytest.approx(fd, rel=1e-8, abs=1e-9)
    assert frechet_distance(a + offset, a) == pytest.approx(dim * offset ** 2, rel=1e-8, abs=1e-9)


# --- kernel distance --------------------------------------------------------------------------

def brute_force_mmd(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]
    k = lambda x, y: (sum(xi * yi for xi, yi in zip(x, y)) / d + 1) ** 3  # noqa: E731
    n, m = len(a), len(b)
    kxx = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_kernel_distance_matches_double_loop():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.5
    assert kernel_distance(a, b) == pytest.approx(brute_force_mmd(a, b), rel=1e-12)


def test_kernel_distance_blocks_match_unblocked(monkeypatch):
    import mmdiffusion.metrics.distances as distances
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((23, 5)), rng.standard_normal((17, 5))
    full = kernel_distance(a, b)
    monkeypatch.setattr(distances, "_KERNEL_BLOCK", 4)
    assert kernel_distance(a, b) == pytest.approx(full, rel=1e-12)


def test_kernel_distance_same_distribution_near_zero():
    rng = np.random.default_rng(8)
    same = kernel_distance(rng.standard_normal((600, 16)), rng.standard_normal((500, 16)))
    shifted = kernel_distance(rng.standard_normal((600, 16)), rng.standard_normal((500, 16)) + 0.5)
    assert abs(same) < 0.02 * shifted
    assert shifted > 0


def test_kernel_distance_identical_multiset_and_rotation():
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((40, 8)), rng.standard_normal((30, 8)) * 1.5
    q = random_orthogonal(rng, 8)
    assert kernel_distance(a @ q, b @ q) == pytest.approx(kernel_distance(a, b), rel=1e-10)
    # a set against itself: MMD²_u = 2 (mean_{i≠j} k - mean_{i,j} k) <= 0, since k(x,x) + k(y,y) >= 2 k(x,y)
    assert kernel_distance(a, a) <= 0


@pytest.mark.parametrize("fn", [frechet_distance, kernel_distance])
def test_bad_inputs_name_the_argument(fn):
    good = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"\ba\b.*\[N, D\]"):
        fn(np.zeros(5), good)
    with pytest.raises(ValueError, match=r"\bb\b.*\[N, D\]"):
        fn(good, np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="same feature dimension"):
        fn(good, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\bb\b.*at least 2 rows"):
        fn(good, np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"\ba\b.*NaN"):
        fn(np.full((4, 3), np.nan), good)
    with pytest.raises(TypeError, match=r"\ba\b"):
        fn([[1.0, 2.0]], good)


# --- memorisation -----------------------------------------------------------------------------

def test_nearest_distances_matches_brute_force():
    rng = np.random.default_rng(10)
    q, bank = rng.standard_normal((9, 4)), rng.standard_normal((13, 4))
    expected = [min(np.linalg.norm(x - y) for y in bank) for x in q]
    np.testing.assert_allclose(nearest_distances(q, bank), expected, rtol=1e-10)


def test_memorization_flags_copies_and_passes_fresh_samples():
    rng = np.random.default_rng(11)
    train = rng.standard_normal((400, 8))
    heldout = rng.standard_normal((200, 8))
    fresh = rng.standard_normal((100, 8))
    copies = train[:100] + 1e-3 * rng.standard_normal((100, 8))
    honest = memorization_check(fresh, heldout, train)
    copied = memorization_check(copies, heldout, train)
    assert honest.threshold == pytest.approx(np.quantile(honest.heldout, 0.05))
    assert honest.fraction_below < 0.2
    assert copied.fraction_below == 1.0
    assert copied.generated_counts.sum() == 100 and copied.heldout_counts.sum() == 200
    assert copied.to_dict()["histogram"]["bin_edges"][0] == pytest.approx(copied.bin_edges[0])
    with pytest.raises(ValueError, match="quantile"):
        memorization_check(fresh, heldout, train, quantile=1.5)


def test_pixel_mel_embedding_is_unit_norm_and_size_independent():
    g = torch.Generator().manual_seed(0)
    video_small = torch.rand(3, 16, 3, 32, 32, generator=g) * 2 - 1
    video_big = torch.nn.functional.interpolate(video_small.flatten(0, 1), size=(64, 64), mode="nearest")
    video_big = video_big.reshape(3, 16, 3, 64, 64)
    audio = torch.randn(3, 1, 16000, generator=g)
    e_small = pixel_mel_embedding(video_small, audio, 16000)
    e_big = pixel_mel_embedding(video_big, audio, 16000)
    torch.testing.assert_close(e_small.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(e_small, e_big, atol=1e-5, rtol=1e-5)
    assert pixel_mel_embedding(None, audio, 16000).shape == (3, 64 * 16)
    with pytest.raises(ValueError, match="video or audio"):
        pixel_mel_embedding(None, None)


# --- the published procedure, step by step ----------------------------------------------------

def test_published_window_indices_follow_torchvision_resampling():
    from mmdiffusion.metrics.published import window_frame_indices
    at_10 = window_frame_indices(20, 10.0)                  # 5 windows of consecutive frames
    assert at_10.shape == (5, 16) and at_10[0].tolist() == list(range(16)) and at_10[-1, -1] == 19
    at_30 = window_frame_indices(60, 30.0)                  # integer step 3: every third frame
    assert at_30.shape == (5, 16) and at_30[0, :3].tolist() == [0, 3, 6]
    at_25 = window_frame_indices(50, 25.0)                  # step 2.5: floor(k * 2.5), k < floor(50 / 2.5)
    assert at_25.shape == (5, 16) and at_25[0, :5].tolist() == [0, 2, 5, 7, 10]
    assert window_frame_indices(15, 10.0).shape == (0, 16)


def test_published_letterbox_keeps_aspect_pads_and_truncates():
    from mmdiffusion.metrics.published import letterbox_video
    video = torch.full((2, 3, 32, 64), 40, dtype=torch.uint8)   # 2:1 -> 64x32 band, 16 black rows above/below
    out = letterbox_video(video)
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.uint8
    assert (out[:, :, :16] == 0).all() and (out[:, :, 48:] == 0).all()
    assert (out[:, :, 16:48] == 39).all()                       # the float32 round trip truncates 40 -> 39
    assert (letterbox_video(torch.full((1, 3, 64, 64), 200, dtype=torch.uint8)) == 200).all()


def test_published_audio_span_and_padding():
    from mmdiffusion.metrics.published import AUDIO_LENGTH, AUDIO_RATE, clip_audio
    audio = torch.ones(2, 5 * AUDIO_RATE)
    at_10 = clip_audio(audio, 10, 25, 10.0)                     # 16 frames at 10 fps: exactly 1.6 s
    assert at_10.shape == (AUDIO_LENGTH,) and bool((at_10 == 1).all())
    at_30 = clip_audio(audio, 0, 45, 30.0)                      # 46 native frames at 30 fps: 1.533 s, then zeros
    assert int((at_30 == 1).sum()) == round(46 / 30 * AUDIO_RATE) and at_30[-1] == 0


def test_published_frechet_arithmetic_agrees_with_float64():
    from mmdiffusion.metrics.published import frechet_distance_float32, tile
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((300, 20)), rng.standard_normal((250, 20)) * 1.3 + 0.2
    assert frechet_distance_float32(a, b) == pytest.approx(frechet_distance(a, b), rel=1e-3)
    assert tile([3, 1, 2], 7) == [3, 1, 2, 3, 1, 2, 3] and tile([3, 1, 2], 2) == [3, 1] and tile([], 4) == []


# --- samples, the report, the eval command -----------------------------------------------------

def _write_synth(folder, count, seconds, seed, size=32):
    from mmdiffusion.data.synth import synth_clip
    from mmdiffusion.media import write_video
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        video, audio = synth_clip(i, seed=seed, frames=round(seconds * 10), size=size)
        write_video(folder / f"clip-{i:03d}.mp4", video, audio, 10, 16000)


def test_find_and_read_samples_pair_video_and_wav(tmp_path):
    from mmdiffusion.media import write_video, write_wav
    from mmdiffusion.metrics.clips import ClipSpec, find_samples, read_sample
    video = torch.rand(12, 3, 16, 16) * 2 - 1
    tone = 0.5 * torch.sin(torch.arange(19200) / 16000 * 2 * math.pi * 440)[None]
    write_video(tmp_path / "a.mp4", video, None, 10)                  # video only + a wav beside it
    write_wav(tmp_path / "a.wav", tone, 16000)
    (tmp_path / "sub").mkdir()
    write_wav(tmp_path / "sub" / "b.wav", tone, 16000)                  # audio only
    found = find_samples(tmp_path)
    assert [(n, v is not None, w is not None) for n, v, w in found] == [("a", True, True), ("sub/b", False, True)]
    clip = read_sample(*found[0])
    assert clip.video.shape == (12, 3, 16, 16) and clip.video.dtype == torch.uint8 and clip.fps == 10
    torch.testing.assert_close(clip.audio, tone, atol=1 / 32767, rtol=0)   # lossless wav audio
    audio_only = read_sample(*found[1])
    assert audio_only.video is None and audio_only.sample_rate == 16000
    spec = ClipSpec.of(audio_only)                                      # 1.2 s at a nominal 10 fps
    assert (spec.frames, spec.fps, spec.sample_rate) == (12, 10.0, 16000)


def test_histogram_image_and_table():
    from mmdiffusion.metrics.report import COLOURS, format_table, histogram_image
    image = histogram_image({"a": np.array([0.1, 0.1, 0.9, np.nan]), "b": np.array([0.5])},
                            np.linspace(0, 1, 5), marker=0.5, width=100, height=50)
    assert image.shape == (50, 100, 3) and image.dtype == np.uint8
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert set(COLOURS) <= colours and (0, 0, 0) in colours
    table = format_table({"metrics": {"fvd": 12.5, "av_sync": {"samples": {"mean": 0.5, "per_clip": [0.5]}}},
                          "not_computed": {"fad/kad": "needs weights"}})
    assert "fvd" in table and "av_sync.samples.mean" in table and "per_clip" not in table
    assert "not computed: needs weights" in table


class StandIn(torch.nn.Module):
    """Cheap deterministic 16-d 'features' in place of I3D, VGGish and AudioCLIP (the protocols' wiring
    does not depend on the feature size; the networks are tested in test_feature_nets.py)."""

    def forward(self, x):
        if x.ndim == 5:                                  # video [B, 3, T, 224, 224]
            return x.mean(dim=(1, 3, 4))[:, :1] * torch.arange(16) + x.std()
        return x.std(-1, keepdim=True) * torch.arange(16) + x.mean(-1, keepdim=True)   # audio [B, L]

    def embed(self, audio, sample_rate):                 # VGGish: [B, C, L] -> [B, 1, 16]
        return audio.std(-1, keepdim=True) * torch.arange(1, 17)


def test_eval_heldout_end_to_end(tmp_path, monkeypatch):
    """Weights-free measures on real files; the network metrics through light stand-ins."""
    import json
    import shutil

    from mmdiffusion.__main__ import main
    from mmdiffusion.metrics import protocols

    _write_synth(tmp_path / "samples", 3, 1.6, seed=1)
    _write_synth(tmp_path / "reference", 3, 2.0, seed=2)
    _write_synth(tmp_path / "train", 3, 2.0, seed=3)
    shutil.copy(tmp_path / "samples" / "clip-000.mp4", tmp_path / "train" / "copy.mp4")   # one memorised sample
    shutil.copy(tmp_path / "reference" / "clip-001.mp4", tmp_path / "train" / "leak.mp4")  # a leaked split
    out = tmp_path / "eval.json"
    args = ["eval", "--samples", str(tmp_path / "samples"), "--reference", str(tmp_path / "reference"),
            "--train", str(tmp_path / "train"), "--synthetic", "--out", str(out), "--report", str(tmp_path / "report"),
            "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    summary = json.loads(out.read_text())
    metrics = summary["metrics"]
    assert summary["samples"]["clips"] == 3 and summary["reference"]["clips"] == 3
    assert set(summary["not_computed"]) == {"fvd/kvd", "fad/kad"}
    assert 0 <= metrics["av_sync"]["samples"]["mean"] <= 1 and len(metrics["av_sync"]["reference"]["per_clip"]) == 3
    assert metrics["synthetic_alignment"]["reference"]["mean"] > 0.5
    memorization = metrics["memorization"]
    assert memorization["features"] == "pixels" and memorization["generated_distances"][0] == pytest.approx(0, abs=1e-6)
    assert memorization["fraction_below"] >= 1 / 3
    assert any("not held out" in note and "clip-001.mp4" in note for note in summary["notes"])
    for name in ("report.md", "samples.png", "av_sync.png", "memorization.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0

    monkeypatch.setattr(protocols, "_network", lambda net, given, known, device: (StandIn(), {"stand_in": True}))
    assert main(args[:5] + ["--out", str(out), "--no-progress"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["fvd"] >= 0 and metrics["fad"] >= 0 and metrics["fvd_feature_rows"] == [3, 3]
    assert any("singular" in note for note in json.loads(out.read_text())["notes"])


def test_eval_published_end_to_end(tmp_path, monkeypatch):
    import json

    from mmdiffusion.__main__ import main
    from mmdiffusion.metrics import protocols
    from mmdiffusion.metrics.published import QUIRKS

    _write_synth(tmp_path / "samples", 2, 1.6, seed=1)            # one 16-frame window each
    _write_synth(tmp_path / "reference", 2, 2.0, seed=2)          # 20 frames: 5 windows each
    monkeypatch.setattr(protocols, "_network", lambda net, given, known, device: (StandIn(), {"stand_in": True}))
    out = tmp_path / "published.json"
    assert main(["eval", "--samples", str(tmp_path / "samples"), "--reference", str(tmp_path / "reference"),
                 "--protocol", "published", "--num-clips", "5", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(out.read_text())
    assert summary["samples"] == {"dir": str(tmp_path / "samples"), "files": 2, "windows": 2, "distinct_clips": 2,
                                  "evaluated_clips": 5}                     # repeated like the published loader
    assert summary["reference"]["windows"] == 10 and summary["reference"]["distinct_clips"] == 5
    metrics = summary["metrics"]
    assert metrics["fad"] == pytest.approx(metrics["fad_float64"], rel=1e-2, abs=1e-3)
    assert {"fvd", "fvd_float64", "kvd"} <= set(metrics) and summary["quirks"] == list(QUIRKS)


def test_eval_refuses_bad_setups(tmp_path, monkeypatch):
    from mmdiffusion.__main__ import main
    monkeypatch.delenv("MMDIFFUSION_I3D_WEIGHTS", raising=False)
    monkeypatch.delenv("MMDIFFUSION_AUDIO_WEIGHTS", raising=False)
    _write_synth(tmp_path / "s", 2, 1.6, seed=1)
    with pytest.raises(SystemExit, match="needs I3D weights"):
        main(["eval", "--samples", str(tmp_path / "s"), "--reference", str(tmp_path / "s"), "--protocol", "published",
              "--no-progress"])
    with pytest.raises(SystemExit, match="same folder"):
        main(["eval", "--samples", str(tmp_path / "s"), "--reference", str(tmp_path / "s"), "--train",
              str(tmp_path / "s"), "--no-progress"])
