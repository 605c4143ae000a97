"""CUDA kernels of RS-MMA and GroupNorm(+FiLM+SiLU): against the CPU operators and float64
references, gradients, determinism, layouts, registration and bad inputs. Every test needs a GPU
(marked `cuda`; skipped without one).

Tolerances, against a float64 reference fed the same (already rounded) inputs:
- float64: summation order only;
- float32: scalar FMA kernels with fast-math exp/rsqrt (a few ulp per term, relative ~1e-6);
- bfloat16 / float16 attention: tensor-core products with float32 accumulation; P and dS are
  rounded to 16 bits before their products and the output once, so elementwise errors are a few
  units of the format's rounding (2^-9 bf16, 2^-12 fp16) of values of size ~1, and the relative
  Frobenius error ||out - ref|| / ||ref|| is about one rounding unit;
- 16-bit GroupNorm: float32 statistics, one rounding of the output (values up to ~10).
"""
import math

import pytest
import torch
from torch.autograd import gradcheck

import mmattn
from mmattn.reference import group_norm_act_reference, rs_attention_dense, rs_attention_gather

pytestmark = pytest.mark.cuda
DEV = "cuda"
HALF_TYPES = (torch.bfloat16, torch.float16)

# elementwise (atol = rtol) and relative Frobenius bounds per dtype
ATTN_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
ATTN_REL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 6e-3, torch.float16: 8e-4}
GRAD_REL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}
GN_TOL = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=2e-5, rtol=2e-5),
          torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2), torch.float16: dict(atol=5e-3, rtol=2e-3)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def poison_allocator(*like: torch.Tensor) -> None:
    """Frees NaN-filled blocks of the outputs' sizes, so an element a kernel forgets to write
    (the caching allocator hands these blocks out again) shows up as NaN."""
    blocks = [torch.full_like(t, float("nan")) for t in like]
    del blocks


# ------------------------------------------------------------------------------- RS-MMA

def attn_inputs(b, h, f, p, l, d, dtype, requires_grad=False):
    video = [torch.randn(b, h, f * p, d, device=DEV).to(dtype).requires_grad_(requires_grad) for _ in range(3)]
    audio = [torch.randn(b, h, l, d, device=DEV).to(dtype).requires_grad_(requires_grad) for _ in range(3)]
    return (*video, *audio)


# (B, H, frames, tokens per frame, audio length, head dim, window, shift): full and partial
# tiles, segments of 1/4.5/25/64/100/130 tokens, wrapping windows, L % F != 0, full window
ATTN_SHAPES = [
    (2, 2, 4, 16, 64, 64, 1, 0),
    (1, 3, 16, 25, 400, 32, 4, 14),
    (1, 2, 5, 100, 23, 128, 3, -1),
    (2, 1, 16, 64, 400, 64, 16, 7),
    (1, 1, 3, 1, 3, 64, 2, 1),
    (1, 2, 7, 37, 101, 64, 7, 2),
    (1, 1, 4, 130, 9, 32, 1, 2),
]
ATTN_IDS = ["tiles-exact", "25-token-segments", "L%F!=0-d128", "full-window", "1-token-segments",
            "uneven", "long-query-segments"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=ATTN_IDS)
def test_attention_matches_reference_and_cpu(shape, dtype):
    b, h, f, p, l, d, window, shift = shape
    inputs = attn_inputs(b, h, f, p, l, d, dtype)
    kw = dict(frames=f, window=window, shift=shift)
    poison_allocator(inputs[0], inputs[3])
    out = mmattn.rs_attention(*inputs, **kw)
    ref = rs_attention_dense(*(t.double() for t in inputs), **kw)
    cpu = mmattn.rs_attention(*(t.cpu() for t in inputs), **kw)
    tol = ATTN_TOL[dtype]
    for o, r, c in zip(out, ref, cpu):
        assert o.dtype == dtype and o.device.type == "cuda" and torch.isfinite(o).all()
        torch.testing.assert_close(o.double(), r, atol=tol, rtol=tol)
        torch.testing.assert_close(o.cpu().double(), c.double(), atol=2 * tol, rtol=2 * tol)
        assert rel_err(o, r) < ATTN_REL[dtype]


@pytest.mark.parametrize("dtype,d", [(torch.bfloat16, 48), (torch.float16, 16), (torch.float32, 256),
                                     (torch.bfloat16, 8)])
