"""`python -m mmdiffusion convert-official IN.pt OUT.safetensors --preset paper-64`

Converts a published MM-Diffusion checkpoint (a `MultimodalUNet` state dict) to our
`CoupledUNet` naming, strictly (see `mmdiffusion.official`). Load the result with
`CoupledUNet(preset).load_state_dict(safetensors.torch.load_file(OUT))`; the preset name is
stored in the file's metadata.
"""
from __future__ import annotations

import argparse

from safetensors.torch import save_file

from mmdiffusion.official import convert_official_state_dict, read_official
from mmdiffusion.unet import PRESETS, UNetConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="published checkpoint, e.g. Landscape.pt or AIST++.pt")
    parser.add_argument("output", help="output .safetensors file")
    parser.add_argument("--preset", default="paper-64", choices=sorted(PRESETS),
                        help="CoupledUNet configuration the checkpoint was trained with (default: paper-64)")


def main(args: argparse.Namespace) -> int:
    converted = convert_official_state_dict(read_official(args.input), UNetConfig.preset(args.preset))
    save_file({k: v.contiguous() for k, v in converted.items()}, args.output,
              metadata={"format": "mmdiffusion.CoupledUNet", "preset": args.preset})
    count = sum(v.numel() for v in converted.values())
    print(f"wrote {len(converted)} tensors ({count:,} parameters, preset {args.preset}) to {args.output}")
    return 0
