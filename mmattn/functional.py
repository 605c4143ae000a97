"""Functional RS-MMA, fused GroupNorm(+FiLM+SiLU), seeded dropout and the CPU 3x3 convolution:
validation and fake kernels around the compiled operators `torch.ops.mmattn.*` (DESIGN.md
§1-§2), whose autograd kernels are C++ (csrc/autograd.cpp) except the convolution's (below)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mmattn import _C  # registers torch.ops.mmattn

__all__ = ["rs_attention", "group_norm_act", "dropout", "conv3x3"]

_ops = torch.ops.mmattn
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
ACTIVATIONS: tuple[str | None, ...] = ("silu", None)  # group_norm_act's `act`


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# Segment attention: one direction of RS-MMA
# ---------------------------------------------------------------------------------------------

def empty_rows_like(t: torch.Tensor) -> torch.Tensor:
    """The layout of segment attention's outputs and gradients (csrc/ops.h), for `t` `[B, H, N, D]`:
    `t`'s strides when `t` is dense, else token-major (`[B, N, H, D]` memory), so that heads
    split off a q/k/v projection merge back into channels as a view."""
    same = torch.empty_like(t)
    if same.stride() == t.stride():
        return same
    b, h, n, d = t.shape
    return t.new_empty((b, n, h, d)).transpose(1, 2)


@torch.library.register_fake("mmattn::segment_attention_fwd")
def _segment_attention_fwd_fake(q, k, v, segments, window, shift, scale):
    return empty_rows_like(q), q.new_empty(q.shape[:3], dtype=_stats_dtype(q.dtype))


@torch.library.register_fake("mmattn::segment_attention_bwd")
def _segment_attention_bwd_fake(grad_out, q, k, v, out, lse, segments, window, shift, scale):
    return empty_rows_like(q), empty_rows_like(k), empty_rows_like(v)


def _check_device(name: str, t: torch.Tensor) -> None:
    """`t` is on a device the kernels of this build run on."""
    if t.device.type not in ("cpu", "cuda") or (t.is_cuda and not _C.with_cuda):
        raise ValueError(f"mmattn's kernels run on CPU{' and CUDA' if _C.with_cuda else ' (this build has no CUDA)'}, "
                         f"got {name} on {t.device}")


def _check_tensor(name: str, t, rank: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(t.shape)}")


def _check_same(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """All tensors on one device and of one supported floating dtype."""
    first, ref = names[0], tensors[0]
    if ref.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{first} must be float32, float64, bfloat16 or float16, got {ref.dtype}")
    for name, t in zip(names[1:], tensors[1:]):
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {ref.device}; "
                             "all inputs must be on one device")
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first} has {ref.dtype}; "
                            "all inputs must share one dtype")


def rs_attention(q_video: torch.Tensor, k_video: torch.Tensor, v_video: torch.Tensor,
                 q_audio: torch.Tensor, k_audio: torch.Tensor, v_audio: torch.Tensor, *,
                 frames: int, window: int, shift: int, scale: float | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random-shift multi-modal attention (DESIGN.md §1).

    Video tokens `[B, H, F*P, D]` (token n in frame n // P) attend to the audio tokens of the
    segments `(i + shift + k) mod F, k < window` of their frame i; audio tokens `[B, H, L, D]`
    (segment j = [floor(jL/F), floor((j+1)L/F))) attend to all tokens of the video frames of
    the same window of j. Returns `(out_video [B, H, F*P, D], out_audio [B, H, L, D])`.
    """
    names = ("q_video", "k_video", "v_video", "q_audio", "k_audio", "v_audio")
    tensors = (q_video, k_video, v_video, q_audio, k_audio, v_audio)
    for name, t in zip(names[:3], tensors[:3]):
        _check_tensor(name, t, 4, "[B, H, F*P, D]")
    for name, t in zip(names[3:], tensors[3:]):
        _check_tensor(name, t, 4, "[B, H, L, D]")
    _check_same(names, tensors)
    _check_device("q_video", q_video)
    for name, t in zip(names[1:3], tensors[1:3]):
        if t.shape != q_video.shape:
            raise ValueError(f"{name} must have the shape of q_video {tuple(q_video.shape)}, "
                             f"got {tuple(t.shape)}")
    for name, t in zip(names[4:], tensors[4:]):
        if t.shape != q_audio.shape:
            raise ValueError(f"{name} must have the shape of q_audio {tuple(q_audio.shape)}, "
                             f"got {tuple(t.shape)}")
    b, h, n, d = q_video.shape
    if (q_audio.shape[0], q_audio.shape[1], q_audio.shape[3]) != (b, h, d):
        raise ValueError(f"q_audio must share B, H, D = {b}, {h}, {d} with q_video, "
                         f"got shape {tuple(q_audio.shape)}")
    if d < 1:
        raise ValueError(f"head_dim D (last dim of q_video and q_audio) must be >= 1, got shape {tuple(q_video.shape)}")
    if q_video.is_cuda and d > _C.cuda_max_head_dim:
        raise ValueError(f"head_dim D={d} (last dim of q_video and q_audio) is not supported on CUDA: "
                         f"need D <= {_C.cuda_max_head_dim} (D = 32, 64, 128 run on tensor cores)")
    if q_video.is_cuda and b * h > _C.cuda_max_batch_heads:
        raise ValueError(f"B * H = {b} * {h} of q_video exceeds {_C.cuda_max_batch_heads}, the most the "
                         "CUDA kernels take; split the batch")
    if q_video.is_cuda and max(n, q_audio.shape[2]) >= 2**30:
        raise ValueError(f"the CUDA kernels take fewer than 2^30 tokens per sequence, got {n} video and "
                         f"{q_audio.shape[2]} audio tokens")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    if n % frames != 0 or n == 0:
        raise ValueError(f"q_video has {n} tokens, not a positive multiple of frames={frames} "
                         "(expected [B, H, F*P, D])")
    if q_audio.shape[2] < frames:
        raise ValueError(f"q_audio has L={q_audio.shape[2]} tokens, fewer than frames={frames} "
                         "(need L >= F)")
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= frames:
        raise ValueError(f"window must be an int in [1, frames={frames}], got {window!r}")
    if isinstance(shift, bool) or not isinstance(shift, int):
        raise ValueError(f"shift must be an int, got {shift!r}")
    shift %= frames  # windows wrap: any int is one of these (and fits the kernels' int64)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    out_video, _ = _ops.segment_attention_fwd(q_video, k_audio, v_audio, frames, window, shift, scale)
    out_audio, _ = _ops.segment_attention_fwd(q_audio, k_video, v_video, frames, window, shift, scale)
    return out_video, out_audio


