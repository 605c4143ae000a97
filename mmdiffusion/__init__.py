"""mmdiffusion: joint audio-video generation with a coupled U-Net and RS-MMA (MM-Diffusion, rebuilt)."""
