"""Trainer pieces: config parsing, EMA profiles, atomic checkpoints and RNG state, resumption of a
killed run (bit-identical on CPU), non-finite loss handling, space-to-depth folding."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmdiffusion.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, rng_state,
                                    save_checkpoint, set_rng_state)
from mmdiffusion.ema import EMA, power_exponent
from mmdiffusion.training.config import PRESETS, TrainConfig, apply_overrides, load_config, parse_override
from mmdiffusion.training.data import BatchPlan
from mmdiffusion.training.model import fold_audio, fold_video, unfold_audio, unfold_video
from mmdiffusion.training.trainer import NonFiniteLossError, Trainer, _window_means, learning_rate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """Tiny models run fastest (and deterministically) on one thread, also on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------- config

def test_overrides_are_parsed_and_typed():
    config = apply_overrides(load_config("tiny"), [parse_override(o) for o in (
        "lr=1e-4", "batch_size=8", "data.size=16", "warmup_steps=0", "grad_clip=null",
        "model.unet.model_channels=64", "ema.rates=[0.9, 0.99]", "data.source=/some/folder", "lr=3")])
    assert config.lr == 3.0 and isinstance(config.lr, float)
    assert (config.batch_size, config.data.size, config.warmup_steps, config.grad_clip) == (8, 16, 0, None)
    assert config.model.unet == {"model_channels": 64} and config.ema.rates == (0.9, 0.99)
    assert config.data.source == "/some/folder"
    assert load_config("tiny").lr == PRESETS["tiny"].lr  # presets are not modified


@pytest.mark.parametrize("override, message", [
    ("nonsense=1", "unknown config key 'nonsense'"), ("data.nonsense=1", "unknown config key 'nonsense'"),
    ("batch_size=1.5", "'batch_size' must be int"), ("lr=-1", "lr=-1.0"), ("lr", "key=value"),
    ("ema.kind=fancy", "ema.kind='fancy'"), ("data=3", "section"),
])
def test_bad_overrides_raise(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(load_config("tiny"), [parse_override(override)])


def test_json_config_file_and_round_trip(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "micro", "steps": 7, "data": {"size": 16}, "model": {"unet": {"num_heads": 2}}}))
    config = load_config(path)
    assert (config.steps, config.data.size, config.data.frames) == (7, 16, PRESETS["micro"].data.frames)
    assert config.model.unet == {**PRESETS["micro"].model.unet, "num_heads": 2}
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config
    with pytest.raises(ValueError, match="preset name"):
        load_config(tmp_path / "missing.json")


def test_learning_rate_schedule():
    config = apply_overrides(load_config("micro"), {"lr": 1.0, "warmup_steps": 4, "steps": 14, "lr_decay": "cosine"})
    lrs = [learning_rate(config, s) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and math.isclose(lrs[9], 0.5) and lrs[-1] < 0.03


# -------------------------------------------------------------------------------------------- EMA

def _profile_width(sigma_rel: float, steps: int) -> float:
    """Relative std of the weights a power EMA gives the steps 1..T, measured through the averages
    of the trajectories s/T and (s/T)^2."""
    model = torch.nn.Linear(1, 2, bias=False).double()
    ema = EMA(model, kind="power", rates=[sigma_rel])
    for s in range(1, steps + 1):
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[s / steps], [(s / steps) ** 2]]))
        ema.update(model, s)
    first, second = ema.averages[0][0].double().flatten().tolist()
    return math.sqrt(second - first**2)


def test_power_ema_profile_has_the_requested_width():
    assert math.isclose(power_exponent(0.1), 6.94, abs_tol=0.01)   # EDM2's gamma for sigma_rel = 0.10
    for sigma in (0.05, 0.1, 0.2):
        gamma = power_exponent(sigma)
        assert math.isclose(math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))), sigma, rel_tol=1e-9)
        assert math.isclose(_profile_width(sigma, 4000), sigma, rel_tol=0.02)
    with pytest.raises(ValueError, match="sigma_rel"):
        power_exponent(0.3)


def test_classic_ema_closed_form_and_state():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, kind="classic", rates=[0.5, 0.999])
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, 1)   # decay min(rate, 2 / 11)
    for average, rate in zip(ema.averages, (0.5, 0.999)):
        beta = min(rate, 2 / 11)
        for a, s in zip(average, start):
            torch.testing.assert_close(a, beta * s + (1 - beta) * (s + 1))
    clone = EMA(torch.nn.Linear(2, 1), kind="classic", rates=[0.5, 0.999])
    clone.load_state_dict(ema.state_dict())
    target = clone.copy_to(torch.nn.Linear(2, 1), index=1)
    for p, a in zip(target.parameters(), ema.averages[1]):
        torch.testing.assert_close(p.detach(), a)
    with pytest.raises(ValueError, match="power"):
        EMA(model, kind="power", rates=[0.1]).load_state_dict(ema.state_dict())


