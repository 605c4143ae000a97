"""Evaluation protocols: `heldout` (recommended) and `published` (parity with MM-Diffusion's numbers).

heldout
    The reference is a split the model never saw (`--reference`, e.g. the test split; with
    `--train`, files identical to training files are reported). Real clips are cut like the
    samples (frames, frame rate, sample rate) at the samples' own resolution (no 64 px shrink), one
    centred clip per file (or seeded random positions). FVD/KVD use I3D logits; FAD/KAD use
    standard VGGish embeddings (16 kHz, one per 0.96 s); the weights-free AV synchrony score is
    reported per sample, with the reference's distribution as the target; `--train` adds the
    memorisation check; `--synthetic` adds the synthetic domain's alignment score.

published
    `published.py`, step by step: I3D on 64 px letterboxed clips for FVD/KVD, AudioCLIP's audio
    head on unscaled 44.1 kHz audio for FAD (x 1e4), 2048 clips drawn (and repeated) as the
    published loaders do; every quirk is listed in the output.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import find_videos
from ..data.synth import FACTORS, alignment
from ..media import from_uint8, probe, read_clip
from . import published
from .audioclip import AudioCLIPAudio
from .av_sync import av_sync_score
from .clips import ClipSpec, EvalClip, RealClips, iter_samples
from .distances import frechet_distance, kernel_distance
from .i3d import I3D, preprocess_video
from .memorization import MemorizationReport, memorization_check, pixel_mel_embedding
from .vggish import VGGish
from .weights import AUDIOCLIP, I3D_KINETICS400, VGGISH, KnownWeights, load_weights, resolve_weights_path
from .weights import sha256_file

PREVIEW_CLIPS = 8  # samples shown on the contact sheet


@dataclass
class EvalConfig:
    samples: Path
    reference: Path
    protocol: str = "heldout"
    train: Path | None = None
    i3d_weights: Path | None = None
    audio_weights: Path | None = None
    device: str = "cpu"
    batch_size: int = 8
    seed: int = 0
    num_clips: int = published.EVAL_NUM          # published only
    clips_per_file: int = 1                      # heldout: real clips per reference/train file
    memorization_features: str = "auto"          # auto | i3d | pixels
    memorization_quantile: float = 0.05
    synthetic: bool = False
    progress: bool = True


@dataclass
class Result:
    """What a protocol returns: JSON-ready numbers plus arrays for the report."""

    summary: dict
    sync_scores: dict[str, np.ndarray] = field(default_factory=dict)
    memorization: MemorizationReport | None = None
    preview: torch.Tensor | None = None       # uint8 [N, F, 3, H, W]


# --------------------------------------------------------------------------- networks

def _network(net: type[torch.nn.Module], given: Path | None, known: KnownWeights, device: str
             ) -> tuple[torch.nn.Module | None, dict | None]:
    path = resolve_weights_path(given, known)
    if path is None:
        return None, None
    model = net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        digest = load_weights(model, path, known)
    for warning in caught:
        print(f"warning: {warning.message}")
    return model.eval().to(device), {"path": str(path), "file": known.filename, "sha256": digest,
                                     "verified": known.sha256 is not None}


@torch.no_grad()
def _i3d_logits(model: I3D, clips: list[EvalClip], device: str) -> np.ndarray:
    videos = torch.cat([preprocess_video(c.video[None]) for c in clips]).to(device)
    return model(videos).double().cpu().numpy()


@torch.no_grad()
def _vggish_rows(model: VGGish, clips: list[EvalClip], device: str) -> np.ndarray:
    rows = [model.embed(c.audio[None].to(device), c.sample_rate)[0] for c in clips]
    return torch.cat(rows).double().cpu().numpy()


# --------------------------------------------------------------------------- feature collection

Extractor = Callable[[list[EvalClip]], np.ndarray]


def _batches(clips: Iterable[EvalClip], size: int) -> Iterator[list[EvalClip]]:
    batch: list[EvalClip] = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def collect(clips: Iterable[EvalClip], extractors: dict[str, Extractor], *, batch_size: int, total: int | None,
            desc: str, progress: bool, keep: int = 0) -> tuple[dict[str, np.ndarray], list[EvalClip], int]:
    """Run every extractor over `clips` in batches; returns the stacked rows per extractor, the
    first `keep` clips, and the number of clips."""
    rows: dict[str, list[np.ndarray]] = {name: [] for name in extractors}
    kept: list[EvalClip] = []
    count = 0
    with tqdm(total=total, desc=desc, unit="clip", disable=not progress) as bar:
        for batch in _batches(clips, batch_size):
            for name, fn in extractors.items():
                rows[name].append(fn(batch))
            kept += batch[:max(keep - len(kept), 0)]
            count += len(batch)
            bar.update(len(batch))
    return {k: np.concatenate(v) for k, v in rows.items() if v}, kept, count


def _sync(batch: list[EvalClip]) -> np.ndarray:
    return np.array([av_sync_score(from_uint8(c.video), c.audio, c.fps, c.sample_rate).score for c in batch])


def _pixels(batch: list[EvalClip]) -> np.ndarray:
    rows = [pixel_mel_embedding(None if c.video is None else from_uint8(c.video)[None],
                                None if c.audio is None else c.audio[None], c.sample_rate) for c in batch]
    return torch.cat(rows).double().numpy()


def _synthetic(batch: list[EvalClip]) -> np.ndarray:
    return np.concatenate([alignment(from_uint8(c.video), c.audio, c.sample_rate).double().numpy() for c in batch])


def _distribution(values: np.ndarray) -> dict:
    defined = values[~np.isnan(values)]
    stats = {"mean": float(defined.mean()), "std": float(defined.std()), "median": float(np.median(defined))} \
        if defined.size else {"mean": None, "std": None, "median": None}
    return {**stats, "clips": int(values.size), "undefined": int(values.size - defined.size),
            "per_clip": [None if np.isnan(v) else float(v) for v in values]}


def _pair_distances(fake: np.ndarray, real: np.ndarray, names: tuple[str, str]) -> dict:
    return {names[0]: frechet_distance(fake, real), names[1]: kernel_distance(fake, real),
            f"{names[0]}_feature_rows": [int(fake.shape[0]), int(real.shape[0])]}


# --------------------------------------------------------------------------- heldout

def _identical_files(reference: list[Path], train: list[Path]) -> list[str]:
    """Reference files whose bytes equal a training file's (a leaked split); hashes only same-size files."""
    train_by_size: dict[int, list[Path]] = {}
    for path in train:
        train_by_size.setdefault(path.stat().st_size, []).append(path)
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = sha256_file(path)
        return digests[path]

    return [str(path) for path in reference
            if any(digest(path) == digest(c) for c in train_by_size.get(path.stat().st_size, []))]


