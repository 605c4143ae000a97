"""Residual blocks with timestep conditioning: per modality, and the coupled audio-video block."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmattn.nn._ops import check_impl
from mmattn.nn.attention import AudioSelfAttention, VideoSelfAttention
from mmattn.nn.conv import AudioConv, VideoConv
from mmattn.nn.dropout import Dropout
from mmattn.nn.init import zero_module
from mmattn.nn.layout import channel_view, frames_last
from mmattn.nn.norm import GroupNormAct
from mmattn.nn.recompute import recomputable, recompute_min_bytes, recompute_saved
from mmattn.nn.resample import Downsample, Upsample

RESAMPLE: tuple[str | None, ...] = (None, "down", "up")
ConvFactory = Callable[[int, int, int], nn.Module]  # (in_channels, out_channels, kernel_size)


class NormActConv(nn.Module):
    """`GroupNormAct (+FiLM) -> Dropout -> conv`; shapes as the conv, FiLM `scale`/`shift` `[B, C]`.

    `recompute` (fused norm only; see `mmattn.nn.recompute`; default None: inputs of 8 MiB or more)
    trades a little compute for activation memory in training: the conv's input (the normalised,
    dropped-out activations) is not kept but recomputed in the backward, one norm pass with the
    dropout's random state replayed. `x` is kept anyway (the norm's backward needs it).
    """

    def __init__(self, norm: GroupNormAct, conv: nn.Module, dropout: float = 0.0,
                 recompute: bool | None = None):
        super().__init__()
        self.norm, self.dropout, self.conv = norm, Dropout(dropout, impl=norm.impl), conv
        self.recompute = recompute

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        min_bytes = recompute_min_bytes(self.recompute) if self.norm.impl == "fused" else None
        h, recipe = recomputable(lambda: self._conv_input(x, scale, shift), min_bytes,
                                 self.dropout.random_device(x))
        with recompute_saved(recipe):
            return self.conv(h)

    def _conv_input(self, x: torch.Tensor, scale: torch.Tensor | None,
                    shift: torch.Tensor | None) -> torch.Tensor:
        h = self.dropout(self.norm(x, scale, shift))
        # in the memory order the conv computes in, so that what it saves is a view of `h`
        return frames_last(h) if isinstance(self.conv, VideoConv) else h


class _ResBlock(nn.Module):
    """Residual block over one modality, conditioned on an embedding.

    `h = conv3(SiLU(GN(x)))`, resampled with `x` if `resample` is "down"/"up"; then
    `h = conv1(Dropout(SiLU(GN(h) * (1 + scale) + shift)))` with `(scale, shift)` from the
    embedding (or `GN(h + e)` without `use_scale_shift_norm`); output `skip(x) + h`, where
    `skip` is the identity or a 1x1 convolution when the channel count changes. `conv1` starts at
    zero. The modality enters only through its channel dim and the convolution factory.
    """

    def __init__(self, channels: int, emb_channels: int | None, out_channels: int | None, *,
                 dropout: float, use_scale_shift_norm: bool, resample: str | None,
                 modality: str, conv: ConvFactory, impl: str):
        super().__init__()
        if resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {RESAMPLE}, got {resample!r}")
        check_impl(impl)
        channel_dim = 2 if modality == "video" else 1  # [B, F, C, H, W] or [B, C, L]
        out = out_channels or channels
        self.channels, self.out_channels, self.channel_dim = channels, out, channel_dim
        self.use_scale_shift_norm = use_scale_shift_norm
        self.film_channels = 2 * out if use_scale_shift_norm else out
        self.emb_proj = None if emb_channels is None else nn.Linear(emb_channels, self.film_channels)
        self.in_layers = NormActConv(GroupNormAct(32, channels, channel_dim=channel_dim, impl=impl),
                                     conv(channels, out, 3))
        self.resample = {"down": Downsample, "up": Upsample}[resample](modality) if resample else None
        self.out_layers = NormActConv(GroupNormAct(32, out, channel_dim=channel_dim, impl=impl),
                                      zero_module(conv(out, out, 1)), dropout)
        self.skip = nn.Identity() if out == channels else conv(channels, out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """`x`: the modality's tensor; `emb`: `[B, E]`, or the projected `[B, film_channels]`
        when the block was built with `emb_channels=None` (see `MMResBlock`)."""
        want = self.film_channels if self.emb_proj is None else self.emb_proj.in_features
        if emb.dim() != 2 or emb.shape != (x.shape[0], want):
            raise ValueError(f"{type(self).__name__} expected emb [B, {want}] with B={x.shape[0]}, "
                             f"got shape {tuple(emb.shape)}")
        e = emb if self.emb_proj is None else self.emb_proj(F.silu(emb))
        h = self.in_layers(x)
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers(h, scale, shift)
        else:
            h = self.out_layers(h + channel_view(e.to(h.dtype), h.dim(), self.channel_dim))
        return self.skip(x) + h


class VideoResBlock(_ResBlock):
    """Video residual block: `video [B, F, C, H, W], emb [B, E] -> [B, F, Cout, H', W']`.

    `conv3` is a `VideoConv` of `kind` ("2d+1d" or "3d"), `conv1`/`skip` 1x1x1 convolutions;
    `resample` "down"/"up" halves/doubles H and W. `emb_channels=None`: `emb` is already
    projected to `[B, 2*Cout]` (`[B, Cout]` without scale-shift norm).
    """
    streams = "video+emb"

    def __init__(self, channels: int, emb_channels: int | None, out_channels: int | None = None, *,
                 dropout: float = 0.0, use_scale_shift_norm: bool = True, resample: str | None = None,
                 kind: str = "2d+1d", impl: str = "fused"):
        super().__init__(channels, emb_channels, out_channels, dropout=dropout,
                         use_scale_shift_norm=use_scale_shift_norm, resample=resample,
                         modality="video", impl=impl,
                         conv=lambda i, o, k: VideoConv(i, o, k, kind if k > 1 else "3d", impl=impl))


class AudioResBlock(_ResBlock):
    """Audio residual block: `audio [B, C, L], emb [B, E] -> [B, Cout, L']`.

    `conv3` is an `AudioConv` with `dilation`, `conv1`/`skip` 1x1 convolutions; `resample`
    "down"/"up" divides/multiplies L by 4. `emb_channels=None` as in `VideoResBlock`.
    """
    streams = "audio+emb"

    def __init__(self, channels: int, emb_channels: int | None, out_channels: int | None = None, *,
                 dropout: float = 0.0, use_scale_shift_norm: bool = True, resample: str | None = None,
                 dilation: int = 1, impl: str = "fused"):
        super().__init__(channels, emb_channels, out_channels, dropout=dropout,
                         use_scale_shift_norm=use_scale_shift_norm, resample=resample,
                         modality="audio", impl=impl,
                         conv=lambda i, o, k: AudioConv(i, o, k, dilation if k > 1 else 1))


class MMResBlock(nn.Module):
    """Coupled residual block: `(video [B, F, C, H, W], audio [B, C, L], emb [B, E])` ->
    `(video [B, F, Cout, H', W'], audio [B, Cout, L'])`.

    A `VideoResBlock` and an `AudioResBlock` that share one embedding projection (as published),
    each optionally followed by its modality's self-attention (`num_heads` heads).
    """
    streams = "pair+emb"

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, *,
                 dropout: float = 0.0, use_scale_shift_norm: bool = True, resample: str | None = None,
                 video_kind: str = "2d+1d", audio_dilation: int = 1, video_attention: bool = False,
                 audio_attention: bool = False, num_heads: int = 4, impl: str = "fused"):
        super().__init__()
        common = dict(dropout=dropout, use_scale_shift_norm=use_scale_shift_norm,
                      resample=resample, impl=impl)
        self.video = VideoResBlock(channels, None, out_channels, kind=video_kind, **common)
        self.audio = AudioResBlock(channels, None, out_channels, dilation=audio_dilation, **common)
        out = self.video.out_channels
        self.emb_proj = nn.Linear(emb_channels, self.video.film_channels)
        self.video_attention = VideoSelfAttention(out, num_heads, impl=impl) if video_attention else None
        self.audio_attention = AudioSelfAttention(out, num_heads, impl=impl) if audio_attention else None

    def forward(self, video: torch.Tensor, audio: torch.Tensor,
                emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if emb.dim() != 2 or emb.shape[1] != self.emb_proj.in_features:
            raise ValueError(f"MMResBlock expected emb [B, {self.emb_proj.in_features}], got shape {tuple(emb.shape)}")
        e = self.emb_proj(F.silu(emb))
        video, audio = self.video(video, e), self.audio(audio, e)
        if self.video_attention is not None:
            video = self.video_attention(video)
        if self.audio_attention is not None:
            audio = self.audio_attention(audio)
        return video, audio
