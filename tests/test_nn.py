"""mmattn.nn blocks: shapes, dtypes, layouts, closed forms against plain PyTorch, training,
fused vs reference, and input validation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmattn.nn import (AudioConv, AudioResBlock, AudioSelfAttention, CoupledSequential, Downsample,
                       GroupNormAct, MMResBlock, NormActConv, RSMultiModalAttention, TokenSelfAttention,
                       Upsample, VideoConv, VideoResBlock, VideoSelfAttention)
from mmattn.nn import recompute
from mmattn.nn.conv import temporal_conv
from mmattn.nn.layout import frames_last
from mmattn.reference import rs_attention_dense

B, NF, C, H, W, L, E = 2, 4, 32, 6, 6, 24, 16


def video(c: int = C, dtype=torch.float32, frames: int = NF, hw: int = H) -> torch.Tensor:
    return torch.randn(B, frames, c, hw, hw, dtype=dtype)


def audio(c: int = C, dtype=torch.float32, length: int = L) -> torch.Tensor:
    return torch.randn(B, c, length, dtype=dtype)


def randomize_(module: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised projections would hide whole paths);
    GroupNorm scales around 1."""
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                one = isinstance(m, GroupNormAct) and name == "weight"
                p.copy_(torch.randn_like(p) * std + (1.0 if one else 0.0))
    return module


def is_frames_last(x: torch.Tensor) -> bool:
    return x.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------
# One case per block: (name, constructor, inputs, call) for the generic tests.
# --------------------------------------------------------------------------------------------

def _cases():
    """name -> (constructor taking the blocks' keyword `impl` where they have one, inputs by dtype)."""
    emb = lambda dt: torch.randn(B, E, dtype=dt)  # noqa: E731
    return {
        "GroupNormAct": (lambda **kw: GroupNormAct(8, C, **kw), lambda dt: (audio(dtype=dt),)),
        "GroupNormAct-video-film": (lambda **kw: GroupNormAct(8, C, channel_dim=2, **kw),
                                    lambda dt: (video(dtype=dt), torch.randn(B, C, dtype=dt),
                                                torch.randn(B, C, dtype=dt))),
        "VideoConv-2d+1d": (lambda: VideoConv(C, 16), lambda dt: (video(dtype=dt),)),
        "VideoConv-3d": (lambda: VideoConv(C, 16, 3, kind="3d"), lambda dt: (video(dtype=dt),)),
        "AudioConv": (lambda: AudioConv(C, 16, 3, dilation=4), lambda dt: (audio(dtype=dt),)),
        "Downsample-video": (lambda: Downsample("video"), lambda dt: (video(dtype=dt),)),
        "Upsample-audio": (lambda: Upsample("audio"), lambda dt: (audio(dtype=dt),)),
        "VideoResBlock-down": (lambda **kw: VideoResBlock(C, E, 64, resample="down", dropout=0.1, **kw),
                               lambda dt: (video(dtype=dt), emb(dt))),
        "AudioResBlock-up": (lambda **kw: AudioResBlock(C, E, 64, resample="up", dilation=2,
                                                        use_scale_shift_norm=False, **kw),
                             lambda dt: (audio(dtype=dt), emb(dt))),
        "MMResBlock": (lambda **kw: MMResBlock(C, E, 64, video_attention=True, audio_attention=True, **kw),
                       lambda dt: (video(dtype=dt), audio(dtype=dt), emb(dt))),
        "VideoSelfAttention": (lambda **kw: VideoSelfAttention(C, 4, **kw), lambda dt: (video(dtype=dt),)),
        "AudioSelfAttention": (lambda **kw: AudioSelfAttention(C, 2, **kw), lambda dt: (audio(dtype=dt),)),
        "RSMultiModalAttention": (lambda **kw: RSMultiModalAttention(C, 16, window=2, **kw),
                                  lambda dt: (video(dtype=dt), audio(dtype=dt))),
        "CoupledSequential": (lambda **kw: CoupledSequential(
            MMResBlock(C, E, **kw), RSMultiModalAttention(C, 16, window=1, **kw), VideoSelfAttention(C, **kw),
            AudioResBlock(C, E, resample="down", **kw)),
            lambda dt: (video(dtype=dt), audio(dtype=dt), emb(dt))),
    }


