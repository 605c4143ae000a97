"""The trained model as configured: a `CoupledUNet`, optionally on space-to-depth folded inputs.

Folding is a fixed permutation of elements (`p x p` pixels of each frame, or `k` consecutive audio
samples, become channels), so Gaussian diffusion on the folded tensors *is* diffusion on the data:
i.i.d. noise stays i.i.d. under a permutation. `Patched` folds the inputs, runs the U-Net and
unfolds its outputs; samplers and conditioning only ever see data-layout tensors.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..data.av_dataset import clip_samples
from ..unet import CoupledUNet, UNetConfig
from .config import TrainConfig

__all__ = ["fold_video", "unfold_video", "fold_audio", "unfold_audio", "Patched", "unet_config",
           "build_model", "resolve_precision", "WEIGHT_DTYPES"]

# precisions that train 16-bit weights with float32 master weights (fp16 with loss scaling)
WEIGHT_DTYPES = {"bf16-weights": torch.bfloat16, "fp16-weights": torch.float16}


def fold_video(video: torch.Tensor, patch: int) -> torch.Tensor:
    """`[B, F, C, H, W]` -> `[B, F, C p^2, H/p, W/p]` (pixel unshuffle of every frame)."""
    return video if patch == 1 else F.pixel_unshuffle(video, patch)


def unfold_video(video: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of `fold_video`."""
    return video if patch == 1 else F.pixel_shuffle(video, patch)


def fold_audio(audio: torch.Tensor, patch: int) -> torch.Tensor:
    """`[B, C, L]` -> `[B, C k, L/k]`: channel `c k + j` holds samples `n k + j` of channel `c`."""
    if patch == 1:
        return audio
    b, c, length = audio.shape
    return audio.reshape(b, c, length // patch, patch).transpose(2, 3).reshape(b, c * patch, length // patch)


def unfold_audio(audio: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of `fold_audio`."""
    if patch == 1:
        return audio
    b, ck, steps = audio.shape
    return audio.reshape(b, ck // patch, patch, steps).transpose(2, 3).reshape(b, ck // patch, steps * patch)


class Patched(nn.Module):
    """`net` on folded inputs: `forward(video [B, F, C, H, W], audio [B, C, L], timesteps [B],
    **kwargs)` -> `(video_out, audio_out)` in the input layout. Adds no parameters: its state
    dict is `net`'s with a `net.` prefix, and `net` is what checkpoints store."""

    def __init__(self, net: nn.Module, video_patch: int = 1, audio_patch: int = 1) -> None:
        super().__init__()
        self.net, self.video_patch, self.audio_patch = net, video_patch, audio_patch

    def forward(self, video: torch.Tensor, audio: torch.Tensor, timesteps: torch.Tensor,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        v, a = self.net(fold_video(video, self.video_patch), fold_audio(audio, self.audio_patch), timesteps, **kwargs)
        return unfold_video(v, self.video_patch), unfold_audio(a, self.audio_patch)


def resolve_precision(precision: str, device: torch.device) -> str | None:
    """The U-Net autocast dtype name for a config precision on `device` ("auto": bf16 on CUDA
    only; "bf16-weights" and "fp16-weights" run without autocast on 16-bit weights)."""
    if precision == "auto":
        return "bfloat16" if device.type == "cuda" else None
    return "bfloat16" if precision == "bf16" else None


def unet_config(config: TrainConfig, device: torch.device | str = "cpu") -> UNetConfig:
    """The U-Net configuration of a run: `config.model`'s preset and overrides, with the folded
    data shapes, fps and sample rate, gradient checkpointing and autocast filled in."""
    data, model = config.data, config.model
    length = clip_samples(data.frames, data.fps, data.sample_rate)
    p, k = model.video_patch, model.audio_patch
    if data.size % p or length % k:
        raise ValueError(f"model.video_patch ({p}) must divide data.size ({data.size}) and model.audio_patch "
                         f"({k}) the audio length ({length})")
    fixed = dict(video_shape=(data.frames, 3 * p * p, data.size // p, data.size // p), audio_shape=(k, length // k),
                 video_fps=data.fps, audio_sample_rate=data.sample_rate, use_checkpoint=config.grad_checkpointing,
                 autocast=resolve_precision(config.precision, torch.device(device)))
    clash = sorted(set(fixed) & set(model.unet))
    if clash:
        raise ValueError(f"model.unet must not set {clash}: they follow from the data and training config")
    unknown = sorted(set(model.unet) - {f.name for f in dataclasses.fields(UNetConfig)})
    if unknown:
        raise ValueError(f"model.unet has unknown UNetConfig fields {unknown}")
    return UNetConfig.preset(model.preset, **model.unet, **fixed)


def build_model(config: TrainConfig, device: torch.device | str = "cpu") -> Patched:
    """A freshly initialised `Patched(CoupledUNet(...))` for `config` on `device`."""
    net = CoupledUNet(unet_config(config, device))
    return Patched(net, config.model.video_patch, config.model.audio_patch).to(device)
