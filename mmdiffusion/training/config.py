"""Training configuration: nested dataclasses, named presets, JSON files and `key=value` overrides.

A run is described by one `TrainConfig`. It is built from a preset name or a JSON file (a partial
dict, optionally naming its base with `"preset"`), then edited with dotted overrides such as
`lr=1e-4`, `batch_size=8`, `data.size=16` or `model.unet.model_channels=64`. The whole config is
stored (as JSON) in every checkpoint, so a checkpoint alone rebuilds its model and data transforms.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..diffusion import GaussianDiffusion

__all__ = ["DataConfig", "ModelConfig", "DiffusionConfig", "EMAConfig", "TrainConfig", "PRESETS",
           "load_config", "apply_overrides", "parse_override", "PRECISIONS"]

PRECISIONS = ("auto", "bf16", "fp32", "bf16-weights", "fp16-weights")  # TrainConfig.precision


@dataclass(frozen=True)
class DataConfig:
    """Where clips come from and their shape. Video `[frames, 3, size, size]` in [-1, 1] at `fps`,
    mono audio of `frames / fps * sample_rate` samples."""

    source: str = "synth"            # "synth" (generated in memory) or a folder: shards (index.json) or videos
    clips: int = 2048                # synth: number of distinct training clips
    frames: int = 16
    size: int = 32
    fps: float = 10.0
    sample_rate: int = 8000
    audio_rms: float | None = 0.5    # audio is scaled to this RMS for training (undone when sampling); None: as is
    workers: int = 0                 # DataLoader worker processes (folders of videos want a few)


@dataclass(frozen=True)
class ModelConfig:
    """A `CoupledUNet` preset with field overrides. Its video/audio shapes, fps and sample rate
    come from the data config; `video_patch` / `audio_patch` fold `p x p` pixels and `k` audio
    samples into channels (space-to-depth), so the U-Net runs on `H/p x W/p` frames and `L/k`
    audio steps."""

    preset: str = "tiny"
    unet: dict[str, Any] = field(default_factory=dict)
    video_patch: int = 1
    audio_patch: int = 1

    def __post_init__(self) -> None:  # JSON lists -> tuples, as UNetConfig holds them
        object.__setattr__(self, "unet", {k: tuple(v) if isinstance(v, list) else v for k, v in self.unet.items()})


@dataclass(frozen=True)
class DiffusionConfig:
    num_steps: int = 1000
    schedule: str = "linear"         # "linear" or "cosine"
    prediction: str = "eps"          # "eps", "v" or "x0"

    def build(self) -> GaussianDiffusion:
        return GaussianDiffusion(self.num_steps, self.schedule, self.prediction)


@dataclass(frozen=True)
class EMAConfig:
    """`kind="power"`: EDM2 power-function averages, `rates` are relative standard deviations
    (e.g. 0.05, 0.1). `kind="classic"`: constant decays (e.g. 0.999, 0.9999) with the usual
    `(1 + t) / (10 + t)` warm-up."""

    kind: str = "power"
    rates: tuple[float, ...] = (0.05, 0.1)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. `batch_size` is global (split evenly over data-parallel ranks)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    steps: int = 10000
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_decay: str = "constant"       # after warm-up: "constant" or "cosine" (to 0 at `steps`)
    grad_clip: float | None = 1.0    # max global gradient norm; None: no clipping
    # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" (autocast), "fp32", "bf16-weights"
    # (bf16 weights with float32 master weights, no autocast: `MasterWeights`), or "fp16-weights"
    # (the same in fp16, with dynamic loss scaling, as the published trainer)
    precision: str = "auto"
    grad_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3
    sampler: str = "dpmpp-2m"        # defaults for sampling from this run's checkpoints
    sample_steps: int = 20

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0, "log_every": self.log_every >= 1,
            "ckpt_every": self.ckpt_every >= 1, "keep_last": self.keep_last >= 1,
            "sample_steps": self.sample_steps >= 1,
            "lr_decay": self.lr_decay in ("constant", "cosine"),
            "precision": self.precision in PRECISIONS,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "ema.kind": self.ema.kind in ("power", "classic"), "ema.rates": len(self.ema.rates) >= 1,
            "data.clips": self.data.clips >= 1, "data.workers": self.data.workers >= 0,
            "data.audio_rms": self.data.audio_rms is None or self.data.audio_rms > 0,
            "model.video_patch": self.model.video_patch >= 1, "model.audio_patch": self.model.audio_patch >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training config values: " +
                             ", ".join(f"{name}={_get(self, name)!r}" for name in bad))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict` (missing keys take their defaults; unknown keys raise)."""
        return apply_overrides(cls(), _flatten(values))


# A CPU-sized demo on the synthetic domain that learns the audio-visual correspondences in minutes:
# 16x16 video folded into 4x4 patches (48 channels) and 4.8 kHz audio folded into 32-sample steps,
# so the 64-channel U-Net runs on 4x4 frames and 240 audio steps; clean-data prediction (an
# under-trained model then gives blurry but noise-free samples); RS-MMA windows start at the
# query's own frame (no random shift), the most direct path for learning synchrony quickly.
_DEMO = TrainConfig(
    data=DataConfig(clips=2048, size=16, sample_rate=4800),
    model=ModelConfig(preset="tiny", video_patch=4, audio_patch=32, unet=dict(
        model_channels=64, channel_mult=(1, 1), num_head_channels=32, cross_attention_resolutions=(1, 2),
        cross_attention_windows=(1, 3), cross_attention_shift=False, video_attention_resolutions=(2,))),
    diffusion=DiffusionConfig(prediction="x0"),
    steps=1000, batch_size=16, lr=1e-3, warmup_steps=50, ema=EMAConfig("power", (0.1,)),
    log_every=10, ckpt_every=250, keep_last=1,
)

