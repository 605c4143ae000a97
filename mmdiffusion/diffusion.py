"""Joint Gaussian diffusion over a (video, audio) pair.

Both modalities share one timestep per sample and get independent noise:
``x_t = alpha_t * x_0 + sigma_t * eps`` with ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``
(variance preserving), video ``[B, F, C, H, W]``, audio ``[B, C, L]``.

All schedule maths (betas, cumulative products, alpha, sigma, log-SNR, their interpolation) is done
in float64 whatever the model's dtype; only the final elementwise combinations with data tensors run
in the data's dtype.

Continuous time. The schedule is defined on the integer timesteps ``0 .. N-1``. For a float ``t`` we
interpolate ``log(abar)`` linearly between the neighbouring integers (a piecewise geometric
interpolation of ``abar``). It is exact at integers, monotone, and makes the log-SNR
``lambda(t) = log(alpha_t / sigma_t)`` continuous and strictly decreasing, so it can be inverted
exactly (:meth:`GaussianDiffusion.timestep_for_log_snr`) -- what solvers stepping uniformly in
log-SNR need.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Pair",
    "GaussianDiffusion",
    "TimestepSampler",
    "UniformSampler",
    "LossAwareSampler",
    "linear_betas",
    "cosine_betas",
    "drop_labels",
]

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v", "x0")


class Pair(NamedTuple):
    """A ``(video, audio)`` pair of tensors with elementwise arithmetic.

    ``+ - * /`` apply to both members, with another ``Pair`` (memberwise) or with a scalar, so
    diffusion maths is written once for both modalities: ``x = a * d + s * eps``. (This replaces
    tuple concatenation/repetition, which a pair of tensors never needs.)
    """

    video: Tensor
    audio: Tensor

    def map(self, fn: Callable[..., Any], *others: Pair) -> Pair:
        """``Pair(fn(video, *others.video), fn(audio, *others.audio))``."""
        return Pair(fn(self.video, *(o.video for o in others)), fn(self.audio, *(o.audio for o in others)))

    def _op(self, other: Any, op: Callable[[Any, Any], Any]) -> Pair:
        if isinstance(other, Pair):
            return Pair(op(self.video, other.video), op(self.audio, other.audio))
        return Pair(op(self.video, other), op(self.audio, other))

    def __add__(self, other: Any) -> Pair:  # type: ignore[override]
        return self._op(other, operator.add)

    def __radd__(self, other: Any) -> Pair:
        return self._op(other, lambda a, b: b + a)

    def __sub__(self, other: Any) -> Pair:
        return self._op(other, operator.sub)

    def __rsub__(self, other: Any) -> Pair:
        return self._op(other, lambda a, b: b - a)

    def __mul__(self, other: Any) -> Pair:  # type: ignore[override]
        return self._op(other, operator.mul)

    def __rmul__(self, other: Any) -> Pair:  # type: ignore[override]
        return self._op(other, lambda a, b: b * a)

    def __truediv__(self, other: Any) -> Pair:
        return self._op(other, operator.truediv)

    def __neg__(self) -> Pair:
        return Pair(-self.video, -self.audio)


def per_sample(coef: Tensor | float, x: Tensor) -> Tensor | float:
    """Broadcast a per-sample coefficient ``[B]`` (or a scalar) against ``x`` ``[B, ...]`` in ``x.dtype``."""
    if isinstance(coef, Tensor):
        return coef.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return coef


# --------------------------------------------------------------------------------------- schedules
def linear_betas(num_steps: int) -> Tensor:
    """The DDPM schedule (beta 1e-4 .. 0.02 over 1000 steps), rescaled by ``1000 / num_steps``
    for other step counts as in guided-diffusion. float64 ``[num_steps]``."""
    scale = 1000.0 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved-DDPM cosine schedule: ``abar(u) = cos((u + s) / (1 + s) * pi / 2)^2`` sampled at
    ``u = i / N``, betas clipped to ``max_beta``. float64 ``[num_steps]``."""
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    abar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


