"""`python -m mmdiffusion sample CKPT --n 8 --sampler dpmpp-2m --steps 20 --seed 0 --out DIR`.

Draws audio-video clips from a trained run (a checkpoint file or a run folder: its newest
checkpoint) and writes one mp4 (H.264 + AAC) and one wav per clip, a PNG contact sheet of the
frames and a PNG of the spectrograms.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..sampling import SAMPLERS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `sample`, `a2v` and `v2a`."""
    parser.add_argument("checkpoint", type=Path, help="checkpoint file, or a run folder (newest checkpoint)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--n", type=int, default=8, help="number of clips (default 8)")
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), help="sampler (default: the run's, dpmpp-2m)")
    parser.add_argument("--steps", type=int, help="model evaluations (default: the run's, 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--weights", choices=("ema", "model"), default="ema", help="EMA or raw weights (default ema)")
    parser.add_argument("--ema-index", type=int, default=0, help="which EMA rate of the run (default 0)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device (default: cuda if available)")
    parser.add_argument("--clip-x0", action="store_true",
                        help="clamp each step's clean-data estimate to the data range (clip_denoised)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def load(args: argparse.Namespace):
    """The `TrainedModel` named by the shared arguments (validated)."""
    from ..training.pipeline import load_trained

    if args.n < 1 or (args.steps is not None and args.steps < 1):
        raise SystemExit(f"--n and --steps must be >= 1, got {args.n}, {args.steps}")
    try:
        return load_trained(args.checkpoint, weights=args.weights, ema_index=args.ema_index, device=args.device)
    except ValueError as error:
        raise SystemExit(f"{error}")


def generate(model, args: argparse.Namespace, label: str, **options) -> tuple:
    """`model.sample` with the command line's sampling options (and `options`); a bad combination
    (e.g. more `--steps` than the run's diffusion has) ends the command with its message."""
    try:
        return model.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                            clip_x0=args.clip_x0, progress=not args.no_progress, **options)
    except ValueError as error:
        raise SystemExit(f"{label}: {error}")


def report(paths: dict, label: str) -> None:
    print(f"{label}: {len(paths['mp4'])} clips")
    for mp4, wav in zip(paths["mp4"], paths["wav"]):
        print(f"  {mp4}  {wav}")
    print(f"  frames: {paths['sheet']}\n  spectrograms: {paths['spectrograms']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from ..training.pipeline import write_samples

    model = load(args)
    video, audio = generate(model, args, "sample")
    paths = write_samples(args.out, video, audio, model.fps, model.sample_rate)
    report(paths, f"sample: {model.path} (step {model.step}, {args.weights} weights)")
    return 0