def test_attention_other_head_dims_take_the_generic_kernels(dtype, d):
    inputs = attn_inputs(1, 2, 6, 9, 40, d, dtype, requires_grad=True)
    kw = dict(frames=6, window=2, shift=5)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    out = mmattn.rs_attention(*inputs, **kw)
    ref = rs_attention_dense(*ref_inputs, **kw)
    grads = [torch.randn_like(o) for o in out]
    torch.autograd.backward(out, grads)
    torch.autograd.backward(ref, [g.double() for g in grads])
    for o, r in zip(out, ref):
        assert rel_err(o, r) < ATTN_REL[dtype]
    for t, r in zip(inputs, ref_inputs):
        assert rel_err(t.grad, r.grad) < GRAD_REL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_attention_log_sum_exp(dtype):
    # the saved statistics: lse[r] = log sum_{t in window(r)} exp(scale q_r . k_t)
    q = torch.randn(2, 3, 70, 64, device=DEV).to(dtype)
    k, v = (torch.randn(2, 3, 33, 64, device=DEV).to(dtype) for _ in range(2))
    segments, window, shift, scale = 5, 2, 4, 0.2
    out, lse = torch.ops.mmattn.segment_attention_fwd(q, k, v, segments, window, shift, scale)
    assert lse.dtype == torch.float32 and lse.shape == (2, 3, 70)
    from mmattn.reference import _window_mask  # the dense reference's mask
    mask = _window_mask(70, 33, segments, window, shift, DEV)
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    ref = scores.masked_fill(~mask, -math.inf).logsumexp(-1)
    torch.testing.assert_close(lse.double(), ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [ATTN_SHAPES[1], ATTN_SHAPES[2], ATTN_SHAPES[5], ATTN_SHAPES[6]],
                         ids=["25-token-segments", "L%F!=0-d128", "uneven", "long-query-segments"])
def test_attention_gradients_match_reference(shape, dtype):
    b, h, f, p, l, d, window, shift = shape
    inputs = attn_inputs(b, h, f, p, l, d, dtype, requires_grad=True)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    kw = dict(frames=f, window=window, shift=shift)
    out = mmattn.rs_attention(*inputs, **kw)
    ref = rs_attention_dense(*ref_inputs, **kw)
    grads = [torch.randn_like(o) for o in out]
    torch.autograd.backward(out, grads)
    torch.autograd.backward(ref, [g.double() for g in grads])
    for name, t, r in zip("q_video k_video v_video q_audio k_audio v_audio".split(), inputs, ref_inputs):
        assert t.grad.dtype == dtype and torch.isfinite(t.grad).all(), name
        assert rel_err(t.grad, r.grad) < GRAD_REL[dtype], name


@pytest.mark.parametrize("frames,p,l,window,shift", [(3, 2, 7, 1, 0), (3, 2, 6, 2, 2), (4, 1, 9, 4, -1)])
def test_attention_gradcheck_float64(frames, p, l, window, shift):
    inputs = attn_inputs(1, 2, frames, p, l, 4, torch.float64, requires_grad=True)
    assert gradcheck(lambda *t: mmattn.rs_attention(*t, frames=frames, window=window, shift=shift), inputs)


def paper_cases():
    from benchmarks.kernels import ATTENTION_CASES  # the paper-64 layer shapes
    return ATTENTION_CASES


