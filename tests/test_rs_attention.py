"""RS-MMA operator vs both references, gradients, registration and bad inputs (CPU)."""
import math

import pytest
import torch
from hypothesis import given, strategies as st
from torch.autograd import gradcheck

import mmattn
from mmattn import _C
from mmattn.nn.attention import merge_heads, split_heads
from mmattn.reference import (rs_attention_dense, rs_attention_gather, segment_bounds,
                              window_segments)

# Tolerances against a float64 reference: float64 differs only by summation order; float32 by
# rounding of O(D + window tokens) products (eps 1.2e-7); bfloat16 inputs are rounded before the
# reference sees them, so the error is the bf16 rounding of the output (eps 7.8e-3).
TOL = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=2e-5, rtol=2e-5),
       torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2)}


def make_inputs(b, h, f, p, l, d, dtype=torch.float32, requires_grad=False):
    video = [torch.randn(b, h, f * p, d, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]
    audio = [torch.randn(b, h, l, d, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]
    return (*video, *audio)


def check_against_references(inputs, frames, window, shift):
    out = mmattn.rs_attention(*inputs, frames=frames, window=window, shift=shift)
    ref = rs_attention_dense(*(t.double() for t in inputs), frames=frames, window=window, shift=shift)
    gather = rs_attention_gather(*inputs, frames=frames, window=window, shift=shift)
    tol = TOL[inputs[0].dtype]
    for o, r, g in zip(out, ref, gather):
        assert o.dtype == inputs[0].dtype
        torch.testing.assert_close(o.double(), r, **tol)
        torch.testing.assert_close(g.double(), r, **tol)


@given(b=st.integers(1, 2), h=st.integers(1, 3), f=st.integers(1, 16), p=st.integers(1, 6),
       extra=st.integers(0, 40), d=st.sampled_from([8, 16, 32, 64, 128]),
       window_frac=st.floats(0, 1), shift=st.integers(-50, 50),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_matches_references(b, h, f, p, extra, d, window_frac, shift, dtype):
    window = 1 + int(window_frac * (f - 1))
    check_against_references(make_inputs(b, h, f, p, f + extra, d, dtype), f, window, shift)


@pytest.mark.parametrize("frames,l", [(4, 10), (5, 23), (3, 3), (16, 400)])  # L % F != 0 and equal
@pytest.mark.parametrize("window,shift", [(1, 0), (2, -1), (3, 1000)])
def test_wrapping_windows_and_balanced_segments(frames, l, window, shift):
    window = min(window, frames)
    check_against_references(make_inputs(1, 2, frames, 3, l, 8, torch.float64), frames, window, shift)


def test_paper_middle_block_full_window():
    # window = F: every query sees every key, so RS-MMA is plain attention across modalities
    inputs = make_inputs(1, 2, 4, 5, 12, 16, torch.float64)
    qv, kv, vv, qa, ka, va = inputs
    out_v, out_a = mmattn.rs_attention(*inputs, frames=4, window=4, shift=3)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.testing.assert_close(out_v, sdpa(qv, ka, va), **TOL[torch.float64])
    torch.testing.assert_close(out_a, sdpa(qa, kv, vv), **TOL[torch.float64])


def test_non_contiguous_inputs():
    b, f, p, l, h, d = 2, 4, 6, 20, 3, 16
    # [B, N, H, D] projections viewed as [B, H, N, D], plus a non-unit stride along D
    video = [torch.randn(b, f * p, h, d).transpose(1, 2) for _ in range(3)]
    audio = [torch.randn(b, l, h, 2 * d)[..., ::2].transpose(1, 2) for _ in range(3)]
    inputs = (*video, *audio)
    assert not any(t.is_contiguous() for t in inputs)
    check_against_references(inputs, f, 2, 3)
    out_v, out_a = mmattn.rs_attention(*inputs, frames=f, window=2, shift=3)
    assert out_v.stride() == torch.empty_like(video[0]).stride()  # a dense q's layout is kept
    assert out_a.stride() == torch.empty(b, l, h, d).transpose(1, 2).stride()  # else token-major


def test_heads_split_from_a_projection_merge_back_as_views():
    """q/k/v split off one `[B, N, 3*H*D]` projection (not dense): outputs and gradients are
    token-major, so merging heads into channels is a view and the gradient of the projection
    needs no reorder."""
    b, f, p, l, h, d = 2, 4, 6, 20, 3, 16
    qkv_v = torch.randn(b, f * p, 3 * h * d, dtype=torch.float64, requires_grad=True)
    qkv_a = torch.randn(b, l, 3 * h * d, dtype=torch.float64, requires_grad=True)
    q_v, k_v, v_v = split_heads(qkv_v, h)
    q_a, k_a, v_a = split_heads(qkv_a, h)
    inputs = (q_v, k_v, v_v, q_a, k_a, v_a)
    check_against_references(inputs, f, 2, 1)
    outs = mmattn.rs_attention(*inputs, frames=f, window=2, shift=1)
    for out in outs:
        assert merge_heads(out).data_ptr() == out.data_ptr()  # a view, not a copy
    grads = torch.autograd.grad(outs, inputs, [torch.ones_like(o) for o in outs])
    for g, t in zip(grads, inputs):
        assert g.stride() == mmattn.functional.empty_rows_like(t).stride()
        assert g.transpose(1, 2).is_contiguous()


def test_broadcast_inputs():
    # stride-0 token dims (expanded keys/values): rows that BLAS cannot take with a leading dimension
    b, h, f, p, l, d = 2, 2, 4, 3, 10, 8
    qv, _, vv, qa, ka, _ = make_inputs(b, h, f, p, l, d, torch.float64)
    kv = torch.randn(b, h, 1, d, dtype=torch.float64).expand(b, h, f * p, d)
    va = torch.randn(b, h, 1, d, dtype=torch.float64).expand(b, h, l, d)
    check_against_references((qv, kv, vv, qa, ka, va), f, 2, 1)


@pytest.mark.parametrize("window", [2, 3])  # segments, or the whole sequence (window = frames), in chunks
def test_query_blocks_longer_than_a_chunk(window):
    # 300 video tokens per frame and ~177 audio tokens per segment: the CPU kernel splits query
    # blocks into chunks of at most 256 rows and (full window) merges segments into blocks
    inputs = make_inputs(1, 1, 3, 300, 530, 8, torch.float64, requires_grad=True)
    ref_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = mmattn.rs_attention(*inputs, frames=3, window=window, shift=2)
    ref = rs_attention_dense(*ref_inputs, frames=3, window=window, shift=2)
    grads = [torch.randn_like(o) for o in out]
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, **TOL[torch.float64])
    for g, r in zip(torch.autograd.grad(out, inputs, grads), torch.autograd.grad(ref, ref_inputs, grads)):
        torch.testing.assert_close(g, r, **TOL[torch.float64])


def test_scale_argument():
    inputs = make_inputs(1, 1, 3, 2, 6, 8, torch.float64)
    out = mmattn.rs_attention(*inputs, frames=3, window=2, shift=1, scale=0.3)
    ref = rs_attention_dense(*inputs, frames=3, window=2, shift=1, scale=0.3)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, **TOL[torch.float64])


def test_published_scaling_matches_default_scale():
    # the published code scales q and k by ch ** -0.25 each
    qv, kv, vv, qa, ka, va = make_inputs(1, 1, 2, 3, 4, 16, torch.float64)
    s = 16 ** -0.25
    out = mmattn.rs_attention(qv * s, kv * s, vv, qa * s, ka * s, va, frames=2, window=1, shift=0, scale=1.0)
    ref = mmattn.rs_attention(qv, kv, vv, qa, ka, va, frames=2, window=1, shift=0)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, **TOL[torch.float64])


