"""Model benchmark: the paper-64 CoupledUNet with the fused kernels vs `impl="reference"`.

    python -m benchmarks.model [--device cpu|cuda] [--batch N] [--variants fused:fp32,...]
                               [--repeat N] [--threads N] [--preset paper-64] [--out results.json]
                               [--published PATH-TO-MM-Diffusion-checkout]

Defaults: batch 1 and `CPU_VARIANTS` on CPU, batch 4 and `CUDA_VARIANTS` on CUDA. Precisions:
fp32; bf16, fp16 under torch.autocast (float32 weights, cast in every step); bf16w, fp16w with
16-bit weights (`mmattn.nn.cast_weights`, as the published fp16 model runs; training adds
float32 master weights). The blocks' recomputation: by default of values of 8 MiB or more,
`:recompute` of all, `:keep` of none. For each variant: forward (inference: eval mode, no
grad) and forward+backward (training mode, MSE loss, gradients from scratch) time, as the
median of runs interleaved across variants (in alternating order) so that machine noise hits
all alike, and the peak extra memory of a call (CUDA: allocator peak; CPU: peak resident set
size over the resident size before the call, after glibc's malloc_trim, in a pass of its own
after the timing: see `cpu_peaks`; Linux only). On CPU the process CPU time is reported too:
on a shared machine it tracks the work done far better than wall time; and so are the minor
page faults per call: every fresh page the allocator maps (glibc maps blocks of 32 MiB or more
afresh on every call) costs a fault, a visible share of a step's time. All variants share one
set of random weights.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import mmattn
from benchmarks.common import (device_name, fix_mmap_threshold, format_table, interleaved, rss_peak,
                               start_rss_peak, sync, write_json)
from benchmarks.published import published_model
from mmattn.nn import cast_weights, set_recompute
from mmdiffusion.unet import CoupledUNet, UNetConfig

# precision -> (autocast dtype name, weight dtype)
PRECISIONS = {"fp32": (None, None), "bf16": ("bfloat16", None), "fp16": ("float16", None),
              "bf16w": (None, torch.bfloat16), "fp16w": (None, torch.float16)}
# default variants; --published without --variants puts the published model first
# (a reference variant is compared with ours of the same precision)
CPU_VARIANTS = "fused:fp32,reference:fp32,fused:bf16"
CUDA_VARIANTS = "fused:fp16w,fused:fp16w:recompute,fused:fp16w:keep,fused:fp16,fused:bf16w,reference:bf16w"


def make_inputs(config: UNetConfig, batch: int, device: torch.device, seed: int = 0):
    """Random `(video, audio, timesteps)` of the config's shapes."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, *config.video_shape, generator=g).to(device)
    audio = torch.randn(batch, *config.audio_shape, generator=g).to(device)
    timesteps = torch.randint(0, 1000, (batch,), generator=g).to(device)
    return video, audio, timesteps


def step_functions(model: torch.nn.Module, video: torch.Tensor, audio: torch.Tensor,
                   timesteps: torch.Tensor) -> dict[str, Callable[[], object]]:
    """`forward` and `forward+backward` calls of any `model(video, audio, timesteps) ->
    (video, audio)` (ours or the published `MultimodalUNet`)."""
    target_v, target_a = torch.randn_like(video), torch.randn_like(audio)

    def forward():
        model.eval()
        with torch.no_grad():
            return model(video, audio, timesteps)

    def forward_backward():
        model.train()
        model.zero_grad(set_to_none=True)
        out_v, out_a = model(video, audio, timesteps)
        (F.mse_loss(out_v.float(), target_v) + F.mse_loss(out_a.float(), target_a)).backward()

    return {"forward": forward, "forward+backward": forward_backward}


@dataclasses.dataclass(frozen=True)
class Measurement:
    seconds: float                # median wall time per call
    cpu_seconds: float | None     # median process CPU time per call (CPU devices)
    peak_bytes: int | None        # largest peak extra memory over the timed calls
    page_faults: int | None       # median minor page faults per call (CPU devices)


