"""Feature networks: parameter names/shapes against committed manifests of the public files, safe
loading with SHA-256 checks, and feature shapes on small inputs. Nothing is downloaded."""
import dataclasses
import hashlib
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdiffusion.metrics import (AUDIOCLIP, I3D, I3D_KINETICS400, VGGISH, AudioCLIPAudio, KnownWeights, VGGish,
                                 load_weights, preprocess_video, resolve_weights_path)
from mmdiffusion.metrics.audioclip import blackman_harris
from mmdiffusion.metrics.vggish import VGGishLogMel
from mmdiffusion.metrics.weights import sha256_file, verify_sha256

MANIFESTS = Path(__file__).resolve().parents[1] / "mmdiffusion" / "metrics" / "manifests"
NETS = [(I3D, "i3d_400.txt", I3D_KINETICS400), (VGGish, "vggish.txt", VGGISH),
        (AudioCLIPAudio, "audioclip_audio.txt", AUDIOCLIP)]


def read_manifest(name: str) -> dict[str, tuple[int, ...]]:
    entries = {}
    for line in (MANIFESTS / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, shape = line.partition(" ")
            entries[key] = tuple(int(s) for s in shape.split(",") if s)
    return entries


def random_public_file(manifest: dict[str, tuple[int, ...]], known, path: Path, *, drop_batch_counts: bool) -> dict:
    """A stand-in for the public file, built from the manifest alone (not from our model)."""
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
             for k, s in manifest.items() if not (drop_batch_counts and k.endswith("num_batches_tracked"))}
    saved = {known.key_prefix + k: v for k, v in state.items()}
    if known.key_prefix:  # a full multi-modal checkpoint: other towers must be ignored
        saved["visual.conv1.weight"] = torch.randn(4, 3, 1, 1, generator=g)
    torch.save(saved, path)
    return state


@pytest.mark.parametrize("net, manifest, known", NETS, ids=["i3d", "vggish", "audioclip"])
def test_state_dict_matches_public_manifest(net, manifest, known):
    expected = {k: s for k, s in read_manifest(manifest).items() if k not in known.ignored_keys}
    with torch.device("meta"):
        actual = {k: tuple(v.shape) for k, v in net().state_dict().items()}
    assert actual == expected


@pytest.mark.parametrize("net, manifest, known", NETS, ids=["i3d", "vggish", "audioclip"])
def test_public_layout_loads(net, manifest, known, tmp_path):
    path = tmp_path / known.filename
    state = random_public_file(read_manifest(manifest), known, path, drop_batch_counts=net is I3D)
    known = dataclasses.replace(known, sha256=sha256_file(path))  # the stand-in's own digest
    model = net()
    assert load_weights(model, path, known) == known.sha256
    loaded = model.state_dict()
    for key, value in state.items():
        if key not in known.ignored_keys and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_sha256_prefix_mismatch_and_unknown_digest(tmp_path):
    path = tmp_path / "vggish-10086976.pth"
    path.write_bytes(b"not the VGGish weights")
    with pytest.raises(ValueError, match="SHA-256.*10086976"):
        verify_sha256(path, VGGISH)
    with pytest.warns(UserWarning, match="not verified"):
        assert verify_sha256(path, I3D_KINETICS400) == hashlib.sha256(b"not the VGGish weights").hexdigest()


TINY = KnownWeights(name="tiny", filename="tiny.pt", source="-", env_var="TINY", sha256=None)


def tiny_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_loader_names_missing_unexpected_and_misshaped_keys(tmp_path):
    path = tmp_path / "wrong.pt"
    state = tiny_net().state_dict()
    state["1.weight"] = torch.zeros(5)
    del state["0.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"0\.bias.*extra\.weight.*1\.weight"):
        load_weights(tiny_net(), path, TINY)


def test_loader_tolerates_absent_batch_counts_and_reads_safetensors(tmp_path):
    from safetensors.torch import save_file
    source = tiny_net()
    torch.nn.init.normal_(source[1].running_mean)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    for path in (tmp_path / "w.pt", tmp_path / "w.safetensors"):
        torch.save(state, path) if path.suffix == ".pt" else save_file(state, str(path))
        target = tiny_net()
        with pytest.warns(UserWarning, match="not verified"):
            load_weights(target, path, TINY)
        torch.testing.assert_close(target[1].running_mean, source[1].running_mean)


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_loading_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"0.weight": _Payload()}, path)
    with pytest.warns(UserWarning), pytest.raises(pickle.UnpicklingError):
        load_weights(tiny_net(), path, TINY)


