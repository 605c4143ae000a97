"""`python -m mmdiffusion prepare SRC OUT`: decode a folder of videos once into training shards."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.shards import write_shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="folder searched recursively for mp4/mkv/webm/avi/mov")
    parser.add_argument("out", type=Path, help="shard folder (created)")
    parser.add_argument("--fps", type=float, default=10, help="video frame rate (default 10)")
    parser.add_argument("--size", type=int, default=64, help="square frame size (default 64)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio rate in Hz (default 16000)")
    parser.add_argument("--shard-mb", type=float, default=256, help="approximate shard size (default 256)")


def main(args: argparse.Namespace) -> int:
    index = write_shards(args.src, args.out, fps=args.fps, size=args.size,
                         sample_rate=args.sample_rate, shard_mb=args.shard_mb)
    frames = sum(entry["frames"] for entry in index["entries"])
    print(f"stored {len(index['entries'])} videos ({frames} frames, {frames / args.fps:.1f}s) in "
          f"{len(index['shards'])} shards at {args.out}; skipped {len(index['skipped'])}")
    return 0