@pytest.mark.parametrize("frames,p,l,window,shift", [(3, 2, 7, 1, 0), (3, 2, 6, 2, 2), (4, 1, 9, 4, -1)])
def test_gradcheck_float64(frames, p, l, window, shift):
    inputs = make_inputs(1, 2, frames, p, l, 4, torch.float64, requires_grad=True)
    assert gradcheck(lambda *t: mmattn.rs_attention(*t, frames=frames, window=window, shift=shift), inputs)


def test_gradients_match_reference_float32():
    inputs = make_inputs(2, 2, 6, 5, 40, 32, torch.float32, requires_grad=True)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    grads = [torch.randn_like(inputs[0]), torch.randn_like(inputs[3])]
    out = mmattn.rs_attention(*inputs, frames=6, window=3, shift=5)
    ref = rs_attention_dense(*ref_inputs, frames=6, window=3, shift=5)
    torch.autograd.backward(out, grads)
    torch.autograd.backward(ref, [g.double() for g in grads])
    for t, r in zip(inputs, ref_inputs):
        torch.testing.assert_close(t.grad.double(), r.grad, atol=1e-4, rtol=1e-4)


def test_backward_is_deterministic():
    inputs = make_inputs(2, 2, 8, 4, 37, 16, torch.float32, requires_grad=True)
    grads = []
    for _ in range(2):
        out = mmattn.rs_attention(*inputs, frames=8, window=3, shift=6)
        grads.append(torch.autograd.grad(sum(o.square().sum() for o in out), inputs))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_backward_fills_no_zero_gradients(backward_ops):
    """The log-sum-exp outputs have no gradient: no zero tensors are made for them."""
    inputs = make_inputs(1, 2, 4, 3, 10, 8, torch.float32, requires_grad=True)
    out = mmattn.rs_attention(*inputs, frames=4, window=2, shift=1)
    ops = backward_ops(sum(o.sum() for o in out))
    assert ops["mmattn.segment_attention_bwd"] == 2
    assert ops["aten.zeros"] == 0 and ops["aten.zeros_like"] == 0