CASES = _cases()
EXPECTED_SHAPES = {  # output shapes per case (tuple for pair outputs)
    "GroupNormAct": (B, C, L), "GroupNormAct-video-film": (B, NF, C, H, W),
    "VideoConv-2d+1d": (B, NF, 16, H, W), "VideoConv-3d": (B, NF, 16, H, W),
    "AudioConv": (B, 16, L), "Downsample-video": (B, NF, C, H // 2, W // 2),
    "Upsample-audio": (B, C, 4 * L), "VideoResBlock-down": (B, NF, 64, H // 2, W // 2),
    "AudioResBlock-up": (B, 64, 4 * L), "MMResBlock": ((B, NF, 64, H, W), (B, 64, L)),
    "VideoSelfAttention": (B, NF, C, H, W), "AudioSelfAttention": (B, C, L),
    "RSMultiModalAttention": ((B, NF, C, H, W), (B, C, L)),
    "CoupledSequential": ((B, NF, C, H, W), (B, C, L // 4)),
}


def _shapes(out):
    return tuple(tuple(o.shape) for o in out) if isinstance(out, tuple) else tuple(out.shape)


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_shapes_and_dtypes(name, dtype):
    torch.manual_seed(0)
    make, inputs = CASES[name]
    block = randomize_(make()).to(dtype).eval()
    out = block(*inputs(dtype))
    assert _shapes(out) == EXPECTED_SHAPES[name]
    for o in _outputs(out):
        assert o.dtype == dtype and torch.isfinite(o).all()


@pytest.mark.parametrize("name", list(CASES))
def test_block_trains_in_toy_model(name):
    """Each block inside a toy model (block -> mean-pool heads) gets finite gradients on every
    parameter and Adam lowers an MSE loss over a few steps."""
    torch.manual_seed(0)
    make, inputs = CASES[name]
    block = make()
    xs = inputs(torch.float32)
    targets = [torch.randn_like(o) for o in _outputs(block(*xs))]
    head = torch.nn.Parameter(torch.ones(()))
    opt = torch.optim.Adam(list(block.parameters()) + [head], lr=1e-2)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = sum(F.mse_loss(o * head, t) for o, t in zip(_outputs(block(*xs)), targets))
        loss.backward()
        for pname, p in block.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", [n for n in CASES if n not in
                                  ("VideoConv-2d+1d", "VideoConv-3d", "AudioConv",
                                   "Downsample-video", "Upsample-audio")])
def test_fused_and_reference_agree(name):
    """Same weights, same inputs (float64): outputs and all gradients agree between impls."""
    torch.manual_seed(0)
    make, inputs = CASES[name]
    fused = randomize_(make()).double().eval()
    reference = make(impl="reference").double().eval()
    reference.load_state_dict(fused.state_dict())
    impls = {m: m.impl for m in reference.modules() if hasattr(m, "impl")}
    assert impls and set(impls.values()) == {"reference"}
    xs = [x.requires_grad_() for x in inputs(torch.float64)]
    kw = {"RSMultiModalAttention": {"shift": 1}, "CoupledSequential": {"shifts": (1,)}}.get(name, {})
    results = []
    for block in (fused, reference):
        out = _outputs(block(*xs, **kw))
        grads = torch.autograd.grad(sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype)
                                         .view_as(o)).sum() for o in out),
                                    xs + list(block.parameters()))
        results.append((out, grads))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Closed forms against plain PyTorch (the published computations, written independently).
# --------------------------------------------------------------------------------------------

