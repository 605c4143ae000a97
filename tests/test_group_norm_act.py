"""Fused GroupNorm(+FiLM+SiLU) vs the eager reference, gradients, layouts and bad inputs (CPU)."""
import pytest
import torch
from hypothesis import assume, given, strategies as st
from torch.autograd import gradcheck

import mmattn
from mmattn.reference import group_norm_act_reference

# float64 agrees to summation order; float32 to rounding of the O(group size) statistics sums;
# bfloat16: the input is rounded before the reference sees it, the output rounding dominates.
TOL = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=1e-5, rtol=1e-5),
       torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2)}


def params(b, c, dtype, which, requires_grad=False):
    made = dict(weight=torch.randn(c, dtype=dtype), bias=torch.randn(c, dtype=dtype),
                scale=0.5 * torch.randn(b, c, dtype=dtype), shift=torch.randn(b, c, dtype=dtype))
    return {k: (v.requires_grad_(requires_grad) if k in which else None) for k, v in made.items()}


def check(x, groups, p, act, channel_dim):
    y = mmattn.group_norm_act(x, groups, p["weight"], p["bias"], scale=p["scale"], shift=p["shift"],
                              act=act, channel_dim=channel_dim)
    d = {k: None if v is None else v.double() for k, v in p.items()}
    ref = group_norm_act_reference(x.double(), groups, d["weight"], d["bias"], scale=d["scale"],
                                   shift=d["shift"], act=act, channel_dim=channel_dim)
    assert y.dtype == x.dtype and y.shape == x.shape
    torch.testing.assert_close(y.double(), ref, **TOL[x.dtype])
    return y