@pytest.mark.parametrize("split", [False, True])
def test_opcheck(split):
    """`split`: q, k, v are heads split off one projection (not dense: token-major outputs)."""
    if split:
        q, ka, va = split_heads(torch.randn(2, 12, 3 * 16, dtype=torch.float64), 2)
        q, ka, va = (t.requires_grad_() for t in (q, ka, va))
    else:
        q = torch.randn(2, 2, 12, 8, dtype=torch.float64, requires_grad=True)
        ka, va = (torch.randn(2, 2, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    torch.library.opcheck(torch.ops.mmattn.segment_attention_fwd.default, (q, ka, va, 4, 2, 1, 0.35))
    q, ka, va = q.detach(), ka.detach(), va.detach()  # the backward op is not differentiable
    out, lse = torch.ops.mmattn.segment_attention_fwd(q, ka, va, 4, 2, 1, 0.35)
    torch.library.opcheck(torch.ops.mmattn.segment_attention_bwd.default,
                          (torch.randn_like(out), q, ka, va, out, lse, 4, 2, 1, 0.35))


def test_torch_compile_fullgraph():
    inputs = make_inputs(1, 2, 4, 3, 10, 8)

    def f(*t):
        out_v, out_a = mmattn.rs_attention(*t, frames=4, window=2, shift=1)
        return out_v.sum() + out_a.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*inputs), f(*inputs))