@dataclass(frozen=True)
class _Modalities:
    """Which streams the samples have; real clips are reduced to the same ones."""

    video: bool
    audio: bool

    @classmethod
    def of(cls, clip: EvalClip) -> _Modalities:
        return cls(clip.video is not None, clip.audio is not None)

    def check(self, clip: EvalClip, spec: ClipSpec) -> EvalClip:
        if _Modalities.of(clip) != self:
            raise ValueError(f"sample {clip.name} has video={clip.video is not None}, audio={clip.audio is not None}; "
                             f"the first sample has video={self.video}, audio={self.audio}: samples must match")
        if self.video and (clip.video.shape[0], clip.fps) != (spec.frames, spec.fps):
            raise ValueError(f"sample {clip.name} has {clip.video.shape[0]} frames at {clip.fps} fps; the first "
                             f"sample has {spec.frames} at {spec.fps}: samples must share one shape")
        if self.audio and clip.sample_rate != spec.sample_rate:
            raise ValueError(f"sample {clip.name} has {clip.sample_rate} Hz audio; the first sample has "
                             f"{spec.sample_rate} Hz")
        return clip

    def reduce(self, clip: EvalClip) -> EvalClip:
        return EvalClip(clip.name, clip.video if self.video else None, clip.audio if self.audio else None,
                        clip.fps, clip.sample_rate)