@given(b=st.integers(1, 3), groups=st.sampled_from([1, 2, 4, 8]), cpg=st.integers(1, 4),
       spatial=st.lists(st.integers(1, 9), min_size=0, max_size=3),
       frames=st.integers(1, 4), channel_dim=st.sampled_from([1, 2]),
       which=st.sets(st.sampled_from(["weight", "bias", "scale", "shift"])),
       act=st.sampled_from(["silu", None]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_matches_reference(b, groups, cpg, spatial, frames, channel_dim, which, act, dtype):
    c = groups * cpg
    shape = (b, c, *spatial) if channel_dim == 1 else (b, frames, c, *spatial)
    assume(cpg * torch.Size(spatial).numel() * (frames if channel_dim == 2 else 1) > 1)  # F.group_norm rejects one-element groups
    x = 3 * torch.randn(shape, dtype=dtype) + 1
    check(x, groups, params(b, c, dtype, which), act, channel_dim)


@pytest.mark.parametrize("layout", ["channels_last", "channels_last_3d", "transposed", "sliced"])
def test_layouts_are_respected(layout):
    b, c = 2, 16
    p = params(b, c, torch.float32, {"weight", "bias", "scale", "shift"})
    if layout == "channels_last":
        x = torch.randn(b, c, 6, 5).to(memory_format=torch.channels_last)
    elif layout == "channels_last_3d":
        x = torch.randn(b, c, 3, 6, 5).to(memory_format=torch.channels_last_3d)
    elif layout == "transposed":  # spatial dims that cannot be flattened
        x = torch.randn(b, c, 5, 6).transpose(2, 3)
    else:
        x = torch.randn(b, 2 * c, 7)[:, ::2]
    y = check(x, 4, p, "silu", 1)
    assert y.stride() == torch.empty_like(x).stride()


def test_video_layout_without_permute():
    # [B, F, C, H, W]: statistics over frames and pixels per (sample, group)
    x = torch.randn(2, 5, 32, 4, 4)
    p = params(2, 32, torch.float32, {"weight", "bias", "scale", "shift"})
    check(x, 8, p, "silu", 2)
    x_cl = torch.randn(2, 5, 4, 4, 32).permute(0, 1, 4, 2, 3)  # channels-last frames
    check(x_cl, 8, p, "silu", 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_frames_last_video_many_chunks(dtype):
    # Channels-inner memory (frames-last video) with more rows than one task holds: per-chunk
    # statistics and gradient sums (the last chunk partial) combine to the reference's.
    b, f, c, h, w = 2, 3, 64, 21, 20
    x = (3 * torch.randn(b, f, h, w, c, dtype=dtype) + 1).permute(0, 1, 4, 2, 3).requires_grad_()
    p = params(b, c, dtype, {"weight", "bias", "scale", "shift"}, requires_grad=True)
    y = check(x, 8, p, "silu", 2)
    assert y.stride() == x.stride()
    grad = torch.randn_like(y)
    y.backward(grad)
    xr = x.detach().double().requires_grad_()
    pr = {k: v.detach().double().requires_grad_() for k, v in p.items()}
    group_norm_act_reference(xr, 8, pr["weight"], pr["bias"], scale=pr["scale"], shift=pr["shift"],
                             channel_dim=2).backward(grad.double())
    # dx: as the forward (bfloat16: rounding of x, grad_y and dx). Parameter gradients sum
    # B*F*H*W = 2520 terms of O(1): float32 rounding grows to ~1e-5 absolute; bfloat16 results
    # of size ~100 are rounded to 8 significant bits.
    dx_tol = TOL[dtype] if dtype != torch.bfloat16 else dict(atol=5e-2, rtol=5e-2)
    param_tol = {torch.float64: TOL[torch.float64], torch.float32: dict(atol=1e-4, rtol=1e-4),
                 torch.bfloat16: dict(atol=0.5, rtol=1e-2)}[dtype]
    torch.testing.assert_close(x.grad.double(), xr.grad, **dx_tol)
    for k in p:
        torch.testing.assert_close(p[k].grad.double(), pr[k].grad, **param_tol)


@pytest.mark.parametrize("channel_dim,shape", [(1, (2, 6, 3, 2)), (2, (2, 3, 6, 2, 2)), (1, (1, 4))])
@pytest.mark.parametrize("act", ["silu", None])
def test_gradcheck_float64(channel_dim, shape, act):
    b, c = shape[0], shape[channel_dim]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    p = params(b, c, torch.float64, {"weight", "bias", "scale", "shift"}, requires_grad=True)
    fn = lambda x, w, bi, s, sh: mmattn.group_norm_act(  # noqa: E731
        x, 2, w, bi, scale=s, shift=sh, act=act, channel_dim=channel_dim)
    assert gradcheck(fn, (x, p["weight"], p["bias"], p["scale"], p["shift"]))


def test_gradcheck_optional_params_and_channels_last():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, w: mmattn.group_norm_act(x, 2, w), (x, w))
    assert gradcheck(lambda x: mmattn.group_norm_act(x, 4, act=None), (x,))


def test_gradients_bf16_input_float32_params():
    x = torch.randn(2, 8, 16, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    y = mmattn.group_norm_act(x, 4, w)
    y.float().square().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    group_norm_act_reference(xr, 4, wr).square().sum().backward()
    torch.testing.assert_close(w.grad.double(), wr.grad, atol=0.5, rtol=3e-2)


def test_backward_fills_no_zero_gradients(backward_ops):
    """mean and rstd have no gradient: the backward is one operator call, with no zero tensors
    made for them (a kernel launch each on a GPU)."""
    x = torch.randn(2, 8, 16, requires_grad=True)
    w, bi = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    ops = backward_ops(mmattn.group_norm_act(x, 4, w, bi).sum())
    assert ops["mmattn.group_norm_act_bwd"] == 1
    assert ops["aten.zeros"] == 0 and ops["aten.zeros_like"] == 0


def test_opcheck():
    x = torch.randn(2, 3, 8, 4, requires_grad=True)
    w, bi = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    s, sh = torch.randn(2, 8, requires_grad=True), torch.randn(2, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.mmattn.group_norm_act_fwd.default, (x, 4, w, bi, s, sh, True, 1e-5, 2))
    torch.library.opcheck(torch.ops.mmattn.group_norm_act_fwd.default, (x, 2, None, None, None, None, False, 1e-5, 2))
    y, mean, rstd = torch.ops.mmattn.group_norm_act_fwd(x, 4, w, bi, s, sh, True, 1e-5, 2)
    args = [t.detach() for t in (y, x, mean, rstd)]
    torch.library.opcheck(torch.ops.mmattn.group_norm_act_bwd.default,
                          (*args[:1], *args[1:], 4, w.detach(), None, s.detach(), None, True, 2))


BAD = [
    (dict(num_groups=3), ValueError, "num_groups"),
    (dict(num_groups=0), ValueError, "num_groups"),
    (dict(x=torch.randn(4)), ValueError, "x must be"),
    (dict(weight=torch.randn(5)), ValueError, r"weight must have shape \[C\]"),
    (dict(bias=torch.randn(2, 8)), ValueError, r"bias must have shape \[C\]"),
    (dict(scale=torch.randn(8)), ValueError, r"scale must have shape \[B, C\]"),
    (dict(shift=torch.randn(3, 8)), ValueError, r"shift must have shape \[B, C\]"),
    (dict(act="gelu"), ValueError, "act must be"),
    (dict(channel_dim=3), ValueError, "channel_dim"),
    (dict(weight=torch.randn(8, dtype=torch.float64)), TypeError, "weight has dtype"),
    (dict(shift=torch.randn(2, 8, device="meta")), ValueError, "shift is on meta"),
    (dict(x=torch.ones(2, 8, 5, dtype=torch.long)), TypeError, "x must be float32"),
]


def test_ops_check_their_arguments():
    """Direct torch.ops.mmattn calls (no Python checks in front) raise on inconsistent shapes
    instead of reading out of bounds."""
    x, ones = torch.randn(2, 4, 5), torch.ones(4)
    fwd, bwd = torch.ops.mmattn.group_norm_act_fwd, torch.ops.mmattn.group_norm_act_bwd
    with pytest.raises(RuntimeError, match=r"weight and bias must be \[C\]"):
        fwd(x, 2, torch.ones(2), None, None, None, True, 1e-5, 1)
    with pytest.raises(RuntimeError, match=r"scale and shift must be \[B, C\]"):
        fwd(x, 2, ones, ones, torch.zeros(1, 4), None, True, 1e-5, 1)
    y, mean, rstd = fwd(x, 2, ones, None, None, None, True, 1e-5, 1)
    with pytest.raises(RuntimeError, match="mean and rstd must be"):
        bwd(y, x, mean[:1], rstd, 2, ones, None, None, None, True, 1)
    with pytest.raises(RuntimeError, match="grad_y must match x"):
        bwd(y[:1], x, mean, rstd, 2, ones, None, None, None, True, 1)


@pytest.mark.parametrize("override,exc,match", BAD)
def test_bad_inputs(override, exc, match):
    args = dict(x=torch.randn(2, 8, 5), num_groups=4)
    args.update(override)
    with pytest.raises(exc, match=match):
        mmattn.group_norm_act(**args)
