"""`python -m mmdiffusion demo --out demo_out`: the whole pipeline on CPU in minutes.

1. generates synthetic sounding videos (a bouncing ball whose impacts click and flash, whose height
   sets the pitch and whose size the loudness; `mmdiffusion.data.synth`),
2. trains the `demo` config (a small coupled U-Net on 16x16 video and 4.8 kHz audio) on them,
3. samples clips with DPM-Solver++ and writes them (mp4 H.264 + AAC, wav, PNG sheets),
4. scores the audio-visual alignment of generated clips against real (held-out) clips and real clips
   with shuffled soundtracks (the chance level), per factor; "generated, shuffled" pairs each
   generated video with another generated soundtrack (what the marginals alone would score).

Re-running with the same `--out` resumes or reuses the trained run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..training.config import apply_overrides, load_config, parse_override


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--n", type=int, default=8, help="clips to write (default 8)")
    parser.add_argument("--score-clips", type=int, default=32,
                        help="generated and real clips scored for alignment (>= --n, default 32)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the demo config (see `train --help`)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared or 2-core machine, OpenMP threads that "
                             "compete for cores slow the small demo model down several-fold)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def main(args: argparse.Namespace) -> int:
    from ..data.synth import FACTORS, alignment
    from ..training.data import synthetic_clips
    from ..training.pipeline import load_trained, write_samples
    from ..training.trainer import Trainer

    if not 1 <= args.n <= args.score_clips or args.score_clips < 2 or args.threads < 1:
        raise SystemExit(f"need 1 <= --n <= --score-clips, --score-clips >= 2 and --threads >= 1, "
                         f"got {args.n}, {args.score_clips}, {args.threads}")
    try:
        config = apply_overrides(load_config("demo"), [parse_override(o) for o in args.overrides])
    except ValueError as error:
        raise SystemExit(f"demo: {error}")
    if config.data.source != "synth":
        raise SystemExit("demo: data.source must be 'synth' (the alignment score is defined on the synthetic domain)")
    progress = not args.no_progress
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    run = args.out / "run"
    trainer = Trainer(config, run, device="cpu", progress=progress)
    resumed = f", resuming at step {trainer.step}" if trainer.resumed_from else ""
    print(f"demo: training {config.steps} steps (batch {config.batch_size}) on {len(trainer.dataset)} synthetic "
          f"clips, {sum(p.numel() for p in trainer.net.parameters()):,} parameters -> {run}{resumed}")
    trainer.fit()
    trained = time.perf_counter()
    del trainer

    model = load_trained(run)
    with torch.inference_mode():
        video, audio = model.sample(args.score_clips, seed=0, progress=progress)
    sampled = time.perf_counter()
    real = synthetic_clips(config.data, args.score_clips, seed=config.seed + 1, progress=False)  # held out
    real_video, real_audio = torch.stack([real[i][0] for i in range(len(real))]), real.audio
    rate = config.data.sample_rate
    scores = {
        "generated": alignment(video, audio, rate).mean(0),
        "real": alignment(real_video, real_audio, rate).mean(0),
        "shuffled": alignment(real_video, real_audio.roll(1, dims=0), rate).mean(0),
        "generated, shuffled": alignment(video, audio.roll(1, dims=0), rate).mean(0),
    }
    paths = write_samples(args.out / "samples", video[:args.n], audio[:args.n], model.fps, rate)
    real_paths = write_samples(args.out / "real", real_video[:args.n], real_audio[:args.n], model.fps, rate, prefix="real")

    print(f"\ndemo: {args.n} generated clips in {args.out / 'samples'}")
    for mp4 in paths["mp4"]:
        print(f"  {mp4}")
    print(f"  frames: {paths['sheet']}\n  spectrograms: {paths['spectrograms']}\n"
          f"  real clips for comparison: {real_paths['sheet']}")
    print(f"\nalignment over {args.score_clips} clips (Pearson correlation per clip, mean):")
    print(f"  {'':19s} {'score':>7s}" + "".join(f" {f:>9s}" for f in FACTORS))
    for name, per_factor in scores.items():
        print(f"  {name:19s} {per_factor.mean():7.3f}" + "".join(f" {v:9.3f}" for v in per_factor))
    generated, reference, chance = (float(scores[k].mean()) for k in ("generated", "real", "shuffled"))
    print(f"  generated / real = {generated / reference:.0%} (target >= 50%); generated vs shuffled: "
          f"{generated:.3f} vs 3 x {chance:.3f} (target: above)")
    timings = {"train_s": trained - start, "sample_s": sampled - trained, "total_s": time.perf_counter() - start}
    print(f"\ndemo: train {timings['train_s']:.0f}s, sampling {timings['sample_s']:.0f}s, "
          f"total {timings['total_s']:.0f}s")
    summary = {"scores": {k: dict(zip(("score",) + FACTORS, [float(v.mean()), *map(float, v)]))
                          for k, v in scores.items()},
               "timings": timings, "score_clips": args.score_clips, "checkpoint": str(model.path),
               "samples": [str(p) for p in paths["mp4"]]}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0
