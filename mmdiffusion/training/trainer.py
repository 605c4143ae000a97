"""The training loop: AdamW with warm-up, gradient clipping, EMA, checkpoints, exact resumption, DDP.

Reproducibility. Every random draw of a step is a function of the run's seed and the step:

* the clips come from `BatchPlan` (seeded by `(seed, epoch)`), read by a DataLoader with its own
  generator;
* timesteps and noise of global sample `j` at step `s` come from a generator seeded by
  `(seed, s, j)`, so they do not depend on how the batch is split over ranks;
* draws inside the model (RS-MMA shifts, dropout) use torch's global generators, seeded identically
  on every rank and saved in checkpoints (rank 0's: the ranks' states are equal). So all ranks
  draw the same shifts, as one process would for the whole batch; dropout mixes the rank into
  its drawn seeds (`mmattn.nn.set_dropout_stream`), so ranks drop different elements.

A checkpoint holds the U-Net, EMA, optimiser, step, data position and all global RNG states, so a
run killed at any point and restarted continues bit-identically (on CPU; CUDA kernels may be
non-deterministic). Data-parallel ranks stay identical: gradients are averaged by DDP, and with
dropout off the result matches one process with the same global batch up to float summation order.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mmattn.nn import set_dropout_stream

from ..checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..ema import EMA
from .config import TrainConfig
from .data import BatchPlan, audio_scale, build_dataset, derived_seed
from .distributed import DistContext, all_reduce_mean, init_distributed
from .master import MasterWeights
from .model import WEIGHT_DTYPES, Patched, build_model

__all__ = ["Trainer", "NonFiniteLossError", "CHECKPOINT_FORMAT", "learning_rate"]

CHECKPOINT_FORMAT = "mmdiffusion-train/1"
# Signals that stop a run after its current step, with a checkpoint (a second SIGINT: at once).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Config sections that must match to resume a run (the rest, e.g. steps or lr, may change).
RESUME_KEYS = ("data", "model", "diffusion", "ema", "batch_size", "seed")


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN or infinite; training stopped before the update."""


def learning_rate(config: TrainConfig, step: int) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up over `warmup_steps`, then
    constant or cosine decay to 0 at `steps`."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_decay == "cosine":
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr


def _window_means(window: list[dict[str, float]]) -> dict[str, float | None]:
    """Per key, the mean of the finite values logged over a window of steps (None if there are
    none): the gradient norm of a step skipped for overflowing gradients is not finite."""
    means = {}
    for key in window[0]:
        finite = [w[key] for w in window if math.isfinite(w[key])]
        means[key] = sum(finite) / len(finite) if finite else None
    return means


