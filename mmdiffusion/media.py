"""Reading and writing audio-video media: mp4/mkv via PyAV, wav, PNG, contact sheets.

Conventions: video tensors are `[F, C, H, W]` (float in [-1, 1], or uint8 in [0, 255]); audio
tensors are `[C, L]` float in [-1, 1]. Times are seconds on the file's presentation clock.

Written for PyAV 18 and 19: rational attributes (`time_base`, `average_rate`, ...) are read only
through `_ratio`, because PyAV 19 returns `av.AVRational` (falsy when unset) where PyAV 18
returned `fractions.Fraction` or `None`.
"""
from __future__ import annotations

import math
import struct
import wave
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".avi", ".mov")
AUDIO_PREROLL = 0.25  # seconds of audio decoded (and dropped) before a clip after seeking


class MediaError(ValueError):
    """A media file is readable but unusable: no audio, too short, truncated, unknown duration."""


# Errors meaning "this file cannot supply the clip" (as opposed to a bug in the caller).
READ_ERRORS: tuple[type[Exception], ...] = (MediaError, av.FFmpegError, OSError, EOFError)


# --------------------------------------------------------------------------- conversions

def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in [-1, 1] (clamped) -> uint8 in [0, 255], rounded."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]; exact inverse of `to_uint8` on its image."""
    return x.float() / 127.5 - 1


def to_int16(x: torch.Tensor) -> torch.Tensor:
    """Float samples in [-1, 1] (clamped) -> int16 PCM, rounded."""
    return (x.detach().float().clamp(-1, 1) * 32767).round().to(torch.int16)


def from_int16(x: torch.Tensor) -> torch.Tensor:
    """int16 PCM -> float32 in [-1, 1]; exact inverse of `to_int16` on its image."""
    return x.float() / 32767


def _ratio(value: object) -> Fraction | None:
    """A PyAV rational (Fraction, AVRational, None, or an unset 0/1) as a Fraction or None."""
    if value is None:
        return None
    num, den = int(value.numerator), int(value.denominator)  # type: ignore[attr-defined]
    return Fraction(num, den) if num and den else None


def _check_video(video: torch.Tensor) -> torch.Tensor:
    video = torch.as_tensor(video)
    if video.ndim != 4 or video.shape[1] not in (1, 3):
        raise ValueError(f"video must be [F, C, H, W] with C in (1, 3), got shape {tuple(video.shape)}")
    return video


def _check_audio(audio: torch.Tensor) -> torch.Tensor:
    audio = torch.as_tensor(audio)
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise ValueError(f"audio must be [C, L] with C in (1, 2), got shape {tuple(audio.shape)}")
    return audio


def _rgb_uint8(video: torch.Tensor) -> np.ndarray:
    """[F, C, H, W] float in [-1, 1] or uint8 -> numpy uint8 [F, H, W, 3]."""
    frames = video if video.dtype == torch.uint8 else to_uint8(video)
    return frames.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().cpu().numpy()


# --------------------------------------------------------------------------- writing

