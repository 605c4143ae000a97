"""Presenting an evaluation: the printed table, histogram images (numpy only), the markdown report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..media import contact_sheet, write_png
from .protocols import Result

COLOURS = ((31, 119, 180), (255, 127, 14))   # first series blue, second orange
SHEET_HEIGHT = 96                            # contact-sheet frames are shrunk to at most this height
_PER_CLIP = ("per_clip", "generated_distances", "heldout_distances")   # long lists: JSON only


def histogram_image(series: dict[str, np.ndarray], edges: np.ndarray, *, marker: float | None = None,
                    width: int = 480, height: int = 240, margin: int = 12) -> np.ndarray:
    """uint8 `[height, width, 3]`: side-by-side bars of up to two series over shared bin `edges`.

    Each series is normalised to its own total (so sets of different sizes compare); the tallest
    bar fills the plot; NaNs are left out. `marker`: an x value drawn as a dashed black line.
    White background, grey axes, no text (the report captions the axes).
    """
    if len(series) > len(COLOURS):
        raise ValueError(f"series must hold at most {len(COLOURS)} entries, got {len(series)}")
    image = np.full((height, width, 3), 255, np.uint8)
    bins = len(edges) - 1
    plot_w, plot_h = width - 2 * margin, height - 2 * margin
    fractions = [np.histogram(v[~np.isnan(v)], edges)[0] / max(int((~np.isnan(v)).sum()), 1) for v in series.values()]
    top = max((f.max() for f in fractions), default=0.0) or 1.0
    slot = plot_w / bins
    bar = max(int(slot / max(len(fractions), 1)) - 1, 1)
    for k, (fraction, colour) in enumerate(zip(fractions, COLOURS)):
        for i, value in enumerate(fraction):
            h = int(round(value / top * plot_h))
            x0 = margin + int(i * slot) + k * bar
            image[height - margin - h:height - margin, x0:x0 + bar] = colour
    image[height - margin, margin:width - margin] = 128           # x axis
    image[margin:height - margin + 1, margin] = 128                # y axis
    if marker is not None and edges[-1] > edges[0]:
        x = margin + int(round((marker - edges[0]) / (edges[-1] - edges[0]) * plot_w))
        rows = np.arange(margin, height - margin)
        image[rows[(rows // 4) % 2 == 0], min(max(x, margin), width - margin - 1)] = 0
    return image


def format_table(summary: dict) -> str:
    """The scalar metrics as an aligned two-column text table."""
    rows = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key not in _PER_CLIP + ("histogram",):
                    walk(f"{prefix}.{key}" if prefix else key, inner)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.6g}"))
        elif isinstance(value, (int, str)) and not isinstance(value, bool):
            rows.append((prefix, str(value)))

    walk("", summary["metrics"])
    rows += [(key, f"not computed: {why}") for key, why in summary.get("not_computed", {}).items()]
    width = max((len(k) for k, _ in rows), default=6)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"] + [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def _shrink(videos: torch.Tensor) -> torch.Tensor:
    n, f, c, h, w = videos.shape
    if h <= SHEET_HEIGHT:
        return videos
    size = (SHEET_HEIGHT, max(1, round(w * SHEET_HEIGHT / h)))
    small = F.interpolate(videos.flatten(0, 1).float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return small.round().clamp(0, 255).to(torch.uint8).reshape(n, f, c, *size)


def write_report(result: Result, out_dir: str | Path) -> Path:
    """`report.md` with the numbers, the samples' contact sheet and the distribution plots (png)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary
    lines = [f"# Evaluation ({summary['protocol']} protocol)", "",
             f"Samples: `{summary['samples']['dir']}`; reference: `{summary['reference']['dir']}`.", "",
             "```", format_table(summary), "```", ""]
    if result.preview is not None:
        write_png(out / "samples.png", contact_sheet(_shrink(result.preview)))
        lines += ["## Samples", "", f"The first {len(result.preview)} samples, one row each, every frame.", "",
                  "![samples](samples.png)", ""]
    if result.sync_scores:
        edges = np.linspace(0.0, 1.0, 21)
        write_png(out / "av_sync.png", histogram_image(result.sync_scores, edges))
        sync = summary["metrics"]["av_sync"]
        lines += ["## Audio-visual synchrony", "",
                  "Per-clip synchrony score (x: 0 to 1 in 20 bins; y: fraction of clips; blue: samples, "
                  "orange: reference). Clips without any audio or visual event are undefined and left out "
                  f"({sync['samples']['undefined']} samples, {sync['reference']['undefined']} reference).", "",
                  "![synchrony](av_sync.png)", ""]
    if result.memorization is not None:
        mem = result.memorization
        write_png(out / "memorization.png", histogram_image({"generated": mem.generated, "heldout": mem.heldout},
                                                            mem.bin_edges, marker=mem.threshold))
        lines += ["## Memorisation", "",
                  f"Distance of each clip to its nearest training clip (x: {mem.bin_edges[0]:.4g} to "
                  f"{mem.bin_edges[-1]:.4g} in {len(mem.bin_edges) - 1} bins; y: fraction of clips; blue: "
                  f"generated, orange: held-out real; dashed: the threshold). Threshold = {mem.quantile:.0%} "
                  f"quantile of the held-out distances = {mem.threshold:.4g}; {mem.fraction_below:.1%} of the "
                  "samples are closer "
                  f"(about {mem.quantile:.0%} expected without memorisation).", "",
                  "![memorisation](memorization.png)", ""]
    for title, key in (("Quirks of the published protocol", "quirks"), ("Notes", "notes")):
        if summary.get(key):
            lines += [f"## {title}", ""] + [f"- {item}" for item in summary[key]] + [""]
    lines += ["## Full results", "", "```json", json.dumps(_scalars_only(summary), indent=2), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _scalars_only(value: object) -> object:
    """`value` without the per-clip lists (kept in the JSON file)."""
    if isinstance(value, dict):
        return {k: _scalars_only(v) for k, v in value.items() if k not in _PER_CLIP}
    return value
