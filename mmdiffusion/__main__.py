"""Command line: `python -m mmdiffusion <command> --help`.

Each command lives in `mmdiffusion/commands/<name>.py` and exposes
`add_arguments(parser)` and `main(args) -> int | None`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    # name: one-line help. Module: mmdiffusion.commands.<name with '-' -> '_'>.
    "convert-official": "convert a published MM-Diffusion checkpoint (Landscape.pt, AIST++.pt) to CoupledUNet safetensors",
    "synth": "write synthetic sounding-video clips (mp4: H.264 + AAC)",
    "prepare": "decode a folder of videos once into training shards",
    "eval": "score generated samples: FVD/KVD, FAD/KAD, AV synchrony, memorisation (heldout or published protocol)",
    "train": "train a coupled U-Net (presets or JSON config, --set overrides, resumable, torchrun/DDP)",
    "sample": "generate audio-video clips from a checkpoint (mp4 + wav + PNG sheets)",
    "a2v": "audio-to-video: generate video for a given soundtrack (zero-shot conditioning)",
    "v2a": "video-to-audio: generate sound for a given video (zero-shot conditioning)",
    "demo": "end-to-end demo: synthetic data, train the demo model, sample, score audio-visual alignment",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmdiffusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module("mmdiffusion.commands." + name.replace("-", "_"))
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    module = importlib.import_module("mmdiffusion.commands." + args.command.replace("-", "_"))
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
