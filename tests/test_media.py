"""Media writing and reading: mp4/mkv round trips, timestamps, resampling, wav, PNG, contact sheets."""
from __future__ import annotations

import struct
import wave
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from mmdiffusion import media


def ramp_video(frames: int, height: int = 32, width: int = 32) -> torch.Tensor:
    """Frame k is a flat grey whose level encodes k (3 levels apart, k < 80), float in [-1, 1]."""
    levels = (16 + 3 * torch.arange(frames)).float() / 127.5 - 1
    return levels[:, None, None, None].expand(frames, 3, height, width).clone()


def frame_index(video: torch.Tensor) -> torch.Tensor:
    """Inverse of `ramp_video` on decoded uint8 frames `[F, 3, H, W]`."""
    return ((video.float().mean((1, 2, 3)) - 16) / 3).round().long()


def clicks(seconds: float, sample_rate: int, times: list[float], channels: int = 1) -> torch.Tensor:
    """Silence with 5 ms bursts of amplitude 0.8 starting at `times`."""
    audio = torch.zeros(channels, round(seconds * sample_rate))
    for t in times:
        start = round(t * sample_rate)
        audio[:, start:start + sample_rate // 200] = 0.8
    return audio


def first_onset(audio: torch.Tensor, sample_rate: int) -> float:
    return float((audio[0].abs() > 0.3).nonzero()[0, 0]) / sample_rate


@pytest.mark.parametrize("suffix,fps,sample_rate,channels", [
    (".mp4", 10, 16000, 1),
    (".mkv", Fraction(30000, 1001), 44100, 2),
])
def test_write_video_round_trip(tmp_path, suffix, fps, sample_rate, channels):
    frames = 30
    seconds = frames / float(fps)
    path = media.write_video(tmp_path / f"clip{suffix}", ramp_video(frames),
                             clicks(seconds, sample_rate, [1.0], channels), fps, sample_rate)
    info = media.probe(path)
    assert info.fps == pytest.approx(float(fps), rel=1e-4)
    assert (info.width, info.height) == (32, 32)
    assert (info.sample_rate, info.channels) == (sample_rate, channels)
    assert info.duration == pytest.approx(seconds, abs=0.05)
    clip = media.read_clip(path, 0.0, None, float(fps), None, sample_rate)
    assert clip.start == pytest.approx(0.0, abs=1e-3)
    assert clip.video.dtype == torch.uint8 and clip.video.shape == (frames, 3, 32, 32)
    assert torch.equal(frame_index(clip.video), torch.arange(frames))
    assert clip.audio.shape == (1, round(seconds * sample_rate))
    # AAC priming is removed by the demuxer: the click is where it was written (within 1 ms).
    assert first_onset(clip.audio, sample_rate) == pytest.approx(1.0, abs=1e-3)


def test_write_video_resamples_audio_at_a_rate_aac_lacks(tmp_path):
    assert media.aac_rate(4800) == 8000 and media.aac_rate(16000) == 16000 and media.aac_rate(200000) == 96000
    path = media.write_video(tmp_path / "clip.mp4", ramp_video(16, 16, 16), clicks(1.6, 4800, [0.8]), 10, 4800)
    info = media.probe(path)
    assert info.sample_rate == 8000 and info.duration == pytest.approx(1.6, abs=0.05)
    clip = media.read_clip(path, 0.0, None, 10.0, None, 4800)
    assert clip.audio.shape == (1, 7680)
    assert first_onset(clip.audio, 4800) == pytest.approx(0.8, abs=2e-3)  # the click keeps its time


def test_mpeg4_fallback_codec_round_trip(tmp_path):
    path = media.write_video(tmp_path / "m.mp4", ramp_video(12), clicks(1.2, 16000, [0.5]), 10, 16000,
                             codec="mpeg4")
    clip = media.read_clip(path, 0.0, None, 10, None, 16000)
    assert torch.equal(frame_index(clip.video), torch.arange(12))
    assert media.video_codec() in ("libx264", "mpeg4")


def test_read_clip_resamples_by_timestamps(tmp_path):
    """25 fps, 44.1 kHz stereo source read at 10 fps / 16 kHz mono from an arbitrary start."""
    path = media.write_video(tmp_path / "c.mkv", ramp_video(75), clicks(3.0, 44100, [1.5], 2), 25, 44100)
    clip = media.read_clip(path, 0.5, 10, 10, None, 16000)
    assert clip.start == pytest.approx(0.52, abs=1e-3)        # snaps to the next 25 fps frame
    centres = clip.start + (torch.arange(10) + 0.5) / 10      # frame on screen at each centre
    expected = torch.floor(centres * 25 + 1e-6).long()
    assert torch.equal(frame_index(clip.video), expected)
    assert clip.audio.shape == (1, 16000)
    assert first_onset(clip.audio, 16000) == pytest.approx(1.5 - clip.start, abs=1e-3)


def test_read_clip_resizes_short_side_and_centre_crops(tmp_path):
    video = torch.full((10, 3, 32, 64), -1.0)
    video[..., 16:32] = 1.0          # white band in the second quarter of the width
    path = media.write_video(tmp_path / "w.mp4", video, clicks(1.0, 16000, []), 10, 16000)
    clip = media.read_clip(path, 0.0, 10, 10, 16, 16000)
    assert clip.video.shape == (10, 3, 16, 16)
    column = clip.video[0, 0].float().mean(0)   # 32x64 -> 16x32 -> crop columns 8..24
    assert column[:8].min() > 200 and column[9:].max() < 40   # the band spans crop columns 0..7


def test_read_clip_errors(tmp_path):
    path = media.write_video(tmp_path / "short.mp4", ramp_video(10), None, 10, 16000)
    with pytest.raises(media.MediaError, match="no audio"):
        media.read_clip(path, 0.0, 5, 10, 16, 16000)
    path = media.write_video(tmp_path / "s.mp4", ramp_video(10), clicks(1.0, 16000, []), 10, 16000)
    with pytest.raises(media.MediaError, match="video ends"):
        media.read_clip(path, 0.0, 16, 10, 16, 16000)
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(av.FFmpegError):
        media.probe(tmp_path / "bad.mp4")


def test_read_audio_and_read_video(tmp_path):
    path = media.write_video(tmp_path / "c.mp4", ramp_video(20), clicks(2.0, 16000, [0.5]), 10, 16000)
    wav = media.write_wav(tmp_path / "c.wav", clicks(2.0, 16000, [0.5]), 16000)
    for source in (path, wav):  # audio from a video file or a wav, resampled
        audio = media.read_audio(source, 0.25, 8000, 8000)
        assert audio.shape == (1, 8000) and first_onset(audio, 8000) == pytest.approx(0.25, abs=2e-3)
        with pytest.raises(media.MediaError, match="lasts 2.0"):
            media.read_audio(source, 1.5, 8000, 8000)
    frames, t0 = media.read_video(path, 0.5, 8, 10, 16)
    assert frames.shape == (8, 3, 16, 16) and t0 == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(frame_index(frames), torch.arange(5, 13))
    with pytest.raises(media.MediaError, match="no video"):
        media.read_video(wav, 0.0, 8, 10, 16)
    silent = media.write_video(tmp_path / "silent.mp4", ramp_video(10), None, 10, 16000)
    with pytest.raises(media.MediaError, match="no audio"):
        media.read_audio(silent, 0.0, 100, 16000)


def test_write_video_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="even"):
        media.write_video(tmp_path / "a.mp4", torch.zeros(2, 3, 31, 32))
    with pytest.raises(ValueError, match=r"\[F, C, H, W\]"):
        media.write_video(tmp_path / "a.mp4", torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"\[C, L\]"):
        media.write_video(tmp_path / "a.mp4", torch.zeros(2, 3, 32, 32), torch.zeros(100))
    with pytest.raises(ValueError, match="mp4"):
        media.write_video(tmp_path / "a.webm", torch.zeros(2, 3, 32, 32))


