"""Crash-safe training checkpoints and random-number-generator state.

A checkpoint is one file, `<dir>/ckpt-<step:08d>.pt`, written atomically: the state is saved to a
hidden temporary file in the same folder, flushed and fsync'ed, renamed over the final name (an
atomic operation on POSIX file systems) and the folder is fsync'ed. A crash at any moment leaves
either the previous set of checkpoints or the new one, never a truncated file; leftover temporary
files are ignored (and removed by the next save). Only the newest `keep_last` checkpoints are kept.

Files hold plain containers of tensors and numbers (no pickled classes), so they load with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint",
           "rng_state", "set_rng_state"]

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
_TEMP_PREFIX = ".tmp-ckpt-"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest step first (temporary files excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in `directory`, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], *, keep_last: int = 3) -> Path:
    """Atomically write `state` as `<directory>/ckpt-<step>.pt`, then delete all but the newest
    `keep_last` checkpoints and any stale temporary files. Returns the checkpoint's path."""
    if step < 0 or keep_last < 1:
        raise ValueError(f"step must be >= 0 and keep_last >= 1, got {step}, {keep_last}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"ckpt-{step:08d}.pt"
    temp = directory / f"{_TEMP_PREFIX}{step:08d}-{os.getpid()}"
    try:
        with open(temp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink()
    for stale in directory.glob(_TEMP_PREFIX + "*"):
        stale.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (safely: `weights_only=True`)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def _cuda_device(device: torch.device | str | None) -> torch.device | None:
    """`device` if it is a CUDA device, else None."""
    device = None if device is None else torch.device(device)
    return device if device is not None and device.type == "cuda" else None


def rng_state(device: torch.device | str | None = None) -> dict[str, Any]:
    """States of every global generator a training step may draw from: torch CPU, torch CUDA (the
    generator of `device` if it is a CUDA device: the one this process trains on), numpy's legacy
    global generator and Python's `random`."""
    np_state = np.random.get_state(legacy=False)
    cuda = _cuda_device(device)
    return {
        "torch": torch.get_rng_state(),
        "cuda": None if cuda is None else torch.cuda.get_rng_state(cuda),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any], device: torch.device | str | None = None) -> None:
    """Restore generator states captured by `rng_state`; the saved CUDA state goes to `device`'s
    generator (if it is a CUDA device; the state may come from another device or machine)."""
    torch.set_rng_state(state["torch"])
    cuda_state, cuda = state["cuda"], _cuda_device(device)
    if isinstance(cuda_state, list):  # checkpoints before 2026-11-27: rank 0's view of every device
        cuda_state = cuda_state[0] if cuda_state else None  # the one rank 0 drew from (the ranks' agree)
    if cuda_state is not None and cuda is not None:
        torch.cuda.set_rng_state(cuda_state, cuda)
    numpy = state["numpy"]
    np.random.set_state({"bit_generator": numpy["bit_generator"],
                         "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
                         "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
