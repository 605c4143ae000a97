"""Real-data loading: AVClipDataset on generated files (odd rates, stereo, bad files) and shards."""
from __future__ import annotations

import json
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdiffusion import media
from mmdiffusion.__main__ import main as cli
from mmdiffusion.data import AVClipDataset, ShardDataset, SkippedFileWarning, find_videos, write_shards
from mmdiffusion.data.synth import alignment, synth_clip

SIZE = 32
GOOD = ["a.mp4", "sub/b.MKV", "c.mp4"]
BAD_AT_PROBE = ["corrupt.mp4", "noaudio.mp4", "short.mp4", "truncated.mp4"]


def write(path: Path, fps: float | Fraction, sample_rate: int, seconds: float = 3.2, *,
          channels: int = 1, audio: bool = True, index: int = 0) -> None:
    """A synthetic sounding clip written at the given rates."""
    frames = round(seconds * float(fps))
    video, sound = synth_clip(index, seed=7, frames=frames, size=SIZE, fps=float(fps), sample_rate=sample_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    media.write_video(path, video, sound.expand(channels, -1) if audio else None, fps, sample_rate)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    write(root / "a.mp4", 10, 16000, index=0)
    write(root / "sub" / "b.MKV", 25, 44100, channels=2, index=1)            # odd rates, stereo
    write(root / "c.mp4", Fraction(30000, 1001), 48000, index=2)            # NTSC frame rate
    write(root / "noaudio.mp4", 10, 16000, audio=False)
    write(root / "short.mp4", 10, 16000, seconds=1.0)
    write(root / "full.mkv", 10, 16000, index=3)
    data = (root / "full.mkv").read_bytes()
    (root / "cut.mkv").write_bytes(data[:len(data) // 2])   # header intact, ends at about 1.7 s
    (root / "full.mkv").unlink()
    write(root / "whole.mp4", 10, 16000, index=4)
    data = (root / "whole.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[:len(data) // 2])   # no moov atom: unreadable
    (root / "whole.mp4").unlink()
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (root / "notes.txt").write_text("not a video")
    return root


def make_dataset(root: Path, **kwargs) -> AVClipDataset:
    with pytest.warns(SkippedFileWarning) as record:
        dataset = AVClipDataset(root, frames=16, fps=10, size=SIZE, **kwargs)
    assert len(record) == len(BAD_AT_PROBE)          # one warning per bad file
    return dataset


def test_find_videos_is_recursive_and_case_insensitive(folder):
    names = [p.relative_to(folder).as_posix() for p in find_videos(folder)]
    assert names == sorted(GOOD + BAD_AT_PROBE + ["cut.mkv"])
    with pytest.raises(ValueError, match="directory"):
        find_videos(folder / "a.mp4")


def test_bad_files_are_skipped_and_counted(folder):
    dataset = make_dataset(folder, random_clip=False)
    assert len(dataset) == 4 and dataset.num_skipped == 4
    reasons = {Path(p).name: r for p, r in dataset.skipped.items()}
    assert "no audio" in reasons["noaudio.mp4"] and "too short" in reasons["short.mp4"]
    assert "InvalidDataError" in reasons["corrupt.mp4"] and "InvalidDataError" in reasons["truncated.mp4"]
    # cut.mkv probes fine but ends early: it is skipped while iterating, never crashing the epoch.
    cut = [i for i, info in enumerate(dataset.infos) if info.path.name == "cut.mkv"][0]
    with pytest.warns(SkippedFileWarning, match="video ends"):
        video, audio = dataset[cut]
    assert video.shape == (16, 3, SIZE, SIZE) and dataset.num_skipped == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # no second warning for the same file
        items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == 4


def test_items_are_aligned_clips_at_any_source_rate(folder):
    dataset = make_dataset(folder, random_clip=False)
    good = [i for i, info in enumerate(dataset.infos) if info.path.name != "cut.mkv"]
    videos, audios = zip(*(dataset[i] for i in good))
    video, audio = torch.stack(videos), torch.stack(audios)
    assert video.shape == (3, 16, 3, SIZE, SIZE) and audio.shape == (3, 1, 25600)
    assert video.dtype == audio.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1 and audio.abs().max() <= 1
    # 10, 25 and 29.97 fps sources; 16, 44.1 (stereo) and 48 kHz audio: a timing error of even one
    # frame would break the flash-click correspondence. (A 25 fps source shows 40 ms flashes that
    # 10 fps sampling sees only in part, hence its lower onset score.)
    per_clip = alignment(video, audio)
    print(f"\nalignment of decoded clips per file x factor:\n{per_clip}")
    assert per_clip.mean() > 0.85 and per_clip[:, 0].min() > 0.7
    assert alignment(video, audio.roll(1, 0)).mean() < 0.3


def test_clip_content_matches_source(folder):
    """a.mp4 (10 fps, 32x32): the evaluation clip is frames 8..23 of the source, with audio
    samples 12800..38400."""
    dataset = make_dataset(folder, random_clip=False)
    a = [i for i, info in enumerate(dataset.infos) if info.path.name == "a.mp4"][0]
    video, audio = dataset[a]
    source_video, source_audio = synth_clip(0, seed=7, frames=32, size=SIZE)
    assert (video - source_video[8:24]).abs().mean() < 0.03
    expected = source_audio[:, 12800:38400]
    correlation = torch.corrcoef(torch.cat([audio, expected]))[0, 1]
    assert correlation > 0.9
    assert torch.equal(dataset[a][0], video) and torch.equal(dataset[a][1], audio)   # fixed position


def test_no_horizontal_flip(tmp_path):
    """The published loader mirrors every clip; ours keeps the left on the left."""
    video = torch.full((20, 3, SIZE, SIZE), -1.0)
    video[..., : SIZE // 2] = 1.0
    media.write_video(tmp_path / "left.mp4", video, torch.zeros(1, 32000), 10, 16000)
    for random_clip in (False, True):
        frames, _ = AVClipDataset(tmp_path, frames=16, size=SIZE, random_clip=random_clip)[0]
        assert frames[..., : SIZE // 2 - 1].min() > 0.9 and frames[..., SIZE // 2 + 1:].max() < -0.9


def test_random_positions_are_seedable(folder):
    first = make_dataset(folder, random_clip=True, seed=3)
    second = make_dataset(folder, random_clip=True, seed=3)
    a = [i for i, info in enumerate(first.infos) if info.path.name == "a.mp4"][0]
    assert torch.equal(first[a][0], second[a][0])
    draws = []
    for epoch in range(6):
        first.set_epoch(epoch)
        draws.append(first[a][0])
    assert len({tuple(d.flatten()[::97].tolist()) for d in draws}) > 1


def test_prepare_and_shard_dataset_round_trip(folder, tmp_path):
    with pytest.warns(SkippedFileWarning) as record:
        index = write_shards(folder, tmp_path, fps=10, size=SIZE, sample_rate=16000, shard_mb=0.05,
                             progress=False)
    # A truncated mkv keeps its decodable part; a short file is stored (it may suit shorter clips).
    assert sorted(index["skipped"]) == ["corrupt.mp4", "noaudio.mp4", "truncated.mp4"]
    assert len(record) == 3
    stored = {e["source"]: e for e in index["entries"]}
    assert sorted(stored) == sorted(GOOD + ["cut.mkv", "short.mp4"]) and len(index["shards"]) > 1
    assert 16 <= stored["cut.mkv"]["frames"] < 32 and stored["short.mp4"]["frames"] == 10
    assert json.loads((tmp_path / "index.json").read_text()) == index
    # The shards hold exactly what a full decode gives (audio up to int16 rounding).
    entry = stored["sub/b.MKV"]
    clip = media.read_clip(folder / "sub/b.MKV", 0.0, None, 10, SIZE, 16000)
    shard = index["shards"][entry["shard"]]
    video = np.load(tmp_path / shard["video"])[entry["frame"]:entry["frame"] + entry["frames"]]
    audio = np.load(tmp_path / shard["audio"])[entry["sample"]:entry["sample"] + entry["samples"]]
    assert np.array_equal(video, clip.video.numpy())
    assert (media.from_int16(torch.from_numpy(audio)) - clip.audio[0]).abs().max() <= 0.5 / 32767 + 1e-7

    with pytest.warns(SkippedFileWarning, match="too short"):
        shards = ShardDataset(tmp_path, frames=16, random_clip=False)
    assert len(shards) == 4 and (shards.fps, shards.size, shards.sample_rate) == (10, SIZE, 16000)
    assert shards.num_skipped == 4                      # 3 at prepare time + short.mp4
    # Same evaluation clip as AVClipDataset for a 10 fps source: frames 8..23.
    dataset = make_dataset(folder, random_clip=False)
    i = [k for k, e in enumerate(shards.entries) if e["source"] == "a.mp4"][0]
    j = [k for k, info in enumerate(dataset.infos) if info.path.name == "a.mp4"][0]
    (sv, sa), (dv, da) = shards[i], dataset[j]
    assert sv.shape == (16, 3, SIZE, SIZE) and sa.shape == (1, 25600)
    # Audio: int16 rounding, plus AAC noise substitution, whose generator state depends on where
    # decoding started (a whole-file decode versus a seek), so equal to within 1e-3, not bitwise.
    assert torch.equal(sv, dv) and (sa - da).abs().max() < 1e-3
    with pytest.warns(SkippedFileWarning):
        random_shards = ShardDataset(tmp_path, frames=16, random_clip=True, seed=0)
    assert all(random_shards[k][0].shape == (16, 3, SIZE, SIZE) for k in range(len(random_shards)))


def test_prepare_command(folder, tmp_path, capsys):
    with pytest.warns(SkippedFileWarning):
        assert cli(["prepare", str(folder), str(tmp_path), "--size", "16"]) == 0
    assert "stored 5 videos" in capsys.readouterr().out
    with pytest.warns(SkippedFileWarning):
        dataset = ShardDataset(tmp_path)
    assert dataset[0][0].shape == (16, 3, 16, 16)


def test_dataset_argument_errors(folder, tmp_path):
    with pytest.raises(ValueError, match="integer"):
        AVClipDataset(folder, frames=16, fps=3, sample_rate=16000)
    with pytest.raises(ValueError, match="no usable"):
        AVClipDataset(tmp_path)
    with pytest.raises(ValueError, match="index.json"):
        ShardDataset(tmp_path)