def test_resolve_weights_path(tmp_path, monkeypatch):
    monkeypatch.delenv(I3D_KINETICS400.env_var, raising=False)
    assert resolve_weights_path(None, I3D_KINETICS400) is None
    file = tmp_path / "i3d.pt"
    file.write_bytes(b"x")
    monkeypatch.setenv(I3D_KINETICS400.env_var, str(file))
    assert resolve_weights_path(None, I3D_KINETICS400) == file
    with pytest.raises(FileNotFoundError, match="command line"):
        resolve_weights_path(tmp_path / "missing.pt", I3D_KINETICS400)
    monkeypatch.setenv(I3D_KINETICS400.env_var, str(tmp_path / "gone.pt"))
    with pytest.raises(FileNotFoundError, match=I3D_KINETICS400.env_var):
        resolve_weights_path(None, I3D_KINETICS400)


# --- feature shapes -----------------------------------------------------------------------------

@torch.no_grad()
def test_i3d_shapes():
    model = I3D().eval()
    assert model.features(torch.zeros(2, 3, 9, 64, 48)).shape == (2, 1024, 2, 2, 2)
    assert model(torch.zeros(1, 3, 9, 224, 224)).shape == (1, 400)
    with pytest.raises(ValueError, match="video must be"):
        model(torch.zeros(1, 3, 9, 112, 112))


def test_preprocess_video_resizes_shorter_side_and_crops():
    video = torch.zeros(2, 5, 3, 48, 96, dtype=torch.uint8)
    video[..., 24:48] = 255                   # white on the left half of the central half of the width
    out = preprocess_video(video)
    assert out.shape == (2, 3, 5, 224, 224) and out.dtype == torch.float32
    # 48x96 -> 224x448, centre crop = columns 112..335 of the resized frame: white left, black right
    assert (out[..., 4:108] == 1).all() and (out[..., 116:220] == -1).all()
    float_in = preprocess_video(video.float() / 127.5 - 1)
    torch.testing.assert_close(float_in, out)
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        preprocess_video(torch.zeros(5, 3, 48, 96))


def numpy_vggish_log_mel(x: np.ndarray) -> np.ndarray:
    """The AudioSet release's `mel_features.log_mel_spectrogram` + framing, as a loop-based oracle."""
    frames = np.stack([x[i:i + 400] for i in range(0, len(x) - 399, 160)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    magnitude = np.abs(np.fft.rfft(frames * window, 512))
    to_mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    bins = to_mel(np.linspace(0, 8000, 257))
    edges = np.linspace(to_mel(125.0), to_mel(7500.0), 66)
    mel = np.zeros((257, 64))
    for i in range(64):
        lo, centre, hi = edges[i:i + 3]
        mel[:, i] = np.maximum(0.0, np.minimum((bins - lo) / (centre - lo), (hi - bins) / (hi - centre)))
    mel[0] = 0.0
    log_mel = np.log(magnitude @ mel + 0.01)
    return np.stack([log_mel[i:i + 96] for i in range(0, len(log_mel) - 95, 96)])


def test_vggish_front_end_matches_reference_algorithm():
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 2)
    ours = VGGishLogMel()(torch.from_numpy(x)[None])[0, :, 0]
    np.testing.assert_allclose(ours.numpy(), numpy_vggish_log_mel(x), atol=2e-5)


@torch.no_grad()
def test_vggish_shapes():
    model = VGGish().eval()
    assert model(torch.zeros(3, 1, 96, 64)).shape == (3, 128)
    audio = torch.randn(2, 2, int(1.6 * 44100)) * 0.1             # stereo 1.6 s at 44.1 kHz -> one example
    assert model.embed(audio, 44100).shape == (2, 1, 128)
    assert model.embed(torch.randn(1, 1, 8000), 16000).shape == (1, 1, 128)   # 0.5 s: zero-padded
    assert model.embed(torch.randn(1, 1, 3 * 16000), 16000).shape == (1, 3, 128)
    with pytest.raises(ValueError, match="examples must be"):
        model(torch.zeros(1, 1, 64, 96))


def test_blackman_harris_window():
    w = blackman_harris(8).numpy()
    n = np.arange(8)
    a = [0.35875, 0.48829, 0.14128, 0.01168]
    phase = 2 * np.pi * n / 8
    expected = a[0] - a[1] * np.cos(phase) + a[2] * np.cos(2 * phase) - a[3] * np.cos(3 * phase)
    np.testing.assert_allclose(w, expected, atol=1e-12)


@torch.no_grad()
def test_audioclip_shapes():
    model = AudioCLIPAudio().eval()
    length = 6000
    frames = 1 + math.ceil((length - 1654) / 561)
    audio = torch.randn(2, length) * 3000
    assert model.log_power(audio).shape == (2, 3, 341, frames)
    assert model(audio).shape == (2, 1024)
    with pytest.raises(ValueError, match="audio must be"):
        model(audio[:, None])