def _heldout_extractors(cfg: EvalConfig, has: _Modalities, i3d: I3D | None, vggish: VGGish | None,
                        memorization: str) -> dict[str, Extractor]:
    extractors: dict[str, Extractor] = {}
    if has.video and has.audio:
        extractors["sync"] = _sync
        if cfg.synthetic:
            extractors["synthetic"] = _synthetic
    if has.video and i3d is not None:
        extractors["i3d"] = lambda b: _i3d_logits(i3d, b, cfg.device)
    if has.audio and vggish is not None:
        extractors["vggish"] = lambda b: _vggish_rows(vggish, b, cfg.device)
    if cfg.train is not None and memorization == "pixels":
        extractors["pixels"] = _pixels
    return extractors


def run_heldout(cfg: EvalConfig) -> Result:
    if cfg.train is not None and cfg.train.resolve() == cfg.reference.resolve():
        raise ValueError("--reference and --train are the same folder: the held-out protocol needs unseen clips")
    i3d, i3d_info = _network(I3D, cfg.i3d_weights, I3D_KINETICS400, cfg.device)
    vggish, audio_info = _network(VGGish, cfg.audio_weights, VGGISH, cfg.device)
    first = next(iter_samples(cfg.samples))
    has, spec = _Modalities.of(first), ClipSpec.of(first)
    mem_space = cfg.memorization_features
    if mem_space == "auto":
        mem_space = "i3d" if i3d is not None and has.video else "pixels"
    extractors = _heldout_extractors(cfg, has, i3d, vggish, mem_space)
    if cfg.train is not None and mem_space not in extractors:
        raise ValueError(f"--memorization-features {mem_space} needs I3D weights and video samples")

    fake, preview, n_fake = collect((has.check(c, spec) for c in iter_samples(cfg.samples)), extractors,
                                    batch_size=cfg.batch_size, total=None, desc="samples", progress=cfg.progress,
                                    keep=PREVIEW_CLIPS)
    reference = RealClips(cfg.reference, spec, clips_per_file=cfg.clips_per_file, seed=cfg.seed)
    real, _, n_real = collect(map(has.reduce, reference), extractors, batch_size=cfg.batch_size,
                              total=len(reference), desc="reference", progress=cfg.progress)
    if min(n_fake, n_real) < 2:
        raise ValueError(f"need at least 2 samples and 2 reference clips, got {n_fake} and {n_real}")

    metrics: dict = {}
    not_computed: dict[str, str] = {}
    notes: list[str] = []
    for name, labels, missing in (("i3d", ("fvd", "kvd"), "video samples and I3D weights "
                                   "(--i3d-weights or $MMDIFFUSION_I3D_WEIGHTS)"),
                                  ("vggish", ("fad", "kad"), "audio samples and VGGish weights "
                                   "(--audio-weights or $MMDIFFUSION_AUDIO_WEIGHTS)")):
        if name not in extractors:
            not_computed["/".join(labels)] = f"needs {missing}"
            continue
        metrics.update(_pair_distances(fake[name], real[name], labels))
        dim = fake[name].shape[1]
        if min(len(fake[name]), len(real[name])) <= dim:
            notes.append(f"{labels[0]}: {len(fake[name])} sample and {len(real[name])} reference feature rows for "
                         f"{dim} dimensions; the covariances are singular and the Fréchet distance is biased "
                         "upwards: compare only numbers computed with the same counts")
    if "sync" in extractors:
        metrics["av_sync"] = {"samples": _distribution(fake["sync"]), "reference": _distribution(real["sync"])}
    else:
        not_computed["av_sync"] = "needs video and audio in each sample"
    if "synthetic" in extractors:
        metrics["synthetic_alignment"] = {
            name: {**dict(zip(FACTORS, map(float, rows.mean(0)))), "mean": float(rows.mean())}
            for name, rows in (("samples", fake["synthetic"]), ("reference", real["synthetic"]))}
    elif cfg.synthetic:
        not_computed["synthetic_alignment"] = "needs video and audio in each sample"

    mem_report, train_info = None, None
    if cfg.train is not None:
        train = RealClips(cfg.train, spec, clips_per_file=cfg.clips_per_file, seed=cfg.seed)
        train_rows, _, n_train = collect(map(has.reduce, train), {mem_space: extractors[mem_space]},
                                         batch_size=cfg.batch_size, total=len(train), desc="train",
                                         progress=cfg.progress)
        mem_report = memorization_check(fake[mem_space], real[mem_space], train_rows[mem_space],
                                        quantile=cfg.memorization_quantile)
        metrics["memorization"] = {"features": mem_space, **mem_report.to_dict()}
        leaked = _identical_files(reference.paths, train.paths)
        if leaked:
            notes.append(f"{len(leaked)} reference files are byte-identical to training files, so the reference "
                         f"is not held out: {', '.join(leaked[:3])}{' ...' if len(leaked) > 3 else ''}")
        train_info = {"dir": str(cfg.train), "clips": n_train, "skipped_files": train.skipped}
    else:
        not_computed["memorization"] = "needs --train (the training clips)"
    summary = {
        "protocol": "heldout", "seed": cfg.seed,
        "samples": {"dir": str(cfg.samples), "clips": n_fake, "video": has.video, "audio": has.audio,
                    "frames": spec.frames, "fps": spec.fps, "size": spec.size, "sample_rate": spec.sample_rate},
        "reference": {"dir": str(cfg.reference), "clips": n_real, "clips_per_file": cfg.clips_per_file,
                      "skipped_files": reference.skipped},
        "train": train_info,
        "weights": {"i3d": i3d_info, "audio": audio_info},
        "metrics": metrics, "not_computed": not_computed, "notes": notes,
    }
    sync = {"samples": fake["sync"], "reference": real["sync"]} if "sync" in extractors else {}
    return Result(summary, sync, mem_report, _preview(preview))


