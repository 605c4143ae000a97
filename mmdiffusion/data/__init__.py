"""Audio-video data: real clips from video files, prepared shards, and synthetic sounding videos."""
from .av_dataset import AVClipDataset, ClipDataset, SkippedFileWarning, find_videos
from .shards import ShardDataset, write_shards
from .synth import (
    FACTORS,
    Scene,
    SynthAVDataset,
    alignment,
    alignment_score,
    audio_signals,
    shuffled_alignment_score,
    synth_clip,
    synth_clips,
    visual_signals,
)

__all__ = [
    "AVClipDataset", "ClipDataset", "SkippedFileWarning", "find_videos",
    "ShardDataset", "write_shards",
    "FACTORS", "Scene", "SynthAVDataset", "alignment", "alignment_score", "audio_signals",
    "shuffled_alignment_score", "synth_clip", "synth_clips", "visual_signals",
]
