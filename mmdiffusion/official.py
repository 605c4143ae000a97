"""Loading the published MM-Diffusion checkpoints (`Landscape.pt`, `AIST++.pt`) into `CoupledUNet`.

The published `MultimodalUNet` and our `CoupledUNet` have the same blocks in the same order; only
names differ (`input_blocks.N` is the stem for N=0 and `encoder.{N-1}` after it, `middle_blocks`
is `middle`, `output_blocks` is `decoder`), and the 1x1 convolutions that feed attention are
`nn.Linear` here (their kernel's trailing singleton dims are dropped). The mapping is derived
from our model for a config, then checked strictly against the given state dict: a missing,
unexpected or mis-shaped tensor is an error that names it.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, NamedTuple

import torch

from mmdiffusion.unet import CoupledUNet, UNetConfig

# Whole-model prefixes: (ours, published).
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("time_embed.", "time_embed."),
    ("video_in.spatial.", "input_blocks.0.0.video_conv.video_conv_spatial."),
    ("video_in.temporal.", "input_blocks.0.0.video_conv.video_conv_temporal."),
    ("audio_in.", "input_blocks.0.0.audio_conv.audio_conv."),
    ("video_out.norm.", "video_out.0.GroupNorm."),
    ("video_out.conv.conv.", "video_out.2.video_conv."),
    ("audio_out.norm.", "audio_out.0.GroupNorm."),
    ("audio_out.conv.", "audio_out.2.audio_conv."),
)
# Prefixes inside one layer of a block: (ours, published, kernel dims the published weight adds).
_LAYER_PREFIXES: tuple[tuple[str, str, int], ...] = (
    # MMResBlock <-> ResBlock
    ("emb_proj.", "emb_layers.1.", 0),
    ("video.in_layers.norm.", "video_in_layers.0.GroupNorm.", 0),
    ("video.in_layers.conv.spatial.", "video_in_layers.2.video_conv_spatial.", 0),
    ("video.in_layers.conv.temporal.", "video_in_layers.2.video_conv_temporal.", 0),
    ("video.in_layers.conv.conv.", "video_in_layers.2.video_conv.", 0),
    ("video.out_layers.norm.", "video_out_layers.0.GroupNorm.", 0),
    ("video.out_layers.conv.conv.", "video_out_layers.3.video_conv.", 0),
    ("video.skip.conv.", "video_skip_connection.video_conv.", 0),
    ("audio.in_layers.norm.", "audio_in_layers.0.GroupNorm.", 0),
    ("audio.in_layers.conv.", "audio_in_layers.2.audio_conv.", 0),
    ("audio.out_layers.norm.", "audio_out_layers.0.GroupNorm.", 0),
    ("audio.out_layers.conv.", "audio_out_layers.3.audio_conv.", 0),
    ("audio.skip.", "audio_skip_connection.audio_conv.", 0),
    # VideoSelfAttention / AudioSelfAttention <-> SingleModalAtten
    ("video_attention.spatial.norm.", "spatial_attention_block.norm.GroupNorm.", 0),
    ("video_attention.spatial.qkv.", "spatial_attention_block.qkv.", 1),
    ("video_attention.spatial.proj.", "spatial_attention_block.proj_out.", 1),
    ("video_attention.temporal.norm.", "temporal_attention_block.norm.GroupNorm.", 0),
    ("video_attention.temporal.qkv.", "temporal_attention_block.qkv.", 1),
    ("video_attention.temporal.proj.", "temporal_attention_block.proj_out.", 1),
    ("audio_attention.norm.", "audio_attention_block.norm.GroupNorm.", 0),
    ("audio_attention.qkv.", "audio_attention_block.qkv.", 1),
    ("audio_attention.proj.", "audio_attention_block.proj_out.", 1),
    # RSMultiModalAttention <-> CrossAttentionBlock
    ("video_norm.", "v_norm.GroupNorm.", 0),
    ("audio_norm.", "a_norm.GroupNorm.", 0),
    ("video_qkv.", "v_qkv.", 1),
    ("audio_qkv.", "a_qkv.", 1),
    ("video_proj.", "video_proj_out.video_conv.", 3),
    ("audio_proj.", "audio_proj_out.audio_conv.", 1),
)
_BLOCK = re.compile(r"^(encoder|middle|decoder)\.(?:(\d+)\.)?(\d+)\.(.*)$")


def official_name(name: str) -> tuple[str, int]:
    """Published name of our state-dict entry `name`, and how many trailing singleton kernel dims
    the published tensor has in addition to ours."""
    for ours, theirs in _MODEL_PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):], 0
    match = _BLOCK.match(name)
    if match:
        part, block, layer, rest = match.groups()
        if part == "middle":
            prefix = f"middle_blocks.{layer}."
        else:
            index = int(block) + 1 if part == "encoder" else int(block)
            prefix = f"{'input' if part == 'encoder' else 'output'}_blocks.{index}.{layer}."
        for ours, theirs, kernel_dims in _LAYER_PREFIXES:
            if rest.startswith(ours):
                tail = rest[len(ours):]
                return prefix + theirs + tail, kernel_dims if tail == "weight" else 0
    raise ValueError(f"{name!r} has no counterpart in the published MultimodalUNet")


class OfficialEntry(NamedTuple):
    """Where one of our tensors lives in a published state dict."""
    name: str                      # published name
    shape: tuple[int, ...]         # published shape
    our_shape: tuple[int, ...]


def official_manifest(config: UNetConfig | str = "paper-64") -> dict[str, OfficialEntry]:
    """`{our name: OfficialEntry}` for a model of `config` (built on the meta device)."""
    config = UNetConfig.preset(config) if isinstance(config, str) else config
    with torch.device("meta"):
        model = CoupledUNet(config)
    manifest = {}
    for name, tensor in model.state_dict().items():
        theirs, kernel_dims = official_name(name)
        shape = tuple(tensor.shape)
        manifest[name] = OfficialEntry(theirs, shape + (1,) * kernel_dims, shape)
    return manifest


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor],
                                config: UNetConfig | str = "paper-64") -> dict[str, torch.Tensor]:
    """Published-named state dict -> ours (strict; floating tensors as float32).

    Raises ValueError naming every missing, unexpected or mis-shaped tensor.
    """
    manifest = official_manifest(config)
    expected = {entry.name: entry.shape for entry in manifest.values()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [f"{k} (expected {list(expected[k])}, got {list(state_dict[k].shape)})"
                 for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    problems = [f"{label}: {', '.join(items)}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)) if items]
    if problems:
        raise ValueError("state dict does not match the published MultimodalUNet of this config; "
                         + "; ".join(problems))
    converted = {}
    for ours, entry in manifest.items():
        tensor = state_dict[entry.name]
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        converted[ours] = tensor.reshape(entry.our_shape)
    return converted


def read_official(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a published checkpoint (a `torch.save`d state dict) onto the CPU, tensors only."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{os.fspath(path)!r} is not a state dict of tensors (a published MM-Diffusion checkpoint)")
    return dict(state)


def load_official(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                  preset: UNetConfig | str = "paper-64") -> CoupledUNet:
    """A `CoupledUNet` of `preset` (a preset name or a `UNetConfig`, e.g. with `impl` or
    `use_checkpoint` changed) holding the weights of a published checkpoint (a path or a state
    dict in the published naming). Strict: see `convert_official_state_dict`."""
    config = UNetConfig.preset(preset) if isinstance(preset, str) else preset
    state = checkpoint if isinstance(checkpoint, Mapping) else read_official(checkpoint)
    converted = convert_official_state_dict(state, config)
    with torch.device("meta"):
        model = CoupledUNet(config)
    model.load_state_dict(converted, strict=True, assign=True)
    return model
