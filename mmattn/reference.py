"""Pure-PyTorch references for the fused operators (used by tests and benchmarks).

Semantics are those of DESIGN.md §1-§2. The references favour clarity over speed, except
`rs_attention_gather`, which follows the published algorithm (a loop over frames that gathers
each frame's key window with `index_select`) and so is also the speed baseline.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "segment_bounds", "window_segments", "rs_attention_gather", "rs_attention_dense",
    "group_norm_act_reference",
]


def segment_bounds(num_tokens: int, segments: int) -> list[int]:
    """Balanced boundaries `a_j = floor(j * num_tokens / segments)`, j = 0..segments."""
    return [j * num_tokens // segments for j in range(segments + 1)]


def window_segments(i: int, segments: int, window: int, shift: int) -> list[int]:
    """Segments seen by query segment `i`: `(i + shift + k) mod segments`, k < window."""
    return [(i + shift + k) % segments for k in range(window)]


def _softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gather_direction(q, k, v, frames, window, shift, scale):
    """Query segment i of `q` attends to key segments W(i) of `k`/`v`, gathered per segment."""
    qb = segment_bounds(q.shape[2], frames)
    kb = segment_bounds(k.shape[2], frames)
    acc = _softmax_dtype(q.dtype)
    outs = []
    for i in range(frames):
        idx = torch.cat([torch.arange(kb[j], kb[j + 1], device=q.device)
                         for j in window_segments(i, frames, window, shift)])
        k_i = k.index_select(2, idx).to(acc)
        v_i = v.index_select(2, idx).to(acc)
        q_i = q[:, :, qb[i]:qb[i + 1]].to(acc)
        w = torch.softmax(q_i @ k_i.transpose(-1, -2) * scale, dim=-1)
        outs.append((w @ v_i).to(q.dtype))
    return torch.cat(outs, dim=2)


def rs_attention_gather(q_video, k_video, v_video, q_audio, k_audio, v_audio, *,
                        frames: int, window: int, shift: int, scale: float | None = None):
    """RS-MMA by looping over frames and gathering each window (the published algorithm).

    Shapes as `mmattn.rs_attention`: video `[B, H, F*P, D]`, audio `[B, H, L, D]`.
    Softmax in float32 (float64 for float64 inputs).
    """
    scale = 1.0 / math.sqrt(q_video.shape[-1]) if scale is None else scale
    out_video = _gather_direction(q_video, k_audio, v_audio, frames, window, shift, scale)
    out_audio = _gather_direction(q_audio, k_video, v_video, frames, window, shift, scale)
    return out_video, out_audio


def _window_mask(n_query: int, n_key: int, frames: int, window: int, shift: int, device):
    """Boolean `[n_query, n_key]`: True where query token may attend to key token."""
    q_seg = _token_segments(n_query, frames, device)
    k_seg = _token_segments(n_key, frames, device)
    offset = (k_seg[None, :] - q_seg[:, None] - shift) % frames
    return offset < window


def _token_segments(num_tokens: int, segments: int, device) -> torch.Tensor:
    """Segment index of each token under the balanced boundaries of `segment_bounds`."""
    bounds = torch.tensor(segment_bounds(num_tokens, segments), device=device)
    return torch.bucketize(torch.arange(num_tokens, device=device), bounds, right=True) - 1


def rs_attention_dense(q_video, k_video, v_video, q_audio, k_audio, v_audio, *,
                       frames: int, window: int, shift: int, scale: float | None = None):
    """RS-MMA as dense attention with a boolean window mask through `scaled_dot_product_attention`."""
    scale = 1.0 / math.sqrt(q_video.shape[-1]) if scale is None else scale
    n, l = q_video.shape[2], q_audio.shape[2]
    mask_va = _window_mask(n, l, frames, window, shift, q_video.device)
    mask_av = _window_mask(l, n, frames, window, shift, q_video.device)
    out_video = F.scaled_dot_product_attention(q_video, k_audio, v_audio, attn_mask=mask_va, scale=scale)
    out_audio = F.scaled_dot_product_attention(q_audio, k_video, v_video, attn_mask=mask_av, scale=scale)
    return out_video, out_audio


def group_norm_act_reference(x, num_groups: int, weight=None, bias=None, *, scale=None, shift=None,
                             act: str | None = "silu", eps: float = 1e-5, channel_dim: int = 1):
    """Eager GroupNorm -> FiLM -> SiLU; `channel_dim=2` permutes `[B, F, C, *S]` to `[B, C, F, *S]`.

    Computes in the widest dtype of x and the parameters (bf16 x with float32 parameters: in
    float32, as a mixed-precision model's GroupNorm does) and returns x's dtype."""
    out_dtype = x.dtype
    for p in (weight, bias, scale, shift):
        if p is not None:
            x = x.to(torch.promote_types(x.dtype, p.dtype))
    if channel_dim == 2:
        x = x.movedim(1, 2)  # [B, C, F, *S]: statistics over F and S, as the published rearrange
    y = F.group_norm(x, num_groups, weight, bias, eps)
    if scale is not None or shift is not None:
        view = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        if scale is not None:
            y = y * (1 + scale.reshape(view))
        if shift is not None:
            y = y + shift.reshape(view)
    if act == "silu":
        y = F.silu(y)
    if channel_dim == 2:
        y = y.movedim(2, 1)
    return y.to(out_dtype)