def video_codec() -> str:
    """The H.264 encoder if this PyAV's FFmpeg has one, else MPEG-4 part 2."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _encode(container: av.container.OutputContainer, stream: av.stream.Stream, frames: list) -> None:
    """Encode and mux `frames`, then flush the encoder."""
    for frame in [*frames, None]:
        container.mux(stream.encode(frame))


AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def aac_rate(sample_rate: int) -> int:
    """The lowest common AAC sample rate >= `sample_rate` (8 kHz .. 96 kHz)."""
    return min((r for r in AAC_RATES if r >= sample_rate), default=AAC_RATES[-1])


def write_video(
    path: str | Path,
    video: torch.Tensor,
    audio: torch.Tensor | None = None,
    fps: float | Fraction = 10,
    sample_rate: int = 16000,
    *,
    codec: str | None = None,
    crf: int = 18,
) -> Path:
    """Write `video` `[F, C, H, W]` (float in [-1, 1] or uint8; C in 1, 3; H, W even) and optional
    `audio` `[C, L]` (C in 1, 2) to an mp4/mkv/mov file: H.264 yuv420p (`video_codec()`) + AAC.

    `fps` may be fractional: `Fraction(30000, 1001)` (or its float) for NTSC's 29.97. Frame `k`
    has presentation time `k / fps` and audio sample `n` time `n / sample_rate`. Audio at a rate
    AAC lacks (e.g. 4.8 kHz) is resampled to `aac_rate(sample_rate)`.
    """
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".mkv", ".mov"):
        raise ValueError(f"path must end in .mp4, .mkv or .mov (H.264 + AAC), got {path.name!r}")
    video = _check_video(video)
    if video.shape[0] == 0:
        raise ValueError("video must have at least one frame")
    height, width = video.shape[-2:]
    if height % 2 or width % 2:
        raise ValueError(f"video height and width must be even for yuv420p, got {height}x{width}")
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    samples = None
    if audio is not None:
        audio = _check_audio(audio).detach().float().cpu()
        if sample_rate not in AAC_RATES:
            rate_in, sample_rate = sample_rate, aac_rate(sample_rate)
            audio = AF.resample(audio, rate_in, sample_rate)
        samples = audio.clamp(-1, 1).numpy()
    codec = codec or video_codec()
    with av.open(str(path), mode="w") as container:
        options = {"crf": str(crf)} if codec == "libx264" else {}
        video_stream = container.add_stream(codec, rate=rate, options=options)
        video_stream.width, video_stream.height, video_stream.pix_fmt = width, height, "yuv420p"
        if codec != "libx264":
            video_stream.bit_rate = max(1_000_000, 24 * width * height * math.ceil(rate))
        frames = [av.VideoFrame.from_ndarray(f, format="rgb24") for f in _rgb_uint8(video)]
        for k, frame in enumerate(frames):
            frame.pts = k                                   # in the stream's 1 / fps time base
        if samples is not None:                             # every stream exists before muxing
            layout = "mono" if samples.shape[0] == 1 else "stereo"
            audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
            sound = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
            sound.sample_rate, sound.pts, sound.time_base = sample_rate, 0, Fraction(1, sample_rate)
        _encode(container, video_stream, frames)
        if samples is not None:
            _encode(container, audio_stream, [sound])       # PyAV re-frames it for the encoder
    return path


def write_wav(path: str | Path, audio: torch.Tensor, sample_rate: int) -> Path:
    """Write `audio` `[C, L]` float in [-1, 1] as 16-bit PCM wav."""
    audio = _check_audio(audio)
    pcm = to_int16(audio).T.contiguous().cpu().numpy().astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(audio.shape[0])
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
    return Path(path)


def write_png(path: str | Path, image: np.ndarray | torch.Tensor) -> Path:
    """Write a uint8 image `[H, W, 3]` (RGB) or `[H, W]` (grey) as an 8-bit PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be [H, W, 3] or [H, W], got shape {image.shape}")
    height, width = image.shape[:2]
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour_type = 2 if image.ndim == 3 else 0
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
           + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)
    return Path(path)


def contact_sheet(videos: torch.Tensor, *, pad: int = 1, pad_value: int = 255) -> np.ndarray:
    """Grid of frames: one row per video, one column per frame.

    `videos`: `[N, F, C, H, W]` or `[F, C, H, W]`, float in [-1, 1] or uint8, C in (1, 3).
    Returns uint8 `[N*H + (N+1)*pad, F*W + (F+1)*pad, 3]`.
    """
    videos = torch.as_tensor(videos)
    if videos.ndim == 4:
        videos = videos[None]
    if videos.ndim != 5 or videos.shape[2] not in (1, 3):
        raise ValueError(f"videos must be [N, F, C, H, W] with C in (1, 3), got shape {tuple(videos.shape)}")
    n, f, _, h, w = videos.shape
    sheet = np.full((n * h + (n + 1) * pad, f * w + (f + 1) * pad, 3), pad_value, np.uint8)
    for i, clip in enumerate(videos):
        for j, frame in enumerate(_rgb_uint8(clip)):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            sheet[top:top + h, left:left + w] = frame
    return sheet


# --------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class MediaInfo:
    """What `probe` learns from a file's headers (no decoding)."""

    path: Path
    start: float          # first video timestamp, seconds
    duration: float       # video duration, seconds
    fps: float            # average video frame rate
    width: int
    height: int
    sample_rate: int      # 0 without audio
    channels: int         # 0 without audio

    @property
    def has_audio(self) -> bool:
        return self.channels > 0


