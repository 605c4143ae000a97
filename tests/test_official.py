"""Published checkpoints: strict name/shape mapping against the committed manifest of the
published paper-64 state dict, value placement, errors, and the convert-official CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmdiffusion.__main__ import main as cli
from mmdiffusion.official import (convert_official_state_dict, load_official, official_manifest,
                                  official_name)
from mmdiffusion.unet import CoupledUNet, UNetConfig

MANIFEST = json.loads((Path(__file__).parent / "data" / "official_manifest.json").read_text())


def published_meta_state_dict() -> dict[str, torch.Tensor]:
    """The published paper-64 state dict as shape-only (meta) tensors."""
    return {name: torch.empty(shape, device="meta") for name, shape in MANIFEST["tensors"]}


def published_state_dict(preset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the published naming and shapes of `preset`."""
    g = torch.Generator().manual_seed(seed)
    return {e.name: torch.randn(e.shape, generator=g) for e in official_manifest(preset).values()}


def test_manifest_is_the_published_paper64_state_dict():
    assert sum(torch.Size(s).numel() for _, s in MANIFEST["tensors"]) == MANIFEST["num_parameters"] == 133_675_524
    ours = {e.name: list(e.shape) for e in official_manifest("paper-64").values()}
    assert ours == dict(MANIFEST["tensors"])


def test_strict_load_of_published_naming():
    converted = convert_official_state_dict(published_meta_state_dict(), "paper-64")
    with torch.device("meta"):
        model = CoupledUNet("paper-64")
    model.load_state_dict(converted, strict=True, assign=True)  # raises on any mismatch
    assert sum(p.numel() for p in model.parameters()) == 133_675_524


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("input_blocks.5.1.v_qkv.weight"), r"missing: input_blocks\.5\.1\.v_qkv\.weight"),
    (lambda sd: sd.update({"label_emb.weight": torch.empty(3, 128, device="meta")}),
     r"unexpected: label_emb\.weight"),
    (lambda sd: sd.update({"middle_blocks.1.video_proj_out.video_conv.weight":
                           torch.empty(512, 512, device="meta")}),
     r"wrong shape: middle_blocks\.1\.video_proj_out\.video_conv\.weight \(expected \[512, 512, 1, 1, 1\], got \[512, 512\]\)"),
])
def test_mismatches_are_errors_that_name_the_tensor(edit, message):
    state = published_meta_state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        convert_official_state_dict(state, "paper-64")


def test_names_map_block_by_block():
    assert official_name("video_in.temporal.weight") == ("input_blocks.0.0.video_conv.video_conv_temporal.weight", 0)
    assert official_name("encoder.3.1.video_qkv.weight") == ("input_blocks.4.1.v_qkv.weight", 1)
    assert official_name("encoder.3.1.video_proj.weight") == ("input_blocks.4.1.video_proj_out.video_conv.weight", 3)
    assert official_name("encoder.3.1.video_proj.bias") == ("input_blocks.4.1.video_proj_out.video_conv.bias", 0)
    assert official_name("middle.2.audio_attention.qkv.bias") == ("middle_blocks.2.audio_attention_block.qkv.bias", 0)
    assert official_name("decoder.11.0.video.skip.conv.weight") == (
        "output_blocks.11.0.video_skip_connection.video_conv.weight", 0)
    with pytest.raises(ValueError, match="no counterpart"):
        official_name("label_embed.weight")


def test_load_official_places_every_value():
    state = published_state_dict("tiny")
    model = load_official(state, "tiny")
    ours = model.state_dict()
    for name, entry in official_manifest("tiny").items():
        torch.testing.assert_close(ours[name], state[entry.name].reshape(entry.our_shape), rtol=0, atol=0)
    # 1x1 convolution kernels become Linear weights: out-channel rows, in-channel columns
    qkv = state["input_blocks.3.1.v_qkv.weight"]
    assert torch.equal(model.encoder[2][1].video_qkv.weight, qkv[:, :, 0])
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


def test_load_official_from_path_with_config(tmp_path):
    state = {k: v.half() for k, v in published_state_dict("tiny").items()}  # fp16 checkpoints load as fp32
    torch.save(state, tmp_path / "ckpt.pt")
    config = UNetConfig.preset("tiny", impl="reference")
    model = load_official(tmp_path / "ckpt.pt", config)
    assert model.config.impl == "reference" and next(model.parameters()).dtype == torch.float32


def test_convert_official_cli(tmp_path, capsys):
    state = published_state_dict("tiny", seed=1)
    torch.save(state, tmp_path / "in.pt")
    assert cli(["convert-official", str(tmp_path / "in.pt"), str(tmp_path / "out.safetensors"),
                "--preset", "tiny"]) == 0
    assert "preset tiny" in capsys.readouterr().out
    written = load_file(tmp_path / "out.safetensors")
    expected = convert_official_state_dict(state, "tiny")
    assert written.keys() == expected.keys()
    for name in expected:
        assert torch.equal(written[name], expected[name])
    CoupledUNet("tiny").load_state_dict(written)  # strict


def test_cli_rejects_a_mismatched_checkpoint(tmp_path):
    state = published_state_dict("tiny")
    state.pop("time_embed.0.bias")
    torch.save(state, tmp_path / "in.pt")
    with pytest.raises(ValueError, match=r"missing: time_embed\.0\.bias"):
        cli(["convert-official", str(tmp_path / "in.pt"), str(tmp_path / "out.safetensors"), "--preset", "tiny"])
