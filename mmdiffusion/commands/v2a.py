"""`python -m mmdiffusion v2a CKPT VIDEO --out DIR`: generate the soundtrack of a given video.

Reads one clip of video (from `--start` seconds; any sound in it is ignored) and completes it with
generated audio by zero-shot conditioning of the joint model (`mmdiffusion.Condition`); writes the
pairs as mp4 (H.264 + AAC) and wav, with PNG sheets.
"""
from __future__ import annotations

import argparse

from .a2v import add_conditioning_arguments
from ..media import READ_ERRORS
from .sample import load, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_conditioning_arguments(parser, "video file whose frames are given")


def main(args: argparse.Namespace) -> int:
    from ..training.pipeline import read_condition_video, write_samples

    model = load(args)
    try:
        video = read_condition_video(args.input, model, args.start)
    except (ValueError, *READ_ERRORS) as error:
        raise SystemExit(f"v2a: cannot read {args.input}: {error}")
    video, audio = model.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, video=video,
                                method=args.method, scale=args.scale, progress=not args.no_progress)
    report(write_samples(args.out, video, audio, model.fps, model.sample_rate, prefix="v2a"),
           f"v2a: sound for {args.input}")
    return 0