# ---------------------------------------------------------------------------------------------
# GroupNorm + affine + FiLM + SiLU
# ---------------------------------------------------------------------------------------------

def _grad_dtype(t: torch.Tensor | None, x: torch.Tensor) -> torch.dtype:
    return x.dtype if t is None else t.dtype


@torch.library.register_fake("mmattn::group_norm_act_fwd")
def _group_norm_act_fwd_fake(x, num_groups, weight, bias, scale, shift, silu, eps, channel_dim):
    stats = x.new_empty((x.shape[0], num_groups), dtype=_stats_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.register_fake("mmattn::group_norm_act_bwd")
def _group_norm_act_bwd_fake(grad_y, x, mean, rstd, num_groups, weight, bias, scale, shift,
                             silu, channel_dim):
    b, c = x.shape[0], x.shape[channel_dim]
    return (torch.empty_like(x), x.new_empty(c, dtype=_grad_dtype(weight, x)),
            x.new_empty(c, dtype=_grad_dtype(bias, x)),
            x.new_empty((b, c), dtype=_grad_dtype(scale, x)),
            x.new_empty((b, c), dtype=_grad_dtype(shift, x)))


def takes_param_dtype(param: torch.dtype, x: torch.dtype) -> bool:
    """Whether `group_norm_act` takes parameters and FiLM inputs of dtype `param` next to `x` of
    dtype `x`: x's own, or float32 for bfloat16/float16 x."""
    return param == x or (param == torch.float32 and x in (torch.bfloat16, torch.float16))


def _check_param(name: str, t, shape: tuple[int, ...], layout: str, x: torch.Tensor) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout} or None, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if not takes_param_dtype(t.dtype, x.dtype):
        raise TypeError(f"{name} has dtype {t.dtype}; expected x's dtype {x.dtype} "
                        "(or float32 for bfloat16/float16 x)")


