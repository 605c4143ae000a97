"""mmdiffusion.CoupledUNet: presets, parameter count, forward contract, shifts, checkpointing,
autocast, class conditioning, torch.compile, impl switch and input validation."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import mmdiffusion
from mmattn.nn import GroupNormAct, RSMultiModalAttention, cast_weights
from mmattn.nn.recompute import set_recompute
from mmdiffusion.unet import PRESETS, CoupledUNet, UNetConfig, timestep_embedding

# A small config with every feature of paper-64 (3 levels, RS-MMA with random shifts at two
# rates, the full-window middle RS-MMA, video and audio self-attention, dropout).
SMALL = UNetConfig(video_shape=(4, 3, 8, 8), audio_shape=(1, 256), model_channels=32,
                   channel_mult=(1, 2, 2), num_res_blocks=1, cross_attention_resolutions=(2, 4),
                   cross_attention_windows=(1, 2), video_attention_resolutions=(4,),
                   audio_attention_resolutions=(2,), num_head_channels=32, num_heads=2, dropout=0.1)


def randomized(config: UNetConfig, seed: int = 0) -> CoupledUNet:
    """A model with random non-zero weights everywhere (zero-initialised layers would make the
    output independent of most of the network)."""
    torch.manual_seed(seed)
    model = CoupledUNet(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("norm.weight") else 0.0))
    return model


def inputs(config: UNetConfig, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, *config.video_shape, generator=g)
    audio = torch.randn(batch, *config.audio_shape, generator=g)
    return video, audio, torch.tensor([3, 700])[:batch]


def test_exports():
    assert mmdiffusion.CoupledUNet is CoupledUNet and mmdiffusion.UNetConfig is UNetConfig
    assert callable(mmdiffusion.load_official)


def test_paper64_parameter_count_matches_published():
    with torch.device("meta"):
        model = CoupledUNet("paper-64")
    assert sum(p.numel() for p in model.parameters()) == 133_675_524


def test_paper64_preset_is_the_published_training_configuration():
    cfg = PRESETS["paper-64"]
    assert (cfg.video_shape, cfg.audio_shape, cfg.video_fps, cfg.audio_sample_rate) == \
        ((16, 3, 64, 64), (1, 25600), 10.0, 16000)
    assert (cfg.model_channels, cfg.channel_mult, cfg.num_res_blocks) == (128, (1, 2, 3, 4), 2)
    assert (cfg.cross_attention_resolutions, cfg.cross_attention_windows, cfg.cross_attention_shift) == \
        ((2, 4, 8), (1, 4, 8), True)
    assert (cfg.video_attention_resolutions, cfg.audio_attention_resolutions) == ((2, 4, 8), ())
    assert (cfg.num_head_channels, cfg.num_heads, cfg.dropout, cfg.use_scale_shift_norm) == (64, 4, 0.1, True)
    with torch.device("meta"):
        model = CoupledUNet(cfg)
    middle = [m for m in model.middle if isinstance(m, RSMultiModalAttention)]
    assert len(middle) == 1 and middle[0].window == 16 and not middle[0].random_shift
    # audio dilations 2 ** (k % 10) along the encoder (k = 1, 2, ...), as published
    dilations = [blk[0].audio.in_layers.conv.dilation[0] for blk in model.encoder]
    assert dilations == [2 ** (k % 10) for k in range(1, 12)]


def test_tiny_preset_is_small():
    with torch.device("meta"):
        model = CoupledUNet("tiny")
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 5_000_000


def test_forward_shapes_and_zero_initialised_heads():
    model = CoupledUNet(SMALL)
    video, audio, t = inputs(SMALL)
    out_v, out_a = model(video, audio, t)
    assert out_v.shape == video.shape and out_a.shape == audio.shape
    assert out_v.dtype == torch.float32 and out_v.is_contiguous()
    # the output convolutions start at zero, as published
    assert out_v.abs().max() == 0 and out_a.abs().max() == 0


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 5.5])
    emb = timestep_embedding(t, 6, max_period=100.0)
    freqs = torch.tensor([1.0, 100 ** (-1 / 3), 100 ** (-2 / 3)])
    torch.testing.assert_close(emb, torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1))


def _record_shifts(monkeypatch) -> list[tuple[bool, int]]:
    seen = []
    original = RSMultiModalAttention.forward

    def spy(self, video, audio, shift=None):
        seen.append((self.random_shift, shift))
        return original(self, video, audio, shift)
    monkeypatch.setattr(RSMultiModalAttention, "forward", spy)
    return seen


def test_cross_shift_semantics(monkeypatch):
    model = randomized(SMALL).eval()
    video, audio, t = inputs(SMALL)
    seen = _record_shifts(monkeypatch)
    with torch.no_grad():
        fixed = model(video, audio, t, cross_shift=1)
        assert {s for shifted, s in seen if shifted} == {1} and {s for shifted, s in seen if not shifted} == {0}
        assert len(seen) == 7  # 2 encoder + 1 middle + 4 decoder RS-MMA layers
        seen.clear()
        torch.manual_seed(3)
        drawn = model(video, audio, t)
        shifts = [s for shifted, s in seen if shifted]
        assert all(0 <= s <= 3 for s in shifts) and len(set(shifts)) > 1  # each layer draws its own
        torch.manual_seed(3)
        again = model(video, audio, t)
    for a, b in zip(drawn, again):  # the draws come from torch's default generator
        torch.testing.assert_close(a, b)
    assert not torch.allclose(fixed[0], model(video, audio, t, cross_shift=2)[0])


def test_gradient_checkpointing_gives_the_same_gradients():
    """Dropout on and shifts drawn per layer: recomputation must see the same dropout masks and
    the same shifts (drawn outside the checkpointed regions), with block checkpointing, the
    blocks' recomputation (on by default) and both nested."""
    grads = []
    for use_checkpoint, recompute in ((False, False), (True, False), (False, True), (True, True)):
        model = randomized(dataclasses.replace(SMALL, use_checkpoint=use_checkpoint)).train()
        set_recompute(model, recompute)
        video, audio, t = inputs(SMALL)
        torch.manual_seed(7)
        out_v, out_a = model(video, audio, t)
        (out_v.square().mean() + out_a.square().mean()).backward()
        grads.append([p.grad for p in model.parameters()])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_and_reference_paths_agree():
    fused = randomized(SMALL).eval()
    reference = CoupledUNet(dataclasses.replace(SMALL, impl="reference")).eval()
    reference.load_state_dict(fused.state_dict())
    video, audio, t = inputs(SMALL)
    outs = []
    for model in (fused, reference):
        out_v, out_a = model(video, audio, t, cross_shift=2)
        (out_v.sum() + out_a.sum()).backward()
        outs.append((out_v, out_a, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-4)
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_bf16_autocast_close_to_fp32():
    model = randomized(SMALL).eval()
    amp = CoupledUNet(dataclasses.replace(SMALL, autocast="bfloat16")).eval()
    amp.load_state_dict(model.state_dict())
    video, audio, t = inputs(SMALL)
    with torch.no_grad():
        ref, low = model(video, audio, t, cross_shift=0), amp(video, audio, t, cross_shift=0)
    for r, x in zip(ref, low):
        assert x.dtype == torch.float32
        assert (x - r).norm() / r.norm() < 0.05


def test_16bit_weights_compute_what_autocast_computes():
    """`cast_weights`: convolution and linear weights in bf16, norm parameters float32. The model
    then computes bit for bit what bf16 autocast computes on its float32 weights (outputs and
    gradients, dropout on), without casting each weight in every step."""
    from benchmarks.model_profile import CountOps
    model = randomized(SMALL)
    amp = CoupledUNet(dataclasses.replace(SMALL, autocast="bfloat16"))
    amp.load_state_dict(model.state_dict())
    half = cast_weights(model, torch.bfloat16)
    assert half.dtype == half.video_in.spatial.weight.dtype == half.audio_out.conv.weight.dtype == torch.bfloat16
    norms = [p for m in half.modules() if isinstance(m, GroupNormAct) for p in m.parameters()]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    video, audio, t = inputs(SMALL)
    results, ops = {}, {}
    for name, m in (("autocast", amp), ("weights", half)):
        torch.manual_seed(5)
        with CountOps() as counter:
            out_v, out_a = m(video, audio, t, cross_shift=1)
            (out_v.square().sum() + out_a.square().sum()).backward()
        ops[name] = sum(counter.counts.values())
        results[name] = (out_v, out_a, [p.grad for p in m.parameters()])
    (amp_v, amp_a, amp_grads), (v, a, grads) = results["autocast"], results["weights"]
    assert v.dtype == torch.float32 and torch.equal(v, amp_v) and torch.equal(a, amp_a)
    for g_amp, g in zip(amp_grads, grads):
        assert torch.equal(g_amp.to(g.dtype), g)
    cast = sum(p.dtype == torch.bfloat16 for p in half.parameters())
    assert ops["autocast"] - ops["weights"] >= 2 * cast   # a cast per weight each way
    assert cast_weights(half, torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        cast_weights(half, torch.int8)


def test_class_conditioning_with_null_class():
    cfg = dataclasses.replace(SMALL, num_classes=3)
    model = randomized(cfg).eval()
    assert model.null_class == 3 and model.label_embed.num_embeddings == 4
    video, audio, t = inputs(cfg)
    with torch.no_grad():
        unconditional = model(video, audio, t, cross_shift=0)
        null = model(video, audio, t, cross_shift=0, y=torch.tensor([3, 3]))
        labelled = model(video, audio, t, cross_shift=0, y=torch.tensor([0, 2]))
    torch.testing.assert_close(unconditional[0], null[0])
    assert not torch.allclose(unconditional[0], labelled[0])
    with pytest.raises(ValueError, match="num_classes=None"):
        CoupledUNet(SMALL)(video, audio, t, y=torch.tensor([0, 1]))


def test_torch_compile_tiny():
    """The tiny preset compiles as one graph (no graph breaks with a given cross_shift) through
    dynamo and AOT autograd (the fused ops through their fake kernels), forward and backward."""
    model = randomized(PRESETS["tiny"]).eval()
    video, audio, t = inputs(PRESETS["tiny"], batch=1)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(video, audio, t, cross_shift=1)
    ref = model(video, audio, t, cross_shift=1)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    (out[0].mean() + out[1].mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_torch_compile_tiny_training_step():
    """Training mode (dropout on) compiles as one graph too: under torch.compile the blocks use
    torch's dropout (no seed drawn with .item()); forward and backward run."""
    model = randomized(dataclasses.replace(PRESETS["tiny"], dropout=0.1)).train()
    video, audio, t = inputs(PRESETS["tiny"], batch=1)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out_v, out_a = compiled(video, audio, t, cross_shift=1)
    (out_v.square().mean() + out_a.square().mean()).backward()
    assert torch.isfinite(out_v).all() and torch.isfinite(out_a).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("make_inputs, message", [
    (lambda v, a, t: (v[0], a, t), r"video must be \[B, F, C, H, W\]"),
    (lambda v, a, t: (v, a[:, 0], t), r"audio must be \[B, C, L\]"),
    (lambda v, a, t: (v[:, :3], a, t), r"video must be \[B, F, C, H, W\] = \[B, 4, 3, 8, 8\]"),
    (lambda v, a, t: (v, a[..., :128], t), r"audio must be \[B, C, L\] = \[B, 1, 256\]"),
    (lambda v, a, t: (v, a[:1], t), "batch sizes differ"),
    (lambda v, a, t: (v, a, t[:1]), r"timesteps must be \[B\]"),
])
def test_bad_inputs_raise_clear_errors(make_inputs, message):
    model = CoupledUNet(SMALL)
    with pytest.raises(ValueError, match=message):
        model(*make_inputs(*inputs(SMALL)))


@pytest.mark.parametrize("overrides, message", [
    (dict(audio_shape=(1, 250)), r"audio length L \(250\) must be divisible by 16"),
    (dict(video_shape=(4, 3, 6, 6)), r"video H, W \(6, 6\) must be divisible by 4"),
    (dict(audio_shape=(1, 32)), r"audio length at rate 4 \(2\) must be >= F"),
    (dict(cross_attention_windows=(1, 8)), "window 8 at rate 4 must be in"),
    (dict(cross_attention_windows=(1,)), "one window per"),
    (dict(video_attention_resolutions=(16,)), "not downsample rates"),
    (dict(model_channels=48), "multiple of 32"),
    (dict(impl="triton"), "impl must be one of"),
    (dict(autocast="int8"), "autocast must be one of"),
])
def test_bad_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'paper-256'"):
        CoupledUNet("paper-256")
