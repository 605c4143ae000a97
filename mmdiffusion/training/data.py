"""Training data: the dataset named by a `DataConfig`, the audio scale, and a resumable batch order.

The batch order is a pure function of `(seed, epoch, batch index)`: batch `b` of epoch `e` is
`perm_e[b B : (b + 1) B]` for a seeded permutation `perm_e` of the clips and the global batch size
`B`; data-parallel rank `r` of `W` takes the contiguous share `[r B / W, (r + 1) B / W)`. So a run
resumes exactly from `(epoch, index)`, and `W` ranks see together exactly the batches of one process.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data import AVClipDataset, ShardDataset, synth_clip
from ..media import from_uint8, to_uint8
from .config import DataConfig

__all__ = ["ClipTensors", "synthetic_clips", "build_dataset", "audio_scale", "BatchPlan", "derived_seed"]


def derived_seed(*keys: int) -> int:
    """A 63-bit seed that is a well-mixed function of the integer `keys` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class ClipTensors(Dataset):
    """Clips held in memory: video uint8 `[N, F, 3, S, S]` (returned as float in [-1, 1]) and
    audio float32 `[N, 1, L]`."""

    def __init__(self, video: torch.Tensor, audio: torch.Tensor) -> None:
        if video.dtype != torch.uint8 or video.ndim != 5 or audio.ndim != 3 or len(video) != len(audio):
            raise ValueError(f"expected uint8 video [N, F, 3, S, S] and audio [N, 1, L], got "
                             f"{video.dtype} {tuple(video.shape)} and {tuple(audio.shape)}")
        self.video, self.audio = video, audio

    def __len__(self) -> int:
        return len(self.video)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return from_uint8(self.video[index]), self.audio[index]


def synthetic_clips(config: DataConfig, n: int, *, seed: int, progress: bool = True) -> ClipTensors:
    """Clips `0 .. n-1` of the synthetic stream `seed` (`mmdiffusion.data.synth`), generated once."""
    video, audio = [], []
    for i in tqdm(range(n), desc="synth", disable=not progress, leave=False):
        v, a = synth_clip(i, seed=seed, frames=config.frames, size=config.size, fps=config.fps,
                          sample_rate=config.sample_rate)
        video.append(to_uint8(v))
        audio.append(a)
    return ClipTensors(torch.stack(video), torch.stack(audio))


def build_dataset(config: DataConfig, *, seed: int, progress: bool = True) -> Dataset:
    """The training clips `(video [F, 3, S, S], audio [1, L])` described by `config`: `config.clips`
    synthetic clips of stream `seed`, a shard folder (`prepare`; its fps, size and sample rate must
    match the config) or a folder of videos. Random clip positions are seeded by `seed` and the epoch."""
    if config.source == "synth":
        return synthetic_clips(config, config.clips, seed=seed, progress=progress)
    root = Path(config.source)
    if (root / "index.json").is_file():
        dataset = ShardDataset(root, config.frames, random_clip=True, seed=seed)
        stored = (dataset.fps, dataset.size, dataset.sample_rate)
        wanted = (config.fps, config.size, config.sample_rate)
        if stored != wanted:
            raise ValueError(f"shards in {root} hold fps, size, sample_rate = {stored}, but the config "
                             f"asks for {wanted} (data.fps, data.size, data.sample_rate)")
        return dataset
    if root.is_dir():
        return AVClipDataset(root, config.frames, config.fps, config.size, config.sample_rate,
                             random_clip=True, seed=seed, progress=progress)
    raise ValueError(f"data.source must be 'synth', a shard folder or a folder of videos, got {config.source!r}")


def audio_scale(dataset: Dataset, target_rms: float | None, clips: int = 256) -> float:
    """Factor that brings the audio RMS of the first `clips` items of `dataset` to `target_rms`
    (1 when `target_rms` is None)."""
    if target_rms is None:
        return 1.0
    n = min(clips, len(dataset))
    power = sum(float(dataset[i][1].double().square().mean()) for i in range(n)) / n
    if power <= 0:
        raise ValueError("the training audio is silent; set data.audio_rms=null to train on it as is")
    return target_rms / power ** 0.5


class BatchPlan:
    """The deterministic global batch order described in the module docstring."""

    def __init__(self, num_items: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of ranks ({world_size})")
        if num_items < batch_size:
            raise ValueError(f"the dataset has {num_items} clips, fewer than one batch ({batch_size})")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.local_batch = rank, batch_size // world_size
        self.batches_per_epoch = num_items // batch_size   # the remainder of each epoch is dropped

    def position(self, step: int) -> tuple[int, int]:
        """`(epoch, batch index)` of the batch that optimiser step `step` (0-based) trains on."""
        return divmod(step, self.batches_per_epoch)

    def batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        """This rank's item indices for batches `start ..` of `epoch`."""
        order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(derived_seed(self.seed, epoch)))
        lo = self.rank * self.local_batch
        return [order[b * self.batch_size + lo: b * self.batch_size + lo + self.local_batch].tolist()
                for b in range(start, self.batches_per_epoch)]

    def loader(self, dataset: Dataset, epoch: int, start: int = 0, *, workers: int = 0) -> Iterator:
        """Batches `(video [b, F, 3, S, S], audio [b, 1, L])` of `epoch` from batch `start` on. The
        loader has its own seeded generator, so iterating it never touches torch's global RNG."""
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, self.rank, 1))
        return iter(DataLoader(dataset, batch_sampler=self.batches(epoch, start), num_workers=workers,
                               generator=generator, persistent_workers=False))
