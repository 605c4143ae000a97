"""Video and audio convolutions with 'same' padding."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmattn.functional import conv3x3
from mmattn.nn._ops import check_impl
from mmattn.nn.autocast import autocast_dtype
from mmattn.nn.layout import check_audio, check_video, flatten_frames, frames_last, unflatten_frames

VIDEO_CONV_KINDS: tuple[str, ...] = ("2d+1d", "3d")


def temporal_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Weight gradient `[Cout, Cin, k]` of a zero-padded 'same' `k`-tap convolution over dim 2 of
    `x` `[B, Cin, F, P]`, given `grad` `[B, Cout, F, P]` (any strides; channels-last is free).

    Tap `j` reads frame `f + j - k // 2` for output frame `f`, so its gradient is one matrix
    product `grad_rows^T @ x_rows` over the token rows `(f, p)` of every valid frame pair,
    which are contiguous row blocks in channels-last memory.
    """
    b, c_out, frames, _ = grad.shape
    g = grad.permute(0, 2, 3, 1).contiguous()  # [B, F, P, Cout]: a view of channels-last grad
    xs = x.permute(0, 2, 3, 1).contiguous()
    # summed over the batch in float32 at least (one rounding to bf16/fp16 per sample)
    out = grad.new_zeros(kernel_size, c_out, x.shape[1], dtype=torch.promote_types(grad.dtype, torch.float32))
    for j in range(kernel_size):
        d = j - kernel_size // 2
        lo, hi = max(0, -d), min(frames, frames - d)  # output frames whose input frame exists
        for i in range(b if hi > lo else 0):
            out[j] += g[i, lo:hi].flatten(0, 1).t() @ xs[i, lo + d:hi + d].flatten(0, 1)
    return out.permute(1, 2, 0).to(grad.dtype).contiguous()