@pytest.mark.parametrize("case", range(4), ids=["ds2", "ds4", "ds8", "middle"])
def test_attention_paper_shapes_bf16(case):
    c = paper_cases()[case]
    inputs = attn_inputs(1, c.heads, c.frames, c.tokens_per_frame, c.audio_len, c.head_dim,
                         torch.bfloat16, requires_grad=True)
    ref_inputs = [t.detach().float().requires_grad_() for t in inputs]
    kw = dict(frames=c.frames, window=c.window, shift=3)
    out = mmattn.rs_attention(*inputs, **kw)
    ref = rs_attention_gather(*ref_inputs, **kw)  # float32 softmax and products
    grads = [torch.randn_like(o) for o in out]
    torch.autograd.backward(out, grads)
    torch.autograd.backward(ref, [g.float() for g in grads])
    for o, r in zip(out, ref):
        assert rel_err(o, r) < ATTN_REL[torch.bfloat16]
    for t, r in zip(inputs, ref_inputs):
        assert rel_err(t.grad, r.grad) < GRAD_REL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_attention_backward_is_deterministic(dtype):
    inputs = attn_inputs(2, 2, 8, 40, 333, 64, dtype, requires_grad=True)
    grads = []
    for _ in range(2):
        out = mmattn.rs_attention(*inputs, frames=8, window=3, shift=6)
        grads.append(torch.autograd.grad(sum(o.float().square().sum() for o in out), inputs))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_attention_non_contiguous_inputs(dtype):
    b, f, p, l, h, d = 2, 4, 24, 50, 3, 64
    # [B, N, H, D] projections viewed as [B, H, N, D] (no copy on the fast path), a non-unit D
    # stride, and a start that is not 16-byte aligned (both copied)
    video = [torch.randn(b, f * p, h, d, device=DEV).to(dtype).transpose(1, 2) for _ in range(3)]
    audio = [torch.randn(b, l, h, 2 * d, device=DEV).to(dtype)[..., ::2].transpose(1, 2),
             torch.randn(b * h * l * d + 1, device=DEV).to(dtype)[1:].view(b, h, l, d),
             torch.randn(b, l, h, d, device=DEV).to(dtype).transpose(1, 2)]
    inputs = (*video, *audio)
    kw = dict(frames=f, window=2, shift=3)
    out = mmattn.rs_attention(*inputs, **kw)
    ref = rs_attention_dense(*(t.double() for t in inputs), **kw)
    for o, r, q in zip(out, ref, (video[0], audio[0])):
        assert rel_err(o, r) < ATTN_REL[dtype]
        assert o.stride() == mmattn.functional.empty_rows_like(q).stride()  # as the fake kernel
    grad_in = [t.detach().requires_grad_() for t in inputs]
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    grads = [torch.randn_like(o) for o in out]
    torch.autograd.backward(mmattn.rs_attention(*grad_in, **kw), grads)
    torch.autograd.backward(rs_attention_dense(*ref_in, **kw), [g.double() for g in grads])
    for t, r in zip(grad_in, ref_in):
        assert rel_err(t.grad, r.grad) < GRAD_REL[dtype]


def test_attention_opcheck():
    for dtype in (torch.float64, torch.bfloat16):
        q, k, v = (torch.randn(2, 2, 12, 32, device=DEV, dtype=dtype, requires_grad=True) for _ in range(3))
        ka, va = (torch.randn(2, 2, 7, 32, device=DEV, dtype=dtype, requires_grad=True) for _ in range(2))
        args = (q, ka, va, 4, 2, 1, 0.35)
        torch.library.opcheck(torch.ops.mmattn.segment_attention_fwd.default, args)
        q, ka, va = q.detach(), ka.detach(), va.detach()
        out, lse = torch.ops.mmattn.segment_attention_fwd(q, ka, va, 4, 2, 1, 0.35)
        torch.library.opcheck(torch.ops.mmattn.segment_attention_bwd.default,
                              (torch.randn_like(out), q, ka, va, out, lse, 4, 2, 1, 0.35))


def test_attention_torch_compile_fullgraph():
    inputs = attn_inputs(1, 2, 4, 3, 10, 64, torch.bfloat16, requires_grad=True)

    def f(*t):
        out_v, out_a = mmattn.rs_attention(*t, frames=4, window=2, shift=1)
        return out_v.float().sum() + out_a.float().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager_grads = torch.autograd.grad(f(*inputs), inputs)
    value = compiled(*inputs)
    torch.testing.assert_close(value, f(*inputs))
    for g, e in zip(torch.autograd.grad(value, inputs), eager_grads):
        torch.testing.assert_close(g, e)


def test_attention_bad_inputs():
    inputs = list(attn_inputs(1, 2, 4, 3, 10, 300, torch.float32))
    with pytest.raises(ValueError, match="head_dim"):
        mmattn.rs_attention(*inputs, frames=4, window=2, shift=0)
    inputs = list(attn_inputs(1, 2, 4, 3, 10, 64, torch.float32))
    inputs[1] = inputs[1].cpu()
    with pytest.raises(ValueError, match="k_video is on cpu"):
        mmattn.rs_attention(*inputs, frames=4, window=2, shift=0)


# ------------------------------------------------------------------------------- GroupNorm

