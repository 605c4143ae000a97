"""Decode a video folder once into shards, and read training clips from them.

Layout of a shard folder:

* `index.json`: `fps`, `size`, `sample_rate`, the shard files, one entry per source video
  (`source`, `shard`, first `frame` and `frames`, first `sample` and `samples`), and `skipped`
  (source -> reason);
* `video-NNNNN.npy`: uint8 `[frames, 3, size, size]`, the entries' frames back to back;
* `audio-NNNNN.npy`: int16 `[samples]`, their mono audio back to back.

Each source video is stored whole (resampled to `fps`, resized and centre-cropped to `size`, audio
at `sample_rate`), so `ShardDataset` can still draw random clip positions. Arrays are memory
mapped: a clip read touches only its own bytes.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..media import READ_ERRORS, VIDEO_EXTENSIONS, from_int16, from_uint8, probe, read_clip, to_int16
from .av_dataset import ClipDataset, SkippedFileWarning, clip_samples, find_videos

INDEX = "index.json"
FORMAT = "mmdiffusion-av-shards/1"


def write_shards(src: str | Path, out: str | Path, *, fps: float = 10, size: int = 64,
                 sample_rate: int = 16000, shard_mb: float = 256,
                 extensions: tuple[str, ...] = VIDEO_EXTENSIONS, progress: bool = True) -> dict:
    """Decode every video under `src` into shards in `out` (see the module docstring); files that
    fail to decode or have no audio are skipped with a `SkippedFileWarning`. Returns the index."""
    src, out = Path(src), Path(out)
    clip_samples(1, fps, sample_rate)  # validates the rates
    if size < 1 or shard_mb <= 0:
        raise ValueError(f"size and shard_mb must be positive, got {size}, {shard_mb}")
    out.mkdir(parents=True, exist_ok=True)
    index: dict = dict(format=FORMAT, fps=fps, size=size, sample_rate=sample_rate,
                       shards=[], entries=[], skipped={})
    videos: list[np.ndarray] = []
    audios: list[np.ndarray] = []

    def flush() -> None:
        if not videos:
            return
        shard = len(index["shards"])
        names = {"video": f"video-{shard:05d}.npy", "audio": f"audio-{shard:05d}.npy"}
        np.save(out / names["video"], np.concatenate(videos))
        np.save(out / names["audio"], np.concatenate(audios))
        index["shards"].append(names)
        videos.clear()
        audios.clear()

    frame = sample = 0
    for path in tqdm(find_videos(src, extensions), desc="prepare", disable=not progress):
        name = path.relative_to(src).as_posix()
        try:
            info = probe(path)
            clip = read_clip(path, info.start, None, fps, size, sample_rate)
        except READ_ERRORS as error:
            index["skipped"][name] = f"{type(error).__name__}: {error}"
            warnings.warn(f"skipping {path}: {index['skipped'][name]}", SkippedFileWarning, stacklevel=2)
            continue
        videos.append(clip.video.numpy())
        audios.append(to_int16(clip.audio[0]).numpy())
        index["entries"].append(dict(source=name, shard=len(index["shards"]), frame=frame,
                                     frames=len(clip.video), sample=sample, samples=len(audios[-1])))
        frame, sample = frame + len(clip.video), sample + len(audios[-1])
        if sum(v.nbytes for v in videos) + sum(a.nbytes for a in audios) >= shard_mb * 2**20:
            flush()
            frame = sample = 0
    flush()
    (out / INDEX).write_text(json.dumps(index, indent=1))
    return index


class ShardDataset(ClipDataset):
    """Clips `(video [F, 3, S, S], audio [1, L])`, float32 in [-1, 1], from shards written by
    `write_shards` (`python -m mmdiffusion prepare`); one item per stored video long enough for
    `frames`. `fps`, `size` and `sample_rate` come from the index; clip positions are as in
    `ClipDataset` and start on a stored frame."""

    def __init__(self, root: str | Path, frames: int = 16, *, random_clip: bool = True,
                 seed: int | None = None) -> None:
        self.root = Path(root)
        if not (self.root / INDEX).is_file():
            raise ValueError(f"root must be a shard folder with {INDEX}, got {str(root)!r}")
        index = json.loads((self.root / INDEX).read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"{self.root / INDEX} is not a {FORMAT} index")
        super().__init__(frames, index["fps"], index["sample_rate"], random_clip=random_clip, seed=seed)
        self.size = index["size"]
        self.shards = index["shards"]
        self.skipped.update(index["skipped"])
        self.entries = []
        for entry in index["entries"]:
            if entry["frames"] < frames:
                self._skip(entry["source"], f"too short: {entry['frames']} frames < {frames}")
            else:
                self.entries.append(entry)
        if not self.entries:
            raise ValueError(f"no stored video has {frames} frames in {str(root)!r}")
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def __getstate__(self) -> dict:
        # data-loader workers re-open the memory maps: pickling a map would copy the whole shard
        return {**self.__dict__, "_arrays": {}}

    def _array(self, shard: int, kind: str) -> np.ndarray:
        key = (shard, kind)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.root / self.shards[shard][kind], mmap_mode="r")
        return self._arrays[key]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.entries[index]
        first = int(self._position(index) * (entry["frames"] - self.frames + 1))
        offset = min(round(first * self.sample_rate / self.fps), entry["samples"] - self.samples)
        frame, sample = entry["frame"] + first, entry["sample"] + offset
        video = torch.from_numpy(np.array(self._array(entry["shard"], "video")[frame:frame + self.frames]))
        audio = torch.from_numpy(np.array(self._array(entry["shard"], "audio")[sample:sample + self.samples]))
        return from_uint8(video), from_int16(audio)[None]
