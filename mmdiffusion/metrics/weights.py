"""Pretrained weights for the feature networks: found only where the user points, checked, loaded safely.

Nothing is ever downloaded. A weights file comes from `--i3d-weights` / `--audio-weights` or the
environment variables `MMDIFFUSION_I3D_WEIGHTS` / `MMDIFFUSION_AUDIO_WEIGHTS`; it is hashed
(SHA-256), compared with the known digest of the public file where one is published, and read
with `torch.load(weights_only=True)` (or safetensors), so a file cannot execute code.

Known digests. Only VGGish's is published: torch.hub names release files `<name>-<first 8 hex
digits of the file's SHA-256>.<ext>` and checks that prefix on download, so
`vggish-10086976.pth` must hash to `10086976…`; we check the same prefix. The I3D file
(`i3d_pretrained_400.pt`, shared on Google Drive by the published code) and
`AudioCLIP-Full-Training.pt` (a GitHub release asset) come with no published digest, and none
could be obtained offline: for them the check is skipped with a warning, and the digest of the
file actually used is returned so that results can record it.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class KnownWeights:
    """A public weights file that a feature network loads.

    `sha256`: the full hex digest, a published prefix of it, or None when none is known.
    `key_prefix`: the prefix of the keys to keep (and strip) when the file holds a larger model.
    `ignored_keys`: keys of the public file that hold no weights of the architecture.
    """

    name: str
    filename: str
    source: str
    env_var: str
    sha256: str | None
    key_prefix: str = ""
    ignored_keys: tuple[str, ...] = ()


I3D_KINETICS400 = KnownWeights(
    name="I3D (Kinetics-400, converted from DeepMind's TF-Hub model by the published code)",
    filename="i3d_pretrained_400.pt",
    source="Google Drive id 1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT (see evaluations/fvd/download.py of MM-Diffusion)",
    env_var="MMDIFFUSION_I3D_WEIGHTS",
    sha256=None,
)
VGGISH = KnownWeights(
    name="VGGish (AudioSet, PyTorch port by harritaylor/torchvggish)",
    filename="vggish-10086976.pth",
    source="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
    env_var="MMDIFFUSION_AUDIO_WEIGHTS",
    sha256="10086976",
)
AUDIOCLIP = KnownWeights(
    name="AudioCLIP audio head (ESResNeXt-fbsp)",
    filename="AudioCLIP-Full-Training.pt",
    source="https://github.com/AndreyGuzhov/AudioCLIP/releases/download/v0.1/AudioCLIP-Full-Training.pt",
    env_var="MMDIFFUSION_AUDIO_WEIGHTS",
    sha256=None,
    key_prefix="audio.",
    # LinearFBSP is built with bias=False, which the original registers as an empty Parameter.
    ignored_keys=("fbsp.bias",),
)


def resolve_weights_path(given: str | os.PathLike | None, known: KnownWeights) -> Path | None:
    """The weights path from the command line, else from `known.env_var`, else None."""
    value = given if given else os.environ.get(known.env_var) or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        origin = "the command line" if given else f"${known.env_var}"
        raise FileNotFoundError(f"weights file {path} (from {origin}) does not exist; expected {known.filename} "
                                f"from {known.source}")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, known: KnownWeights) -> str:
    """Hash `path`, compare with `known.sha256` (full digest or prefix) and return the digest.

    Raises ValueError on a mismatch; warns when no digest is known for this file.
    """
    digest = sha256_file(path)
    if known.sha256 is None:
        warnings.warn(f"no published SHA-256 for {known.filename}; {path} was not verified "
                      f"(its SHA-256 is {digest}, recorded with the results)", stacklevel=2)
    elif not digest.startswith(known.sha256.lower()):
        raise ValueError(f"{path} has SHA-256 {digest}, but the public {known.filename} hashes to "
                         f"{known.sha256}…: not the expected {known.name} weights")
    return digest


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, known: KnownWeights) -> str:
    """Verify and load `path` into `model` (in place); returns the file's SHA-256.

    Every parameter and buffer of `model` must be in the file with the same shape (BatchNorm's
    `num_batches_tracked` may be absent: the I3D file converted from TensorFlow has none and
    evaluation never reads it); keys outside `known.key_prefix` are ignored. Errors name the
    missing, unexpected or mis-shaped keys.
    """
    path = Path(path)
    digest = verify_sha256(path, known)
    state = _read_state_dict(path)
    prefix = known.key_prefix
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for key in known.ignored_keys:
        state.pop(key, None)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        raise ValueError(f"{path} is not a {known.name} checkpoint ({known.filename}): "
                         f"missing keys [{head(missing)}], unexpected keys [{head(unexpected)}], "
                         f"shape mismatches [{head(shapes)}]")
    model.load_state_dict(state, strict=False)
    return digest
