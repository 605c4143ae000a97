"""Timing and memory helpers shared by the benchmarks."""
from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(names: list[str], rounds: int) -> Iterator[str]:
    """The order of `rounds` rounds of interleaved runs: as given, then reversed, and so on, so
    that no function is always the later one (a paper-64 CPU step run right after another was
    ~10% faster, in both orders)."""
    for i in range(rounds):
        yield from names if i % 2 == 0 else names[::-1]


def time_round_robin(fns: dict[str, Callable[[], object]], device: torch.device, repeat: int,
                     warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, interleaved so that machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for name in interleaved(list(fns), repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fns[name]()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def cuda_peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory allocated by one call beyond what was allocated before it."""
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def start_rss_peak() -> int:
    """Reset the resident set's high-water mark to the current resident set and return that
    (bytes). Linux only: raises OSError elsewhere."""
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_bytes("VmRSS")


def rss_peak() -> int:
    """The resident set's high-water mark (bytes) since `start_rss_peak`. Linux only."""
    return _proc_status_bytes("VmHWM")


def peak_rss_growth(fn: Callable[[], object]) -> int:
    """Growth of the resident set's high-water mark over the current resident set during `fn()`.

    Linux: the high-water mark is reset first (/proc/self/clear_refs); elsewhere it falls back
    to the lifetime peak (getrusage), which can hide allocations below an earlier peak.
    """
    try:
        base = start_rss_peak()
        fn()
        return max(0, rss_peak() - base)
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        fn()
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)


# glibc raises its mmap threshold to the size of any mapped block that is freed, so after a
# warm-up call the big blocks come from the heap, where memory freed by the warm-up stays
# resident and is handed out again without growing the resident set: a call could then seem
# to need less than its own outputs. A fixed threshold maps every block of 128 KiB or more
# afresh and unmaps it on free, so the probe sees each call's big allocations.
_MMAP_THRESHOLD = 128 * 1024
_PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD)}


def fix_mmap_threshold() -> None:
    """`_PROBE_ENV` for this process (glibc's mallopt): each big block is mapped and unmapped
    afresh, so resident-set probes see what a call allocates. A no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, _MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def cpu_peak_extra_bytes(module: str, *probe_args: str) -> int:
    """Peak resident memory of one call, measured in a fresh process (`module --probe ...`)."""
    out = subprocess.run([sys.executable, "-m", module, "--probe", *probe_args],
                         capture_output=True, text=True, check=True, env={**os.environ, **_PROBE_ENV})
    return int(out.stdout.strip().splitlines()[-1])


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; columns are (key, header, format spec)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(("" if r.get(k) is None else format(r[k], f)) for k, _, f in columns) + " |"
            for r in rows]
    return "\n".join([head, rule, *body])