def gn_params(b, c, dtype, which=("weight", "bias", "scale", "shift"), requires_grad=False):
    made = dict(weight=torch.randn(c, device=DEV), bias=torch.randn(c, device=DEV),
                scale=0.5 * torch.randn(b, c, device=DEV), shift=torch.randn(b, c, device=DEV))
    pdtype = torch.float32 if dtype in HALF_TYPES else dtype  # what a mixed-precision model passes
    return {k: (v.to(pdtype).requires_grad_(requires_grad) if k in which else None) for k, v in made.items()}


def gn_check(x, groups, p, act="silu", channel_dim=1):
    y = mmattn.group_norm_act(x, groups, p["weight"], p["bias"], scale=p["scale"], shift=p["shift"],
                              act=act, channel_dim=channel_dim)
    d = {k: None if v is None else v.double() for k, v in p.items()}
    ref = group_norm_act_reference(x.double(), groups, d["weight"], d["bias"], scale=d["scale"],
                                   shift=d["shift"], act=act, channel_dim=channel_dim)
    assert y.dtype == x.dtype and y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, **GN_TOL[x.dtype])
    return y


# (shape, channel_dim, groups): 16-byte vectors (S % 8 == 0) and scalar rows (odd S), video
# [B, F, C, H, W], few groups with long rows (each channel split across blocks), one-channel
# groups
GN_SHAPES = [((2, 32, 64), 1, 8), ((3, 12, 7, 5), 1, 3), ((2, 5, 16, 8, 8), 2, 4),
             ((1, 3, 6, 5, 7), 2, 2), ((1, 4, 32768), 1, 2), ((1, 4, 32767), 1, 2),
             ((2, 4, 8), 1, 4), ((2, 6, 1), 1, 3)]
