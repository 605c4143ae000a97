"""The two tensor layouts of the blocks, their checks, and the views used inside.

Video is `[B, F, C, H, W]`, audio `[B, C, L]`. Inside, video is kept in *frames-last* memory:
the same `[B, F, C, H, W]` shape with memory order `(B, F, H, W, C)`. In that order a frame
batch `[B*F, C, H, W]` is a channels-last view (spatial convolution), `[B, C, F, H*W]` is a
channels-last view (temporal convolution) and `[B, F*H*W, C]` is a plain view (tokens), so
no layout copies are needed between them.
"""
from __future__ import annotations

import torch


def check_video(video: torch.Tensor, channels: int | None = None, name: str = "video") -> torch.Size:
    """Raise ValueError unless `video` is `[B, F, C, H, W]` (with `C == channels` if given)."""
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(video).__name__}")
    if video.dim() != 5:
        raise ValueError(f"{name} must be [B, F, C, H, W], got shape {tuple(video.shape)}")
    if channels is not None and video.shape[2] != channels:
        raise ValueError(f"{name} must have {channels} channels in dim 2 of [B, F, C, H, W], "
                         f"got shape {tuple(video.shape)}")
    return video.shape


def check_audio(audio: torch.Tensor, channels: int | None = None, name: str = "audio") -> torch.Size:
    """Raise ValueError unless `audio` is `[B, C, L]` (with `C == channels` if given)."""
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(audio).__name__}")
    if audio.dim() != 3:
        raise ValueError(f"{name} must be [B, C, L], got shape {tuple(audio.shape)}")
    if channels is not None and audio.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels in dim 1 of [B, C, L], "
                         f"got shape {tuple(audio.shape)}")
    return audio.shape


def frames_last(video: torch.Tensor) -> torch.Tensor:
    """`[B, F, C, H, W]` in frames-last memory order `(B, F, H, W, C)`; no copy if already."""
    b = video.shape[0]
    frames = video.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    return frames.unflatten(0, (b, video.shape[1]))


def flatten_frames(video: torch.Tensor) -> torch.Tensor:
    """`[B, F, C, H, W]` -> `[B*F, C, H, W]` (a channels-last view of frames-last video)."""
    return video.flatten(0, 1)


def unflatten_frames(frames: torch.Tensor, batch: int) -> torch.Tensor:
    """`[B*F, C, H, W]` -> `[B, F, C, H, W]`."""
    return frames.unflatten(0, (batch, frames.shape[0] // batch))


def video_tokens(video: torch.Tensor) -> torch.Tensor:
    """`[B, F, C, H, W]` -> tokens `[B, F*H*W, C]` in `(f, h, w)` order (a view if frames-last)."""
    b, f, c, h, w = video.shape
    return video.permute(0, 1, 3, 4, 2).reshape(b, f * h * w, c)


def tokens_to_video(tokens: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of `video_tokens`: `[B, F*H*W, C]` -> frames-last `[B, F, C, H, W]` of `shape`."""
    b, f, c, h, w = shape
    return tokens.view(b, f, h, w, tokens.shape[-1]).permute(0, 1, 4, 2, 3)


def cat_video_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate two videos `[B, F, Ca, H, W]`, `[B, F, Cb, H, W]` along channels, keeping
    frames-last memory (a plain `torch.cat(dim=2)` would return the default layout)."""
    out = torch.cat([flatten_frames(a), flatten_frames(b)], dim=1)
    return unflatten_frames(out, a.shape[0])


def channel_view(values: torch.Tensor, ndim: int, channel_dim: int) -> torch.Tensor:
    """`[B, C]` -> broadcastable against a `ndim`-D tensor whose channels are at `channel_dim`."""
    shape = [values.shape[0]] + [1] * (ndim - 1)
    shape[channel_dim] = values.shape[1]
    return values.view(shape)