# ------------------------------------------------------------------------------------ checkpoints

def test_checkpoints_are_atomic_and_pruned(tmp_path):
    (tmp_path / ".tmp-ckpt-00000009-123").write_bytes(b"half a file")   # a save killed midway
    assert latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 4 and torch.equal(state["w"], torch.full((3,), 4.0))


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint(tmp_path, 0, {"rng": rng_state()})
    draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.rand(5), np.random.rand(5), random.random()
    set_rng_state(load_checkpoint(latest_checkpoint(tmp_path))["rng"])   # weights_only load
    assert torch.equal(torch.rand(3), draws[0])
    assert np.array_equal(np.random.rand(3), draws[1])
    assert [random.random() for _ in range(3)] == draws[2]


# ----------------------------------------------------------------------------------- data, model

@given(st.integers(1, 40), st.integers(1, 8), st.integers(0, 5), st.integers(0, 100))
def test_batch_plan_shards_one_process_order(items, batch, world_log, step):
    world = [1, 2, 4][world_log % 3]
    batch *= world
    if items < batch:
        items = batch
    single = BatchPlan(items, batch, seed=7)
    epoch, index = single.position(step)
    whole = single.batches(epoch, index)[0]
    shares = [BatchPlan(items, batch, seed=7, rank=r, world_size=world).batches(epoch, index)[0] for r in range(world)]
    assert sum(shares, []) == whole and len(set(whole)) == batch


def test_folding_is_an_exact_permutation():
    video, audio = torch.randn(2, 3, 3, 8, 8), torch.randn(2, 2, 96)
    fv, fa = fold_video(video, 4), fold_audio(audio, 32)
    assert fv.shape == (2, 3, 48, 2, 2) and fa.shape == (2, 64, 3)
    assert torch.equal(fv[0, 0, :16, 0, 0].reshape(4, 4), video[0, 0, 0, :4, :4])   # channel c p^2 + i p + j
    assert torch.equal(fa[1, 32 + 5], audio[1, 1, 5::32])                            # channel c k + j: samples n k + j
    assert torch.equal(unfold_video(fv, 4), video) and torch.equal(unfold_audio(fa, 32), audio)


# --------------------------------------------------------------------------------------- trainer

def _train_cli(out: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "mmdiffusion", "train", "--config", "micro", "--out", str(out), "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final_state(out: Path) -> dict:
    state = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert state["step"] == 12
    return state


def test_killed_run_resumes_bit_identically(tmp_path):
    """SIGKILL a training process right after its first checkpoint, restart it: the final model,
    EMA and optimiser state equal those of an uninterrupted run exactly."""
    settings = ("steps=12", "ckpt_every=3", "keep_last=2", "batch_size=2")
    reference = _train_cli(tmp_path / "reference", *settings)
    killed = _train_cli(tmp_path / "killed", *settings)
    deadline = time.monotonic() + 120
    while latest_checkpoint(tmp_path / "killed" / "checkpoints") is None:
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[0]
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL   # it was killed mid-run, not after finishing
    interrupted_at = load_checkpoint(latest_checkpoint(tmp_path / "killed" / "checkpoints"))["step"]
    assert interrupted_at < 12
    resumed = _train_cli(tmp_path / "killed", *settings)
    out = resumed.communicate()[0]
    assert resumed.returncode == 0 and "resuming from" in out, out
    assert reference.wait() == 0, reference.communicate()[0]

    a, b = _final_state(tmp_path / "reference"), _final_state(tmp_path / "killed")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for avg_a, avg_b in zip(a["ema"]["averages"], b["ema"]["averages"]):
        assert all(torch.equal(avg_a[k], avg_b[k]) for k in avg_a)
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s_a[k], s_b[k]) for k in s_a)
    log = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 13))   # steps after the checkpoint logged once