# ------------------------------------------------------------------------------ timestep samplers
class TimestepSampler:
    """Draws training timesteps ``t ~ p`` with importance weights ``1 / (N p_t)``.

    The weighted loss is an unbiased estimate of the uniform-in-``t`` objective for any ``p``.
    """

    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def probs(self) -> Tensor:
        """Sampling distribution over timesteps, float64 ``[num_steps]``."""
        return torch.full((self.num_steps,), 1.0 / self.num_steps, dtype=torch.float64)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record per-sample losses ``[B]`` observed at timesteps ``t`` ``[B]`` (no-op here)."""

    def sample(
        self, batch_size: int, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return timesteps (int64 ``[B]``) and importance weights (float32 ``[B]``) on ``device``."""
        p = self.probs().to(device)
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        return t, (1.0 / (self.num_steps * p[t])).float()


class UniformSampler(TimestepSampler):
    """Uniform timesteps; all importance weights are 1."""


class LossAwareSampler(TimestepSampler):
    """Samples ``t`` proportionally to the root mean square of its recent losses (improved DDPM).

    Keeps the last ``history`` losses per timestep; samples uniformly until every timestep has a
    full history, then mixes the loss-based distribution with ``uniform_prob`` of uniform.
    In data-parallel training, pass each step's losses from all ranks to :meth:`update` (or accept
    per-rank distributions, which are still unbiased through the importance weights).
    """

    def __init__(self, num_steps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_steps)
        self.uniform_prob = uniform_prob
        self._losses = torch.zeros(num_steps, history, dtype=torch.float64)
        self._counts = torch.zeros(num_steps, dtype=torch.long)

    @property
    def warmed_up(self) -> bool:
        """Whether every timestep has a full loss history."""
        return bool((self._counts == self._losses.shape[1]).all())

    def probs(self) -> Tensor:
        if not self.warmed_up:
            return super().probs()
        p = self._losses.square().mean(dim=1).sqrt()
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.num_steps

    def update(self, t: Tensor, losses: Tensor) -> None:
        history = self._losses.shape[1]
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            if self._counts[step] == history:
                self._losses[step, :-1] = self._losses[step, 1:].clone()
                self._losses[step, -1] = loss
            else:
                self._losses[step, self._counts[step]] = loss
                self._counts[step] += 1