def _conv_over_frames(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The temporal convolution as `F.conv2d` with a `(k, 1)` kernel over `[B, C, F, P]`."""
    return F.conv2d(x, weight.unsqueeze(-1), bias, padding=(weight.shape[-1] // 2, 0))


class _TemporalConv(torch.autograd.Function):
    """`_conv_over_frames` whose weight gradient is `temporal_weight_grad`: on CPU oneDNN
    computes it at about half its forward speed for these shapes (a long reduction over F*P
    rows into a small weight), `k` GEMMs at about GEMM speed (1.2-1.7x faster for the paper-64
    shapes, fp32 and bf16)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _conv_over_frames(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        k = weight.shape[-1]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.aten.convolution_backward(
                grad, x, weight.unsqueeze(-1), None, (1, 1), (k // 2, 0), (1, 1), False, (0, 0), 1,
                (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            dw = temporal_weight_grad(grad, x, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.sum((0, 2, 3), dtype=torch.promote_types(grad.dtype, torch.float32)).to(grad.dtype)
        return dx, dw, db


def temporal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """'Same' convolution of `x` `[B, Cin, F, P]` over dim 2 with `weight` `[Cout, Cin, k]`:
    `[B, Cout, F, P]` (channels-last in, channels-last out). In CPU training the weight
    gradient comes from `temporal_weight_grad`; elsewhere this is `F.conv2d`."""
    if x.device.type != "cpu" or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return _conv_over_frames(x, weight, bias)
    dtype = autocast_dtype(x) or x.dtype
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731  (autocast's casts, explicit)
    return _TemporalConv.apply(cast(x), cast(weight), cast(bias))


def winograd_pays(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether `mmattn.conv3x3` (Winograd F(4x4, 3x3)) beats oneDNN's direct convolution for `conv`
    on `x` `[N, C, H, W]` on CPU. Measured on a 2-core AMD EPYC (forward + both gradients):
    1.4-2.0x for frames of 16-64 pixels with 128-384 channels; slower on small frames, whose tiles
    are mostly padding (2x2: 2.6x slower, 4x4: 1.1x), with few channels (64: 1.1x slower) and
    with few tiles per filter (8x8 frames at 512 channels: its [36, C, O] filter transform)."""
    n, c, h, w = x.shape
    return (min(h, w) >= 16 and min(c, conv.out_channels) >= 128
            and n * -(-h // 4) * -(-w // 4) >= 256)


def spatial_conv(x: torch.Tensor, conv: nn.Conv2d, impl: str = "fused") -> torch.Tensor:
    """`conv(x)` for a channels-last `[N, C, H, W]`; a 'same' 3x3 `conv` on CPU in float32/float64
    (autocast off) runs as `mmattn.conv3x3` when `impl` is "fused" and `winograd_pays`."""
    if (impl == "fused" and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and conv.weight.dtype == x.dtype and autocast_dtype(x) is None
            and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and not torch.compiler.is_compiling() and winograd_pays(x, conv)):
        return conv3x3(x, conv.weight, conv.bias)
    return conv(x)


def _check_kernel(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer ('same' padding), got {kernel_size}")


class VideoConv(nn.Module):
    """Video convolution: `[B, F, Cin, H, W] -> [B, F, Cout, H, W]`, zero 'same' padding.

    `kind="2d+1d"`: a `k x k` convolution per frame (`spatial`, `[Cout, Cin, k, k]`), then a
    `k`-tap convolution over frames per pixel (`temporal`, `[Cout, Cout, k]`).
    `kind="3d"`: one `k x k x k` convolution (`conv`, `[Cout, Cin, k, k, k]`).
    The output is in frames-last memory (see `mmattn.nn.layout`): the spatial step runs on a
    channels-last `[B*F, C, H, W]` view and the temporal step as a `(k, 1)` convolution on a
    channels-last `[B, C, F, H*W]` view, so no layout copy happens between them; a 1x1x1 "3d"
    convolution is a matrix product over channels (a backend-independent GEMM on that memory).
    `impl="fused"`: on CPU the 3x3 spatial step may run as `mmattn.conv3x3` (`spatial_conv`);
    `impl="reference"`: always `torch.nn.functional.conv2d`.
    """
    streams = "video"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, kind: str = "2d+1d",
                 *, impl: str = "fused"):
        super().__init__()
        _check_kernel(kernel_size)
        self.impl = check_impl(impl)
        if kind not in VIDEO_CONV_KINDS:
            raise ValueError(f"kind must be one of {VIDEO_CONV_KINDS}, got {kind!r}")
        self.in_channels, self.out_channels, self.kind = in_channels, out_channels, kind
        pad = kernel_size // 2
        if kind == "2d+1d":
            self.spatial = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad)
            self.temporal = nn.Conv1d(out_channels, out_channels, kernel_size, padding=pad)
        else:
            self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=pad)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        check_video(video, self.in_channels)
        x = frames_last(video)
        if self.kind == "3d":
            if self.conv.kernel_size == (1, 1, 1):  # [B, F, H, W, C] @ [C, Cout]
                y = F.linear(x.permute(0, 1, 3, 4, 2), self.conv.weight.flatten(1), self.conv.bias)
                return y.permute(0, 1, 4, 2, 3)
            return self.conv(x.transpose(1, 2)).transpose(1, 2)  # channels_last_3d [B, C, F, H, W]
        x = unflatten_frames(spatial_conv(flatten_frames(x), self.spatial, self.impl), x.shape[0])
        h, w = x.shape[-2:]
        # [B, C, F, H*W]; flattening before transposing keeps a batch of one's stride canonical,
        # which PyTorch's memory-format heuristics need to see the view as channels-last.
        y = temporal_conv(x.flatten(3).transpose(1, 2), self.temporal.weight, self.temporal.bias)
        return y.transpose(1, 2).unflatten(3, (h, w))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kind={self.kind!r}, impl={self.impl!r}"


class AudioConv(nn.Conv1d):
    """Dilated 1-D convolution: `[B, Cin, L] -> [B, Cout, L]`, zero 'same' padding.

    Parameters `weight` `[Cout, Cin, k]` and `bias` `[Cout]`.
    """
    streams = "audio"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1):
        _check_kernel(kernel_size)
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        super().__init__(in_channels, out_channels, kernel_size,
                         padding=dilation * (kernel_size - 1) // 2, dilation=dilation)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        check_audio(audio, self.in_channels)
        return super().forward(audio)