GN_IDS = ["vec", "odd-S", "video", "video-odd-S", "split", "split-odd-S", "1-channel-groups", "S=1"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape,channel_dim,groups", GN_SHAPES, ids=GN_IDS)
@pytest.mark.parametrize("which,act", [(("weight", "bias", "scale", "shift"), "silu"), ((), None),
                                       (("weight", "shift"), "silu")], ids=["all", "none", "some"])
def test_group_norm_matches_reference_and_cpu(shape, channel_dim, groups, dtype, which, act):
    x = (3 * torch.randn(shape, device=DEV) + 1).to(dtype)
    p = gn_params(shape[0], shape[channel_dim], dtype, which)
    poison_allocator(x)
    y = gn_check(x, groups, p, act, channel_dim)
    pc = {k: None if v is None else v.cpu() for k, v in p.items()}
    cpu = mmattn.group_norm_act(x.cpu(), groups, pc["weight"], pc["bias"], scale=pc["scale"],
                                shift=pc["shift"], act=act, channel_dim=channel_dim)
    tol = {k: 2 * v for k, v in GN_TOL[dtype].items()}
    torch.testing.assert_close(y.cpu().double(), cpu.double(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["channels_last", "channels_last_3d", "transposed", "sliced",
                                    "video_channels_last", "misaligned"])
def test_group_norm_layouts_are_respected(layout, dtype):
    b, c = 2, 32
    randn = lambda *shape: torch.randn(*shape, device=DEV).to(dtype)  # noqa: E731
    if layout == "channels_last":
        x = randn(b, c, 6, 8).to(memory_format=torch.channels_last)
    elif layout == "channels_last_3d":
        x = randn(b, c, 3, 6, 8).to(memory_format=torch.channels_last_3d)
    elif layout == "transposed":  # spatial dims that cannot be flattened
        x = randn(b, c, 5, 6).transpose(2, 3)
    elif layout == "sliced":
        x = randn(b, 2 * c, 16)[:, ::2]
    elif layout == "video_channels_last":  # [B, F, C, H, W] with channels innermost
        x = randn(b, 5, 4, 4, c).permute(0, 1, 4, 2, 3)
    else:  # a start 2 or 4 bytes past a 16-byte boundary: no vector access
        x = randn(b * c * 64 + 1)[1:].view(b, c, 64)
    cd = 2 if layout == "video_channels_last" else 1
    y = gn_check(x, 4, gn_params(b, c, dtype), "silu", cd)
    assert y.stride() == torch.empty_like(x).stride()


# Channels innermost (unit channel stride: frames-last video, channels_last images) runs its own
# kernels. (shape, channel_dim, groups, memory order): 8-channel vector columns; a channel count
# that is no multiple of the vector (scalar columns); groups inside a vector (4 channels) and
# across vectors unevenly (12 channels); more columns than a block has threads; many chunks.
CL_SHAPES = [((2, 3, 64, 8, 8), 2, 16, (0, 1, 3, 4, 2)), ((1, 2, 24, 5, 7), 2, 2, (0, 1, 3, 4, 2)),
             ((2, 4, 6, 3, 3), 2, 3, (0, 1, 3, 4, 2)), ((3, 16, 128, 16, 16), 2, 32, (0, 1, 3, 4, 2)),
             ((1, 1, 4096, 2, 3), 2, 32, (0, 1, 3, 4, 2)), ((2, 32, 6, 8), 1, 4, (0, 2, 3, 1)),
             ((2, 40, 1, 9), 1, 8, (0, 2, 3, 1))]
CL_IDS = ["video", "cpg-12", "scalar", "paper-ish", "wide", "channels_last", "channels_last-H1"]


def channels_inner(shape, order, dtype):
    """A tensor of `shape` whose memory runs in `order` (a permutation of its dims)."""
    stored = torch.randn([shape[d] for d in order], device=DEV)
    return (2 * stored + 0.5).to(dtype).permute([order.index(d) for d in range(len(shape))])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape,channel_dim,groups,order", CL_SHAPES, ids=CL_IDS)
def test_group_norm_channels_innermost_matches_reference(shape, channel_dim, groups, order, dtype):
    x = channels_inner(shape, order, dtype)
    assert x.stride(channel_dim) == 1
    p = gn_params(shape[0], shape[channel_dim], dtype)
    y = gn_check(x, groups, p, "silu", channel_dim)
    assert y.stride() == x.stride()
    rel = {torch.float64: 1e-10, torch.float32: 3e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}[dtype]
    grad = channels_inner(shape, order, dtype)
    gn_check_grads(x, groups, p, "silu", channel_dim, grad, rel)
    gn_check_grads(x, groups, {k: None for k in p}, None, channel_dim, grad, rel)


def test_group_norm_channels_innermost_gradcheck_float64():
    x = channels_inner((2, 3, 8, 2, 3), (0, 1, 3, 4, 2), torch.float64).detach().requires_grad_()
    p = gn_params(2, 8, torch.float64, requires_grad=True)
    fn = lambda x, w, bi, s, sh: mmattn.group_norm_act(x, 2, w, bi, scale=s, shift=sh, channel_dim=2)  # noqa: E731
    assert gradcheck(fn, (x, p["weight"], p["bias"], p["scale"], p["shift"]))


def test_group_norm_frames_last_paper_shape_bf16_waves_reproducible():
    # [2, 16, 128, 64, 64] frames-last bf16, as the U-Net's first blocks hold it: 16.8 MB per
    # sample, so samples run in waves (forward and backward)
    x = channels_inner((2, 16, 128, 64, 64), (0, 1, 3, 4, 2), torch.bfloat16)
    p = gn_params(2, 128, torch.bfloat16)
    y = mmattn.group_norm_act(x, 32, p["weight"], p["bias"], scale=p["scale"], shift=p["shift"], channel_dim=2)
    ref = group_norm_act_reference(x.float(), 32, p["weight"], p["bias"], scale=p["scale"],
                                   shift=p["shift"], channel_dim=2)
    torch.testing.assert_close(y.float(), ref, **GN_TOL[torch.bfloat16])
    grad = channels_inner(x.shape, (0, 1, 3, 4, 2), torch.bfloat16)
    got = gn_check_grads(x, 32, p, "silu", 2, grad, 1e-2)
    again = gn_grads(mmattn.group_norm_act, x, 32, p, "silu", 2, grad)
    for name, g in got.items():
        assert torch.equal(g, again[name]), name
    assert torch.equal(y, mmattn.group_norm_act(x, 32, p["weight"], p["bias"], scale=p["scale"],
                                                shift=p["shift"], channel_dim=2))


def gn_grads(fn, x, groups, p, act, channel_dim, grad, dtype=None):
    """Gradients of (x, *params present) of `fn` (the op or the reference), inputs cast to dtype."""
    names = [k for k in ("weight", "bias", "scale", "shift") if p[k] is not None]
    cast = (lambda t: t.detach().to(dtype)) if dtype else (lambda t: t.detach())
    x = cast(x).requires_grad_()
    params = {k: (None if v is None else cast(v).requires_grad_()) for k, v in p.items()}
    y = fn(x, groups, params["weight"], params["bias"], scale=params["scale"], shift=params["shift"],
           act=act, channel_dim=channel_dim)
    return dict(zip(["x"] + names, torch.autograd.grad(y, [x] + [params[k] for k in names], grad.to(y.dtype))))


def gn_check_grads(x, groups, p, act, channel_dim, grad, rel):
    got = gn_grads(mmattn.group_norm_act, x, groups, p, act, channel_dim, grad)
    want = gn_grads(group_norm_act_reference, x, groups, p, act, channel_dim, grad, torch.float64)
    for name, g in got.items():
        assert g.dtype == (x.dtype if name == "x" else p[name].dtype), name
        assert rel_err(g, want[name]) < rel, name
    return got


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape,channel_dim,groups", GN_SHAPES[:6], ids=GN_IDS[:6])
@pytest.mark.parametrize("act", ["silu", None])
def test_group_norm_gradients_match_reference(shape, channel_dim, groups, dtype, act):
    x = (2 * torch.randn(shape, device=DEV) + 0.5).to(dtype)
    p = gn_params(shape[0], shape[channel_dim], dtype)
    rel = {torch.float64: 1e-10, torch.float32: 3e-5, torch.bfloat16: 1e-2}[dtype]
    gn_check_grads(x, groups, p, act, channel_dim, torch.randn_like(x), rel)


def test_group_norm_gradcheck_float64():
    for channel_dim, shape in [(1, (2, 6, 3, 2)), (2, (2, 3, 6, 2, 2)), (1, (1, 4))]:
        for act in ("silu", None):
            b, c = shape[0], shape[channel_dim]
            x = torch.randn(shape, dtype=torch.float64, device=DEV, requires_grad=True)
            p = gn_params(b, c, torch.float64, requires_grad=True)
            fn = lambda x, w, bi, s, sh: mmattn.group_norm_act(  # noqa: E731
                x, 2, w, bi, scale=s, shift=sh, act=act, channel_dim=channel_dim)
            assert gradcheck(fn, (x, p["weight"], p["bias"], p["scale"], p["shift"]))
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, device=DEV).to(
        memory_format=torch.channels_last).requires_grad_()
    assert gradcheck(lambda x: mmattn.group_norm_act(x, 4, act=None), (x,))


def test_group_norm_paper_video_shape_bf16_two_waves():
    # [2, 16, 128, 64, 64] bf16 = 33.5 MB: more than half the L2 of an H100/H200, so the groups
    # run in two waves; each (sample, channel) is split across blocks
    x = torch.randn(2, 16, 128, 64, 64, device=DEV).to(torch.bfloat16)
    p = gn_params(2, 128, torch.bfloat16)
    y = mmattn.group_norm_act(x, 32, p["weight"], p["bias"], scale=p["scale"], shift=p["shift"], channel_dim=2)
    ref = group_norm_act_reference(x.float(), 32, p["weight"], p["bias"], scale=p["scale"],
                                   shift=p["shift"], channel_dim=2)
    torch.testing.assert_close(y.float(), ref, **GN_TOL[torch.bfloat16])
    grad = torch.randn_like(x)
    got = gn_check_grads(x, 32, p, "silu", 2, grad, 1e-2)
    # bitwise reproducible, forward and backward
    again = gn_grads(mmattn.group_norm_act, x, 32, p, "silu", 2, grad)
    for name, g in got.items():
        assert torch.equal(g, again[name]), name
    y2 = mmattn.group_norm_act(x, 32, p["weight"], p["bias"], scale=p["scale"], shift=p["shift"], channel_dim=2)
    assert torch.equal(y, y2)


def test_group_norm_grad_y_in_another_layout():
    x = torch.randn(2, 16, 6, 8, device=DEV)
    p = gn_params(2, 16, torch.float32)
    grad = torch.randn(2, 16, 6, 8, device=DEV).to(memory_format=torch.channels_last)
    gn_check_grads(x, 4, p, "silu", 1, grad, 3e-5)


def test_group_norm_opcheck():
    x = torch.randn(2, 3, 8, 4, device=DEV, requires_grad=True)
    w, bi = torch.randn(8, device=DEV, requires_grad=True), torch.randn(8, device=DEV, requires_grad=True)
    s, sh = torch.randn(2, 8, device=DEV, requires_grad=True), torch.randn(2, 8, device=DEV, requires_grad=True)
    op = torch.ops.mmattn
    torch.library.opcheck(op.group_norm_act_fwd.default, (x, 4, w, bi, s, sh, True, 1e-5, 2))
    torch.library.opcheck(op.group_norm_act_fwd.default, (x, 2, None, None, None, None, False, 1e-5, 2))
    xb = x.detach().bfloat16().requires_grad_()
    torch.library.opcheck(op.group_norm_act_fwd.default, (xb, 4, w, bi, s, sh, True, 1e-5, 2))
    y, mean, rstd = op.group_norm_act_fwd(x, 4, w, bi, s, sh, True, 1e-5, 2)
    args = [t.detach() for t in (y, x, mean, rstd)]
    torch.library.opcheck(op.group_norm_act_bwd.default,
                          (*args, 4, w.detach(), None, s.detach(), None, True, 2))


def test_group_norm_torch_compile_fullgraph_inductor():
    x = torch.randn(2, 4, 16, 8, 8, device=DEV, requires_grad=True)
    w = torch.randn(16, device=DEV, requires_grad=True)
    s = torch.randn(2, 16, device=DEV, requires_grad=True)

    def f(x, w, s):  # the op between ordinary ops inductor fuses
        return (mmattn.group_norm_act(x * 2, 4, w, scale=s, channel_dim=2) + 1).square().sum()

    compiled = torch.compile(f, fullgraph=True)
    value = compiled(x, w, s)
    torch.testing.assert_close(value, f(x, w, s), rtol=1e-5, atol=1e-3)
    for g, e in zip(torch.autograd.grad(value, (x, w, s)), torch.autograd.grad(f(x, w, s), (x, w, s))):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "frames_last", "sliced"])