def test_group_norm_act_matches_torch():
    torch.manual_seed(0)
    norm = randomize_(GroupNormAct(8, C, channel_dim=2))
    x, scale, shift = video(), torch.randn(B, C), torch.randn(B, C)
    y = norm(x, scale, shift)
    ref = F.group_norm(x.transpose(1, 2), 8, norm.weight, norm.bias, 1e-5).transpose(1, 2)
    ref = F.silu(ref * (1 + scale[:, None, :, None, None]) + shift[:, None, :, None, None])
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    plain = GroupNormAct(4, C, act=None)
    a = audio()
    torch.testing.assert_close(plain(a), F.group_norm(a, 4, eps=1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, B])
def test_video_conv_2d_plus_1d_is_spatial_then_temporal(batch):
    """Published computation (per-frame conv2d, per-pixel conv1d); the result stays in
    frames-last memory, also for a batch of one (whose batch stride is arbitrary)."""
    torch.manual_seed(0)
    conv = VideoConv(C, 16, 3)
    x = video()[:batch]
    y = conv(x)
    frames = F.conv2d(x.reshape(batch * NF, C, H, W), conv.spatial.weight, conv.spatial.bias, padding=1)
    pixels = frames.view(batch, NF, 16, H, W).permute(0, 3, 4, 2, 1).reshape(batch * H * W, 16, NF)
    ref = F.conv1d(pixels, conv.temporal.weight, conv.temporal.bias, padding=1)
    ref = ref.view(batch, H, W, 16, NF).permute(0, 4, 3, 1, 2)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    assert is_frames_last(y)