def _preview(clips: list[EvalClip]) -> torch.Tensor | None:
    videos = [c.video for c in clips if c.video is not None]
    if not videos or any(v.shape != videos[0].shape for v in videos):
        return None
    return torch.stack(videos)


# --------------------------------------------------------------------------- published

def _frame_count(path: Path, fps: float, duration: float) -> int:
    with av.open(str(path)) as container:
        frames = container.streams.video[0].frames
    return frames if frames > 0 else round(duration * fps)


def _published_set(root: Path, cfg: EvalConfig, extractors: dict[str, Extractor], desc: str) -> tuple[dict, dict]:
    """Features of `cfg.num_clips` published clips of the videos under `root` (drawn and repeated
    like the published loaders), and counts."""
    files = find_videos(root)
    windows: list[tuple[int, int]] = []
    infos = []
    for i, path in enumerate(files):
        info = probe(path)
        infos.append(info)
        count = len(published.window_frame_indices(_frame_count(path, info.fps, info.duration), info.fps))
        windows += [(i, w) for w in range(count)]
    if not windows:
        raise ValueError(f"no clip of {published.FRAMES} frames at {published.FPS} fps under {str(root)!r}")
    order = np.random.default_rng(cfg.seed).permutation(len(windows)).tolist()
    drawn = published.tile(order, cfg.num_clips)
    unique = sorted(set(drawn))

    def clips() -> Iterator[EvalClip]:
        by_file: dict[int, list[int]] = {}
        for k in unique:
            by_file.setdefault(windows[k][0], []).append(k)
        for i, ks in by_file.items():
            info = infos[i]
            full = read_clip(files[i], info.start, None, info.fps, None, published.AUDIO_RATE)
            index = published.window_frame_indices(full.video.shape[0], info.fps)
            for k in ks:
                frames = index[min(windows[k][1], len(index) - 1)]
                audio = published.clip_audio(full.audio, int(frames[0]), int(frames[-1]), info.fps)
                yield EvalClip(f"{files[i].name}@{int(frames[0])}", published.letterbox_video(full.video[frames]),
                               audio[None], published.FPS, published.AUDIO_RATE)

    rows, _, _ = collect(clips(), extractors, batch_size=cfg.batch_size, total=len(unique), desc=desc,
                         progress=cfg.progress)
    position = {k: j for j, k in enumerate(unique)}
    repeated = {name: value[[position[k] for k in drawn]] for name, value in rows.items()}
    return repeated, {"dir": str(root), "files": len(files), "windows": len(windows), "distinct_clips": len(unique),
                      "evaluated_clips": len(drawn)}