class Clip(NamedTuple):
    """A decoded clip: `video` uint8 `[F, 3, H, W]`, `audio` float32 `[1, L]` (mono), and the
    timestamp `start` of its first frame (audio sample `n` is at `start + n / sample_rate`)."""

    video: torch.Tensor
    audio: torch.Tensor
    start: float


def probe(path: str | Path) -> MediaInfo:
    """Stream facts of a media file. Raises `MediaError` (or a PyAV error) when unusable."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError("no video stream")
        video = container.streams.video[0]
        time_base = _ratio(video.time_base) or Fraction(1, av.time_base)
        fps = _ratio(video.average_rate) or _ratio(video.guessed_rate) or _ratio(video.base_rate)
        if fps is None:
            raise MediaError("unknown frame rate")
        start = float(video.start_time * time_base) if video.start_time is not None else 0.0
        if video.duration:
            duration = float(video.duration * time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            raise MediaError("unknown duration")
        audio = container.streams.audio[0] if container.streams.audio else None
        return MediaInfo(
            path=Path(path), start=start, duration=duration, fps=float(fps),
            width=video.codec_context.width, height=video.codec_context.height,
            sample_rate=audio.codec_context.sample_rate if audio else 0,
            channels=len(audio.codec_context.layout.channels) if audio else 0,
        )


def _resize_crop(frame: np.ndarray, size: int | None) -> torch.Tensor:
    """uint8 `[h, w, 3]` -> uint8 `[3, size, size]`: short side resized to `size` (antialiased
    bilinear), then centre-cropped. `size=None` keeps the frame as is."""
    image = torch.from_numpy(frame).permute(2, 0, 1)
    if size is None:
        return image.contiguous()
    h, w = image.shape[1:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        resized = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear",
                                antialias=True, align_corners=False)[0]
        image = resized.round().clamp(0, 255).to(torch.uint8)
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[:, top:top + size, left:left + size].contiguous()


def _seek(container: av.container.InputContainer, stream: av.stream.Stream, time: float) -> None:
    """Seek to a keyframe at or before `time` (no-op at the very start)."""
    time_base = _ratio(stream.time_base)
    if time > 0 and time_base is not None:
        container.seek(int(math.floor(time / time_base)), stream=stream, backward=True)


def _decode_video(container: av.container.InputContainer, start: float, frames: int | None,
                  fps: float, size: int | None) -> tuple[torch.Tensor, float]:
    """Frames `[F, 3, S, S]` resampled to `fps`, and the clip start `t0`: the timestamp of the first
    frame at or after `start`. Output frame `k` is the source frame on screen at
    `t0 + (k + 0.5) / fps`, the middle of its display interval. `frames=None` reads to the end."""
    stream = container.streams.video[0]
    stream.codec_context.thread_type = "AUTO"
    period = 1 / float(_ratio(stream.average_rate) or fps)  # source frame period
    _seek(container, stream, start)
    t0: float | None = None
    out: list[torch.Tensor] = []
    shown, shown_time, shown_image = None, -math.inf, None  # the source frame on screen

    def wanted(until: float) -> bool:  # is the next output frame's centre before `until`?
        return (frames is None or len(out) < frames) and t0 + (len(out) + 0.5) / fps < until

    def emit() -> None:
        nonlocal shown_image
        if shown_image is None:
            shown_image = _resize_crop(shown.to_ndarray(format="rgb24"), size)
        out.append(shown_image)

    for frame in container.decode(stream):
        if frame.time is not None:
            time = frame.time
        else:  # a frame without timestamp follows the previous one
            time = shown_time + period if shown is not None else start
        if t0 is None:
            if time < start - 0.25 * period:
                continue
            t0 = time
        while wanted(time):
            emit()
        if frames is not None and len(out) == frames:
            break
        shown, shown_time, shown_image = frame, time, None
    else:  # end of stream: the last frame stays on screen for one source frame period
        if t0 is None:
            raise MediaError(f"no video frames at or after {start:.3f}s")
        while wanted(shown_time + period):
            emit()
        if frames is not None and len(out) < frames:
            raise MediaError(f"video ends at {shown_time + period:.3f}s, "
                             f"clip needs {t0 + frames / fps:.3f}s")
    if not out:
        raise MediaError("clip has no frames")
    return torch.stack(out), t0


def _audio_array(frame: av.AudioFrame) -> np.ndarray:
    """Decoded audio frame -> float32 `[channels, samples]` in [-1, 1] for any sample format."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128) / 128
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    return data.astype(np.float32)


