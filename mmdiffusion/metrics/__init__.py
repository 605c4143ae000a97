"""Evaluation metrics for joint audio-video generation (DESIGN.md §6).

- `distances`: `frechet_distance` (FVD/FAD) and `kernel_distance` (KVD/KAD) between feature sets.
- Feature networks, weights only from a user path (`weights`): `I3D` (video, FVD/KVD),
  `VGGish` (audio, standard FAD) and `AudioCLIPAudio` (audio, the published FAD).
- Weights-free measures: `av_sync_score` (audio-visual synchrony) and `memorization_check`
  (distance of each generated clip to its nearest training clip).
"""
from .audioclip import AudioCLIPAudio
from .av_sync import SyncScore, av_sync_score
from .distances import frechet_distance, kernel_distance
from .i3d import I3D, preprocess_video
from .memorization import MemorizationReport, memorization_check, nearest_distances, pixel_mel_embedding
from .vggish import VGGish
from .weights import AUDIOCLIP, I3D_KINETICS400, VGGISH, KnownWeights, load_weights, resolve_weights_path

__all__ = [
    "frechet_distance", "kernel_distance",
    "I3D", "preprocess_video", "VGGish", "AudioCLIPAudio",
    "KnownWeights", "I3D_KINETICS400", "VGGISH", "AUDIOCLIP", "load_weights", "resolve_weights_path",
    "SyncScore", "av_sync_score",
    "MemorizationReport", "memorization_check", "nearest_distances", "pixel_mel_embedding",
]
