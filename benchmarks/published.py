"""The published MM-Diffusion model as a benchmark baseline, built from a checkout the user gives.

Nothing of the published code is part of this project: `published_model(config, path)` imports
`mm_diffusion` from `path` (a checkout of researchmm/MM-Diffusion, the folder that holds the
`mm_diffusion` package) and builds its `MultimodalUNet` with the flags of `config`, the way its
training script does. Its distributed-training imports (mpi4py, blobfile) are not needed to
build or run the model and are stubbed when absent.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

from mmdiffusion.unet import UNetConfig

PRECISIONS = ("fp32", "fp16")  # the published code trains in fp32 or in fp16 (`use_fp16`)


def _csv(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values)) if values else "-1"


def published_model(config: UNetConfig, path: Path, precision: str = "fp32") -> torch.nn.Module:
    """The published `MultimodalUNet` for `config` (same call as ours: `model(video, audio, t)`),
    in fp16 (`convert_to_fp16`, as its trainer runs it) or fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"the published model runs in {PRECISIONS}, got {precision!r}")
    package = Path(path) / "mm_diffusion"
    if not (package / "multimodal_script_util.py").is_file():
        raise FileNotFoundError(f"no published code at {path}: expected {package}/multimodal_script_util.py "
                                "(a checkout of github.com/researchmm/MM-Diffusion)")
    if (config.video_conv != "2d+1d" or config.num_classes is not None or not config.cross_attention_shift
            or not config.middle_cross_attention or config.audio_dilation_cycle != 10):
        raise ValueError("the published model is unconditional, 2d+1d, with shifted RS-MMA, a middle "
                         "RS-MMA and audio dilation cycle 10; this config differs")
    for name in ("blobfile", "mpi4py"):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = stub = types.ModuleType(name)
            if name == "mpi4py":
                stub.MPI = sys.modules["mpi4py.MPI"] = types.ModuleType("mpi4py.MPI")
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        script_util = importlib.import_module("mm_diffusion.multimodal_script_util")
    finally:
        sys.path.pop(0)
    model = script_util.create_model(
        video_size=list(config.video_shape), audio_size=list(config.audio_shape),
        num_channels=config.model_channels, num_res_blocks=config.num_res_blocks,
        channel_mult=_csv(config.channel_mult), learn_sigma=False, class_cond=False, use_checkpoint=False,
        cross_attention_resolutions=_csv(config.cross_attention_resolutions),
        video_attention_resolutions=_csv(config.video_attention_resolutions),
        audio_attention_resolutions=_csv(config.audio_attention_resolutions),
        cross_attention_windows=_csv(config.cross_attention_windows), cross_attention_shift=True,
        num_heads=config.num_heads, num_head_channels=config.num_head_channels, num_heads_upsample=-1,
        use_scale_shift_norm=config.use_scale_shift_norm, dropout=config.dropout,
        use_fp16=precision == "fp16", video_type="2d+1d", audio_type="1d", resblock_updown=True)
    if precision == "fp16":
        model.convert_to_fp16()
    return model
