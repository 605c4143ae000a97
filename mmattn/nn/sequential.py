"""A sequential container over the coupled `(video, audio, emb)` streams."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

STREAMS: tuple[str, ...] = ("video", "video+emb", "audio", "audio+emb", "pair", "pair+emb", "pair+shift")


class CoupledSequential(nn.Sequential):
    """Runs layers in order over `(video [B, F, C, H, W], audio [B, C, L], emb [B, E])` and
    returns `(video, audio)`.

    Each layer declares in its `streams` attribute how it is called:
    "video": `video = layer(video)`; "video+emb": `video = layer(video, emb)`; likewise "audio"
    and "audio+emb"; "pair": `video, audio = layer(video, audio)`; "pair+emb":
    `video, audio = layer(video, audio, emb)`; "pair+shift" (RS-MMA):
    `video, audio = layer(video, audio, shift=shift)`.
    """

    def __init__(self, *layers: nn.Module):
        for i, layer in enumerate(layers):
            if getattr(layer, "streams", None) not in STREAMS:
                raise TypeError(f"CoupledSequential layer {i} ({type(layer).__name__}) must declare "
                                f"`streams` as one of {STREAMS}")
        super().__init__(*layers)

    def shift_layers(self) -> list[nn.Module]:
        """The RS-MMA ("pair+shift") layers, in order."""
        return [layer for layer in self if layer.streams == "pair+shift"]

    def draw_shifts(self, frames: int, cross_shift: int | None = None) -> tuple[int, ...]:
        """One shift per RS-MMA layer: `cross_shift` for layers with random shifting when it is
        given, else each layer's own draw (0 for layers without random shifting)."""
        return tuple(cross_shift if cross_shift is not None and layer.random_shift
                     else layer.draw_shift(frames) for layer in self.shift_layers())

    def forward(self, video: torch.Tensor, audio: torch.Tensor, emb: torch.Tensor | None = None,
                shifts: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`shifts`: one int per RS-MMA layer (see `draw_shifts`); None lets each layer draw."""
        n_shift = len(self.shift_layers())
        if shifts is not None and len(shifts) != n_shift:
            raise ValueError(f"shifts must hold one int per RS-MMA layer ({n_shift}), got {len(shifts)}")
        pending = iter(shifts) if shifts is not None else None
        for layer in self:
            kind = layer.streams
            if kind == "pair+shift":
                video, audio = layer(video, audio, shift=None if pending is None else next(pending))
            elif kind == "pair+emb":
                video, audio = layer(video, audio, emb)
            elif kind == "pair":
                video, audio = layer(video, audio)
            else:
                args = (emb,) if kind.endswith("+emb") else ()
                if kind.startswith("video"):
                    video = layer(video, *args)
                else:
                    audio = layer(audio, *args)
        return video, audio
