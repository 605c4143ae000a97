"""mmdiffusion: joint audio-video generation with a coupled U-Net and RS-MMA (MM-Diffusion, rebuilt)."""
from mmdiffusion.diffusion import GaussianDiffusion
from mmdiffusion.sampling import Condition, sample
from mmdiffusion.unet import PRESETS, CoupledUNet, UNetConfig
from mmdiffusion.official import load_official
from mmdiffusion.training import TrainConfig, Trainer, load_trained