def _reset_peak(device: torch.device) -> int | None:
    """Start a peak-memory window; returns the baseline (bytes) or None if unavailable."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    mmattn.empty_cpu_cache()  # its free blocks would hide in the baseline: the call's peak counts them
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages, so RSS = memory in use
        return start_rss_peak()
    except OSError:
        return None


def _peak(device: torch.device, base: int | None) -> int | None:
    if base is None:
        return None
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss_peak()
    return peak - base


def measure(fns: dict[str, Callable[[], object]], device: torch.device, repeat: int,
            warmup: int = 1, memory: bool = True) -> dict[str, Measurement]:
    """Time and (with `memory`) peak extra memory of each function, runs interleaved across
    functions so that machine noise hits all alike (in alternating order: `interleaved`)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[tuple[float, float, int | None, int]]] = {name: [] for name in fns}
    for name in interleaved(list(fns), repeat):
        sync(device)
        base = _reset_peak(device) if memory else None
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.process_time()
        fns[name]()
        sync(device)
        runs[name].append((time.perf_counter() - wall, time.process_time() - cpu, _peak(device, base),
                           resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    on_cpu = device.type != "cuda"
    return {name: Measurement(statistics.median(r[0] for r in rs),
                              statistics.median(r[1] for r in rs) if on_cpu else None,
                              None if rs[0][2] is None else max(r[2] for r in rs),
                              round(statistics.median(r[3] for r in rs)) if on_cpu else None)
            for name, rs in runs.items()}


RECOMPUTE = {"recompute": True, "keep": False}


def build_variants(config: UNetConfig, variants: list[str], device: torch.device,
                   published: Path | None = None) -> dict[str, torch.nn.Module]:
    """One model per `impl:precision[:recompute|keep]` variant, all with the weights of the
    first of ours (then cast for 16-bit weights). The optional last field forces the blocks'
    recomputation on or off (default: values of 8 MiB or more; `mmattn.nn.recompute`).
    `published:fp32|fp16` is the published model built from the checkout at `published` (its
    own random weights)."""
    models: dict[str, torch.nn.Module] = {}
    weights: dict[str, torch.Tensor] | None = None  # the first of ours', before any cast
    for variant in variants:
        impl, precision, *memory = variant.split(":")
        if impl == "published":
            if published is None:
                raise ValueError(f"variant {variant!r} needs --published PATH (a checkout of MM-Diffusion)")
            torch.manual_seed(0)
            models[variant] = published_model(config, published, precision).to(device)
            continue
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r} in {variant!r}")
        if len(memory) > 1 or (memory and memory[0] not in RECOMPUTE):
            raise ValueError(f"variant must be impl:precision[:recompute|keep], got {variant!r}")
        autocast, weight_dtype = PRECISIONS[precision]
        torch.manual_seed(0)
        model = CoupledUNet(dataclasses.replace(config, impl=impl, autocast=autocast)).to(device)
        if memory:
            set_recompute(model, RECOMPUTE[memory[0]])
        if weights is None:
            weights = {name: w.clone() for name, w in model.state_dict().items()}
        else:
            model.load_state_dict(weights)
        models[variant] = model if weight_dtype is None else cast_weights(model, weight_dtype)
    return models


def cpu_peaks(fns: dict[str, Callable[[], object]]) -> dict[str, int | None]:
    """Peak extra resident memory of one call of each function, on CPU, in a pass after all
    timing: from here on every block of 128 KiB or more is mapped afresh and unmapped on free,
    so the resident set sees each call's own allocations (with glibc's default, a call reuses
    blocks freed earlier without growing it). Fresh mappings also cost page faults, hence not
    while timing."""
    fix_mmap_threshold()
    cpu, peaks = torch.device("cpu"), {}
    for name, fn in fns.items():
        base = _reset_peak(cpu)
        fn()
        peaks[name] = _peak(cpu, base)
    return peaks


def run(config: UNetConfig, variants: list[str], batch: int, device: torch.device,
        repeat: int, published: Path | None = None) -> list[dict]:
    models = build_variants(config, variants, device, published)
    video, audio, timesteps = make_inputs(config, batch, device)
    modes = ("forward", "forward+backward")
    fns = {mode: {v: step_functions(m, video, audio, timesteps)[mode] for v, m in models.items()}
           for mode in modes}
    # CUDA: the allocator's peak of the timed calls; CPU: a pass of its own (`cpu_peaks`)
    results = {mode: measure(fns[mode], device, repeat=repeat, memory=device.type == "cuda")
               for mode in modes}
    if device.type == "cpu":
        for mode in modes:
            peaks = cpu_peaks(fns[mode])
            results[mode] = {v: dataclasses.replace(r, peak_bytes=peaks[v]) for v, r in results[mode].items()}
    rows = []
    for mode in modes:
        reference = {v.split(":")[1]: results[mode][v] for v in variants if v.startswith("reference:")}
        baseline = next((results[mode][v] for v in variants if v.startswith("published:")), None)
        for variant, r in results[mode].items():
            ref = reference.get(variant.split(":")[1])
            rows.append({"variant": variant, "mode": mode, "batch": batch, "seconds": r.seconds,
                         "cpu_seconds": r.cpu_seconds, "page_faults": r.page_faults,
                         "peak_mb": None if r.peak_bytes is None else r.peak_bytes / 2**20,
                         "reference_over_ours": None if ref is None else ref.seconds / r.seconds,
                         "reference_over_ours_cpu": (None if ref is None or r.cpu_seconds is None
                                                     else ref.cpu_seconds / r.cpu_seconds),
                         "published_over_ours": None if baseline is None else baseline.seconds / r.seconds,
                         "memory_over_published": (None if baseline is None or not baseline.peak_bytes
                                                   or r.peak_bytes is None
                                                   else r.peak_bytes / baseline.peak_bytes)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="default: 1 on CPU, 4 on CUDA")
    parser.add_argument("--variants", help="comma-separated impl:precision[:recompute|keep] "
                        "(precision fp32|bf16|fp16|bf16w|fp16w)")
    parser.add_argument("--repeat", type=int, help="timed runs per variant (default: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--preset", default="paper-64")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--published", type=Path, help="a checkout of researchmm/MM-Diffusion: enables the "
                        "published:fp32|fp16 variants (default variants then add the published one)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    variants = (args.variants or (CUDA_VARIANTS if cuda else CPU_VARIANTS)).split(",")
    if args.published and not args.variants:
        variants.insert(0, "published:fp16" if cuda else "published:fp32")
    batch = args.batch or (4 if cuda else 1)
    repeat = args.repeat or (5 if cuda else 1)
    config = UNetConfig.preset(args.preset)
    print(f"{args.preset} on {device_name(device)}, batch {batch}, torch {torch.__version__}")
    rows = run(config, variants, batch, device, repeat, args.published)
    print(format_table(rows, [("variant", "variant", "s"), ("mode", "mode", "s"), ("seconds", "time (s)", ".3f"),
                              ("cpu_seconds", "CPU time (s)", ".3f"), ("page_faults", "page faults", "d"),
                              ("peak_mb", "peak extra memory (MiB)", ".0f"),
                              ("reference_over_ours", "reference / ours (time)", ".2f"),
                              ("reference_over_ours_cpu", "reference / ours (CPU time)", ".2f"),
                              *([("published_over_ours", "published / this (time)", ".2f"),
                                 ("memory_over_published", "memory / published", ".2f")]
                                if args.published else [])]))
    if args.out:
        write_json(args.out, {"preset": args.preset, "device": device_name(device), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
