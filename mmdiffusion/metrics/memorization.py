"""Memorisation check: how close each generated clip lies to its nearest training clip.

Distances are Euclidean in a feature space (I3D logits when weights are given, else the
weights-free `pixel_mel_embedding`). What counts as "close" is calibrated on real clips the
model never saw: the threshold is the `quantile` (default 5 %) of the held-out-to-train
nearest-neighbour distances, so about 5 % of unseen real clips fall below it by construction. A
generator that copies training clips puts many more of its samples below it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .distances import ArrayLike, feature_pair
from .spectral import log_mel_db

_BLOCK = 1024  # query rows per distance block


def nearest_distances(queries: ArrayLike, bank: ArrayLike) -> np.ndarray:
    """`queries [N, D]`, `bank [M, D]` -> Euclidean distance of each query to its nearest bank row `[N]` (float64)."""
    q, b = feature_pair(queries, bank, names=("queries", "bank"))
    nearest = [torch.cdist(q[start:start + _BLOCK], b).amin(1) for start in range(0, q.shape[0], _BLOCK)]
    return torch.cat(nearest).numpy()


@dataclass(frozen=True)
class MemorizationReport:
    """Nearest-training-clip distances of generated and held-out clips, and the calibrated verdict."""

    generated: np.ndarray       # [N] distance of each generated clip to its nearest training clip
    heldout: np.ndarray         # [R] the same for held-out real clips (the calibration set)
    quantile: float
    threshold: float            # `quantile` of `heldout`
    fraction_below: float       # share of generated clips closer than `threshold`
    bin_edges: np.ndarray       # [bins + 1] shared histogram bins over both sets
    generated_counts: np.ndarray
    heldout_counts: np.ndarray

    def to_dict(self) -> dict:
        return {"quantile": self.quantile, "threshold": self.threshold, "fraction_below": self.fraction_below,
                "expected_fraction_if_not_memorising": self.quantile,
                "histogram": {"bin_edges": self.bin_edges.tolist(), "generated": self.generated_counts.tolist(),
                              "heldout": self.heldout_counts.tolist()},
                "generated_distances": self.generated.tolist(), "heldout_distances": self.heldout.tolist()}


def memorization_check(generated: ArrayLike, heldout: ArrayLike, train: ArrayLike, *, quantile: float = 0.05,
                       bins: int = 20) -> MemorizationReport:
    """Compare generated `[N, D]` and held-out real `[R, D]` features with training features `[M, D]`."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    gen, held = nearest_distances(generated, train), nearest_distances(heldout, train)
    threshold = float(np.quantile(held, quantile))
    edges = np.histogram_bin_edges(np.concatenate([gen, held]), bins=bins)
    return MemorizationReport(
        generated=gen, heldout=held, quantile=quantile, threshold=threshold,
        fraction_below=float((gen < threshold).mean()), bin_edges=edges,
        generated_counts=np.histogram(gen, edges)[0], heldout_counts=np.histogram(held, edges)[0])


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Centre and L2-normalise each row of `[B, D]` (so distances compare shape, not brightness/loudness)."""
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pixel_mel_embedding(video: torch.Tensor | None, audio: torch.Tensor | None, sample_rate: int | None = None, *,
                        frames: int = 4, size: int = 16, mel_steps: int = 16) -> torch.Tensor:
    """A weights-free clip embedding: `[B, D]` from `video [B, F, C, H, W]` and/or `audio [B, C, L]`.

    Video: area-averaged to `frames x size x size` per channel; audio: the 64-band dB mel
    spectrogram averaged to `mel_steps` time steps. Each part is centred and L2-normalised, the
    parts are concatenated and scaled by `1/sqrt(#parts)`, so every embedding has unit norm and
    both modalities weigh the same. Clips of different sizes or lengths land in the same space.
    """
    parts = []
    if video is not None:
        if video.ndim != 5:
            raise ValueError(f"video must be [B, F, C, H, W], got {tuple(video.shape)}")
        v = F.adaptive_avg_pool3d(video.float().transpose(1, 2), (frames, size, size))
        parts.append(_unit(v.flatten(1)))
    if audio is not None:
        if audio.ndim != 3 or sample_rate is None:
            raise ValueError(f"audio must be [B, C, L] with its sample_rate, got {tuple(audio.shape)}, {sample_rate}")
        mel = F.adaptive_avg_pool1d(log_mel_db(audio, sample_rate), mel_steps)
        parts.append(_unit(mel.flatten(1)))
    if not parts:
        raise ValueError("pixel_mel_embedding needs video or audio")
    return torch.cat(parts, 1) / len(parts) ** 0.5