def drop_labels(y: Tensor, null_y: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label of ``y`` ``[B]`` by ``null_y`` with probability ``p``: the label dropout
    that trains a class-conditional model for classifier-free guidance."""
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p
    return torch.where(drop, torch.full_like(y, null_y), y)


# ------------------------------------------------------------------------------------- diffusion
class GaussianDiffusion:
    """Joint video+audio Gaussian diffusion (DDPM forward process) and its training loss.

    Args:
        num_steps: number of training timesteps ``N``; the model sees ``t`` in ``[0, N)``.
        schedule: ``"linear"`` (the paper's) or ``"cosine"``.
        prediction: what the model outputs: ``"eps"`` (noise), ``"v"`` (``alpha * eps - sigma * x0``)
            or ``"x0"`` (clean data).
        loss_weights: ``(video, audio)`` weights of the per-modality mean squared errors.
        timestep_sampler: ``"uniform"``, ``"loss-aware"`` or a :class:`TimestepSampler`.
    """

    def __init__(
        self,
        num_steps: int = 1000,
        schedule: str = "linear",
        prediction: str = "eps",
        *,
        loss_weights: tuple[float, float] = (1.0, 1.0),
        timestep_sampler: str | TimestepSampler = "uniform",
    ) -> None:
        if not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if len(loss_weights) != 2 or min(loss_weights) < 0:
            raise ValueError(f"loss_weights must be two non-negative floats (video, audio), got {loss_weights!r}")
        self.num_steps = num_steps
        self.schedule = schedule
        self.prediction = prediction
        self.loss_weights = (float(loss_weights[0]), float(loss_weights[1]))
        if isinstance(timestep_sampler, str):
            samplers = {"uniform": UniformSampler, "loss-aware": LossAwareSampler}
            if timestep_sampler not in samplers:
                raise ValueError(f"timestep_sampler must be one of {tuple(samplers)} or a TimestepSampler, "
                                 f"got {timestep_sampler!r}")
            timestep_sampler = samplers[timestep_sampler](num_steps)
        elif timestep_sampler.num_steps != num_steps:
            raise ValueError(f"timestep_sampler has {timestep_sampler.num_steps} steps, expected {num_steps}")
        self.timestep_sampler = timestep_sampler
        self.betas = (linear_betas if schedule == "linear" else cosine_betas)(num_steps)
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError(f"the {schedule} schedule needs betas in (0, 1); num_steps={num_steps} is too small")
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        self._log_abar = self.alphas_cumprod.log()

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(num_steps={self.num_steps}, schedule={self.schedule!r}, "
                f"prediction={self.prediction!r}, loss_weights={self.loss_weights})")

    # ------------------------------------------------------------------ schedule (float64 maths)
    def log_alpha_bar(self, t: Tensor) -> Tensor:
        """``log(abar_t)`` at integer or float timesteps ``t`` in ``[0, N-1]`` (float64, on ``t``'s device).

        Float ``t`` interpolates ``log(abar)`` linearly between the neighbouring integers.
        """
        t = torch.as_tensor(t).to(torch.float64)
        if t.numel() and (t.min() < 0 or t.max() > self.num_steps - 1):
            raise ValueError(f"timesteps must lie in [0, {self.num_steps - 1}], got range "
                             f"[{t.min().item()}, {t.max().item()}]")
        table = self._log_abar.to(t.device)
        lo = t.floor().clamp(max=self.num_steps - 2)
        frac = t - lo
        lo = lo.long()
        return (1 - frac) * table[lo] + frac * table[lo + 1]

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t) = (sqrt(abar_t), sqrt(1 - abar_t))``, float64, shaped like ``t``."""
        log_abar = self.log_alpha_bar(t)
        return (0.5 * log_abar).exp(), (-torch.expm1(log_abar)).sqrt()

    def log_snr(self, t: Tensor) -> Tensor:
        """Half log-SNR ``lambda_t = log(alpha_t / sigma_t)``, float64, strictly decreasing in ``t``."""
        log_abar = self.log_alpha_bar(t)
        return 0.5 * (log_abar - torch.log(-torch.expm1(log_abar)))

    def timestep_for_log_snr(self, lam: Tensor) -> Tensor:
        """Exact inverse of :meth:`log_snr` (float64 timesteps in ``[0, N-1]``)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lam_max, lam_min = self.log_snr(torch.tensor([0, self.num_steps - 1])).tolist()
        if lam.numel() and (lam.max() > lam_max + 1e-9 or lam.min() < lam_min - 1e-9):
            raise ValueError(f"log-SNR must lie in [{lam_min}, {lam_max}]")
        target = -torch.nn.functional.logsigmoid(2 * lam)  # -log(abar), increasing in t
        table = -self._log_abar.to(lam.device)
        hi = torch.searchsorted(table, target).clamp(1, self.num_steps - 1)
        lo = hi - 1
        frac = ((target - table[lo]) / (table[hi] - table[lo])).clamp(0, 1)
        return lo + frac

    # ---------------------------------------------------------------- parameterisations
    def q_sample(self, x0: Pair, t: Tensor, noise: Pair) -> Pair:
        """Forward process ``x_t = alpha_t x0 + sigma_t eps`` for timesteps ``t`` ``[B]``."""
        alpha, sigma = self.alpha_sigma(t)
        return x0.map(lambda x, e: per_sample(alpha, x) * x + per_sample(sigma, x) * e, noise)

    def prediction_target(self, x0: Pair, noise: Pair, alpha: Tensor | float, sigma: Tensor | float) -> Pair:
        """What a perfect model outputs for this ``(x0, noise)``, in the diffusion's prediction type."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return x0.map(lambda x, e: per_sample(alpha, x) * e - per_sample(sigma, x) * x, noise)

    def predict_x0(self, x_t: Pair, pred: Pair, alpha: Tensor | float, sigma: Tensor | float) -> Pair:
        """Clean-data estimate from a model output ``pred`` at noisy ``x_t`` (inverse of the parameterisation)."""
        if self.prediction == "x0":
            return pred
        if self.prediction == "eps":
            return x_t.map(lambda x, p: (x - per_sample(sigma, x) * p) / per_sample(alpha, x), pred)
        return x_t.map(lambda x, p: per_sample(alpha, x) * x - per_sample(sigma, x) * p, pred)

    # ---------------------------------------------------------------------------- training
    def training_loss(
        self,
        model: Callable[..., tuple[Tensor, Tensor]],
        video: Tensor,
        audio: Tensor,
        *,
        t: Tensor | None = None,
        noise: tuple[Tensor, Tensor] | None = None,
        generator: torch.Generator | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted per-modality MSE between the model output and its target.

        Args:
            model: ``model(video_t, audio_t, t, **model_kwargs) -> (pred_video, pred_audio)``.
            video: clean video ``[B, F, C, H, W]``; audio: clean audio ``[B, C, L]``.
            t: timesteps ``[B]``; drawn from ``self.timestep_sampler`` (with its importance weights,
                and the sampler updated with the per-sample losses) when ``None``.
            noise: ``(video_noise, audio_noise)``; drawn from ``generator`` (on the data's device) when ``None``.

        Returns:
            ``(loss, {"video": mse_video, "audio": mse_audio})`` with
            ``loss = w_video * mse_video + w_audio * mse_audio``; each MSE is averaged over elements
            and (importance-weighted) over the batch, computed in float32 or wider.
        """
        x0 = Pair(video, audio)
        _check_pair(x0, "video", "audio")
        batch = video.shape[0]
        weights = None
        if t is None:
            t, weights = self.timestep_sampler.sample(batch, device=video.device, generator=generator)
        elif t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
        if noise is None:
            noise = x0.map(lambda x: torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
        else:
            noise = Pair(*noise)
            if noise.video.shape != video.shape or noise.audio.shape != audio.shape:
                raise ValueError(f"noise shapes {tuple(noise.video.shape)}, {tuple(noise.audio.shape)} must equal "
                                 f"the data shapes {tuple(video.shape)}, {tuple(audio.shape)}")
        x_t = self.q_sample(x0, t, noise)
        pred = call_model(model, x_t, t, model_kwargs or {})
        alpha, sigma = self.alpha_sigma(t)
        target = self.prediction_target(x0, noise, alpha, sigma)
        mse = pred.map(lambda p, y: (p - y).to(torch.promote_types(p.dtype, torch.float32))
                       .square().flatten(1).mean(1), target)  # [B] per modality
        w_video, w_audio = self.loss_weights
        if weights is not None:
            self.timestep_sampler.update(t, (w_video * mse.video + w_audio * mse.audio).detach())
            mse = mse * weights
        parts = {"video": mse.video.mean(), "audio": mse.audio.mean()}
        return w_video * parts["video"] + w_audio * parts["audio"], parts


def _check_pair(x: Pair, video_name: str, audio_name: str) -> None:
    """Validate a ``([B, F, C, H, W], [B, C, L])`` floating pair."""
    if x.video.dim() != 5:
        raise ValueError(f"{video_name} must be [B, F, C, H, W], got shape {tuple(x.video.shape)}")
    if x.audio.dim() != 3:
        raise ValueError(f"{audio_name} must be [B, C, L], got shape {tuple(x.audio.shape)}")
    if x.video.shape[0] != x.audio.shape[0]:
        raise ValueError(f"{video_name} and {audio_name} batch sizes differ: {x.video.shape[0]} vs {x.audio.shape[0]}")
    for name, v in ((video_name, x.video), (audio_name, x.audio)):
        if not v.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {v.dtype}")


def call_model(model: Callable[..., tuple[Tensor, Tensor]], x: Pair, t: Tensor, kwargs: dict[str, Any]) -> Pair:
    """Run ``model(video, audio, t, **kwargs)`` and check it returns a pair shaped like ``x``."""
    out = model(x.video, x.audio, t, **kwargs)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"model must return (pred_video, pred_audio), got {type(out).__name__}")
    out = Pair(*out)
    for name, p, ref in (("video", out.video, x.video), ("audio", out.audio, x.audio)):
        if p.shape != ref.shape:
            raise ValueError(f"model's {name} output has shape {tuple(p.shape)}, expected {tuple(ref.shape)}")
    return out
