"""A generic log-mel spectrogram for the weights-free measures (synchrony, memorisation embedding)."""
from __future__ import annotations

import torch
import torchaudio.functional as AF

HOP_SECONDS = 0.010


def log_mel_db(audio: torch.Tensor, sample_rate: int, *, n_mels: int = 64, window_seconds: float = 0.025,
               top_db: float = 80.0) -> torch.Tensor:
    """`audio [..., C, L]` (channels averaged) -> power mel spectrogram in dB `[..., n_mels, T]`.

    Centred frames every 10 ms (`T = 1 + L // hop`), Hann window of `window_seconds`, mel filters
    (Slaney scale) from 0 Hz to Nyquist, dB clipped to `top_db` below the clip's maximum so that
    silence and dither do not dominate (as `librosa.power_to_db(top_db=80)`).
    """
    if audio.ndim < 2:
        raise ValueError(f"audio must be [..., C, L], got {tuple(audio.shape)}")
    mono = audio.float().mean(-2)
    win = max(int(round(window_seconds * sample_rate)), 2)
    n_fft = 1 << (win - 1).bit_length()
    hop = max(int(round(HOP_SECONDS * sample_rate)), 1)
    flat = mono.reshape(-1, mono.shape[-1])
    spec = torch.stft(flat, n_fft, hop, win, torch.hann_window(win, device=audio.device), center=True,
                      pad_mode="constant", return_complex=True).abs().square()      # [N, n_fft/2+1, T]
    fbank = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, norm="slaney",
                               mel_scale="slaney").to(spec.device)
    db = 10.0 * torch.log10(torch.clamp(torch.einsum("nft,fm->nmt", spec, fbank), min=1e-10))
    db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - top_db)
    return db.reshape(*mono.shape[:-1], n_mels, db.shape[-1])