@pytest.mark.parametrize("batch, frames, k", [(1, NF, 3), (B, NF, 3), (B, NF, 5), (B, 2, 5), (1, NF, 1)])
def test_temporal_conv_gradients(batch, frames, k):
    """The CPU training path of the temporal convolution (weight gradient from frame-shifted
    matrix products) has F.conv2d's value and gradients: float64 gradcheck, also with more taps
    than frames and a non-channels-last input."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, frames, 5, dtype=torch.float64)
    w = torch.randn(4, 3, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for inp in (x.contiguous(memory_format=torch.channels_last), x):
        inp = inp.requires_grad_()
        native = F.conv2d(inp, w.unsqueeze(-1), b, padding=(k // 2, 0))
        mine = temporal_conv(inp, w, b)
        torch.testing.assert_close(mine, native)
        g = torch.randn_like(native)
        # float64 throughout (float64's default tolerances: a float32 sum would fail them)
        torch.testing.assert_close(torch.autograd.grad(mine, (inp, w, b), g),
                                   torch.autograd.grad(native, (inp, w, b), g))
        assert torch.autograd.gradcheck(temporal_conv, (inp, w, b))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast leaves float64 alone
            assert temporal_conv(inp, w, b).dtype == torch.float64


def test_temporal_conv_bf16_autocast_matches_native():
    """Under CPU bf16 autocast the custom backward gives the native conv's gradients (to bf16
    rounding of the weight gradient: relative 2^-8 on sums of F*P products)."""
    torch.manual_seed(0)
    x = torch.randn(B, 16, NF, 40).contiguous(memory_format=torch.channels_last).requires_grad_()
    conv = torch.nn.Conv1d(16, 8, 3, padding=1)
    grads = []
    for fn in (temporal_conv, lambda x, w, b: F.conv2d(x, w.unsqueeze(-1), b, padding=(1, 0))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(x, conv.weight, conv.bias)
        assert y.dtype == torch.bfloat16
        grads.append(torch.autograd.grad(y.float().square().sum(), (x, conv.weight, conv.bias)))
    for mine, native in zip(*grads):
        assert mine.dtype == native.dtype
        torch.testing.assert_close(mine, native, rtol=2 ** -7, atol=2 ** -7 * native.abs().max().item())


def test_video_conv_3d_and_audio_conv():
    torch.manual_seed(0)
    conv = VideoConv(C, 16, 3, kind="3d")
    x = video()
    ref = F.conv3d(x.transpose(1, 2), conv.conv.weight, conv.conv.bias, padding=1).transpose(1, 2)
    torch.testing.assert_close(conv(x), ref, rtol=1e-4, atol=1e-4)
    aconv = AudioConv(C, 16, 3, dilation=8)
    a = audio()
    ref = F.conv1d(a, aconv.weight, aconv.bias, padding=8, dilation=8)
    torch.testing.assert_close(aconv(a), ref)


def test_resampling_closed_forms():
    x, a = video(), audio()
    torch.testing.assert_close(Downsample("video")(x), F.avg_pool3d(x, (1, 2, 2)))  # published op
    torch.testing.assert_close(Downsample("audio")(a), a.view(B, C, L // 4, 4).mean(-1))
    torch.testing.assert_close(Upsample("video")(x), x.repeat_interleave(2, 3).repeat_interleave(2, 4))
    torch.testing.assert_close(Upsample("audio")(a), a.repeat_interleave(4, 2))


def _attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


def test_token_self_attention_formula():
    """x + proj(MHA(GN(x))) with q|k|v channel blocks split head-major, per sequence."""
    torch.manual_seed(0)
    attn = randomize_(TokenSelfAttention(C, num_heads=4))
    x = torch.randn(3, 10, C)
    h = F.group_norm(x.transpose(1, 2), 32, attn.norm.weight, attn.norm.bias).transpose(1, 2)
    q, k, v = (attn.qkv(h).view(3, 10, 3, 4, C // 4).permute(2, 0, 3, 1, 4))
    out = _attention(q, k, v).transpose(1, 2).reshape(3, 10, C)
    torch.testing.assert_close(attn(x), x + attn.proj(out), rtol=1e-5, atol=1e-5)


def test_video_self_attention_is_spatial_then_temporal():
    torch.manual_seed(0)
    block = randomize_(VideoSelfAttention(C, 4))
    x = video()
    tokens = x.permute(0, 1, 3, 4, 2).reshape(B * NF, H * W, C)
    tokens = block.spatial(tokens).view(B, NF, H * W, C).transpose(1, 2).reshape(B * H * W, NF, C)
    tokens = block.temporal(tokens).view(B, H, W, NF, C).permute(0, 3, 4, 1, 2)
    y = block(x)
    torch.testing.assert_close(y, tokens, rtol=1e-5, atol=1e-5)
    assert is_frames_last(y)


def test_rs_mma_formula_and_layout():
    """GN per modality, q/k/v projections, windowed cross attention (dense mask reference),
    output projections, residual; video keeps frames-last memory, audio [B, C, L]."""
    torch.manual_seed(0)
    block = randomize_(RSMultiModalAttention(C, num_head_channels=16, window=2))
    x, a = frames_last(video()), audio()
    yv, ya = block(x, a, shift=3)
    heads = C // 16
    vn = F.group_norm(x.transpose(1, 2), 32, block.video_norm.weight, block.video_norm.bias)
    an = F.group_norm(a, 32, block.audio_norm.weight, block.audio_norm.bias)
    vt = vn.permute(0, 2, 3, 4, 1).reshape(B, NF * H * W, C)
    split = lambda t: t.view(B, -1, 3, heads, 16).permute(2, 0, 3, 1, 4)  # noqa: E731
    qv, kv, vv = split(block.video_qkv(vt))
    qa, ka, va = split(block.audio_qkv(an.transpose(1, 2)))
    ov, oa = rs_attention_dense(qv, kv, vv, qa, ka, va, frames=NF, window=2, shift=3)
    ov = block.video_proj(ov.transpose(1, 2).reshape(B, -1, C)).view(B, NF, H, W, C).permute(0, 1, 4, 2, 3)
    oa = block.audio_proj(oa.transpose(1, 2).reshape(B, L, C)).transpose(1, 2)
    torch.testing.assert_close(yv, x + ov, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ya, a + oa, rtol=1e-5, atol=1e-5)
    assert is_frames_last(yv) and ya.is_contiguous()


def test_rs_mma_random_shift_uses_torch_generator():
    block = randomize_(RSMultiModalAttention(C, 16, window=3))
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append([block.draw_shift(8) for _ in range(50)])
    assert draws[0] == draws[1] != draws[2]
    assert set(draws[0]) == set(range(0, 8 - 3 + 1))  # uniform on [0, F - window]
    fixed = RSMultiModalAttention(C, 16, window=3, random_shift=False)
    assert {fixed.draw_shift(8) for _ in range(10)} == {0}
    # shift=None draws exactly what draw_shift draws
    x, a = video(), audio()
    torch.manual_seed(5)
    expected_shift = block.draw_shift(NF)
    torch.manual_seed(5)
    out = block(x, a)
    for o, r in zip(out, block(x, a, shift=expected_shift)):
        torch.testing.assert_close(o, r)


def test_residual_blocks_start_as_skip_and_identity():
    """Zero-initialised output convolutions/projections: at init every residual branch is zero."""
    torch.manual_seed(0)
    x, a, e = video(), audio(), torch.randn(B, E)
    res = VideoResBlock(C, E, resample="down")
    torch.testing.assert_close(res(x, e), F.avg_pool3d(x, (1, 2, 2)))
    ares = AudioResBlock(C, E, 64)
    torch.testing.assert_close(ares(a, e), ares.skip(a))
    for block in (VideoSelfAttention(C), RSMultiModalAttention(C, 16)):
        out = block(x, a) if isinstance(block, RSMultiModalAttention) else (block(x),)
        torch.testing.assert_close(out[0], x)


def _spy_on_recomputation(monkeypatch) -> list:
    """Record each recipe whose value the backward recomputed (a saved tensor it replaced)."""
    recomputed, make = [], recompute.Recipe.recompute

    def spy(self):
        if self.value is None:
            recomputed.append(self)
        return make(self)

    monkeypatch.setattr(recompute.Recipe, "recompute", spy)
    return recomputed


def _grads_with_and_without_recompute(make, inputs, extra=()) -> list[list[torch.Tensor]]:
    """Gradients of inputs, `extra` tensors and parameters of `make(recompute)` for both settings,
    with the same random state (dropout masks, RS-MMA shifts) in both runs."""
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        block = make(flag).train()
        xs = [x.clone().requires_grad_() for x in inputs]
        torch.manual_seed(1)
        out = _outputs(block(*xs, *extra))
        torch.autograd.backward(out, [torch.ones_like(o) for o in out])
        grads.append([x.grad for x in xs] + [e.grad.clone() for e in extra]
                     + [p.grad for p in block.parameters()])
        for e in extra:
            e.grad = None
    return grads


@pytest.mark.parametrize("conv", [
    lambda: VideoConv(C, 16),  # the spatial conv's input; the temporal conv's stays kept
    lambda: VideoConv(C, 16, 1, kind="3d"),
    lambda: AudioConv(C, 16, 3, dilation=2),
], ids=["2d+1d", "3d-1x1x1", "audio"])
def test_norm_act_conv_recompute(conv, monkeypatch):
    """The conv's input (norm, FiLM, dropout) is not kept but recomputed once in the backward,
    with the dropout mask replayed: the gradients of keeping it."""
    recomputed = _spy_on_recomputation(monkeypatch)
    torch.manual_seed(0)
    conv = conv()
    x = video() if isinstance(conv, VideoConv) else audio()
    film = [torch.randn(B, C, requires_grad=True) for _ in range(2)]
    make = lambda flag: NormActConv(GroupNormAct(8, C, channel_dim=2 if x.dim() == 5 else 1),  # noqa: E731
                                    conv, 0.3, recompute=flag)
    with_keep, with_recompute = _grads_with_and_without_recompute(make, [x], film)
    assert len(recomputed) == 1 and recomputed[0].rng_state is not None
    for a, b in zip(with_keep, with_recompute):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("flag,min_bytes,recomputes", [
    (None, "size", True), (None, "size+1", False), (True, "size+1", True), (False, 0, False)])
def test_recompute_default_keeps_small_values(flag, min_bytes, recomputes, monkeypatch):
    """By default (`recompute=None`) a value is recomputed only if it has at least
    `MIN_RECOMPUTE_BYTES` bytes (a recomputation costs the host as much for a small value);
    `True` recomputes any value, `False` none."""
    recomputed = _spy_on_recomputation(monkeypatch)
    x = video()
    size = x.nbytes  # the conv's input: norm -> dropout of x, same shape and dtype
    monkeypatch.setattr(recompute, "MIN_RECOMPUTE_BYTES", {"size": size, "size+1": size + 1, 0: 0}[min_bytes])
    block = NormActConv(GroupNormAct(8, C, channel_dim=2), VideoConv(C, 16), 0.3, recompute=flag).train()
    block(x.requires_grad_()).sum().backward()
    assert len(recomputed) == int(recomputes)


def test_recompute_under_autocast_replaces_the_cast_copy(monkeypatch):
    """Under autocast the conv saves a bf16 copy of its float32 input: the recomputed value is
    that copy (else nothing would be saved), and the gradients are those of keeping it."""
    recomputed = _spy_on_recomputation(monkeypatch)
    make = lambda flag: NormActConv(GroupNormAct(8, C, channel_dim=2), VideoConv(C, 16), 0.3,  # noqa: E731
                                    recompute=flag)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with_keep, with_recompute = _grads_with_and_without_recompute(make, [video()])
    assert [r.key[1] for r in recomputed] == [torch.bfloat16]
    for a, b in zip(with_keep, with_recompute):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["TokenSelfAttention", "VideoSelfAttention", "AudioSelfAttention",
                                  "RSMultiModalAttention"])
@pytest.mark.parametrize("projections", [True, False], ids=["accelerator", "cpu"])
def test_attention_recompute(name, projections, monkeypatch):
    """Attention blocks recompute each normalised input of their q/k/v projections (channels C)
    once in the backward, and q/k/v (3C) where `recomputes_projections` (accelerators; forced
    here on CPU): the gradients of keeping them (the RS-MMA shift is drawn once, in the
    forward)."""
    recomputed = _spy_on_recomputation(monkeypatch)
    if projections:
        monkeypatch.setattr(recompute, "recomputes_projections", lambda device: True)
    assert recompute.recomputes_projections(torch.device("cpu")) == projections
    make_block, inputs = {
        "TokenSelfAttention": (lambda r: TokenSelfAttention(C, 2, recompute=r), (torch.randn(B, 3, 10, C),)),
        "VideoSelfAttention": (lambda r: VideoSelfAttention(C, 4, recompute=r), (video(),)),
        "AudioSelfAttention": (lambda r: AudioSelfAttention(C, 2, recompute=r), (audio(),)),
        "RSMultiModalAttention": (lambda r: RSMultiModalAttention(C, 16, window=2, recompute=r),
                                  (video(), audio())),
    }[name]
    with_keep, with_recompute = _grads_with_and_without_recompute(
        lambda flag: randomize_(make_block(flag)), inputs)
    norms = {"VideoSelfAttention": 2, "RSMultiModalAttention": 2}.get(name, 1)
    assert sorted(r.value.shape[-1] for r in recomputed) == [C] * norms + [3 * C] * norms * projections
    for a, b in zip(with_keep, with_recompute):
        torch.testing.assert_close(a, b)


def test_attention_recompute_under_autocast_is_exact(monkeypatch):
    """q/k/v are recomputed under the forward's autocast state: the bf16 projection of the
    recomputed bf16 activations, so the gradients are bitwise those of keeping them."""
    recomputed = _spy_on_recomputation(monkeypatch)
    monkeypatch.setattr(recompute, "recomputes_projections", lambda device: True)  # as on GPUs
    make = lambda flag: randomize_(RSMultiModalAttention(C, 16, window=2, recompute=flag))  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with_keep, with_recompute = _grads_with_and_without_recompute(make, [video(), audio()])
    assert [r.value.dtype for r in recomputed] == [torch.bfloat16] * 4
    for a, b in zip(with_keep, with_recompute):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mm_resblock_shares_one_embedding_projection():
    torch.manual_seed(0)
    block = randomize_(MMResBlock(C, E, 64, use_scale_shift_norm=True))
    x, a, e = video(), audio(), torch.randn(B, E)
    film = block.emb_proj(F.silu(e))
    yv, ya = block(x, a, e)
    torch.testing.assert_close(yv, block.video(x, film))
    torch.testing.assert_close(ya, block.audio(a, film))
    assert block.emb_proj.out_features == 128 and block.video.emb_proj is None


def test_coupled_sequential_threads_streams_and_shifts():
    torch.manual_seed(0)
    rs1, rs2 = RSMultiModalAttention(C, 16, window=1), RSMultiModalAttention(C, 16, window=4, random_shift=False)
    vconv, aconv = VideoConv(C, C), AudioConv(C, C)
    for m in (rs1, rs2, vconv, aconv):
        randomize_(m)
    seq = CoupledSequential(vconv, rs1, aconv, rs2)
    x, a = video(), audio()
    assert seq.draw_shifts(NF, cross_shift=2) == (2, 0)
    yv, ya = seq(x, a, shifts=(2, 0))
    v1, a1 = rs1(vconv(x), a, shift=2)
    rv, ra = rs2(v1, aconv(a1), shift=0)
    torch.testing.assert_close(yv, rv)
    torch.testing.assert_close(ya, ra)
    with pytest.raises(ValueError, match="one int per RS-MMA layer"):
        seq(x, a, shifts=(1,))
    with pytest.raises(TypeError, match="streams"):
        CoupledSequential(torch.nn.Identity())


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: VideoConv(C, 8)(torch.randn(B, C, H, W)), r"video must be \[B, F, C, H, W\]"),
    (lambda: VideoConv(C, 8)(video(c=8)), "must have 32 channels"),
    (lambda: AudioConv(C, 8)(torch.randn(B, L)), r"audio must be \[B, C, L\]"),
    (lambda: GroupNormAct(8, C)(audio(c=16)), "C=32"),
    (lambda: GroupNormAct(8, C)(audio(), torch.randn(B, 16)), r"scale must be \[B, C\]"),
    (lambda: Downsample("audio")(audio(length=10)), "divisible by 4"),
    (lambda: Downsample("video")(video(hw=5)), "divisible by 2"),
    (lambda: RSMultiModalAttention(C, 16, window=8)(video(), audio()), r"window \(8\) must be <= frames"),
    (lambda: RSMultiModalAttention(C, 16)(video(), audio(length=3)), r"must be >= frames"),
    (lambda: RSMultiModalAttention(C, 16)(video(), audio()[:1]), "batch sizes differ"),
    (lambda: VideoResBlock(C, E)(video(), torch.randn(B, 7)), r"expected emb \[B, 16\]"),
    (lambda: MMResBlock(C, E)(video(), audio(), torch.randn(B, 7)), r"expected emb \[B, 16\]"),
    (lambda: AudioSelfAttention(C)(audio(c=64)), "must have 32 channels"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("make, message", [
    (lambda: GroupNormAct(8, 30), "multiple of num_groups"),
    (lambda: GroupNormAct(8, 32, act="relu"), "act must be one of"),
    (lambda: VideoConv(C, C, 2), "positive odd"),
    (lambda: VideoConv(C, C, kind="2d"), "kind must be one of"),
    (lambda: RSMultiModalAttention(C, 24), "multiple of num_head_channels"),
    (lambda: RSMultiModalAttention(C, 16, impl="cuda"), "impl must be one of"),
    (lambda: VideoResBlock(C, E, resample="sideways"), "resample must be one of"),
    (lambda: Downsample("image"), "modality must be one of"),
])
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
