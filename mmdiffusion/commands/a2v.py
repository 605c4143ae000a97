"""`python -m mmdiffusion a2v CKPT AUDIO --out DIR`: generate video for a given soundtrack.

Reads one clip's duration of audio (from `--start` seconds) from any audio or video file, and
completes it with generated video by zero-shot conditioning of the joint model
(`mmdiffusion.Condition`); writes the pairs as mp4 (H.264 + AAC) and wav, with PNG sheets.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..media import READ_ERRORS
from .sample import add_model_arguments, load, report


def add_conditioning_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The input and conditioning arguments of `a2v` and `v2a`."""
    add_model_arguments(parser)
    parser.add_argument("input", type=Path, help=what)
    parser.add_argument("--start", type=float, default=0.0, help="clip start in the input, seconds (default 0)")
    parser.add_argument("--method", choices=("replacement", "guidance"), default="replacement",
                        help="conditioning method (default replacement)")
    parser.add_argument("--scale", type=float, default=1.0, help="reconstruction-guidance weight (guidance only)")
    parser.set_defaults(n=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_conditioning_arguments(parser, "audio or video file whose sound is given")


def main(args: argparse.Namespace) -> int:
    from ..training.pipeline import read_condition_audio, write_samples

    model = load(args)
    try:
        audio = read_condition_audio(args.input, model, args.start)
    except (ValueError, *READ_ERRORS) as error:
        raise SystemExit(f"a2v: cannot read {args.input}: {error}")
    video, audio = model.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, audio=audio,
                                method=args.method, scale=args.scale, progress=not args.no_progress)
    report(write_samples(args.out, video, audio, model.fps, model.sample_rate, prefix="a2v"),
           f"a2v: video for {args.input}")
    return 0