def test_write_wav_round_trip(tmp_path):
    audio = torch.linspace(-1, 1, 2 * 801).reshape(2, 801)
    path = media.write_wav(tmp_path / "a.wav", audio, 22050)
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (2, 2, 22050, 801)
        pcm = np.frombuffer(f.readframes(801), "<i2").reshape(801, 2).T
    assert np.array_equal(pcm, media.to_int16(audio).numpy())
    assert torch.allclose(media.from_int16(torch.from_numpy(pcm.copy())), audio, atol=0.5 / 32767)


def read_png(data: bytes) -> np.ndarray:
    """Minimal reader for the PNGs `write_png` makes (8-bit, filter 0), checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    channels = {2: 3, 0: 1}[colour]
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + width * channels)
    assert depth == 8 and (rows[:, 0] == 0).all() and b"IEND" in chunks
    return rows[:, 1:].reshape(height, width, channels).squeeze(-1 if channels == 1 else ())


@pytest.mark.parametrize("shape", [(5, 7, 3), (4, 9)])
def test_write_png_round_trip(tmp_path, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = media.write_png(tmp_path / "i.png", image)
    assert np.array_equal(read_png(path.read_bytes()), image)
    with pytest.raises(TypeError, match="uint8"):
        media.write_png(tmp_path / "j.png", image.astype(np.float32))


def test_contact_sheet_layout():
    videos = torch.stack([ramp_video(3, 4, 5) for _ in range(2)])        # [2, 3, 3, 4, 5]
    videos[1] = -videos[1]
    sheet = media.contact_sheet(videos, pad=1, pad_value=7)
    assert sheet.shape == (2 * 4 + 3, 3 * 5 + 4, 3) and sheet.dtype == np.uint8
    for i in range(2):
        for j in range(3):
            top, left = 1 + i * 5, 1 + j * 6
            expected = media.to_uint8(videos[i, j, 0, 0, 0]).item()
            assert (sheet[top:top + 4, left:left + 5] == expected).all()
    assert (sheet[0] == 7).all() and (sheet[:, 0] == 7).all() and (sheet[5] == 7).all()
    assert media.contact_sheet(videos[0]).shape == (1 * 4 + 2, 3 * 5 + 4, 3)


def test_quantisation_helpers_are_inverse():
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(media.to_uint8(media.from_uint8(pixels)), pixels)
    pcm = torch.arange(-32767, 32768, 97, dtype=torch.int16)
    assert torch.equal(media.to_int16(media.from_int16(pcm)), pcm)
    assert media.to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]
