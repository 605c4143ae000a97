"""`python -m mmdiffusion train --config NAME|FILE.json [--set key=value ...] --out DIR`.

Trains a coupled U-Net with joint diffusion (see `mmdiffusion.training`). Presets: `paper-64`
(the published setup; set `data.source` to real clips), `tiny`, `demo`, `micro`. A JSON file holds
a partial config, optionally based on a preset (`{"preset": "tiny", "lr": 1e-4, "data": {...}}`).
Re-running with the same `--out` resumes from its newest checkpoint. Multi-GPU / multi-node:
`torchrun --nproc-per-node N -m mmdiffusion train ...` (`batch_size` is global).
"""
from __future__ import annotations

import argparse
import signal
from pathlib import Path

from ..training.config import PRESETS, apply_overrides, load_config, parse_override


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny",
                        help=f"preset name ({', '.join(PRESETS)}) or JSON config file (default tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set lr=1e-4 --set data.size=16 "
                             "--set model.unet.model_channels=64 (values are JSON; repeatable)")
    parser.add_argument("--out", type=Path, help="run folder: config.json, metrics.jsonl, checkpoints/ "
                                                 "(default runs/<config name>)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda:<LOCAL_RANK> if available, else cpu)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def main(args: argparse.Namespace) -> int:
    try:
        config = apply_overrides(load_config(args.config), [parse_override(o) for o in args.overrides])
    except ValueError as error:
        raise SystemExit(f"train: {error}")
    if args.print_config:
        print(config.to_json())
        return 0
    from ..training.distributed import shutdown_distributed
    from ..training.trainer import Trainer

    out = args.out or Path("runs") / Path(args.config).stem
    try:
        trainer = Trainer(config, out, device=args.device, progress=not args.no_progress)
        if trainer.ctx.is_main:
            start = f"resuming from {trainer.resumed_from} (step {trainer.step})" if trainer.resumed_from else "starting"
            print(f"train: {start}; {config.steps} steps, global batch {config.batch_size}, "
                  f"{trainer.ctx.world_size} process(es) on {trainer.device}; run folder {out}")
        final = trainer.fit()
        if trainer.ctx.is_main and trainer.stopped_by is not None:
            print(f"train: stopped by {signal.Signals(trainer.stopped_by).name} at step {trainer.step}; "
                  f"checkpoint {final}; the same command resumes")
        elif trainer.ctx.is_main:
            print(f"train: done at step {trainer.step}; checkpoint {final}; metrics {out / 'metrics.jsonl'}")
    finally:
        shutdown_distributed()
    return 0 if trainer.stopped_by is None else 128 + trainer.stopped_by  # the shell's code for the signal