def run_published(cfg: EvalConfig) -> Result:
    i3d, i3d_info = _network(I3D, cfg.i3d_weights, I3D_KINETICS400, cfg.device)
    audioclip, audio_info = _network(AudioCLIPAudio, cfg.audio_weights, AUDIOCLIP, cfg.device)
    if i3d is None and audioclip is None:
        raise ValueError("the published protocol needs I3D weights (--i3d-weights, i3d_pretrained_400.pt) and/or "
                         "AudioCLIP weights (--audio-weights, AudioCLIP-Full-Training.pt)")
    extractors: dict[str, Extractor] = {}
    if i3d is not None:
        extractors["i3d"] = lambda b: _i3d_logits(i3d, b, cfg.device)
    if audioclip is not None:
        @torch.no_grad()
        def embed_audio(batch: list[EvalClip]) -> np.ndarray:
            # [-1, 1] floats where the model expects the int16 range: the published input, unscaled
            audio = torch.cat([c.audio for c in batch]).to(cfg.device)
            return audioclip(audio).double().cpu().numpy()
        extractors["audioclip"] = embed_audio
    fake, fake_info = _published_set(cfg.samples, cfg, extractors, "samples")
    real, real_info = _published_set(cfg.reference, cfg, extractors, "reference")
    metrics: dict = {}
    if i3d is not None:
        metrics["fvd"] = published.frechet_distance_float32(fake["i3d"], real["i3d"])
        metrics["fvd_float64"] = frechet_distance(fake["i3d"], real["i3d"])
        metrics["kvd"] = kernel_distance(fake["i3d"], real["i3d"])
    if audioclip is not None:
        metrics["fad"] = published.FAD_SCALE * published.frechet_distance_float32(fake["audioclip"], real["audioclip"])
        metrics["fad_float64"] = published.FAD_SCALE * frechet_distance(fake["audioclip"], real["audioclip"])
    not_computed = {k: v for k, v in (("fvd/kvd", None if i3d else "no I3D weights"),
                                      ("fad", None if audioclip else "no AudioCLIP weights")) if v}
    summary = {
        "protocol": "published", "seed": cfg.seed, "samples": fake_info, "reference": real_info,
        "weights": {"i3d": i3d_info, "audio": audio_info}, "metrics": metrics, "not_computed": not_computed,
        "quirks": list(published.QUIRKS), "notes": list(published.DIFFERENCES),
    }
    return Result(summary)


def run(cfg: EvalConfig) -> Result:
    torch.manual_seed(cfg.seed)
    if cfg.protocol == "heldout":
        return run_heldout(cfg)
    if cfg.protocol == "published":
        return run_published(cfg)
    raise ValueError(f"protocol must be 'heldout' or 'published', got {cfg.protocol!r}")

