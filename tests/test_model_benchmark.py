"""benchmarks.model (tiny preset) and the published-model baseline loader."""
from __future__ import annotations

import contextlib
import json
import sys

import pytest
import torch

from benchmarks import model as model_bench
from benchmarks.published import published_model
from mmdiffusion.unet import CoupledUNet, UNetConfig

# The keyword arguments of create_model in the published mm_diffusion/multimodal_script_util.py.
PUBLISHED_KWARGS = """video_size, audio_size, num_channels, num_res_blocks, channel_mult="",
    learn_sigma=False, class_cond=False, use_checkpoint=False, cross_attention_resolutions="2,4,8",
    video_attention_resolutions="2,4,8", audio_attention_resolutions="2,4,8",
    cross_attention_windows="1,4,8", cross_attention_shift=True, num_heads=1, num_head_channels=-1,
    num_heads_upsample=-1, use_scale_shift_norm=False, dropout=0, use_fp16=False,
    video_type="2d+1d", audio_type="1d", resblock_updown=True"""


@pytest.fixture
def fake_published(tmp_path):
    """A stand-in checkout whose create_model records its arguments and returns our tiny model."""
    package = tmp_path / "mm_diffusion"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "multimodal_script_util.py").write_text(
        "from mmdiffusion.unet import CoupledUNet\n"
        "CALLS = []\n"
        "class _Model(CoupledUNet):\n"
        "    def convert_to_fp16(self):\n"
        "        CALLS.append('fp16')\n"
        f"def create_model({PUBLISHED_KWARGS}):\n"
        "    CALLS.append(dict(locals()))\n"
        "    return _Model('tiny')\n")
    yield tmp_path
    for name in ("mm_diffusion", "mm_diffusion.multimodal_script_util"):
        sys.modules.pop(name, None)


def test_published_model_maps_the_config(fake_published):
    cfg = UNetConfig.preset("tiny")
    model = published_model(cfg, fake_published, "fp16")
    import mm_diffusion.multimodal_script_util as fake
    kwargs, converted = fake.CALLS
    assert converted == "fp16" and isinstance(model, CoupledUNet)
    assert kwargs["video_size"] == [16, 3, 32, 32] and kwargs["audio_size"] == [1, 12800]
    assert kwargs["channel_mult"] == "1,2,2" and kwargs["cross_attention_windows"] == "1,4"
    assert kwargs["audio_attention_resolutions"] == "-1" and kwargs["use_fp16"] is True


def test_published_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="MM-Diffusion"):
        published_model(UNetConfig.preset("tiny"), tmp_path)
    with pytest.raises(ValueError, match="fp32"):
        published_model(UNetConfig.preset("tiny"), tmp_path, "bf16")
    with pytest.raises(ValueError, match="--published"):
        model_bench.build_variants(UNetConfig.preset("tiny"), ["published:fp32"], torch.device("cpu"))
    with pytest.raises(ValueError, match="recompute|keep"):
        model_bench.build_variants(UNetConfig.preset("tiny"), ["fused:fp32:never"], torch.device("cpu"))


def test_model_benchmark_runs_and_compares(fake_published, tmp_path):
    out = tmp_path / "rows.json"
    assert model_bench.main(["--preset", "tiny", "--device", "cpu", "--repeat", "1", "--published",
                             str(fake_published), "--variants",
                             "published:fp32,fused:fp32,fused:fp32:recompute", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["variant"], r["mode"]) for r in rows} == {
        (v, m) for v in ("published:fp32", "fused:fp32", "fused:fp32:recompute")
        for m in ("forward", "forward+backward")}
    for r in rows:
        assert r["seconds"] > 0 and r["peak_mb"] is not None and r["published_over_ours"] > 0
        assert isinstance(r["page_faults"], int) and r["page_faults"] >= 0
        if r["variant"] == "published:fp32":
            assert r["published_over_ours"] == 1.0 and r["memory_over_published"] == 1.0


def test_count_ops_counts_each_phase():
    """The host-work count of a tiny training step: both phases, the fused ops among them, and
    recomputation visible as extra forward ops inside the backward."""
    from benchmarks.model_profile import count_ops
    cfg = UNetConfig.preset("tiny")
    models = model_bench.build_variants(cfg, ["fused:fp32:keep", "fused:fp32:recompute"], torch.device("cpu"))
    inputs = model_bench.make_inputs(cfg, 1, torch.device("cpu"))
    reports = {v: count_ops(model_bench.step_functions(m, *inputs)["forward+backward"], rows=200)
               for v, m in models.items()}
    keep, recompute = reports["fused:fp32:keep"], reports["fused:fp32:recompute"]
    assert int(keep.split()[0]) > 0 and "backward" in keep.splitlines()[0]
    assert "forward   mmattn.group_norm_act_fwd" in keep
    assert "backward  mmattn.group_norm_act_fwd" not in keep       # kept: no norm in the backward
    assert "backward  mmattn.group_norm_act_fwd" in recompute      # recomputed there


def test_gpu_paths_count_the_gpu_steps_ops_on_cpu():
    """`--gpu-paths`: q/k/v recomputed in the backward and torch's temporal weight gradient, as on a
    GPU (more addmm in the backward, none of the CPU weight gradient's per-tap products); undone after."""
    from benchmarks.model_profile import CountOps, gpu_paths
    from mmattn.nn import recompute
    cfg = UNetConfig.preset("tiny")
    model = model_bench.build_variants(cfg, ["fused:fp32:recompute"], torch.device("cpu"))["fused:fp32:recompute"]
    step = model_bench.step_functions(model, *model_bench.make_inputs(cfg, 1, torch.device("cpu")))["forward+backward"]
    counts = {}
    for name, paths in (("cpu", contextlib.nullcontext()), ("gpu", gpu_paths())):
        with paths, CountOps() as counter:
            step()
        counts[name] = counter.counts
    assert counts["gpu"]["backward", "aten.addmm"] > counts["cpu"]["backward", "aten.addmm"]
    assert counts["gpu"]["backward", "aten.select"] < counts["cpu"]["backward", "aten.select"]
    assert recompute.recomputes_projections(torch.device("cpu")) is False


def test_measure_alternates_the_order_of_the_runs():
    """Interleaved runs go forward, then backward: neither function is always the later one."""
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    result = model_bench.measure(fns, torch.device("cpu"), repeat=3, warmup=0, memory=False)
    assert "".join(calls) == "abccbaabc"
    assert set(result) == set("abc") and all(r.seconds >= 0 and r.page_faults >= 0 for r in result.values())


def test_16bit_weight_variants_share_the_first_models_weights():
    """`bf16w` casts the first variant's float32 weights (not another cast's), keeps norms float32."""
    cfg = UNetConfig.preset("tiny")
    models = model_bench.build_variants(cfg, ["fused:bf16w", "fused:fp32", "reference:fp16w"], torch.device("cpu"))
    full = models["fused:fp32"].state_dict()
    for variant, dtype in (("fused:bf16w", torch.bfloat16), ("reference:fp16w", torch.float16)):
        model = models[variant]
        assert model.dtype == dtype and model.config.autocast is None
        for name, w in model.state_dict().items():
            assert torch.equal(w, full[name].to(w.dtype)), (variant, name)
        assert model.video_out.norm.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        model_bench.build_variants(cfg, ["fused:int8"], torch.device("cpu"))