PRESETS: dict[str, TrainConfig] = {
    # The published training setup (ssh_scripts/multimodal_train.sh: 8 GPUs x 4 clips, lr 1e-4, no
    # warm-up or clipping, EMA 0.9999, raw audio) for 16x64x64 video and 1.6 s of 16 kHz audio.
    # Point data.source at real clips (a shard or video folder).
    "paper-64": TrainConfig(
        data=DataConfig(size=64, sample_rate=16000, audio_rms=None, workers=4),
        model=ModelConfig(preset="paper-64"), steps=500000, batch_size=32, lr=1e-4, warmup_steps=0,
        grad_clip=None, ema=EMAConfig("classic", (0.9999,)), log_every=100, ckpt_every=10000),
    # The `tiny` U-Net on 32x32 synthetic clips with 8 kHz audio.
    "tiny": TrainConfig(lr=2e-4, steps=20000, ckpt_every=1000),
    "demo": _DEMO,
    # Smallest useful run, for tests and smoke checks: 4 frames of 8x8, 0.4 s of 8 kHz audio
    # (the lowest common AAC rate) folded into 100 steps of 32 samples.
    "micro": TrainConfig(
        data=DataConfig(clips=32, frames=4, size=8, fps=10, sample_rate=8000),
        model=ModelConfig(preset="tiny", audio_patch=32, unet=dict(
            channel_mult=(1,), cross_attention_resolutions=(1,), cross_attention_windows=(2,),
            video_attention_resolutions=(), num_heads=1)),
        diffusion=DiffusionConfig(num_steps=100), steps=20, batch_size=4, lr=1e-3, warmup_steps=2,
        log_every=1, ckpt_every=5, keep_last=2, sample_steps=4),
}


def load_config(name_or_path: str | Path) -> TrainConfig:
    """A preset by name, or a JSON file holding a (partial) config dict; the file may name its base
    preset with `"preset": "<name>"` (default: the dataclass defaults)."""
    if str(name_or_path) in PRESETS:
        return apply_overrides(PRESETS[str(name_or_path)], [])
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"config must be a preset name ({', '.join(PRESETS)}) or a JSON file, "
                         f"got {str(name_or_path)!r}")
    values = json.loads(path.read_text())
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(values).__name__}")
    base = values.pop("preset", None)
    config = load_config(base) if base is not None else TrainConfig()
    return apply_overrides(config, _flatten(values))


def parse_override(text: str) -> tuple[str, Any]:
    """`"lr=1e-4"` -> `("lr", 1e-4)`: the value is parsed as JSON when it is valid JSON
    (numbers, `true`, `null`, `[1, 2]`, ...), else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override must look like key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def apply_overrides(config: TrainConfig, overrides: dict[str, Any] | list[tuple[str, Any]]) -> TrainConfig:
    """A copy of `config` with dotted keys replaced: `{"lr": 1e-4, "data.size": 16,
    "model.unet.model_channels": 64}`. Values are converted to the field's type (int -> float,
    list -> tuple); unknown keys raise `ValueError` listing the valid ones."""
    values = _to_tree(config)
    items = overrides.items() if isinstance(overrides, dict) else overrides
    for key, value in items:
        _set(values, TrainConfig, key, value)
    return _build(TrainConfig, values)


# ----------------------------------------------------------------------------------- internals

def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _to_tree(obj: Any) -> Any:
    """Dataclasses -> nested dicts (deep copies of dict fields)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_tree(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _to_tree(v) for k, v in obj.items()}
    return obj


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """`{"data": {"size": 16}}` -> `[("data.size", 16)]`."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((prefix + key, value))
    return out


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _set(tree: dict[str, Any], cls: type, key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    hints = _hints(cls)
    if head not in hints:
        raise ValueError(f"unknown config key {key!r}; valid keys here: {', '.join(hints)}")
    hint = hints[head]
    if dataclasses.is_dataclass(hint):
        if not rest:
            if not isinstance(value, dict):
                raise ValueError(f"config key {head!r} is a section; set its fields ({head}.<field>=...)")
            for sub_key, sub_value in _flatten(value):
                _set(tree[head], hint, sub_key, sub_value)
        else:
            _set(tree[head], hint, rest, value)
    elif rest:  # a free-form dict field (model.unet.<name>)
        if typing.get_origin(hint) is not dict:
            raise ValueError(f"config key {head!r} has no sub-keys, got {key!r}")
        tree[head] = {**tree[head], rest: value}
    else:
        tree[head] = _coerce(value, hint, key)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a JSON value to the field type `hint` (or raise a ValueError naming `key`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(value if item is Any else (_coerce(v, item, key) for v in value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} must be an object, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint is Any:
        return value
    raise ValueError(f"config key {key!r} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls: type, tree: dict[str, Any]) -> Any:
    hints = _hints(cls)
    kwargs = {name: _build(hints[name], value) if dataclasses.is_dataclass(hints[name]) else value
              for name, value in tree.items()}
    return cls(**kwargs)