def _seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Trainer:
    """Trains `config` into the folder `out` (`config.json`, `metrics.jsonl`, `checkpoints/`).

    With a checkpoint already in `out/checkpoints`, the run resumes from the newest one (its
    `RESUME_KEYS` must match `config`). Under `torchrun` every rank builds a Trainer; rank 0 writes
    files. `device=None`: `cuda:<LOCAL_RANK>` when available, else the CPU.
    """

    def __init__(self, config: TrainConfig, out: str | Path, *, device: str | torch.device | None = None,
                 progress: bool = True) -> None:
        self.config, self.out = config, Path(out)
        self.ctx: DistContext = init_distributed(device)
        self.device = self.ctx.device
        self.progress = progress and self.ctx.is_main
        self.ckpt_dir = self.out / "checkpoints"
        _seed_globals(config.seed)

        latest = latest_checkpoint(self.ckpt_dir)
        self.dataset = build_dataset(config.data, seed=config.seed, progress=self.progress)
        self.audio_scale = 1.0 if latest else audio_scale(self.dataset, config.data.audio_rms)  # else: resumed
        self.plan = BatchPlan(len(self.dataset), config.batch_size, seed=config.seed,
                              rank=self.ctx.rank, world_size=self.ctx.world_size)
        self.model: Patched = build_model(config, self.device)
        self.net: nn.Module = self.model.net
        # 16-bit weights: the passes run on a 16-bit copy; optimizer, EMA and checkpoints use the model
        weight_dtype = WEIGHT_DTYPES.get(config.precision)
        self.master = None if weight_dtype is None else MasterWeights(self.model, weight_dtype)
        # fp16 gradients underflow unless the loss is scaled; a step whose gradients overflow is skipped
        self.scaler = torch.amp.GradScaler(self.device.type) if weight_dtype == torch.float16 else None
        trained = self.model if self.master is None else self.master.work
        set_dropout_stream(trained, self.ctx.rank)  # one generator state on all ranks, masks of their own
        self.train_model: nn.Module = (DistributedDataParallel(trained, device_ids=[self.device]
                                                               if self.device.type == "cuda" else None)
                                       if self.ctx.distributed else trained)
        self.diffusion = config.diffusion.build()
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay)
        self.ema = EMA(self.net, kind=config.ema.kind, rates=config.ema.rates)
        self.step = 0
        self.position = (0, 0)
        self.stopped_by: int | None = None  # the signal that stopped `fit` early, if one did
        self._signal: int | None = None     # a stop signal this process received during `fit`
        self.resumed_from: Path | None = None
        if latest is not None:
            self._resume(latest)
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(config.to_json())
            self._trim_metrics()

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint stores (see the module docstring)."""
        epoch, index = self.position
        return {"format": CHECKPOINT_FORMAT, "step": self.step, "config": self.config.to_json(),
                "audio_scale": self.audio_scale, "model": self.net.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": rng_state(self.device),
                "data": {"epoch": epoch, "index": index, "clips": len(self.dataset)},
                "loss_scaler": None if self.scaler is None else self.scaler.state_dict()}

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0; other ranks wait for it)."""
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(self.ckpt_dir, self.step, self.state_dict(), keep_last=self.config.keep_last)
        if self.ctx.distributed:
            dist.barrier()
        return path

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
        saved, current = json.loads(state["config"]), json.loads(self.config.to_json())
        differ = [key for key in RESUME_KEYS if saved[key] != current[key]]
        if differ:
            raise ValueError(f"cannot resume from {path}: config differs in {differ}; use another --out "
                             f"folder or the run's own config ({self.out / 'config.json'})")
        self.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("loss_scaler"):
            self.scaler.load_state_dict(state["loss_scaler"])
        self.audio_scale = float(state["audio_scale"])
        self.step = int(state["step"])
        epoch, index = int(state["data"]["epoch"]), int(state["data"]["index"])
        clips = state["data"].get("clips", len(self.dataset))
        if clips != len(self.dataset):
            warnings.warn(f"{path} was trained on {clips} clips, the data now has {len(self.dataset)}: "
                          "the batch order differs from the original run's from here on")
        # a smaller dataset may have no batch `index` in this epoch: go on with the next one
        self.position = (epoch, index) if index < self.plan.batches_per_epoch else (epoch + 1, 0)
        set_rng_state(state["rng"], self.device)
        if self.master is not None:
            self.master.master_to_work()
        self.resumed_from = path

    def _trim_metrics(self) -> None:
        """Drop log lines of steps after the resumed checkpoint (they are trained again) and a last
        line cut short by a crash."""
        log = self.out / "metrics.jsonl"
        if not log.exists():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        log.write_text("".join(line + "\n" for line in kept))

    # --------------------------------------------------------------------------------- training
    def _noise(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Timesteps `[b]` and noise for this rank's samples, keyed by `(seed, step, global index)`."""
        generator = torch.Generator(self.device)
        first = self.ctx.rank * self.plan.local_batch
        t, noise_v, noise_a = [], [], []
        for j in range(video.shape[0]):
            generator.manual_seed(derived_seed(self.config.seed, self.step, first + j))
            t.append(torch.randint(self.diffusion.num_steps, (1,), generator=generator, device=self.device))
            noise_v.append(torch.randn(video.shape[1:], generator=generator, device=self.device, dtype=video.dtype))
            noise_a.append(torch.randn(audio.shape[1:], generator=generator, device=self.device, dtype=audio.dtype))
        return torch.cat(t), (torch.stack(noise_v), torch.stack(noise_a))

    def train_step(self, video: torch.Tensor, audio: torch.Tensor) -> dict[str, float]:
        """One optimiser step on this rank's clips (`video [b, F, 3, S, S]`, `audio [b, 1, L]`, data
        units); returns the rank-averaged loss terms, gradient norm and learning rate (with loss
        scaling also the scale, and `skipped` 1.0 where overflowing gradients skipped the update)."""
        video = video.to(self.device, non_blocking=True)
        audio = audio.to(self.device, non_blocking=True) * self.audio_scale
        t, noise = self._noise(video, audio)
        lr = learning_rate(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, parts = self.diffusion.training_loss(self.train_model, video, audio, t=t, noise=noise)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.master is not None:
            self.master.grads_to_master()
        skipped = False  # with loss scaling, overflowing gradients skip the update (and lower the scale)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            # what scaler.step will decide (torch keeps it per optimizer; no public accessor)
            skipped = any(bool(found) for found in self.scaler._found_inf_per_device(self.optimizer).values())
        clip = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip)
        stats = all_reduce_mean(torch.stack([loss.detach(), parts["video"].detach(), parts["audio"].detach()]).float())
        values = dict(zip(("loss", "loss_video", "loss_audio"), stats.tolist()), grad_norm=float(grad_norm), lr=lr)
        if self.scaler is not None:
            values.update(loss_scale=self.scaler.get_scale(), skipped=float(skipped))
        if not all(math.isfinite(v) for k, v in values.items() if k != "grad_norm" or not skipped):
            last = latest_checkpoint(self.ckpt_dir)
            raise NonFiniteLossError(
                f"non-finite training values at step {self.step + 1}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                + f". Weights were not updated. Last good checkpoint: {last or 'none yet'}. "
                  "Try a lower lr, a longer warm-up or gradient clipping.")
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)  # no update if the gradients overflowed
            self.scaler.update()              # then halves the scale; doubles it after 2000 good steps
        if self.master is not None:
            self.master.master_to_work()
        self.step += 1
        if not skipped:
            self.ema.update(self.net, self.step)
        return values

    def fit(self) -> Path | None:
        """Train until `config.steps`; returns the final checkpoint's path (None on ranks > 0).

        SIGINT or SIGTERM (a preempted job) stops the run after the current step: every rank stops
        at the same step, a checkpoint is written and `stopped_by` names the signal; the same
        command resumes. A second SIGINT interrupts at once (the last checkpoint stays)."""
        cfg = self.config
        log = (self.out / "metrics.jsonl").open("a") if self.ctx.is_main else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        window: list[dict[str, float]] = []
        tick = time.perf_counter()
        try:
            with self._stop_on_signals():
                while self.step < cfg.steps and self.stopped_by is None:
                    epoch, index = self.position
                    for video, audio in self.plan.loader(self.dataset, epoch, index, workers=cfg.data.workers):
                        window.append(self.train_step(video, audio))
                        index += 1
                        self.position = (epoch, index) if index < self.plan.batches_per_epoch else (epoch + 1, 0)
                        bar.update(1)
                        stop = self._stop_requested()
                        if self.step % cfg.log_every == 0 or self.step == cfg.steps or stop:
                            now = time.perf_counter()
                            entry = {"step": self.step, **_window_means(window),
                                     "samples_per_s": len(window) * cfg.batch_size / (now - tick)}
                            window, tick = [], now
                            bar.set_postfix(loss=f"{entry['loss']:.4f}")
                            if log is not None:
                                log.write(json.dumps(entry) + "\n")
                                log.flush()
                        if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps or stop:
                            self.save()
                        if stop:
                            self.stopped_by = self._signal or signal.SIGTERM  # another rank's signal
                        if self.step >= cfg.steps or stop:
                            break
        finally:
            bar.close()
            if log is not None:
                log.close()
        return latest_checkpoint(self.ckpt_dir) if self.ctx.is_main else None

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """Inside, `STOP_SIGNALS` request a stop instead of ending the process (main thread only:
        Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # asked twice: stop now
            self._signal = signum

        previous = {s: signal.signal(s, request_stop) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_requested(self) -> bool:
        """Whether any rank got a stop signal (one small all-reduce per step under DDP)."""
        stop = self._signal is not None
        if self.ctx.distributed:
            flag = torch.tensor([float(stop)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop
