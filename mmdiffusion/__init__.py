"""mmdiffusion: joint audio-video generation with a coupled U-Net and RS-MMA (MM-Diffusion, rebuilt)."""
from mmdiffusion.diffusion import GaussianDiffusion
from mmdiffusion.official import load_official
from mmdiffusion.sampling import Condition, sample
from mmdiffusion.unet import PRESETS, CoupledUNet, UNetConfig

_TRAINING = ("TrainConfig", "Trainer", "load_trained")


def __getattr__(name: str):
    # The training stack reads and writes media through PyAV; import it on first use so that the
    # model and the samplers work where PyAV is not installed (e.g. a bare GPU image).
    if name in _TRAINING:
        from mmdiffusion import training
        return getattr(training, name)
    raise AttributeError(f"module 'mmdiffusion' has no attribute {name!r}")


__all__ = ["GaussianDiffusion", "load_official", "Condition", "sample", "PRESETS", "CoupledUNet", "UNetConfig",
           *_TRAINING]
