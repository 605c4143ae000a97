"""Data-parallel training on CPU: two gloo ranks (torch.multiprocessing) keep identical parameters
and match one process trained on the same global batches."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmdiffusion.training.config import TrainConfig, apply_overrides, load_config
from mmdiffusion.training.model import build_model
from mmdiffusion.training.trainer import Trainer

# Dropout off (as in the micro preset): with it, each rank would draw its own masks.
SETTINGS = {"steps": 3, "batch_size": 4, "ckpt_every": 100, "lr": 1e-3, "warmup_steps": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, out: str, config_json: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        trainer = Trainer(TrainConfig.from_dict(json.loads(config_json)), out, device="cpu", progress=False)
        assert trainer.ctx.world_size == world_size and trainer.plan.local_batch == 2
        from mmattn.nn import Dropout   # each rank's dropout draws its own masks
        assert {m.stream for m in trainer.model.modules() if isinstance(m, Dropout)} == {rank}
        trainer.fit()
        torch.save(trainer.net.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_single_process(tmp_path):
    config = apply_overrides(load_config("micro"), SETTINGS)
    assert config.model.unet.get("dropout", 0.0) == 0.0
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path / "ddp"), config.to_json()), nprocs=2)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in range(2)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Trainer(config, tmp_path / "single", device="cpu", progress=False)
        single.fit()
    finally:
        torch.set_num_threads(threads)

    # Same batches, noise, timesteps and RS-MMA shifts: the logged rank-averaged losses and gradient
    # norms equal one process's up to float summation order.
    logs = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("ddp", "single")]
    assert [e["step"] for e in logs[0]] == [e["step"] for e in logs[1]] == [1, 2, 3]
    for a, b in zip(*logs):
        for key in ("loss", "loss_video", "loss_audio", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-6 * abs(b[key]), (key, a, b)
    # Parameters: the ranks never drift apart, and their update matches one process's. Adam divides
    # by the gradient's RMS, so where a gradient is ~0 the all-reduce's rounding can change that
    # element's update by a sizeable part of a step; the update as a whole agrees to 1%.
    torch.manual_seed(config.seed)   # as the Trainer does before building its model
    init = build_model(config).net.state_dict()
    ddp_update, single_update = [], []
    for name, value in single.net.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        ddp_update.append((ranks[0][name] - init[name]).flatten())
        single_update.append((value - init[name]).flatten())
    ddp_update, single_update = torch.cat(ddp_update), torch.cat(single_update)
    assert single_update.norm() > 10 * SETTINGS["lr"]   # training moved the weights: the check is not vacuous
    assert (ddp_update - single_update).norm() < 1e-2 * single_update.norm()
    assert (ddp_update - single_update).abs().median() < 1e-6 * SETTINGS["lr"]
