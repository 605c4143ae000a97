"""Zero-shot conditional generation from a trained run: the body of `a2v` and `v2a`.

One modality of a clip is read from a file (from `--start` seconds) and the joint model completes
the other by zero-shot conditioning (`mmdiffusion.Condition`); the pairs are written as mp4
(H.264 + AAC) and wav, with PNG sheets.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from ..media import READ_ERRORS
from .sample import add_model_arguments, generate, load, report

# given modality -> (command name, help of the input argument, what the command generates)
COMMANDS = {"audio": ("a2v", "audio or video file whose sound is given", "video"),
            "video": ("v2a", "video file whose frames are given (any sound in it is ignored)", "sound")}


def conditional_command(given: Literal["audio", "video"]) -> tuple[Callable[[argparse.ArgumentParser], None],
                                                                 Callable[[argparse.Namespace], int]]:
    """`(add_arguments, main)` of the command that generates the other modality for a `given` one."""
    name, input_help, generated = COMMANDS[given]

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser)
        parser.add_argument("input", type=Path, help=input_help)
        parser.add_argument("--start", type=float, default=0.0, help="clip start in the input, seconds (default 0)")
        parser.add_argument("--method", choices=("replacement", "guidance"), default="replacement",
                            help="conditioning method (default replacement)")
        parser.add_argument("--scale", type=float, default=1.0, help="reconstruction-guidance weight (guidance only)")
        parser.set_defaults(n=1)

    def main(args: argparse.Namespace) -> int:
        from ..training.pipeline import read_condition_audio, read_condition_video, write_samples

        read = read_condition_audio if given == "audio" else read_condition_video
        model = load(args)
        try:
            clip = read(args.input, model, args.start)
        except (ValueError, *READ_ERRORS) as error:
            raise SystemExit(f"{name}: cannot read {args.input}: {error}")
        video, audio = generate(model, args, name, method=args.method, scale=args.scale, **{given: clip})
        report(write_samples(args.out, video, audio, model.fps, model.sample_rate, prefix=name),
               f"{name}: {generated} for {args.input}")
        return 0

    return add_arguments, main