@pytest.mark.parametrize("n,segments", [(12, 4), (7, 3), (400, 16), (25, 25), (101, 7)])
def test_index_helpers_match_python(n, segments):
    bounds = segment_bounds(n, segments)
    assert [_C.segment_begin(j, n, segments) for j in range(segments + 1)] == bounds
    for t in range(n):
        j = _C.segment_of(t, n, segments)
        assert bounds[j] <= t < bounds[j + 1]
    for window in {1, max(1, segments // 2), segments}:
        for shift in (0, 1, -3, 2 * segments + 1):
            for i in range(segments):
                tokens = [t for a, ln in _C.window_key_ranges(i, n, segments, window, shift)
                          for t in range(a, a + ln)]
                expected = [t for j in window_segments(i, segments, window, shift)
                            for t in range(bounds[j], bounds[j + 1])]
                assert sorted(tokens) == sorted(expected)
                assert len(_C.window_key_ranges(i, n, segments, window, shift)) <= 2
            for j in range(segments):  # key segment j is seen by exactly `window` query segments
                seers = {_C.query_segment_seeing(j, k, segments, shift % segments) for k in range(window)}
                assert seers == {i for i in range(segments) if j in window_segments(i, segments, window, shift)}


BAD = [
    (dict(q_video=torch.randn(2, 12, 8)), ValueError, "q_video must be 4-D"),
    (dict(k_video=torch.randn(2, 2, 11, 8)), ValueError, "k_video must have the shape of q_video"),
    (dict(v_audio=torch.randn(2, 2, 9, 8)), ValueError, "v_audio must have the shape of q_audio"),
    (dict(q_audio=torch.randn(1, 2, 10, 8), k_audio=torch.randn(1, 2, 10, 8),
          v_audio=torch.randn(1, 2, 10, 8)), ValueError, "q_audio must share B, H, D"),
    (dict(q_audio=torch.randn(2, 2, 10, 4), k_audio=torch.randn(2, 2, 10, 4),
          v_audio=torch.randn(2, 2, 10, 4)), ValueError, "q_audio must share B, H, D"),
    (dict(window=0), ValueError, "window"),
    (dict(window=5), ValueError, "window"),
    (dict(frames=5), ValueError, "frames"),
    (dict(frames=0), ValueError, "frames"),
    (dict(shift=1.5), ValueError, "shift"),
    (dict(q_audio=torch.randn(2, 2, 3, 8), k_audio=torch.randn(2, 2, 3, 8),
          v_audio=torch.randn(2, 2, 3, 8)), ValueError, "L >= F"),
    (dict(k_audio=torch.randn(2, 2, 10, 8, dtype=torch.float64)), TypeError, "k_audio has dtype"),
    (dict(q_video=torch.randn(2, 2, 12, 8).long(), k_video=torch.randn(2, 2, 12, 8).long(),
          v_video=torch.randn(2, 2, 12, 8).long()), TypeError, "q_video must be float32"),
    (dict(v_video=torch.randn(2, 2, 12, 8, device="meta")), ValueError, "v_video is on meta"),
    (dict(q_video=[[1.0]]), TypeError, "q_video must be a torch.Tensor"),
    (dict(**{name: torch.randn(2, 2, 12, 0) for name in ("q_video", "k_video", "v_video")},
          **{name: torch.randn(2, 2, 10, 0) for name in ("q_audio", "k_audio", "v_audio")}),
     ValueError, "head_dim D .* must be >= 1"),
]


def test_any_int_shift_wraps():
    qkv = [torch.randn(1, 2, 12, 8) for _ in range(3)] + [torch.randn(1, 2, 10, 8) for _ in range(3)]
    for a, b in zip(mmattn.rs_attention(*qkv, frames=4, window=2, shift=2**70 + 1),
                    mmattn.rs_attention(*qkv, frames=4, window=2, shift=(2**70 + 1) % 4)):
        assert torch.equal(a, b)


def test_ops_check_their_arguments():
    """Direct torch.ops.mmattn calls (no Python checks in front) raise on inconsistent shapes
    instead of reading out of bounds."""
    q, lse = torch.randn(1, 1, 4, 8), torch.zeros(1, 1, 4)
    fwd, bwd = torch.ops.mmattn.segment_attention_fwd, torch.ops.mmattn.segment_attention_bwd
    with pytest.raises(RuntimeError, match="must agree"):
        fwd(q, q, torch.randn(1, 1, 2, 8), 2, 1, 0, 0.3)      # v shorter than k
    with pytest.raises(RuntimeError, match="must agree"):
        fwd(q, torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4), 2, 1, 0, 0.3)  # another D
    with pytest.raises(RuntimeError, match="lse must be"):
        bwd(q, q, q, q, q, lse[..., :2], 2, 1, 0, 0.3)
    with pytest.raises(RuntimeError, match="grad_out and out must match q"):
        bwd(q[..., :4], q, q, q, q, lse, 2, 1, 0, 0.3)


@pytest.mark.parametrize("override,exc,match", BAD)
def test_bad_inputs(override, exc, match):
    args = dict(zip(("q_video", "k_video", "v_video"), (torch.randn(2, 2, 12, 8) for _ in range(3))))
    args.update(zip(("q_audio", "k_audio", "v_audio"), (torch.randn(2, 2, 10, 8) for _ in range(3))))
    args.update(frames=4, window=2, shift=0)
    args.update(override)
    with pytest.raises(exc, match=match):
        mmattn.rs_attention(**args)
