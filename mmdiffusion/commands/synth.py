"""`python -m mmdiffusion synth OUT --clips N --seed S`: write synthetic sounding-video mp4 files."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.synth import alignment, synth_clip
from ..media import contact_sheet, write_png, write_video


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--clips", type=int, default=100, help="number of clips (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="stream seed; clip i is a function of (seed, i)")
    parser.add_argument("--size", type=int, default=64, help="frame height and width (even, default 64)")
    parser.add_argument("--fps", type=float, default=10, help="frames per second (default 10)")
    parser.add_argument("--seconds", type=float, default=3.2, help="clip length (default 3.2)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio rate in Hz (default 16000)")


def main(args: argparse.Namespace) -> int:
    if args.clips < 1:
        raise SystemExit(f"--clips must be >= 1, got {args.clips}")
    frames = round(args.seconds * args.fps)
    args.out.mkdir(parents=True, exist_ok=True)
    scores, preview = [], []
    for i in tqdm(range(args.clips), desc="synth"):
        video, audio = synth_clip(i, seed=args.seed, frames=frames, size=args.size, fps=args.fps,
                                  sample_rate=args.sample_rate)
        write_video(args.out / f"clip-{i:05d}.mp4", video, audio, args.fps, args.sample_rate)
        scores.append(alignment(video, audio, args.sample_rate))
        if i < 8:
            preview.append(video)
    write_png(args.out / "preview.png", contact_sheet(torch.stack(preview)))
    per_factor = torch.cat(scores).mean(0)
    print(f"wrote {args.clips} clips ({frames} frames, {args.size}x{args.size}, {args.fps:g} fps, "
          f"{args.sample_rate} Hz) to {args.out}; alignment score {per_factor.mean():.3f} "
          f"(onset {per_factor[0]:.3f}, pitch {per_factor[1]:.3f}, loudness {per_factor[2]:.3f})")
    return 0
