"""Command line smoke tests on the micro config: train -> sample -> a2v -> v2a write valid media."""
from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from mmdiffusion.__main__ import main
from mmdiffusion.media import probe, read_clip
from mmdiffusion.training.pipeline import load_trained

COMMANDS = ("train", "sample", "a2v", "v2a", "demo")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: python -m mmdiffusion {command}" in capsys.readouterr().out


def _wav(path) -> np.ndarray:
    with wave.open(str(path)) as f:
        return np.frombuffer(f.readframes(f.getnframes()), "<i2")


def test_train_sample_a2v_v2a(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run, samples, a2v, v2a = (tmp_path / name for name in ("run", "samples", "a2v", "v2a"))
        assert main(["train", "--config", "micro", "--set", "steps=2", "--set", "ckpt_every=1",
                     "--out", str(run), "--no-progress"]) == 0
        assert (run / "config.json").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) == 2
        common = ["--steps", "2", "--no-progress"]
        assert main(["sample", str(run), "--n", "2", "--out", str(samples), "--clip-x0", *common]) == 0
        a2v_args = ["a2v", str(run / "checkpoints" / "ckpt-00000002.pt"), str(samples / "sample-000.wav")]
        assert main([*a2v_args, "--out", str(a2v), *common]) == 0
        assert main(["v2a", str(run), str(samples / "sample-001.mp4"), "--out", str(v2a), "--n", "2",
                     "--method", "guidance", *common]) == 0
        # The given modality comes back exactly (in data units: audio scaled in and out).
        model = load_trained(run)
        video, audio = torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(1, 3200) - 0.5
        out_video, _ = model.sample(2, steps=2, video=video, progress=False)
        _, out_audio = model.sample(1, steps=2, audio=audio, method="guidance", progress=False)
        assert torch.equal(out_video, video.expand(2, -1, -1, -1, -1))
        torch.testing.assert_close(out_audio[0], audio)
        # a seed fixes the model's random RS-MMA shifts too, and leaves torch's global generator alone
        state = torch.get_rng_state()
        first = model.sample(2, steps=2, seed=3, progress=False)
        assert torch.equal(state, torch.get_rng_state())
        torch.manual_seed(123)  # another global state: the shifts must come from the seed alone
        again, other = (model.sample(2, steps=2, seed=seed, progress=False) for seed in (3, 4))
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert not torch.equal(first[0], other[0])
        with pytest.raises(SystemExit, match="sample: steps must be <= num_steps"):
            main(["sample", str(run), "--sampler", "ddim", "--steps", "500", "--out", str(tmp_path / "x"),
                  "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    for folder, prefix, n in ((samples, "sample", 2), (a2v, "a2v", 1), (v2a, "v2a", 2)):
        names = {p.name for p in folder.iterdir()}
        expected = {f"{prefix}-{i:03d}.{ext}" for i in range(n) for ext in ("mp4", "wav")}
        assert expected | {f"{prefix}-sheet.png", f"{prefix}-spectrograms.png"} == names
        assert str(folder / f"{prefix}-000.mp4") in printed
        info = probe(folder / f"{prefix}-000.mp4")
        assert info.has_audio and (info.width, info.height, info.fps) == (8, 8, 10.0)
        assert abs(info.duration - 0.4) < 0.05 and len(_wav(folder / f"{prefix}-000.wav")) == 3200
    # a2v keeps the given soundtrack exactly; v2a keeps the given frames (up to H.264 coding).
    np.testing.assert_allclose(_wav(a2v / "a2v-000.wav"), _wav(samples / "sample-000.wav"), atol=1)
    given, other = (read_clip(samples / f"sample-00{i}.mp4", 0.0, 4, 10, 8, 8000).video.float() for i in (1, 0))
    for i in range(2):
        kept = read_clip(v2a / f"v2a-{i:03d}.mp4", 0.0, 4, 10, 8, 8000).video.float()
        assert (kept - given).abs().mean() < 0.3 * (kept - other).abs().mean()
    assert not np.array_equal(_wav(v2a / "v2a-000.wav"), _wav(v2a / "v2a-001.wav"))  # two different soundtracks


def test_write_samples_resamples_audio_for_aac(tmp_path):
    """AAC has no 4.8 kHz mode: the mp4 carries the audio at 8 kHz, the wav at the model's rate."""
    from mmdiffusion.training.pipeline import write_samples

    t = torch.arange(7680) / 4800
    audio = (0.5 * torch.sin(2 * torch.pi * 440 * t)).expand(2, 1, -1)
    paths = write_samples(tmp_path, torch.zeros(2, 16, 3, 16, 16), audio, 10, 4800)
    info = probe(paths["mp4"][1])
    assert (info.sample_rate, info.duration) == (8000, 1.6)
    with wave.open(str(paths["wav"][1])) as f:
        assert (f.getframerate(), f.getnframes()) == (4800, 7680)
    decoded = read_clip(paths["mp4"][1], 0.0, 16, 10, 16, 4800).audio[0]   # back to 4.8 kHz
    assert np.corrcoef(decoded[400:-400], audio[1, 0, 400:-400])[0, 1] > 0.99