def group_norm_act(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, *, scale: torch.Tensor | None = None,
                   shift: torch.Tensor | None = None, act: str | None = "silu", eps: float = 1e-5,
                   channel_dim: int = 1) -> torch.Tensor:
    """Fused GroupNorm -> affine -> FiLM -> activation (DESIGN.md §2).

    `x` is `[B, C, *S]` (channel_dim=1) or `[B, F, C, *S]` (channel_dim=2; statistics per
    (sample, group) over F and S). `weight`, `bias`: `[C]`; `scale`, `shift`: `[B, C]`;
    y = act((norm(x) * weight + bias) * (1 + scale) + shift). Output: x's shape, dtype, strides.
    """
    if channel_dim not in (1, 2):
        raise ValueError(f"channel_dim must be 1 ([B, C, *S]) or 2 ([B, F, C, *S]), got {channel_dim!r}")
    layout = "[B, C, *S]" if channel_dim == 1 else "[B, F, C, *S]"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() < channel_dim + 1:
        raise ValueError(f"x must be {layout} with at least {channel_dim + 1} dims, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float64, bfloat16 or float16, got {x.dtype}")
    _check_device("x", x)
    c = x.shape[channel_dim]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise ValueError(f"num_groups must be a positive int dividing C={c}, got {num_groups!r}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    _check_param("weight", weight, (c,), "[C]", x)
    _check_param("bias", bias, (c,), "[C]", x)
    _check_param("scale", scale, (x.shape[0], c), "[B, C]", x)
    _check_param("shift", shift, (x.shape[0], c), "[B, C]", x)
    y, _, _ = _ops.group_norm_act_fwd(x, num_groups, weight, bias, scale, shift, act == "silu",
                                      float(eps), channel_dim)
    return y


# ---------------------------------------------------------------------------------------------
# Dropout with a recomputed mask
# ---------------------------------------------------------------------------------------------

@torch.library.register_fake("mmattn::dropout")
def _dropout_fake(x, p, seed):
    return torch.empty_like(x)


def draw_seed(stream: int = 0) -> int:
    """A dropout seed (int64) drawn from torch's default CPU generator, with `stream` mixed in:
    one generator state gives each stream its own seed (XOR with an odd multiple of `stream`)."""
    seed = int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64).item())
    if stream:
        seed = (seed ^ (stream * 0x9E3779B97F4A7C15)) % 2**64
        seed -= 2**64 if seed >= 2**63 else 0
    return seed


def dropout(x: torch.Tensor, p: float, *, seed: int | None = None, stream: int = 0) -> torch.Tensor:
    """Dropout (CPU and CUDA): zero each element with probability `p`, scale the rest by
    `1 / (1 - p)`.

    The mask is a hash of `(seed, memory index)`: the backward recomputes it, so no mask is
    stored for autograd, and a CPU and a CUDA tensor of one layout lose the same elements.
    `seed=None` draws one from torch's default (CPU) generator, also for CUDA tensors (no
    device synchronisation), so `torch.manual_seed` reproduces the masks (and checkpoint
    recomputation, which restores that generator, sees the same ones). `stream` is mixed into
    a drawn seed: processes whose generators agree (data-parallel ranks, which must draw the
    same RS-MMA shifts) get different masks from their own streams. Output: x's shape, dtype
    and strides.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float64, bfloat16 or float16, got {x.dtype}")
    _check_device("x", x)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if seed is None:
        seed = draw_seed(stream)
    return _ops.dropout(x, float(p), int(seed))


# ---------------------------------------------------------------------------------------------
# 'Same' 3x3 convolution on CPU (Winograd F(4x4, 3x3))
# ---------------------------------------------------------------------------------------------

@torch.library.register_fake("mmattn::conv3x3_same")
def _conv3x3_same_fake(x, weight, bias):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[0], h, w)).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("mmattn::conv3x3_same_weight_grad")
def _conv3x3_same_weight_grad_fake(grad_y, x):
    return x.new_empty((grad_y.shape[1], x.shape[1], 3, 3))


def _conv3x3_setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _conv3x3_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    dx = dw = db = None
    if ctx.needs_input_grad[0]:  # the same convolution of grad with the flipped, transposed weight
        dx = _ops.conv3x3_same(grad, weight.flip(2, 3).transpose(0, 1), None)
    if ctx.needs_input_grad[1]:
        dw = _ops.conv3x3_same_weight_grad(grad, x)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        db = grad.sum((0, 2, 3))
    return dx, dw, db


torch.library.register_autograd("mmattn::conv3x3_same", _conv3x3_backward,
                                setup_context=_conv3x3_setup_context)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1)` on CPU in float32/float64, by Winograd's F(4x4, 3x3)
    (csrc/cpu/conv3x3_cpu.cpp): a quarter of the multiplications of the direct convolution.

    `x`: `[N, C, H, W]` (channels-last memory is read as it is), `weight`: `[O, C, 3, 3]`,
    `bias`: `[O]` or None. Returns `[N, O, H, W]` in channels-last memory. Differentiable in all
    three (first order). In float32 the error is that of 36-point sums with transform weights up
    to 8 (a few units of 1e-6 relative to `|x| * |w|` summed), where direct convolution is 9C-term
    sums: tests/test_conv3x3.py bounds it.
    """
    _check_tensor("x", x, 4, "[N, C, H, W]")
    _check_tensor("weight", weight, 4, "[O, C, 3, 3]")
    if x.device.type != "cpu":
        raise ValueError(f"mmattn.conv3x3 runs on CPU, got x on {x.device}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if weight.shape[1:] != (x.shape[1], 3, 3):
        raise ValueError(f"weight must be [O, C={x.shape[1]}, 3, 3], got shape {tuple(weight.shape)}")
    names, tensors = ["x", "weight"], [x, weight]
    if bias is not None:
        _check_tensor("bias", bias, 1, "[O]")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must be [O={weight.shape[0]}], got shape {tuple(bias.shape)}")
        names.append("bias"), tensors.append(bias)
    _check_same(names, tensors)
    return _ops.conv3x3_same(x, weight, bias)
