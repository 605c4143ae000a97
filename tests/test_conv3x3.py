"""`mmattn.conv3x3`: the CPU 'same' 3x3 convolution by Winograd F(4x4, 3x3), against
`F.conv2d` (value, all three gradients, every tile clipping), and its use by `VideoConv`."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import mmattn.nn.conv as conv_module
from mmattn.functional import conv3x3
from mmattn.nn import VideoConv
from mmattn.nn.layout import frames_last

# Winograd F(4x4, 3x3) in float32: sums of 36 transformed products whose transform entries reach
# 8 (A) and 5 (B), so rounding errors are amplified by tens over the direct convolution's (about
# 1 eps of |x| * |w|). Measured here up to 30 eps on random data; Barabasz et al. (2020, "Error
# analysis and improving the accuracy of Winograd convolution") put this F(4, 3) at ~1e2 eps.
F32_ERROR_EPS = 128


def reference_and_magnitude(x, w, b):
    """`F.conv2d` in float64 and the same convolution of absolute values (the error scale)."""
    xd, wd = x.double(), w.double()
    bd = None if b is None else b.double()
    ref = F.conv2d(xd, wd, bd, padding=1)
    mag = F.conv2d(xd.abs(), wd.abs(), None if b is None else bd.abs(), padding=1)
    return ref, mag


@given(n=st.integers(1, 3), c=st.integers(1, 9), o=st.integers(1, 9), h=st.integers(1, 11),
       w=st.integers(1, 11), bias=st.booleans(), channels_last=st.booleans())
def test_matches_conv2d_in_float64(n, c, o, h, w, bias, channels_last):
    """Exact up to float64 rounding for every size (H, W not multiples of the 4x4 tiles clip the
    last tiles), with or without bias, from either memory format."""
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, 3, 3, dtype=torch.float64)
    b = torch.randn(o, dtype=torch.float64) if bias else None
    y = conv3x3(x, weight, b)
    ref, mag = reference_and_magnitude(x, weight, b)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert ((y - ref).abs() <= 1e-12 * (mag + 1)).all()


def test_several_chunks_in_float64():
    """600 tiles at 64 + 64 channels in float64 fill the ~16 MiB chunk buffers 1.3 times: a full
    chunk and a shorter last one, forward and weight gradient."""
    torch.manual_seed(0)
    x, weight, b = (torch.randn(6, 64, 40, 40, dtype=torch.float64), torch.randn(64, 64, 3, 3, dtype=torch.float64),
                    torch.randn(64, dtype=torch.float64))
    ref, mag = reference_and_magnitude(x, weight, b)
    assert ((conv3x3(x, weight, b) - ref).abs() <= 1e-12 * (mag + 1)).all()
    grad = torch.randn(6, 64, 40, 40, dtype=torch.float64)
    ref_dw = torch.ops.aten.convolution_backward(grad, x, weight, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1,
                                                 (False, True, False))[1]
    torch.testing.assert_close(torch.ops.mmattn.conv3x3_same_weight_grad(grad, x), ref_dw, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("shape", [(2, 64, 32, 16, 16), (1, 256, 24, 8, 12), (3, 5, 7, 13, 6)])
def test_float32_error_is_bounded(shape):
    n, c, o, h, w = shape
    torch.manual_seed(0)
    x, weight, b = torch.randn(n, c, h, w), torch.randn(o, c, 3, 3), torch.randn(o)
    ref, mag = reference_and_magnitude(x, weight, b)
    eps = torch.finfo(torch.float32).eps
    assert ((conv3x3(x, weight, b).double() - ref).abs() <= F32_ERROR_EPS * eps * mag).all()
    grad = torch.randn(n, o, h, w)
    dw = torch.ops.mmattn.conv3x3_same_weight_grad(grad, x).double()
    ref_dw = torch.ops.aten.convolution_backward(
        grad.double(), x.double(), weight.double(), None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1,
        (False, True, False))[1]
    mag_dw = torch.ops.aten.convolution_backward(
        grad.double().abs(), x.double().abs(), weight.double(), None, (1, 1), (1, 1), (1, 1), False,
        (0, 0), 1, (False, True, False))[1]
    assert ((dw - ref_dw).abs() <= F32_ERROR_EPS * eps * mag_dw).all()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("size", [(4, 4), (5, 7), (1, 9)])
def test_gradcheck(bias, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(conv3x3, (x, w, b))


def test_opcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    torch.library.opcheck(torch.ops.mmattn.conv3x3_same.default, (x, w, b))
    torch.library.opcheck(torch.ops.mmattn.conv3x3_same_weight_grad.default,
                          (torch.randn(2, 4, 6, 5), torch.randn(2, 3, 6, 5)))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: conv3x3(torch.randn(3, 4, 4), torch.randn(2, 3, 3, 3)), ValueError, r"x must be 4-D \[N, C, H, W\]"),
    (lambda: conv3x3(torch.randn(1, 3, 4, 4), torch.randn(2, 4, 3, 3)), ValueError, r"weight must be \[O, C=3, 3, 3\]"),
    (lambda: conv3x3(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 5, 5)), ValueError, r"weight must be \[O, C=3, 3, 3\]"),
    (lambda: conv3x3(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3), torch.randn(3)), ValueError, r"bias must be \[O=2\]"),
    (lambda: conv3x3(torch.randn(1, 3, 4, 4).half(), torch.randn(2, 3, 3, 3).half()), TypeError, "float32 or float64"),
    (lambda: conv3x3(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3).double()), TypeError,
     "weight has dtype torch.float64 but x has torch.float32"),
    (lambda: conv3x3(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3), torch.randn(2).double()), TypeError,
     "bias has dtype torch.float64 but x has torch.float32"),
])
def test_bad_inputs_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("impl, winograd", [("fused", True), ("reference", False)])
def test_video_conv_uses_it_on_cpu(monkeypatch, impl, winograd):
    """`VideoConv`'s spatial step runs `conv3x3` where it pays (impl="fused" only) and computes
    the same function either way: float64 values and gradients against `F.conv2d` in the
    module itself."""
    calls = []
    monkeypatch.setattr(conv_module, "conv3x3", lambda *a: calls.append(1) or conv3x3(*a))
    monkeypatch.setattr(conv_module, "winograd_pays", lambda x, conv: True)
    torch.manual_seed(0)
    module = VideoConv(4, 6, 3, impl=impl).double()
    x = frames_last(torch.randn(2, 3, 4, 8, 8, dtype=torch.float64)).requires_grad_()
    y = module(x)
    assert bool(calls) == winograd
    y.backward(torch.ones_like(y))
    grads = [x.grad, module.spatial.weight.grad, module.spatial.bias.grad]
    x_ref = x.detach().clone().requires_grad_()
    for p in module.parameters():
        p.grad = None
    monkeypatch.setattr(conv_module, "winograd_pays", lambda x, conv: False)
    y_ref = module(x_ref)
    y_ref.backward(torch.ones_like(y_ref))
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(grads, [x_ref.grad, module.spatial.weight.grad, module.spatial.bias.grad]):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("frames, channels, size, pays", [
    (16, (128, 128), 64, True), (16, (256, 256), 32, True), (16, (384, 384), 16, True),  # paper-64
    (16, (512, 512), 8, False),   # few tiles for its [36, C, O] filter transform
    (16, (3, 128), 64, False),    # the input convolution
    (256, (128, 128), 4, False),  # tiles mostly padding (the demo's folded 4x4 frames)
    (64, (64, 64), 16, False),    # few channels
    (8, (128, 128), 16, False),   # few tiles
])
def test_winograd_pays_where_measured(frames, channels, size, pays):
    c, o = channels
    x = torch.empty(frames, c, size, size)
    assert conv_module.winograd_pays(x, torch.nn.Conv2d(c, o, 3, padding=1)) == pays


def test_video_conv_keeps_direct_convolution_where_it_does_not_pay(monkeypatch):
    """bf16 autocast, non-3x3 kernels and shapes where it does not pay take `F.conv2d`."""
    calls = []
    monkeypatch.setattr(conv_module, "conv3x3", lambda *a: calls.append(1) or conv3x3(*a))
    x = frames_last(torch.randn(1, 2, 4, 8, 8))
    VideoConv(4, 4, 3)(x)
    monkeypatch.setattr(conv_module, "winograd_pays", lambda x, conv: True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        VideoConv(4, 4, 3)(x)
    VideoConv(4, 4, 5)(x)
    assert not calls
    VideoConv(4, 4, 3)(x)
    assert calls
