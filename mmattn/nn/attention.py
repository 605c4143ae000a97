"""Self-attention over video (spatial, then temporal) and audio, and RS-MMA cross-modal attention.

All blocks are residual: GroupNorm(32) -> q/k/v projection -> attention -> zero-initialised
output projection -> `x + out`. q/k/v channels are ordered `(q|k|v, head, head_dim)`, the
published order, so published 1x1-convolution weights load as they are (flattened).

`recompute` (fused blocks; default None: inputs of 8 MiB or more, see `mmattn.nn.recompute`):
in training the normalised input of the q/k/v projection is not kept for the backward but
recomputed there (one norm pass), and on accelerators q/k/v themselves too (one projection;
the published blocks recompute everything).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmattn.nn._ops import check_impl, rs_attention
from mmattn.nn.init import zero_module
from mmattn.nn.layout import check_audio, check_video, tokens_to_video, video_tokens
from mmattn.nn.norm import GroupNormAct
from mmattn.nn.recompute import recomputable, recompute_min_bytes, recompute_saved, then


def split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`[N, T, 3*H*D]` -> q, k, v, each a `[N, H, T, D]` view.

    Split along channels (not `unbind` of a `[3, ...]` view): the backward then concatenates
    the three gradients straight into `[N, T, 3*H*D]`, one copy instead of a stack and a
    reorder."""
    n, t, c3 = qkv.shape
    return tuple(x.unflatten(2, (num_heads, -1)).transpose(1, 2) for x in qkv.split(c3 // 3, dim=2))


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """`[N, H, T, D]` -> `[N, T, H*D]`."""
    n, h, t, d = x.shape
    return x.transpose(1, 2).reshape(n, t, h * d)


def _heads(channels: int, num_heads: int | None, num_head_channels: int | None) -> int:
    """Number of heads from exactly one of `num_heads` / `num_head_channels`, checked."""
    if num_heads is None:
        if num_head_channels is None or num_head_channels < 1 or channels % num_head_channels:
            raise ValueError(f"channels ({channels}) must be a multiple of num_head_channels ({num_head_channels})")
        return channels // num_head_channels
    if num_heads < 1 or channels % num_heads:
        raise ValueError(f"channels ({channels}) must be a multiple of num_heads ({num_heads})")
    return num_heads


class TokenSelfAttention(nn.Module):
    """Residual multi-head self-attention over token sequences `x: [*N, T, C] -> [*N, T, C]`.

    Each of the `N` sequences is normalised on its own (GroupNorm statistics over `T` and the
    channels of a group). `x` may be any strided view; the output keeps its memory order.
    """

    def __init__(self, channels: int, num_heads: int = 4, *, impl: str = "fused",
                 recompute: bool | None = None):
        super().__init__()
        self.channels, self.num_heads = channels, _heads(channels, num_heads, None)
        self.norm = GroupNormAct(32, channels, act=None, impl=impl)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_module(nn.Linear(channels, channels))
        self.recompute = recompute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[-1] != self.channels:
            raise ValueError(f"{type(self).__name__} expected tokens [*N, T, C={self.channels}], "
                             f"got shape {tuple(x.shape)}")
        t, c = x.shape[-2:]
        tokens = x.reshape(-1, t, c)
        min_bytes = recompute_min_bytes(self.recompute) if self.norm.impl == "fused" else None
        # token-major (contiguous), as the projection reads it: what it saves is then a view of `h`
        h, h_recipe = recomputable(lambda: self.norm(tokens.transpose(1, 2)).transpose(1, 2).contiguous(),
                                   min_bytes)
        with recompute_saved(h_recipe):
            qkv = self.qkv(h)
        with recompute_saved(then(h_recipe, qkv, self.qkv)):  # what attention saves of q, k, v
            out = merge_heads(F.scaled_dot_product_attention(*split_heads(qkv, self.num_heads)))
        return x + self.proj(out).view(x.shape)


class VideoSelfAttention(nn.Module):
    """Spatial self-attention within each frame, then temporal self-attention across frames at
    each pixel: `[B, F, C, H, W] -> [B, F, C, H, W]` (frames-last memory)."""
    streams = "video"

    def __init__(self, channels: int, num_heads: int = 4, *, impl: str = "fused",
                 recompute: bool | None = None):
        super().__init__()
        self.channels = channels
        self.spatial = TokenSelfAttention(channels, num_heads, impl=impl, recompute=recompute)
        self.temporal = TokenSelfAttention(channels, num_heads, impl=impl, recompute=recompute)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, f, c, h, w = check_video(video, self.channels)
        x = self.spatial(video_tokens(video).view(b, f, h * w, c))  # sequences: frames
        x = self.temporal(x.transpose(1, 2)).transpose(1, 2)         # sequences: pixels
        return tokens_to_video(x.reshape(b, f * h * w, c), video.shape)


class AudioSelfAttention(TokenSelfAttention):
    """Self-attention over audio time steps: `[B, C, L] -> [B, C, L]`."""
    streams = "audio"

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        check_audio(audio, self.channels)
        return super().forward(audio.transpose(1, 2)).transpose(1, 2)


class RSMultiModalAttention(nn.Module):
    """Random-shift multi-modal attention (RS-MMA) between video and audio.

    `forward(video [B, F, C, H, W], audio [B, C, L], shift)` returns both updated, same shapes.
    Per modality: GroupNorm(32), a q/k/v projection, then `mmattn.rs_attention` (video queries
    attend to the audio of a window of `window` segments starting `shift` segments after their
    frame, audio queries to the video frames of theirs), a zero-initialised output projection
    and a residual. `shift=None` draws `shift` uniformly from `[0, F - window]` with torch's
    default generator when `random_shift` is on (training and sampling, as published), else 0.
    """
    streams = "pair+shift"

    def __init__(self, channels: int, num_head_channels: int = 64, window: int = 1,
                 random_shift: bool = True, *, impl: str = "fused", recompute: bool | None = None):
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.channels, self.window, self.random_shift = channels, window, random_shift
        self.recompute = recompute
        self.num_heads = _heads(channels, None, num_head_channels)
        self.impl = check_impl(impl)
        self.video_norm = GroupNormAct(32, channels, act=None, channel_dim=2, impl=impl)
        self.audio_norm = GroupNormAct(32, channels, act=None, impl=impl)
        self.video_qkv = nn.Linear(channels, 3 * channels)
        self.audio_qkv = nn.Linear(channels, 3 * channels)
        self.video_proj = zero_module(nn.Linear(channels, channels))
        self.audio_proj = zero_module(nn.Linear(channels, channels))

    def draw_shift(self, frames: int) -> int:
        """A shift for `frames` frames: uniform on `[0, frames - window]` if `random_shift`, else 0."""
        self._check_frames(frames)
        if not self.random_shift:
            return 0
        return int(torch.randint(0, frames - self.window + 1, ()).item())

    def _check_frames(self, frames: int) -> None:
        if self.window > frames:
            raise ValueError(f"RSMultiModalAttention window ({self.window}) must be <= frames F ({frames})")

    def forward(self, video: torch.Tensor, audio: torch.Tensor,
                shift: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, f = check_video(video, self.channels)[:2]
        check_audio(audio, self.channels)
        if audio.shape[0] != b:
            raise ValueError(f"video and audio batch sizes differ: {b} vs {audio.shape[0]}")
        self._check_frames(f)
        if audio.shape[2] < f:
            raise ValueError(f"audio length L ({audio.shape[2]}) must be >= frames F ({f})")
        shift = self.draw_shift(f) if shift is None else int(shift)
        min_bytes = recompute_min_bytes(self.recompute) if self.impl == "fused" else None
        # token-major (contiguous), as the projections read them: what they save is then a view
        h_v, h_v_recipe = recomputable(lambda: video_tokens(self.video_norm(video)).contiguous(), min_bytes)
        h_a, h_a_recipe = recomputable(lambda: self.audio_norm(audio).transpose(1, 2).contiguous(), min_bytes)
        with recompute_saved(h_v_recipe, h_a_recipe):
            qkv_v, qkv_a = self.video_qkv(h_v), self.audio_qkv(h_a)
        with recompute_saved(then(h_v_recipe, qkv_v, self.video_qkv), then(h_a_recipe, qkv_a, self.audio_qkv)):
            out_v, out_a = rs_attention(*split_heads(qkv_v, self.num_heads), *split_heads(qkv_a, self.num_heads),
                                        frames=f, window=self.window, shift=shift, impl=self.impl)
        # `video` and `audio` are not reassigned: the recipes' closures read them in the backward
        return (video + tokens_to_video(self.video_proj(merge_heads(out_v)), video.shape),
                audio + self.audio_proj(merge_heads(out_a)).transpose(1, 2))

    def extra_repr(self) -> str:
        return (f"{self.channels}, heads={self.num_heads}, window={self.window}, "
                f"random_shift={self.random_shift}, impl={self.impl!r}")
