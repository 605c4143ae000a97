"""The published evaluation of MM-Diffusion, step by step, quirks included (for parity only).

Reference: `py_scripts/eval.py`, `mm_diffusion/evaluator.py` (`eval_multimodal`),
`mm_diffusion/multimodal_datasets.py`, `evaluations/fvd/*`, `evaluations/AudioCLIP/*` of
researchmm/MM-Diffusion. `QUIRKS` lists every way it departs from a sound protocol; the
`published` protocol prints them with its numbers. Use the `heldout` protocol for new results.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

FPS, FRAMES, SIZE = 10, 16, 64                       # `video_size=[16, 3, 64, 64]`, `video_fps=10`
AUDIO_RATE = 44100                                   # `AUDIO_RATE`
AUDIO_LENGTH = int(AUDIO_RATE * 1.6)                 # `AUDIO_SIZE = [1, 70560]`
EVAL_NUM = 2048                                      # `--sample_num` of py_scripts/eval.py
FAD_SCALE = 1e4                                      # `metric["fad"] = clip_fad.item() * 10000`

QUIRKS: tuple[str, ...] = (
    "reference = training split: py_scripts/eval.py defaults --ref_dir to .../landscape/train, the shipped "
    "scripts use .../train, and the README states 'We only use the training set for training and evaluation'; "
    "FVD/FAD against training clips reward memorisation (pass your training folder as --reference to reproduce).",
    "videos shrunk to 64 px: eval_multimodal(video_size=[16,3,64,64]) letterboxes both sets into 64x64 (aspect "
    "kept, bicubic without antialiasing, black bars) before I3D upsamples to 224; since commit 7250222 the "
    "sampling script also evaluates the 64 px base samples in the loop iteration it labels as the "
    "super-resolved ones.",
    "uint8 round trip truncates: the loader returns x/127.5-1 in float32 and the evaluator converts back with "
    "((x+1)*127.5).clamp(0,255).to(uint8), which truncates: grey levels 1..63 come back one level darker.",
    "clips: every 16-frame window at 10 fps with a stride of 1 frame (torchvision VideoClips, "
    "frames_between_clips=1) of every file, in an order shuffled by an unseeded random.shuffle "
    "(MultimodalDataset.shuffle_indices), so the 2048 reference clips are not reproducible; here the shuffle "
    "is seeded (--seed).",
    "clip count: the loaders are infinite (`while True: yield from loader`), so with fewer than 2048 clips the "
    "set repeats clips until 2048 embeddings are gathered (1024 samples count twice each).",
    "FAD network: AudioCLIP's audio head (trained on 44.1 kHz AudioSet) on audio resampled to 44.1 kHz; "
    "generated audio is 16 kHz, so it is empty above 8 kHz while reference files keep their native band.",
    "FAD input scale: AudioCLIP expects the int16 range (its datasets multiply by 32768 and the model maps "
    "[-32768, 32767] to [-1, 1]), but the evaluator passes floats in [-1, 1] (preprocess_audio is the identity): "
    "the network sees x/32767.5 + 1/65535, about 90 dB quieter than in training, with a DC offset.",
    "FAD features and scale: the raw (unnormalised) 1024-d AudioCLIP audio embedding, and the Fréchet "
    "distance is multiplied by 1e4.",
    "audio span: the audio of a clip is read from the first frame to one native frame after the last; for a "
    "file not at 10 fps this is shorter than 1.6 s (46/30 s at 30 fps) and the rest of the 70560 samples are "
    "zeros.",
    "Fréchet arithmetic: float32 on the GPU, matrix square roots by SVD with singular values below 1e-10 left "
    "unrooted (tf-gan formula); reproduced here, and the float64 value is reported beside it.",
    "KVD: sklearn's polynomial_kernel defaults (degree 3, gamma 1/D, coef0 1), unbiased MMD², in float32; the "
    "same estimator is computed here in float64.",
    "AudioCLIP weights are loaded with strict=False, so a mismatched checkpoint would silently leave random "
    "weights; they are loaded strictly here.",
)

DIFFERENCES: tuple[str, ...] = (
    "decoding: PyAV and a windowed-sinc resampler instead of torchvision/ffmpeg (moviepy); audio is the mean "
    "of the channels where the published loader keeps channel 0 (the same for its samples, which duplicate "
    "mono into stereo).",
    "torchvision is unpinned in the published requirements; Resize on uint8 tensors is taken without "
    "antialiasing, the default before torchvision 0.17 (contemporary with its pinned packages).",
    "published runs use CUDA (TF32 convolutions by default on Ampere); CPU float32 results differ in the last "
    "digits.",
)


def window_frame_indices(num_frames: int, native_fps: float) -> torch.Tensor:
    """Native frame indices `[W, 16]` of every published clip of a video with `num_frames` frames.

    torchvision's `VideoClips` resampling to 10 fps: every `step = native_fps / 10`-th frame when
    `step` is an integer, else `floor(k * step)` for `k < floor(num_frames / step)`; then all
    windows of 16 resampled frames with stride 1.
    """
    step = native_fps / FPS
    if float(step).is_integer():
        index = torch.arange(0, num_frames, int(step))
    else:
        index = (torch.arange(math.floor(num_frames / step), dtype=torch.float32) * step).floor().long()
    if index.numel() < FRAMES:
        return index.new_zeros(0, FRAMES)
    return index.unfold(0, FRAMES, 1)


def letterbox_video(video: torch.Tensor) -> torch.Tensor:
    """`MultimodalDataset.process_video` + the evaluator's uint8 conversion: uint8 `[F, 3, H, W]` ->
    uint8 `[F, 3, 64, 64]`, aspect kept (`int(side * min(64/H, 64/W))`), bicubic without
    antialiasing (rounded, clamped), zero-padded, then the float32 round trip that truncates."""
    h, w = video.shape[-2:]
    ratio = min(SIZE / h, SIZE / w)
    nh, nw = int(h * ratio), int(w * ratio)
    x = video.float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False).clamp(0, 255).round()
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    x = F.pad(x, (left, SIZE - nw - left, top, SIZE - nh - top))
    x = x / 127.5 - 1                                                       # the loader's output
    return ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)                  # the evaluator's input


def clip_audio(audio: torch.Tensor, first_frame: int, last_frame: int, native_fps: float) -> torch.Tensor:
    """The published audio of a clip: `audio [C, L]` at 44.1 kHz from the file start -> `[70560]`.

    The span `[first / fps, (last + 1) / fps)` in native frames (moviepy `subclip`), zero-padded or
    truncated to 70560 samples; the values stay in [-1, 1] (see `QUIRKS`)."""
    start, end = first_frame / native_fps, (last_frame + 1) / native_fps
    begin = round(start * AUDIO_RATE)
    count = min(math.ceil((end - start) * AUDIO_RATE - 1e-6), AUDIO_LENGTH)
    segment = audio.float().mean(0)[begin:begin + count]
    return F.pad(segment, (0, AUDIO_LENGTH - segment.shape[0]))


def _svd_sqrt(mat: torch.Tensor) -> torch.Tensor:
    u, s, v = torch.svd(mat)
    return u @ torch.diag(torch.where(s < 1e-10, s, s.sqrt())) @ v.T


def frechet_distance_float32(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """`evaluations/fvd/fvd.py::frechet_distance`: float32, SVD square roots, eps 1e-10 (see `QUIRKS`)."""
    x, y = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    mx, my = x.mean(0), y.mean(0)
    cx, cy = (x - mx).T @ (x - mx) / (x.shape[0] - 1), (y - my).T @ (y - my) / (y.shape[0] - 1)
    root = _svd_sqrt(cx)
    trace_sqrt = torch.trace(_svd_sqrt(root @ cy @ root))
    return float(torch.trace(cx + cy) - 2.0 * trace_sqrt + ((mx - my) ** 2).sum())


def tile(indices: list[int], count: int) -> list[int]:
    """The first `count` items of `indices` repeated (the infinite published loaders)."""
    if not indices:
        return []
    return (indices * math.ceil(count / len(indices)))[:count]
