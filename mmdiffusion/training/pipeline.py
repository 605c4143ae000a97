"""A trained run as a generator: load a checkpoint, sample (optionally conditioned), write media.

`load_trained` rebuilds the model of any checkpoint written by the `Trainer` from the config stored
in it, with EMA weights by default. `TrainedModel.sample` works in data units: video in [-1, 1]
and audio at its original loudness (the training audio scale is applied to given audio and undone
on the output).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import media
from ..checkpoint import latest_checkpoint, load_checkpoint
from ..data.av_dataset import clip_samples
from ..diffusion import GaussianDiffusion
from ..media import contact_sheet, write_png, write_video, write_wav
from ..sampling import Condition, sample
from .config import TrainConfig
from .model import Patched, build_model
from .trainer import CHECKPOINT_FORMAT

__all__ = ["TrainedModel", "load_trained", "write_samples", "read_condition_audio",
           "read_condition_video", "spectrogram_image"]


@dataclass
class TrainedModel:
    """A checkpoint's model (eval mode, no gradients), its diffusion and training config, the audio
    scale it was trained with, its step and file."""

    model: Patched
    diffusion: GaussianDiffusion
    config: TrainConfig
    audio_scale: float
    step: int
    path: Path

    @property
    def frames(self) -> int:
        return self.config.data.frames

    @property
    def fps(self) -> float:
        return self.config.data.fps

    @property
    def sample_rate(self) -> int:
        return self.config.data.sample_rate

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """`(F, 3, S, S)` of one clip."""
        return (self.frames, 3, self.config.data.size, self.config.data.size)

    @property
    def audio_shape(self) -> tuple[int, int]:
        """`(1, L)` of one clip."""
        return (1, clip_samples(self.frames, self.fps, self.sample_rate))

    def sample(self, n: int, *, sampler: str | None = None, steps: int | None = None, seed: int = 0,
               video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
               method: str = "replacement", scale: float = 1.0, clip_x0: bool = False,
               progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` clips `(video [n, F, 3, S, S] in [-1, 1], audio [n, 1, L] in [-1, 1])`.

        Given `video` `[F, 3, S, S]` (or `[n, ...]`) and/or `audio` `[1, L]` (or `[n, ...]`) in data
        units, the other modality is generated for them (zero-shot `Condition` with `method` and
        `scale`). `sampler` defaults to the run's `sampler`, `steps` to its `sample_steps` for that
        sampler and to `DEFAULT_STEPS` for another. `clip_x0` keeps every step's clean-data
        estimate inside the data range (`sample(clip_x0=...)`). `seed` fixes the noise and the
        model's random RS-MMA shifts (torch's global generator is left as it was).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        device = next(self.model.parameters()).device
        video_shape, audio_shape = (n, *self.video_shape), (n, *self.audio_shape)
        condition = None
        if video is not None or audio is not None:
            given = {}
            for name, data, shape, unit in (("video", video, video_shape, 1.0), ("audio", audio, audio_shape, self.audio_scale)):
                if data is None:
                    continue
                data = data.to(device=device, dtype=torch.float32)
                if data.shape == shape[1:]:
                    data = data.expand(shape)
                if data.shape != shape:
                    raise ValueError(f"given {name} must be {list(shape[1:])} or {list(shape)}, got {list(data.shape)}")
                given[name] = data * unit
            condition = Condition(**given, method=method, scale=scale)
        sampler = sampler or self.config.sampler
        if steps is None and sampler == self.config.sampler:
            steps = self.config.sample_steps
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the RS-MMA shifts come from the CPU generator
            out_video, out_audio = sample(
                self.model, self.diffusion, video_shape, audio_shape, sampler=sampler, steps=steps,
                generator=torch.Generator(device).manual_seed(seed), condition=condition, progress=progress,
                clip_x0=(1.0, self.audio_scale) if clip_x0 else None)
        return out_video.clamp(-1, 1), (out_audio / self.audio_scale).clamp(-1, 1)


def load_trained(path: str | Path, *, weights: str = "ema", ema_index: int = 0,
                 device: str | torch.device = "cpu") -> TrainedModel:
    """The model of a checkpoint file, or of the newest checkpoint of a run folder (or its
    `checkpoints/`). `weights="ema"` loads EMA average `ema_index`, `"model"` the raw weights."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise ValueError(f"no checkpoint in {path} or {path / 'checkpoints'}")
        path = found
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    config = TrainConfig.from_dict(json.loads(state["config"]))
    model = build_model(config, device)
    model.net.load_state_dict(state["model"])
    if weights == "ema":
        averages = state["ema"]["averages"]
        if not 0 <= ema_index < len(averages):
            raise ValueError(f"ema_index must be in [0, {len(averages)}), got {ema_index} "
                             f"(rates {state['ema']['rates']})")
        unexpected = model.net.load_state_dict(averages[ema_index], strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{path}: EMA average holds unknown parameters {unexpected[:3]}")
    elif weights != "model":
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    return TrainedModel(model.eval().requires_grad_(False), config.diffusion.build(), config, float(state["audio_scale"]),
                        int(state["step"]), path)


# ------------------------------------------------------------------------------------ media I/O

def spectrogram_image(audio: torch.Tensor, *, window: int = 256, height: int = 96) -> np.ndarray:
    """Log-magnitude spectrogram of `audio` `[C, L]` as a uint8 image `[height, frames]`
    (low frequencies at the bottom, 80 dB range below the clip's peak)."""
    mono = audio.detach().float().cpu().mean(0)
    spec = torch.stft(mono, window, window // 4, window=torch.hann_window(window), return_complex=True).abs()
    db = 20 * torch.log10(spec + 1e-8)
    db = ((db - db.max() + 80) / 80).clamp(0, 1).flip(0)
    image = torch.nn.functional.interpolate(db[None, None], size=(height, db.shape[1]), mode="bilinear")[0, 0]
    return (image * 255).round().to(torch.uint8).numpy()


def write_samples(out: str | Path, video: torch.Tensor, audio: torch.Tensor, fps: float, sample_rate: int,
                  *, prefix: str = "sample") -> dict[str, list[Path] | Path]:
    """Write clip `i` of `video [N, F, 3, S, S]` / `audio [N, 1, L]` as `<prefix>-<i>.mp4` (H.264 +
    AAC; the audio is resampled to `media.aac_rate(sample_rate)` when AAC lacks the model's rate) and as
    `.wav` (the model's rate), plus `<prefix>-sheet.png` (frames, one row per clip) and
    `<prefix>-spectrograms.png` (one row per clip). Returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    video, audio = video.detach().cpu(), audio.detach().cpu()
    paths: dict[str, list[Path] | Path] = {"mp4": [], "wav": []}
    for i, (v, a) in enumerate(zip(video, audio)):
        paths["mp4"].append(write_video(out / f"{prefix}-{i:03d}.mp4", v, a, fps, sample_rate))
        paths["wav"].append(write_wav(out / f"{prefix}-{i:03d}.wav", a, sample_rate))
    paths["sheet"] = write_png(out / f"{prefix}-sheet.png", contact_sheet(video))
    rows = [spectrogram_image(a) for a in audio]
    gap = np.full((2, rows[0].shape[1]), 255, np.uint8)
    paths["spectrograms"] = write_png(out / f"{prefix}-spectrograms.png",
                                      np.concatenate([x for row in rows for x in (row, gap)][:-1]))
    return paths


def read_condition_audio(path: str | Path, model: TrainedModel, start: float = 0.0) -> torch.Tensor:
    """Mono audio `[1, L]` of one clip's duration from `start` seconds of any audio or video file,
    resampled to the model's rate."""
    return media.read_audio(path, start, model.audio_shape[1], model.sample_rate)


def read_condition_video(path: str | Path, model: TrainedModel, start: float = 0.0) -> torch.Tensor:
    """Video `[F, 3, S, S]` in [-1, 1] of one clip from `start` seconds of a video file (with or
    without sound), resampled to the model's fps, resized and centre-cropped."""
    frames, _ = media.read_video(path, start, model.frames, model.fps, model.config.data.size)
    return media.from_uint8(frames)