def test_dropout_drops_what_the_cpu_kernel_drops(layout, dtype):
    """One mask function (csrc/dropout_mask.h) on both devices: bitwise the CPU result, forward
    and backward, for every layout (the mask follows memory order)."""
    if layout == "frames_last":
        x = torch.randn(2, 3, 5, 40, 9, dtype=dtype).permute(0, 1, 4, 2, 3)
    elif layout == "sliced":
        x = torch.randn(600, 100, dtype=dtype)[:, ::2]
    else:
        x = torch.randn(3, 100_003, dtype=dtype)  # grid-stride: more elements than one wave
    x_cuda = x.to(DEV).requires_grad_()
    y_cuda = mmattn.dropout(x_cuda, 0.3, seed=-12345)
    assert y_cuda.stride() == torch.empty_like(x_cuda).stride()
    assert torch.equal(y_cuda.cpu(), mmattn.dropout(x, 0.3, seed=-12345))
    grad = torch.randn(x.shape, dtype=dtype)
    y_cuda.backward(grad.to(DEV))
    x_cpu = x.clone().requires_grad_()
    mmattn.dropout(x_cpu, 0.3, seed=-12345).backward(grad)
    assert torch.equal(x_cuda.grad.cpu(), x_cpu.grad)


def test_dropout_module_saves_no_mask_on_cuda():
    """`mmattn.nn.Dropout` takes the seeded kernel on CUDA: autograd keeps nothing for it."""
    from mmattn.nn import Dropout
    x = torch.randn(4, 64, device=DEV, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = Dropout(0.5).train()(x)
    assert saved == [] and y.grad_fn is not None
    torch.manual_seed(3)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(3)
    assert torch.equal(a, mmattn.dropout(x, 0.5))
    torch.library.opcheck(torch.ops.mmattn.dropout.default, (x, 0.4, 11))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocks_recompute_with_the_same_gradients(dtype):
    """On CUDA the recomputing blocks recompute the normalised (and dropped-out) inputs of their
    convolutions and q/k/v projections in the backward: the gradients of keeping them."""
    from mmattn.nn import CoupledSequential, MMResBlock, RSMultiModalAttention, set_recompute
    torch.manual_seed(0)
    block = CoupledSequential(
        MMResBlock(64, 32, 64, dropout=0.1, video_attention=True, audio_attention=True),
        RSMultiModalAttention(64, 32, window=2)).to(DEV).train()
    with torch.no_grad():  # no zero-initialised branches: every path carries gradient
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 and p.numel() == 64 else 0.0))
    video, audio, emb = (torch.randn(2, 4, 64, 8, 8, device=DEV), torch.randn(2, 64, 32, device=DEV),
                         torch.randn(2, 32, device=DEV))
    grads = []
    for flag in (True, False):  # True: every value (by default only those of 8 MiB or more)
        set_recompute(block, flag)
        block.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks and RS-MMA shift
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out_v, out_a = block(video, audio, emb)
        (out_v.float().square().mean() + out_a.float().square().mean()).backward()
        grads.append([p.grad for p in block.parameters()])
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    for recomputed, kept in zip(*grads):
        torch.testing.assert_close(recomputed, kept, **tol)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_model_with_16bit_weights_computes_what_autocast_computes(dtype):
    """A CoupledUNet with 16-bit weights (`cast_weights`, float32 norms) computes, with the same
    dropout masks and shifts, what autocast computes on float32 weights: outputs and gradients."""
    import dataclasses
    from mmattn.nn import cast_weights
    from mmdiffusion.unet import CoupledUNet, UNetConfig
    config = dataclasses.replace(UNetConfig.preset("tiny"), dropout=0.1)
    torch.manual_seed(0)
    amp = CoupledUNet(dataclasses.replace(config, autocast=str(dtype).removeprefix("torch."))).to(DEV).train()
    with torch.no_grad():  # no zero-initialised branches: every path carries gradient
        for name, p in amp.named_parameters():
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if name.endswith("norm.weight") else 0.0))
    half = CoupledUNet(config).to(DEV).train()
    half.load_state_dict(amp.state_dict())
    cast_weights(half, dtype)
    video = torch.randn(2, *config.video_shape, device=DEV)
    audio = torch.randn(2, *config.audio_shape, device=DEV)
    t = torch.tensor([5, 600], device=DEV)
    results = []
    for model in (amp, half):
        torch.manual_seed(1)
        out_v, out_a = model(video, audio, t)
        (out_v.square().mean() + out_a.square().mean()).backward()
        results.append([out_v, out_a] + [p.grad.float() for p in model.parameters()])
    for name, a, b in zip(["video", "audio"] + [n for n, _ in amp.named_parameters()], *results):
        assert b.isfinite().all(), name
        assert (a - b).norm() <= 1e-2 * a.norm() + 1e-6, name