def _decode_audio(container: av.container.InputContainer, start: float, length: int,
                  sample_rate: int) -> torch.Tensor:
    """Mono audio `[1, length]` at `sample_rate` whose sample `n` is at time `start + n / sample_rate`.

    Each decoded frame is placed by its own timestamp (gaps and missing audio are silent), the
    channels are averaged, and the rate is converted with a windowed-sinc resampler run over a
    margin on both sides so that no filter edge falls inside the clip. Decoding starts
    `AUDIO_PREROLL` before the window: transform codecs (AAC, Opus) need the previous frame to
    reconstruct the first one after a seek.
    """
    stream = container.streams.audio[0]
    source_rate = stream.codec_context.sample_rate
    margin = math.ceil(0.05 * sample_rate)                     # target samples each side
    window_start = start - margin / sample_rate
    window = math.ceil((length + 2 * margin) * source_rate / sample_rate)
    buffer = np.zeros(window, np.float32)
    _seek(container, stream, window_start - AUDIO_PREROLL)
    position = None
    for frame in container.decode(stream):
        if frame.time is not None:
            position = round((frame.time - window_start) * source_rate)
        elif position is None:
            raise MediaError("audio frames carry no timestamps")
        if position >= window:
            break
        samples = _audio_array(frame).mean(axis=0)
        lo, hi = max(position, 0), min(position + samples.shape[0], window)
        if hi > lo:
            buffer[lo:hi] = samples[lo - position:hi - position]
        position += samples.shape[0]
    audio = torch.from_numpy(buffer)[None]
    if source_rate != sample_rate:
        audio = AF.resample(audio, source_rate, sample_rate)
    return audio[:, margin:margin + length].clamp(-1, 1).contiguous()


def read_video(path: str | Path, start: float, frames: int | None, fps: float,
               size: int | None) -> tuple[torch.Tensor, float]:
    """`frames` frames at `fps` (uint8 `[F, 3, S, S]`, resized and centre-cropped to `size`; `None`:
    native size; `frames=None`: to the end) from the first frame at or after `start` seconds, and
    that frame's timestamp. Any audio is ignored. Raises `MediaError` or a PyAV error on bad input."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError("no video stream")
        return _decode_video(container, start, frames, fps, size)


def read_audio(path: str | Path, start: float, length: int, sample_rate: int) -> torch.Tensor:
    """Mono audio `[1, length]` float32 from `start` seconds of any audio or video file, resampled to
    `sample_rate`. Raises `MediaError` when the file ends before `start + length / sample_rate`."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise MediaError("no audio stream")
        duration = container.duration / av.time_base if container.duration else None
        end = start + length / sample_rate
        if duration is not None and end > duration + 1e-3:
            raise MediaError(f"the file lasts {duration:.3f}s; {length} samples at {sample_rate} Hz from "
                             f"{start:.3f}s need {end:.3f}s")
        return _decode_audio(container, start, length, sample_rate)


def read_clip(path: str | Path, start: float, frames: int | None, fps: float, size: int | None,
              sample_rate: int) -> Clip:
    """Decode `frames` frames at `fps` starting at the first frame at or after `start` (seconds),
    resized and centre-cropped to `size` x `size` (`None`: native size), and the mono audio of
    exactly the same time span, `[1, round(F * sample_rate / fps)]`, resampled to `sample_rate`.
    `frames=None` reads to the end of the video. Raises `MediaError` or a PyAV error on bad input.
    """
    if (frames is not None and frames < 1) or fps <= 0 or sample_rate < 1 or (size is not None and size < 1):
        raise ValueError(f"frames, fps, size, sample_rate must be positive (frames, size may be None), "
                         f"got {frames}, {fps}, {size}, {sample_rate}")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError("no video stream")
        if not container.streams.audio:
            raise MediaError("no audio stream")
        video, t0 = _decode_video(container, start, frames, fps, size)
    with av.open(str(path)) as container:  # fresh demuxer state for the audio pass
        length = round(video.shape[0] * sample_rate / fps)
        audio = _decode_audio(container, t0, length, sample_rate)
    return Clip(video, audio, t0)
