"""The coupled audio-video U-Net of MM-Diffusion, built from `mmattn.nn` blocks.

The structure follows the published `MultimodalUNet` exactly (same layers, order, parameter
count and function), so the published checkpoints load (`mmdiffusion.load_official`); the
implementation differs: fused GroupNorm/FiLM/SiLU and RS-MMA kernels, frames-last video memory
with no layout copies between spatial and temporal convolutions, the blocks' own recomputation
of large normalised activations (`mmattn.nn.set_recompute`; whole-block gradient checkpointing
on request), and the random RS-MMA shifts drawn outside checkpointed regions (so recomputation
sees the same shifts).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mmattn.nn import (AudioConv, CoupledSequential, GroupNormAct, MMResBlock, NormActConv,
                       RSMultiModalAttention, VideoConv, check_impl, zero_module)
from mmattn.nn.layout import cat_video_channels, check_audio, check_video

AUTOCAST_DTYPES = {None: None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class UNetConfig:
    """Configuration of a `CoupledUNet`. The defaults are the published 64x64 model (`paper-64`).

    Resolutions are downsample rates: level `i` of `channel_mult` runs at rate `2**i` (video H, W
    divided by `2**i`, audio L by `4**i`). Every level but the last ends with a down-sampling
    residual block (and the decoder with an up-sampling one).
    """
    video_shape: tuple[int, int, int, int] = (16, 3, 64, 64)  # (F, C, H, W)
    audio_shape: tuple[int, int] = (1, 25600)                 # (C, L)
    video_fps: float = 10.0
    audio_sample_rate: int = 16000
    model_channels: int = 128               # base width; also the timestep-embedding width
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    cross_attention_resolutions: tuple[int, ...] = (2, 4, 8)
    cross_attention_windows: tuple[int, ...] = (1, 4, 8)
    cross_attention_shift: bool = True      # random RS-MMA window shifts (training and sampling)
    middle_cross_attention: bool = True     # unshifted full-window (window = F) RS-MMA in the middle
    video_attention_resolutions: tuple[int, ...] = (2, 4, 8)
    audio_attention_resolutions: tuple[int, ...] = ()
    num_head_channels: int = 64             # RS-MMA channels per head
    num_heads: int = 4                      # self-attention heads
    video_conv: str = "2d+1d"               # "2d+1d" or "3d"
    audio_dilation_cycle: int = 10          # audio dilation 2 ** (k % cycle) for the k-th res block
    use_scale_shift_norm: bool = True
    dropout: float = 0.1
    num_classes: int | None = None          # class-conditional; class id `num_classes` is the null class
    use_checkpoint: bool = False            # gradient checkpointing per block (non-reentrant)
    autocast: str | None = None             # None, "bfloat16" or "float16": run under torch.autocast
    impl: str = "fused"                     # "fused" kernels or "reference" (pure PyTorch)

    def __post_init__(self) -> None:
        for name in ("channel_mult", "cross_attention_resolutions", "cross_attention_windows",
                     "video_attention_resolutions", "audio_attention_resolutions", "video_shape",
                     "audio_shape"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        check_impl(self.impl)
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {tuple(AUTOCAST_DTYPES)}, got {self.autocast!r}")
        if len(self.video_shape) != 4 or len(self.audio_shape) != 2:
            raise ValueError(f"video_shape must be (F, C, H, W) and audio_shape (C, L), "
                             f"got {self.video_shape} and {self.audio_shape}")
        if not self.channel_mult or self.num_res_blocks < 1:
            raise ValueError("channel_mult must be non-empty and num_res_blocks >= 1")
        for mult in self.channel_mult:
            if (self.model_channels * mult) % 32:
                raise ValueError(f"model_channels * mult ({self.model_channels * mult}) must be a "
                                 f"multiple of 32 (GroupNorm groups)")
        if len(self.cross_attention_windows) != len(self.cross_attention_resolutions):
            raise ValueError(f"cross_attention_windows {self.cross_attention_windows} must have one "
                             f"window per cross_attention_resolutions {self.cross_attention_resolutions}")
        rates = self.downsample_rates
        for name in ("cross_attention_resolutions", "video_attention_resolutions",
                     "audio_attention_resolutions"):
            bad = [r for r in getattr(self, name) if r not in rates]
            if bad:
                raise ValueError(f"{name} {bad} are not downsample rates of this model {rates}")
        frames, _, height, width = self.video_shape
        length = self.audio_shape[1]
        last = rates[-1]
        if height % last or width % last:
            raise ValueError(f"video H, W ({height}, {width}) must be divisible by {last} "
                             f"({len(rates)} levels)")
        if length % (last * last):
            raise ValueError(f"audio length L ({length}) must be divisible by {last * last} "
                             f"(x4 audio downsampling over {len(rates)} levels)")
        for rate, window in zip(self.cross_attention_resolutions, self.cross_attention_windows):
            if not 1 <= window <= frames:
                raise ValueError(f"cross-attention window {window} at rate {rate} must be in [1, F={frames}]")
        for rate in self.cross_attention_resolutions + ((last,) if self.middle_cross_attention else ()):
            if length // (rate * rate) < frames:
                raise ValueError(f"audio length at rate {rate} ({length // (rate * rate)}) must be "
                                 f">= F ({frames}) for RS-MMA")
            if (self.model_channels * self.channel_mult[rates.index(rate)]) % self.num_head_channels:
                raise ValueError(f"channels at rate {rate} must be a multiple of num_head_channels "
                                 f"({self.num_head_channels})")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}")

    @property
    def downsample_rates(self) -> tuple[int, ...]:
        """Rate of each level: `(1, 2, 4, ...)`."""
        return tuple(2 ** i for i in range(len(self.channel_mult)))

    @classmethod
    def preset(cls, name: str, **overrides) -> "UNetConfig":
        """A named configuration (`PRESETS`), with fields replaced by `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, UNetConfig] = {
    # ssh_scripts/multimodal_train.sh of the published code (133,675,524 parameters).
    "paper-64": UNetConfig(),
    # A CPU-sized model: 16 frames of 32x32 video at 10 fps and 1.6 s of 8 kHz audio.
    "tiny": UNetConfig(
        video_shape=(16, 3, 32, 32), audio_shape=(1, 12800), audio_sample_rate=8000,
        model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
        cross_attention_resolutions=(2, 4), cross_attention_windows=(1, 4),
        video_attention_resolutions=(4,), num_head_channels=32, num_heads=2, dropout=0.0),
}


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding `[B] -> [B, dim]`: `[cos(t f_i), sin(t f_i)]`,
    `f_i = max_period ** (-i / (dim // 2))` (float timesteps allowed)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) *
                      torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class CoupledUNet(nn.Module):
    """The coupled U-Net: `forward(video [B, F, C, H, W], audio [B, C, L], timesteps [B])` ->
    `(video_out, audio_out)` with the input shapes (noise predictions in diffusion).

    Layout (as published): a stem (`video_in`, `audio_in`), `encoder` blocks (each a
    `CoupledSequential` of an `MMResBlock` and, at cross-attention rates, an RS-MMA; a
    down-sampling `MMResBlock` closes each level but the last), a `middle` block (res block,
    full-window unshifted RS-MMA, res block; both with video and audio self-attention), `decoder`
    blocks fed with the encoder outputs as skip connections, and output heads (`video_out`,
    `audio_out`: GroupNorm, SiLU, zero-initialised 3x3x3 / 3 convolution).
    """

    def __init__(self, config: UNetConfig | str = "paper-64"):
        super().__init__()
        config = UNetConfig.preset(config) if isinstance(config, str) else config
        self.config = cfg = config
        frames, video_channels = cfg.video_shape[:2]
        audio_channels = cfg.audio_shape[0]
        mc, impl, rates = cfg.model_channels, cfg.impl, cfg.downsample_rates
        emb_channels = mc

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_channels), nn.SiLU(),
                                        nn.Linear(emb_channels, emb_channels))
        self.label_embed = (nn.Embedding(cfg.num_classes + 1, emb_channels)
                            if cfg.num_classes is not None else None)

        def res_block(cin: int, cout: int, k: int, rate: int | None = None, *,
                      resample: str | None = None, middle: bool = False) -> MMResBlock:
            # The k-th residual block (counted down the encoder, then back up the decoder) uses
            # audio dilation 2 ** (k % cycle); self-attention at the configured rates and in the
            # middle block, as published.
            return MMResBlock(cin, emb_channels, cout, dropout=cfg.dropout, resample=resample,
                              use_scale_shift_norm=cfg.use_scale_shift_norm, video_kind=cfg.video_conv,
                              audio_dilation=2 ** (k % cfg.audio_dilation_cycle), num_heads=cfg.num_heads,
                              video_attention=middle or rate in cfg.video_attention_resolutions,
                              audio_attention=middle or rate in cfg.audio_attention_resolutions, impl=impl)

        def cross(channels: int, rate: int) -> list[RSMultiModalAttention]:
            if rate not in cfg.cross_attention_resolutions:
                return []
            window = cfg.cross_attention_windows[cfg.cross_attention_resolutions.index(rate)]
            return [RSMultiModalAttention(channels, cfg.num_head_channels, window,
                                          cfg.cross_attention_shift, impl=impl)]

        ch = mc * cfg.channel_mult[0]
        self.video_in = VideoConv(video_channels, ch, 3, kind="2d+1d", impl=impl)
        self.audio_in = AudioConv(audio_channels, ch, 3)

        k = 1
        skip_channels = [ch]
        self.encoder = nn.ModuleList()
        for level, (rate, mult) in enumerate(zip(rates, cfg.channel_mult)):
            for _ in range(cfg.num_res_blocks):
                block = res_block(ch, mc * mult, k, rate)
                ch, k = mc * mult, k + 1
                self.encoder.append(CoupledSequential(block, *cross(ch, rate)))
                skip_channels.append(ch)
            if level < len(rates) - 1:
                self.encoder.append(CoupledSequential(res_block(ch, ch, k, resample="down")))
                k += 1
                skip_channels.append(ch)

        middle_cross = ([RSMultiModalAttention(ch, cfg.num_head_channels, frames, False, impl=impl)]
                        if cfg.middle_cross_attention else [])
        self.middle = CoupledSequential(res_block(ch, ch, k, middle=True), *middle_cross,
                                        res_block(ch, ch, k, middle=True))

        k -= 1
        self.decoder = nn.ModuleList()
        for level, (rate, mult) in reversed(list(enumerate(zip(rates, cfg.channel_mult)))):
            for i in range(cfg.num_res_blocks + 1):
                block = [res_block(ch + skip_channels.pop(), mc * mult, k, rate)]
                ch, k = mc * mult, k - 1
                block += cross(ch, rate)
                if level and i == cfg.num_res_blocks:
                    block.append(res_block(ch, ch, k, resample="up"))
                self.decoder.append(CoupledSequential(*block))

        self.video_out = NormActConv(GroupNormAct(32, ch, channel_dim=2, impl=impl),
                                     zero_module(VideoConv(ch, video_channels, 3, kind="3d", impl=impl)))
        self.audio_out = NormActConv(GroupNormAct(32, ch, impl=impl),
                                     zero_module(AudioConv(ch, audio_channels, 3)))

    @property
    def null_class(self) -> int | None:
        """The class id meaning "no class" (classifier-free guidance), or None if unconditional."""
        return self.config.num_classes

    def _check_inputs(self, video: torch.Tensor, audio: torch.Tensor, timesteps: torch.Tensor,
                      y: torch.Tensor | None) -> torch.Tensor:
        """Raise ValueError on inputs this model cannot take; return `timesteps` as `[B]`."""
        cfg = self.config
        check_video(video)
        check_audio(audio)
        if tuple(video.shape[1:]) != cfg.video_shape:
            raise ValueError(f"video must be [B, F, C, H, W] = [B, {', '.join(map(str, cfg.video_shape))}] "
                             f"for this config, got shape {tuple(video.shape)}")
        if tuple(audio.shape[1:]) != cfg.audio_shape:
            raise ValueError(f"audio must be [B, C, L] = [B, {', '.join(map(str, cfg.audio_shape))}] "
                             f"for this config, got shape {tuple(audio.shape)}")
        batch = video.shape[0]
        if audio.shape[0] != batch:
            raise ValueError(f"video and audio batch sizes differ: {batch} vs {audio.shape[0]}")
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.as_tensor(timesteps, device=video.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(batch)
        if timesteps.shape != (batch,):
            raise ValueError(f"timesteps must be [B] = [{batch}] (or a scalar), got shape {tuple(timesteps.shape)}")
        if y is not None:
            if cfg.num_classes is None:
                raise ValueError("y (class labels) given, but the model has num_classes=None")
            if y.shape != (batch,) or y.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"y must be an integer tensor [B] = [{batch}], got {y.dtype} {tuple(y.shape)}")
        return timesteps

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in outside autocast: that of its convolution and linear
        weights (float32, or 16 bits after `mmattn.nn.cast_weights`)."""
        return self.time_embed[0].weight.dtype

    def _embed(self, timesteps: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        sinusoids = timestep_embedding(timesteps, self.config.model_channels).to(self.dtype)
        emb = self.time_embed(sinusoids)
        if self.label_embed is not None:
            if y is None:
                y = torch.full((batch,), self.config.num_classes, device=emb.device, dtype=torch.long)
            emb = emb + self.label_embed(y)
        return emb

    def _run(self, block: CoupledSequential, video: torch.Tensor, audio: torch.Tensor,
             emb: torch.Tensor, cross_shift: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        # Shifts are drawn here, outside the checkpointed region: recomputation reuses them.
        shifts: Sequence[int] = block.draw_shifts(self.config.video_shape[0], cross_shift)
        if self.config.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, video, audio, emb, shifts, use_reentrant=False)
        return block(video, audio, emb, shifts)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, timesteps: torch.Tensor, *,
                cross_shift: int | None = None,
                y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`cross_shift=None`: every RS-MMA layer with random shifting draws its own shift; an
        int: all such layers use it (layers without shifting use 0). `y`: `[B]` class ids
        (`null_class` for none) if the model is class-conditional; None means unconditional.
        The model computes in `self.dtype` (under the config's autocast, if any) and returns
        the inputs' dtype."""
        timesteps = self._check_inputs(video, audio, timesteps, y)
        dtype = AUTOCAST_DTYPES[self.config.autocast]
        amp = (torch.autocast(video.device.type, dtype=dtype) if dtype is not None
               else contextlib.nullcontext())
        with amp:
            emb = self._embed(timesteps, y, video.shape[0])
            v, a = self.video_in(video.to(self.dtype)), self.audio_in(audio.to(self.dtype))
            skips = [(v, a)]
            for block in self.encoder:
                v, a = self._run(block, v, a, emb, cross_shift)
                skips.append((v, a))
            v, a = self._run(self.middle, v, a, emb, cross_shift)
            for block in self.decoder:
                skip_v, skip_a = skips.pop()
                v, a = cat_video_channels(v, skip_v), torch.cat([a, skip_a], dim=1)
                v, a = self._run(block, v, a, emb, cross_shift)
            v, a = self.video_out(v), self.audio_out(a)
        return v.to(video.dtype).contiguous(), a.to(audio.dtype)
