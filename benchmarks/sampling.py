"""Sampling benchmark: wall time per generated clip for each sampler at its default steps.

    python -m benchmarks.sampling [--preset tiny|paper-64] [--device cpu|cuda] [--batch-sizes 1 8]
                                  [--samplers ddpm,ddim,dpmpp-2m,dpmpp-3m,unipc] [--timed-steps N]
                                  [--no-guidance] [--out results.json]

The model is `mmdiffusion.CoupledUNet(preset)` with random weights (the time does not depend on
them) under bf16 autocast on CUDA, float32 on CPU. Every sampler runs at its default steps
(DDPM 1000, DDIM 50, DPM-Solver++ and UniPC 20), plus DPM-Solver++(2M) with reconstruction guidance
(audio given, one extra backward pass per step). After a 2-step warm-up run, one full run is
timed per row. `--timed-steps N` times an N-step run instead and scales it to the default steps
(each step is one model call plus O(1) elementwise work, so the cost per step is constant); it is
the default on CPU, where a 1000-step DDPM run of even the tiny model takes hours, and such rows
are marked `scaled`.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch

import mmdiffusion
from benchmarks.common import device_name, format_table, sync, write_json
from mmdiffusion.sampling import DEFAULT_STEPS, SAMPLERS

COLUMNS = [("sampler", "sampler", "s"), ("steps", "steps", "d"), ("batch", "batch", "d"),
           ("timed_steps", "timed steps", "d"), ("ms_per_step", "ms / step", ".1f"),
           ("s_per_clip", "s / clip", ".3f"), ("s_per_batch", "s / batch", ".2f")]


def time_run(model, diffusion, shapes, device, autocast, sampler: str, steps: int, condition) -> float:
    """Seconds for one `mmdiffusion.sample` call."""
    base = "dpmpp-2m" if sampler.endswith("+guidance") else sampler
    sync(device)
    start = time.perf_counter()
    with autocast():
        mmdiffusion.sample(model, diffusion, *shapes, sampler=base, steps=steps, condition=condition,
                           generator=torch.Generator(device).manual_seed(0), progress=False, device=device)
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None, help="CoupledUNet preset (default: paper-64 on cuda, tiny on cpu)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated sampler names")
    parser.add_argument("--timed-steps", type=int, default=None,
                        help="time this many steps and scale to the default steps (default: all on cuda, 2 on cpu)")
    parser.add_argument("--no-guidance", action="store_true", help="skip the reconstruction-guidance row")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/sampling-<device>-<preset>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    preset = args.preset or ("paper-64" if cuda else "tiny")
    timed_limit = args.timed_steps or (None if cuda else 2)
    samplers = [s for s in args.samplers.split(",") if s]
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        parser.error(f"unknown samplers {unknown}; valid: {', '.join(SAMPLERS)}")
    if not args.no_guidance:
        samplers.append("dpmpp-2m+guidance")

    model = mmdiffusion.CoupledUNet(preset).to(device).eval()
    video_tail, audio_tail = model.config.video_shape, model.config.audio_shape
    diffusion = mmdiffusion.GaussianDiffusion()
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext)
    print(f"device: {device_name(device)}, preset {preset} (video {video_tail}, audio {audio_tail}), "
          f"{'bf16 autocast' if cuda else 'float32'}, torch {torch.__version__}")

    rows: list[dict] = []
    for batch in args.batch_sizes:
        shapes = ((batch, *video_tail), (batch, *audio_tail))
        given = mmdiffusion.Condition(audio=torch.randn(shapes[1], device=device), method="guidance")
        for sampler in samplers:
            condition = given if sampler.endswith("+guidance") else None
            steps = DEFAULT_STEPS["dpmpp-2m" if condition is not None else sampler]
            timed = min(steps, timed_limit or steps)
            time_run(model, diffusion, shapes, device, autocast, sampler, min(2, steps), condition)  # warm-up
            seconds = time_run(model, diffusion, shapes, device, autocast, sampler, timed, condition) * steps / timed
            rows.append(dict(sampler=sampler, steps=steps, batch=batch, timed_steps=timed, scaled=timed < steps,
                             ms_per_step=1e3 * seconds / steps, s_per_clip=seconds / batch, s_per_batch=seconds))
            print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)

    payload = dict(device=device_name(device), torch=torch.__version__, preset=preset,
                   autocast="bfloat16" if cuda else None, rows=rows)
    out = args.out or Path("benchmarks/results") / f"sampling-{device.type}-{preset}.json"
    write_json(out, payload)
    print("\n" + format_table(rows, COLUMNS))
    print(f"\nwrote {out}")
    return payload


if __name__ == "__main__":
    main()