def test_resume_on_a_dataset_that_shrank_warns_and_goes_on(tmp_path, one_thread):
    """A run resumed where its data now has fewer clips (a video folder lost files) warns, and a
    saved batch position past the new epoch's end moves on to the next epoch instead of hanging."""
    config = apply_overrides(load_config("micro"), {"steps": 1, "ckpt_every": 1})
    Trainer(config, tmp_path, progress=False).fit()
    path = latest_checkpoint(tmp_path / "checkpoints")
    state = load_checkpoint(path)
    assert state["data"] == {"epoch": 0, "index": 1, "clips": config.data.clips}
    state["data"].update(index=999, clips=config.data.clips + 8)
    torch.save(state, path)
    with pytest.warns(UserWarning, match="trained on 40 clips, the data now has 32"):
        resumed = Trainer(apply_overrides(config, {"steps": 2}), tmp_path, progress=False)
    assert resumed.position == (1, 0)
    resumed.fit()
    assert resumed.step == 2


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, one_thread):
    config = apply_overrides(load_config("micro"), {"steps": 10, "ckpt_every": 2, "keep_last": 2})
    trainer = Trainer(config, tmp_path, progress=False)
    training_loss = trainer.diffusion.training_loss

    def poisoned(*args, **kwargs):
        loss, parts = training_loss(*args, **kwargs)
        return (loss * math.nan, parts) if trainer.step == 5 else (loss, parts)

    trainer.diffusion.training_loss = poisoned
    with pytest.raises(NonFiniteLossError, match=r"step 6: loss=nan.*ckpt-00000004\.pt"):
        trainer.fit()
    assert trainer.step == 5
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-00000002.pt", "ckpt-00000004.pt"]
    state = load_checkpoint(tmp_path / "checkpoints" / "ckpt-00000004.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(p).all() for p in trainer.net.parameters())   # the bad step did not update
    resumed = Trainer(config, tmp_path, progress=False)                      # and the run can go on
    assert resumed.step == 4 and resumed.resumed_from.name == "ckpt-00000004.pt"


@pytest.mark.parametrize("kind", ["videos", "shards"])
def test_trains_on_real_clip_folders(tmp_path, kind, one_thread):
    """`data.source` may be a folder of videos or of shards (`prepare`); the audio scale is measured."""
    from mmdiffusion.data import synth_clip, write_shards
    from mmdiffusion.media import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):   # 0.8 s files: a 0.4 s clip has room to start at random positions
        video, audio = synth_clip(i, frames=8, size=8, sample_rate=8000)
        write_video(videos / f"clip{i}.mp4", video, audio, 10, 8000)
    source = videos if kind == "videos" else tmp_path / "shards"
    if kind == "shards":
        write_shards(videos, source, fps=10, size=8, sample_rate=8000, progress=False)
    config = apply_overrides(load_config("micro"), {"data.source": str(source), "batch_size": 2, "steps": 2})
    trainer = Trainer(config, tmp_path / "run", progress=False)
    assert len(trainer.dataset) == 3 and 1 < trainer.audio_scale < 10
    trainer.fit()
    assert load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))["step"] == 2