@pytest.mark.parametrize("precision", ["bf16-weights", "fp16-weights"])
def test_trainer_with_16bit_weights_and_master_weights(precision, tmp_path):
    """A short run with 16-bit weights on CUDA: float32 masters that move, the 16-bit copy their
    rounding (one multi-tensor copy), finite losses (fp16: with loss scaling)."""
    import json
    pytest.importorskip("av")  # the trainer's data pipeline decodes media with PyAV
    from mmdiffusion.training.config import apply_overrides, load_config
    from mmdiffusion.training.trainer import Trainer
    config = apply_overrides(load_config("micro"), {"steps": 3, "precision": precision})
    trainer = Trainer(config, tmp_path / "run", device=DEV, progress=False)
    before = [p.detach().clone() for p in trainer.net.parameters()]
    trainer.fit()
    assert any(not torch.equal(p, b) for p, b in zip(trainer.net.parameters(), before))
    for w, m in zip(trainer.master.work.parameters(), trainer.net.parameters()):
        assert m.dtype == torch.float32 and torch.equal(w, m.to(w.dtype))
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 3 and all(math.isfinite(entry["loss"]) for entry in logged)


def test_checkpoint_rng_state_is_this_devices_generator():
    """Checkpoints keep the CUDA generator of the device a rank trains on, and restore it there
    (also from the per-device list of older checkpoints)."""
    from mmdiffusion.checkpoint import rng_state, set_rng_state
    torch.manual_seed(0)
    state = rng_state(DEV)
    draws = torch.rand(3, device=DEV)
    torch.rand(5, device=DEV)
    for saved in (state, {**state, "cuda": [state["cuda"]]}):
        set_rng_state(saved, DEV)
        assert torch.equal(torch.rand(3, device=DEV), draws)
