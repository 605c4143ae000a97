"""Where a model step's time goes: torch.profiler over one forward+backward of each variant.

    python -m benchmarks.model_profile [--device cpu|cuda] [--batch N] [--variants fused:fp16w,...]
                                       [--preset paper-64] [--rows 30] [--published PATH]
                                       [--count-ops [--gpu-paths]]

Variants are those of `benchmarks.model` (`impl:precision[:recompute|keep]`, `published:fp16`).
For each, one warm-up step, then one profiled step; prints the operators sorted by their own
time on the device (CUDA kernels on GPU, CPU time on CPU), with their share of the step.
`--count-ops` instead counts the operators the step dispatches, per phase: the host's work per
step, which bounds a GPU step at small batches and can be counted without a GPU. With
`--gpu-paths` (on CPU) the blocks take the code paths they take on a GPU where those differ
(`gpu_paths`): the count is then the GPU step's, up to the kernels' own internals.
"""
from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from pathlib import Path
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import device_name, sync
from benchmarks.model import build_variants, make_inputs, step_functions
import mmattn.nn.conv
import mmattn.nn.recompute
from mmdiffusion.unet import UNetConfig


def profile_step(step, device: torch.device, rows: int) -> str:
    """The profiler's operator table of one call of `step`, sorted by self device time."""
    step()
    sync(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=70)


class CountOps(TorchDispatchMode):
    """Counts each dispatched operator by (phase, name); the backward runs inside autograd nodes."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[tuple[str, str]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        phase = "backward" if torch._C._current_autograd_node() is not None else "forward"
        self.counts[phase, str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def gpu_paths():
    """Inside, CPU tensors take the blocks' GPU code paths where the two differ: the attention
    blocks recompute q/k/v (`recomputes_projections`), and the temporal convolution's weight
    gradient is torch's (`temporal_conv` on CPU has its own)."""
    with (mock.patch.object(mmattn.nn.recompute, "recomputes_projections", lambda device: True),
          mock.patch.object(mmattn.nn.conv, "temporal_conv", mmattn.nn.conv._conv_over_frames)):
        yield


def count_ops(step, rows: int) -> str:
    """The operators one call of `step` dispatches: totals per phase and the most frequent."""
    step()
    with CountOps() as mode:
        step()
    totals = Counter()
    for (phase, _), n in mode.counts.items():
        totals[phase] += n
    lines = [f"{sum(totals.values())} ops: " + ", ".join(f"{p} {n}" for p, n in sorted(totals.items()))]
    lines += [f"{n:6d}  {phase:8s}  {name}" for (phase, name), n in mode.counts.most_common(rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="default: 1 on CPU, 4 on CUDA")
    parser.add_argument("--variants", default="fused:fp16w", help="comma-separated, as in benchmarks.model")
    parser.add_argument("--preset", default="paper-64")
    parser.add_argument("--rows", type=int, default=30, help="operators shown per variant")
    parser.add_argument("--published", type=Path, help="a checkout of researchmm/MM-Diffusion")
    parser.add_argument("--count-ops", action="store_true", help="count dispatched operators instead of profiling")
    parser.add_argument("--gpu-paths", action="store_true", help="with --count-ops on CPU: count the GPU's code paths")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch or (4 if device.type == "cuda" else 1)
    config = UNetConfig.preset(args.preset)
    variants = args.variants.split(",")
    models = build_variants(config, variants, device, args.published)
    video, audio, timesteps = make_inputs(config, batch, device)
    for variant, model in models.items():
        step = step_functions(model, video, audio, timesteps)["forward+backward"]
        print(f"\n## {variant}: {args.preset} forward+backward, batch {batch}, {device_name(device)}\n")
        with gpu_paths() if args.gpu_paths else contextlib.nullcontext():
            print(count_ops(step, args.rows) if args.count_ops else profile_step(step, device, args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