def test_gradient_checkpointing_changes_nothing_and_bf16_runs(tmp_path, one_thread):
    """Recomputation reuses the RS-MMA shifts and RNG state: the weights are bit-identical."""
    base = apply_overrides(load_config("micro"), {"steps": 2})
    runs = {}
    for name, overrides in (("plain", {}), ("checkpointed", {"grad_checkpointing": True}),
                            ("bf16", {"precision": "bf16"})):
        trainer = Trainer(apply_overrides(base, overrides), tmp_path / name, progress=False)
        trainer.fit()
        runs[name] = trainer.net
    assert runs["checkpointed"].config.use_checkpoint and runs["bf16"].config.autocast == "bfloat16"
    for (name, a), b in zip(runs["plain"].state_dict().items(), runs["checkpointed"].state_dict().values()):
        assert torch.equal(a, b), name
    logged = json.loads((tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(logged["loss"]) and logged["loss"] > 0


def test_bf16_weights_train_float32_master_weights_and_resume_exactly(tmp_path, one_thread):
    """precision "bf16-weights": the passes run on a bf16 copy, the optimizer and checkpoints hold
    float32 weights. They train bit for bit as bf16 autocast does (which casts the float32 weights
    in every step); a resumed run re-rounds its copy from them and continues exactly."""
    config = apply_overrides(load_config("micro"), {"steps": 2, "precision": "bf16-weights", "ckpt_every": 1})
    moved, trained = {}, {}
    for precision in ("fp32", "bf16", "bf16-weights"):
        straight = Trainer(apply_overrides(config, {"precision": precision}), tmp_path / precision, progress=False)
        before = {k: v.clone() for k, v in straight.net.state_dict().items()}
        straight.fit()
        trained[precision] = straight.net.state_dict()
        moved[precision] = {k for k, v in trained[precision].items() if not torch.equal(v, before[k])}
    assert moved["bf16-weights"] == moved["fp32"] and moved["fp32"]  # the same weights learn
    for name, w in trained["bf16-weights"].items():
        assert torch.equal(w, trained["bf16"][name]), name
    work = straight.master.work.net
    assert work.video_in.spatial.weight.dtype == torch.bfloat16 and work.config.autocast is None
    for (name, w), m in zip(work.state_dict().items(), straight.net.state_dict().values()):
        assert m.dtype == torch.float32, name
        assert torch.equal(w, m.to(w.dtype)), name      # the copy is the master, rounded

    first = Trainer(apply_overrides(config, {"steps": 1}), tmp_path / "resumed", progress=False)
    first.fit()
    resumed = Trainer(config, tmp_path / "resumed", progress=False)
    assert resumed.step == 1
    resumed.fit()
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name


def test_fp16_weights_skip_overflowing_steps_and_checkpoint_the_loss_scale(tmp_path, one_thread):
    """precision "fp16-weights" (on the reference ops: mmattn's CPU kernels take no fp16) scales the
    loss; a step whose gradients overflow leaves the float32 weights as they were and halves the
    scale, which checkpoints keep."""
    config = apply_overrides(load_config("micro"), {"steps": 1, "precision": "fp16-weights",
                                                    "model.unet.impl": "reference"})
    trainer = Trainer(config, tmp_path / "run", progress=False)
    assert trainer.master.work.net.dtype == torch.float16
    video, audio = next(iter(trainer.plan.loader(trainer.dataset, 0, 0, workers=0)))
    scaler_state = trainer.scaler.state_dict()
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}

    trainer.scaler.load_state_dict({**scaler_state, "scale": 2.0 ** 40})  # fp16 gradients overflow
    ema_before = [{k: v.clone() for k, v in avg.items()} for avg in trainer.ema.state_dict()["averages"]]
    values = trainer.train_step(video, audio)
    assert values["skipped"] == 1.0 and values["loss_scale"] == 2.0 ** 40 and not math.isfinite(values["grad_norm"])
    assert all(torch.equal(v, before[k]) for k, v in trainer.net.state_dict().items())
    for avg, old in zip(trainer.ema.state_dict()["averages"], ema_before):  # nor the EMA
        assert all(torch.equal(v, old[k]) for k, v in avg.items())
    assert trainer.scaler.get_scale() == 2.0 ** 39

    trainer.scaler.load_state_dict({**scaler_state, "scale": 2.0 ** 4})
    values = trainer.train_step(video, audio)
    assert values["skipped"] == 0.0 and math.isfinite(values["grad_norm"])
    assert any(not torch.equal(v, before[k]) for k, v in trainer.net.state_dict().items())
    for w, m in zip(trainer.master.work.parameters(), trainer.net.parameters()):
        assert m.dtype == torch.float32 and torch.equal(w, m.to(w.dtype))
    trainer.save()
    resumed = Trainer(apply_overrides(config, {"steps": 3}), tmp_path / "run", progress=False)
    assert resumed.step == 2 and resumed.scaler.get_scale() == trainer.scaler.get_scale() == 2.0 ** 4
    resumed.fit()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 3 and math.isfinite(logged[-1]["loss"]) and "loss_scale" in logged[-1]
    # the log averages what is finite: a skipped step's gradient norm is left out
    window = [{"loss": 1.0, "grad_norm": math.nan, "skipped": 1.0}, {"loss": 3.0, "grad_norm": 2.0, "skipped": 0.0}]
    assert _window_means(window) == {"loss": 2.0, "grad_norm": 2.0, "skipped": 0.5}
    assert _window_means(window[:1])["grad_norm"] is None


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(tmp_path):
    """A preempted run (SIGTERM) finishes its step, logs it, writes a checkpoint of it and exits
    with 128 + 15; the same command resumes and ends as an uninterrupted run does."""
    settings = ("steps=12", "ckpt_every=100", "batch_size=2")   # no periodic checkpoint before the end
    reference = _train_cli(tmp_path / "reference", *settings)
    stopped = _train_cli(tmp_path / "stopped", *settings)
    log = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert stopped.poll() is None and time.monotonic() < deadline, stopped.communicate()[0]
        time.sleep(0.01)
    stopped.send_signal(signal.SIGTERM)
    out = stopped.communicate()[0]
    assert stopped.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in out, out
    at = load_checkpoint(latest_checkpoint(tmp_path / "stopped" / "checkpoints"))["step"]
    assert 2 <= at < 12 and json.loads(log.read_text().splitlines()[-1])["step"] == at
    resumed = _train_cli(tmp_path / "stopped", *settings)
    assert resumed.wait() == 0 and reference.wait() == 0, resumed.communicate()[0]
    a, b = _final_state(tmp_path / "reference"), _final_state(tmp_path / "stopped")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, 13))
