"""Clips for evaluation: generated samples (mp4 and/or wav files) and real clips cut from videos.

Generated samples are read whole at their native size, frame rate and sample rate. A sample is
the set of files sharing a path without extension under the samples folder: `x.mp4` gives the
video (and the audio, if it has an audio stream), `x.wav` gives the audio (preferred over the
mp4's lossy AAC when both exist). Real clips come from `mmdiffusion.data.AVClipDataset` (the
project's loader), cut to the samples' frames, frame rate, size and sample rate.

Media decoding is `mmdiffusion.media.read_clip`; the two small decoders here cover what it does
not: a video without an audio stream, and audio-only files.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ..data import AVClipDataset
from ..media import VIDEO_EXTENSIONS, probe, read_clip, to_uint8

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav",)


@dataclass(frozen=True)
class EvalClip:
    """One clip: `video` uint8 `[F, 3, H, W]` at `fps` and/or `audio` float32 `[C, L]` in [-1, 1]."""

    name: str
    video: torch.Tensor | None
    audio: torch.Tensor | None
    fps: float | None
    sample_rate: int | None


def find_samples(root: str | Path) -> list[tuple[str, Path | None, Path | None]]:
    """`(name, video file or None, wav file or None)` per sample under `root`, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"samples must be a directory, got {str(root)!r}")
    found: dict[str, list[Path | None]] = {}
    for path in sorted(root.rglob("*")):
        suffix = path.suffix.lower()
        if path.is_file() and suffix in VIDEO_EXTENSIONS + AUDIO_EXTENSIONS:
            entry = found.setdefault(str(path.relative_to(root).with_suffix("")), [None, None])
            entry[0 if suffix in VIDEO_EXTENSIONS else 1] = path
    if not found:
        raise ValueError(f"no video ({', '.join(VIDEO_EXTENSIONS)}) or wav files under {str(root)!r}")
    return [(name, video, wav) for name, (video, wav) in sorted(found.items())]


def _decode_frames(path: Path) -> tuple[torch.Tensor, float]:
    """All frames of a video file, uint8 `[F, 3, H, W]`, and its average frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in container.decode(stream)]
        fps = float(stream.average_rate)
    return torch.stack(frames), fps


def decode_audio_file(path: Path) -> tuple[torch.Tensor, int]:
    """All audio of a file as float32 `[C, L]` in [-1, 1] (any sample format), and its sample rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")  # planar float; keeps layout and rate
        chunks = [out.to_ndarray() for frame in [*container.decode(stream), None] for out in resampler.resample(frame)]
        rate = stream.codec_context.sample_rate
    return torch.from_numpy(np.concatenate(chunks, axis=1)).float().clamp(-1, 1), rate


def read_sample(name: str, video_path: Path | None, wav_path: Path | None) -> EvalClip:
    """Decode one generated sample (see the module docstring)."""
    video = audio = fps = rate = None
    if video_path is not None:
        info = probe(video_path)
        if info.has_audio and wav_path is None:
            clip = read_clip(video_path, info.start, None, info.fps, None, info.sample_rate)
            video, audio, fps, rate = clip.video, clip.audio, info.fps, info.sample_rate
        else:
            video, fps = _decode_frames(video_path)
    if wav_path is not None:
        audio, rate = decode_audio_file(wav_path)
    return EvalClip(name, video, audio, fps, rate)


def iter_samples(root: str | Path) -> Iterator[EvalClip]:
    for name, video, wav in find_samples(root):
        yield read_sample(name, video, wav)


@dataclass(frozen=True)
class ClipSpec:
    """The shape every real clip is cut to: that of the generated samples.

    A sample without video implies clips at 10 fps of the audio's duration; one without audio a
    nominal sample rate whose clip length is a whole number of samples (the loader needs it).
    """

    frames: int
    fps: float
    size: int
    sample_rate: int

    @classmethod
    def of(cls, clip: EvalClip) -> ClipSpec:
        if clip.video is not None:
            frames, fps, size = clip.video.shape[0], float(clip.fps), min(clip.video.shape[-2:])
        else:
            fps, size = 10.0, 64
            frames = max(1, round(clip.audio.shape[-1] * fps / clip.sample_rate))
        rate = int(clip.sample_rate) if clip.audio is not None else _nominal_rate(frames, fps)
        return cls(frames, fps, size, rate)


def _nominal_rate(frames: int, fps: float) -> int:
    """A sample rate near 16 kHz for which `frames / fps` seconds is a whole number of samples."""
    rate = Fraction(fps).limit_denominator(1001)
    unit = rate.numerator // math.gcd(rate.numerator, frames * rate.denominator)
    return unit * max(1, round(16000 / unit))


class RealClips:
    """Real clips shaped like the samples, from every usable video under `root`; iterate to decode.

    `clips_per_file=1`: the centred clip of each file; more: that many clip positions per file,
    uniformly random and reproducible from `seed`. Unusable files are skipped (with a warning) and
    listed in `skipped`; a clip is never taken twice when a file fails while decoding.
    """

    def __init__(self, root: str | Path, spec: ClipSpec, *, clips_per_file: int = 1, seed: int = 0):
        if clips_per_file < 1:
            raise ValueError(f"clips_per_file must be >= 1, got {clips_per_file}")
        self.spec, self.clips_per_file = spec, clips_per_file
        self.dataset = AVClipDataset(root, spec.frames, spec.fps, spec.size, spec.sample_rate,
                                     random_clip=clips_per_file > 1, seed=seed)

    @property
    def skipped(self) -> dict[str, str]:
        return dict(self.dataset.skipped)

    @property
    def paths(self) -> list[Path]:
        return [info.path for info in self.dataset.infos]

    def __len__(self) -> int:
        return len(self.dataset) * self.clips_per_file

    def __iter__(self) -> Iterator[EvalClip]:
        for draw in range(self.clips_per_file):
            self.dataset.set_epoch(draw)
            for i, info in enumerate(self.dataset.infos):
                if str(info.path) in self.dataset.skipped:
                    continue
                video, audio = self.dataset[i]
                if str(info.path) in self.dataset.skipped:  # it failed now; the item is another file's
                    continue
                yield EvalClip(f"{info.path.name}#{draw}", to_uint8(video), audio, self.spec.fps, self.spec.sample_rate)
