"""Audio-video clips decoded from a folder of video files.

Differences from the published loader (`mm_diffusion/multimodal_datasets.py`):

* no horizontal flip by default. The published `process_video` builds
  `T.RandomHorizontalFlip(self.random_flip)`, whose argument is the flip *probability*, so with its
  default `random_flip=True` every clip is mirrored (p = 1.0) rather than half of them;
* frames are resized on the short side and centre-cropped (it letterboxes with padding);
* audio is the mean of all channels (it keeps channel 0 of stereo), cut to the clip's time span by
  timestamps, and resampled with a windowed-sinc filter;
* unreadable, truncated, too-short and silent (no audio stream) files are skipped with one warning
  each and counted; the published `get_item` silently retries the next clip index instead (forever
  if none decodes).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..media import READ_ERRORS, VIDEO_EXTENSIONS, MediaError, MediaInfo, from_uint8, probe, read_clip


class SkippedFileWarning(UserWarning):
    """A media file was skipped (corrupt, truncated, too short, or without audio)."""


def find_videos(root: str | Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[Path]:
    """Video files under `root` (recursively, sorted), by case-insensitive extension."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root must be a directory, got {str(root)!r}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())


def clip_samples(frames: int, fps: float, sample_rate: int) -> int:
    """Audio samples spanning `frames` video frames; the span must be a whole number of samples."""
    if frames < 1 or fps <= 0 or sample_rate < 1:
        raise ValueError(f"frames, fps, sample_rate must be positive, got {frames}, {fps}, {sample_rate}")
    length = frames * sample_rate / fps
    if abs(length - round(length)) > 1e-6:
        raise ValueError(f"frames / fps * sample_rate must be an integer, got {length}")
    return round(length)


class ClipDataset(Dataset):
    """Base for datasets of fixed-length clips cut from longer recordings.

    Clip positions are random when `random_clip` (training) and centred otherwise (evaluation).
    With `seed=None` random positions come from torch's global generator (which DataLoader seeds
    per worker and per epoch); with an integer `seed` the position of item `i` is a function of
    `(seed, epoch, i)` (call `set_epoch` each epoch), reproducible with any number of workers.
    Items are `(video [F, 3, S, S], audio [1, L])`, float32 in [-1, 1].
    """

    def __init__(self, frames: int, fps: float, sample_rate: int, *, random_clip: bool,
                 seed: int | None) -> None:
        self.frames, self.fps, self.sample_rate = frames, fps, sample_rate
        self.samples = clip_samples(frames, fps, sample_rate)
        self.random_clip, self.seed, self.epoch = random_clip, seed, 0
        self.skipped: dict[str, str] = {}

    @property
    def num_skipped(self) -> int:
        """Files (or entries) skipped so far, in this process."""
        return len(self.skipped)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        warnings.warn(f"skipping {name}: {reason}", SkippedFileWarning, stacklevel=3)

    def _position(self, index: int) -> float:
        """Where the clip of item `index` starts, as a fraction of the free range, in [0, 1)."""
        if not self.random_clip:
            return 0.5
        if self.seed is None:
            return float(torch.rand(()))
        return float(np.random.default_rng([self.seed, self.epoch, index]).random())


class AVClipDataset(ClipDataset):
    """Clips `(video [F, 3, size, size], audio [1, L])` decoded with PyAV from the video files
    under `root` (mp4, mkv, webm, avi, mov; recursive), one item per usable file.

    Video is resampled to `fps` (each output frame is the source frame on screen at the middle of
    its interval), resized on the short side to `size` and centre-cropped. Audio is the mono mix of
    exactly the clip's time span `[t0, t0 + frames / fps)`, located by timestamps and resampled to
    `sample_rate`, so `L = frames / fps * sample_rate` (25600 for the defaults). The clip starts on
    a source frame.

    Files are probed at construction; those without audio, too short, or unreadable are skipped
    with a `SkippedFileWarning` each. A file that fails while decoding (e.g. truncated) is skipped
    the same way and the next usable file is returned instead, so an epoch never crashes on bad
    data. `skipped` maps each skipped path to its reason; `num_skipped` counts them (per process:
    DataLoader workers keep their own counts).
    """

    def __init__(self, root: str | Path, frames: int = 16, fps: float = 10, size: int = 64,
                 sample_rate: int = 16000, *, random_clip: bool = True, seed: int | None = None,
                 extensions: tuple[str, ...] = VIDEO_EXTENSIONS, progress: bool = False) -> None:
        super().__init__(frames, fps, sample_rate, random_clip=random_clip, seed=seed)
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.root, self.size = Path(root), size
        self.infos: list[MediaInfo] = []
        for path in tqdm(find_videos(root, extensions), desc="probing", disable=not progress):
            try:
                info = probe(path)
                if not info.has_audio:
                    raise MediaError("no audio stream")
                if info.duration < frames / fps:
                    raise MediaError(f"too short: {info.duration:.3f}s < {frames / fps:.3f}s")
            except READ_ERRORS as error:
                self._skip(str(path), f"{type(error).__name__}: {error}")
                continue
            self.infos.append(info)
        if not self.infos:
            raise ValueError(f"no usable video files with audio under {str(root)!r} "
                             f"({self.num_skipped} skipped)")

    def __len__(self) -> int:
        return len(self.infos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        for offset in range(len(self.infos)):
            info = self.infos[(index + offset) % len(self.infos)]
            if str(info.path) in self.skipped:
                continue
            # One source frame of slack: the start snaps forward to the next source frame.
            free = max(0.0, info.duration - self.frames / self.fps - 1 / info.fps)
            start = info.start + self._position(index) * free
            try:
                clip = read_clip(info.path, start, self.frames, self.fps, self.size, self.sample_rate)
            except READ_ERRORS as error:
                self._skip(str(info.path), f"{type(error).__name__}: {error}")
                continue
            return from_uint8(clip.video), clip.audio
        raise RuntimeError(f"every file under {str(self.root)!r} failed to decode: {self.skipped}")
