"""`python -m mmdiffusion eval --samples DIR --reference DIR --protocol {heldout,published}`.

`heldout` (default, recommended): FVD/KVD (I3D), FAD/KAD (VGGish), AV synchrony, and with
`--train` a memorisation check, against a reference split the model never saw, at the samples'
own resolution. `published`: MM-Diffusion's published procedure with its quirks, for parity.
See `mmdiffusion/metrics/protocols.py`. Weights are never downloaded: pass `--i3d-weights` /
`--audio-weights` or set MMDIFFUSION_I3D_WEIGHTS / MMDIFFUSION_AUDIO_WEIGHTS; metrics whose
weights are missing are reported as not computed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..metrics.protocols import EvalConfig, run
from ..metrics.published import EVAL_NUM
from ..metrics.report import format_table, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=Path, required=True,
                        help="folder of generated samples: mp4 (H.264 + AAC) and/or wav files")
    parser.add_argument("--reference", type=Path, required=True,
                        help="folder of real videos: a held-out split (heldout) or the published reference")
    parser.add_argument("--protocol", choices=("heldout", "published"), default="heldout",
                        help="heldout (recommended) or published (parity with MM-Diffusion's numbers)")
    parser.add_argument("--train", type=Path, help="training videos, for the memorisation check (heldout)")
    parser.add_argument("--i3d-weights", type=Path, help="i3d_pretrained_400.pt (else $MMDIFFUSION_I3D_WEIGHTS)")
    parser.add_argument("--audio-weights", type=Path,
                        help="vggish-10086976.pth (heldout) or AudioCLIP-Full-Training.pt (published) "
                             "(else $MMDIFFUSION_AUDIO_WEIGHTS)")
    parser.add_argument("--out", type=Path, default=Path("eval.json"), help="results file (default eval.json)")
    parser.add_argument("--report", type=Path, help="also write a markdown report with plots to this folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for the feature networks (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per network batch (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    parser.add_argument("--num-clips", type=int, default=EVAL_NUM,
                        help=f"published: clips per set, repeated if fewer exist (default {EVAL_NUM})")
    parser.add_argument("--clips-per-file", type=int, default=1,
                        help="heldout: real clips per reference/train file (1: centred; more: seeded random)")
    parser.add_argument("--memorization-features", choices=("auto", "i3d", "pixels"), default="auto",
                        help="feature space of the memorisation check (auto: i3d with weights, else pixels + log-mel)")
    parser.add_argument("--memorization-quantile", type=float, default=0.05,
                        help="held-out quantile that calibrates the memorisation threshold (default 0.05)")
    parser.add_argument("--synthetic", action="store_true",
                        help="samples are from the synthetic bouncing-ball domain: also report its alignment score")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def main(args: argparse.Namespace) -> int:
    for name in ("batch_size", "num_clips", "clips_per_file"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    cfg = EvalConfig(
        samples=args.samples, reference=args.reference, protocol=args.protocol, train=args.train,
        i3d_weights=args.i3d_weights, audio_weights=args.audio_weights, device=args.device,
        batch_size=args.batch_size, seed=args.seed, num_clips=args.num_clips, clips_per_file=args.clips_per_file,
        memorization_features=args.memorization_features, memorization_quantile=args.memorization_quantile,
        synthetic=args.synthetic, progress=not args.no_progress)
    try:
        result = run(cfg)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"eval: {error}") from error
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result.summary, indent=2))
    print(format_table(result.summary))
    for title, key in (("quirks of the published protocol", "quirks"), ("notes", "notes")):
        if result.summary.get(key):
            print(f"\n{title}:\n" + "\n".join(f"- {item}" for item in result.summary[key]))
    print(f"\nwrote {args.out}")
    if args.report is not None:
        print(f"wrote {write_report(result, args.report)}")
    return 0
