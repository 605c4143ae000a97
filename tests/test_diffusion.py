"""GaussianDiffusion: schedules, parameterisations, training loss and timestep samplers.

Closed-form checks use Gaussian data: for ``x0 ~ N(mu, S)`` and ``x_t = a x0 + s eps`` the exact
optimal denoiser is ``E[x0 | x_t] = mu + a S (a^2 S + s^2 I)^-1 (x_t - a mu)``.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mmdiffusion
from mmdiffusion.diffusion import GaussianDiffusion, LossAwareSampler, Pair, cosine_betas, drop_labels

# A small joint Gaussian: video [B, 2, 1, 2, 2] (8 dims) and audio [B, 1, 8] (8 dims).
VIDEO, AUDIO = (2, 1, 2, 2), (1, 8)
DV, DA = 8, 8
D = DV + DA
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and a well-conditioned covariance ``[D, D]`` with strong video-audio cross terms."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g, dtype=F64)
    return 0.5 * torch.randn(D, generator=g, dtype=F64), a @ a.T / D + 0.05 * torch.eye(D, dtype=F64)


def flatten(video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """``[B, 2, 1, 2, 2]``, ``[B, 1, 8]`` -> ``[B, 16]`` float64."""
    return torch.cat([video.flatten(1), audio.flatten(1)], 1).to(F64)


def unflatten(x: torch.Tensor, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:, :DV].reshape(-1, *VIDEO).to(dtype), x[:, DV:].reshape(-1, *AUDIO).to(dtype)


class GaussianDenoiser(torch.nn.Module):
    """The exact optimal model for ``x0 ~ N(mean, cov)`` (a mixture of such when ``mean`` is
    ``[K, D]`` and ``y`` picks the component; ``y == K`` is the mixture with equal weights), in the
    diffusion's prediction type. ``gain`` and ``bias`` perturb the clean estimate
    ``x0 -> x0 + gain (x0 - mean) + bias``; both are 0 at the optimum."""

    def __init__(self, diffusion: GaussianDiffusion, mean: torch.Tensor, cov: torch.Tensor) -> None:
        super().__init__()
        self.diffusion = diffusion
        self.means = mean.reshape(-1, D)
        self.eigval, self.eigvec = torch.linalg.eigh(cov)
        self.gain = torch.nn.Parameter(torch.zeros((), dtype=F64))
        self.bias = torch.nn.Parameter(torch.zeros((), dtype=F64))
        self.calls: list[dict] = []

    def x0(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """``E[x0 | x_t = x]`` for ``x`` ``[B, D]`` at per-sample ``alpha, sigma`` ``[B]``."""
        a, u, lam = alpha[:, None, None], self.eigvec, self.eigval
        var = a**2 * lam + sigma[:, None, None] ** 2  # [B, 1, D]: eigenvalues of Cov[x_t]
        # Per component, in the eigenbasis (shared covariance): [B, K, D].
        k = self.means.shape[0]
        r = ((x[:, None] - a * self.means).reshape(-1, D) @ u).view(-1, k, D)
        x0 = self.means + ((r * (a * lam / var)).reshape(-1, D) @ u.T).view(-1, k, D)
        if k == 1:
            return x0[:, 0]
        posterior = (-0.5 * (r**2 / var).sum(-1)).softmax(-1)  # equal class priors
        w = torch.where((y == k)[:, None], posterior, torch.nn.functional.one_hot(y.clamp(max=k - 1), k).to(F64))
        return (w[..., None] * x0).sum(1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        self.calls.append({"t": t, "y": y, "batch": video.shape[0]})
        x = flatten(video, audio)
        alpha, sigma = self.diffusion.alpha_sigma(t)
        x0 = self.x0(x, alpha, sigma, y)
        x0 = x0 + self.gain * (x0 - self.means[0]) + self.bias
        a, s = alpha[:, None], sigma[:, None]
        pred = {"x0": x0, "eps": (x - a * x0) / s, "v": a * (x - a * x0) / s - s * x0}[self.diffusion.prediction]
        return unflatten(pred, video.dtype)


# ------------------------------------------------------------------------------------ schedules
def test_linear_schedule_is_the_papers():
    d = GaussianDiffusion()
    assert d.betas.dtype == F64 and d.betas.shape == (1000,)
    assert d.betas[0].item() == pytest.approx(1e-4, rel=1e-12) and d.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert torch.allclose(d.betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=F64), rtol=1e-9)
    assert torch.allclose(d.alphas_cumprod, torch.cumprod(1 - d.betas, 0), rtol=0, atol=0)
    # guided-diffusion's rescaling for other step counts: the same betas scaled by 1000 / N.
    d250 = GaussianDiffusion(num_steps=250)
    assert d250.betas[0].item() == pytest.approx(4e-4) and d250.betas[-1].item() == pytest.approx(0.08)


def test_cosine_schedule_follows_its_closed_form():
    n, s = 1000, 0.008
    d = GaussianDiffusion(num_steps=n, schedule="cosine")
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):  # unclipped betas: abar_t = f((t + 1) / N) / f(0)
        assert d.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / n) / f(0), rel=1e-10)
    assert cosine_betas(n).max().item() == pytest.approx(0.999)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alpha_sigma_log_snr_and_float_interpolation(schedule):
    d = GaussianDiffusion(schedule=schedule)
    t = torch.arange(1000)
    alpha, sigma = d.alpha_sigma(t)
    assert alpha.dtype == F64
    assert torch.allclose(alpha**2, d.alphas_cumprod, rtol=1e-13, atol=0)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(1000, dtype=F64), atol=1e-15)
    assert torch.allclose(d.log_snr(t), torch.log(alpha / sigma), rtol=1e-12, atol=1e-12)
    # Float timesteps: log(abar) is linear between integers, lambda strictly decreasing.
    tf = torch.tensor([10.25, 500.5, 998.75], dtype=F64)
    lo = d.alphas_cumprod[tf.floor().long()].log()
    hi = d.alphas_cumprod[tf.ceil().long()].log()
    frac = tf - tf.floor()
    assert torch.allclose(d.log_alpha_bar(tf), (1 - frac) * lo + frac * hi, rtol=1e-14)
    fine = d.log_snr(torch.linspace(0, 999, 5001, dtype=F64))
    assert (fine.diff() < 0).all()


@given(t=st.floats(0, 999))
def test_timestep_for_log_snr_inverts_log_snr(t):
    for d in (GaussianDiffusion(), GaussianDiffusion(schedule="cosine")):
        back = d.timestep_for_log_snr(d.log_snr(torch.tensor([t], dtype=F64)))
        assert back.item() == pytest.approx(t, abs=1e-7)


def test_constructor_and_timestep_errors():
    with pytest.raises(ValueError, match="schedule"):
        GaussianDiffusion(schedule="quadratic")
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(prediction="score")
    with pytest.raises(ValueError, match="timestep_sampler"):
        GaussianDiffusion(timestep_sampler="importance")
    with pytest.raises(ValueError, match="loss_weights"):
        GaussianDiffusion(loss_weights=(1.0, -1.0))
    with pytest.raises(ValueError, match="num_steps=10 is too small"):
        GaussianDiffusion(num_steps=10)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        GaussianDiffusion().alpha_sigma(torch.tensor([1000]))


# ---------------------------------------------------------------------------------------- Pair
def test_pair_arithmetic_is_memberwise():
    p = Pair(torch.ones(2, 1, 1, 1, 1), torch.full((2, 1, 3), 2.0))
    q = 3.0 * p - p / 2 + 1 - (-p) * p
    assert torch.equal(q.video, torch.full((2, 1, 1, 1, 1), 4.5))
    assert torch.equal(q.audio, torch.full((2, 1, 3), 10.0))
    video, audio = q  # still unpacks like a tuple


# --------------------------------------------------------------------------- parameterisations
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_prediction_target_round_trips_to_x0(prediction):
    d = GaussianDiffusion(prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0 = Pair(torch.randn(4, *VIDEO, generator=g, dtype=F64), torch.randn(4, *AUDIO, generator=g, dtype=F64))
    noise = Pair(torch.randn(4, *VIDEO, generator=g, dtype=F64), torch.randn(4, *AUDIO, generator=g, dtype=F64))
    t = torch.tensor([0, 17, 500, 999])
    alpha, sigma = d.alpha_sigma(t)
    x_t = d.q_sample(x0, t, noise)
    back = d.predict_x0(x_t, d.prediction_target(x0, noise, alpha, sigma), alpha, sigma)
    for got, want in zip(back, x0):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------- training loss
def test_training_loss_matches_its_definition():
    mean, cov = gaussian_data()
    d = GaussianDiffusion(prediction="v", loss_weights=(3.0, 0.5))
    model = GaussianDenoiser(d, mean, cov)
    with torch.no_grad():
        model.gain.fill_(0.3)
    g = torch.Generator().manual_seed(1)
    video, audio = unflatten(torch.randn(6, D, generator=g, dtype=F64), torch.float32)
    noise = (torch.randn(video.shape, generator=g), torch.randn(audio.shape, generator=g))
    t = torch.tensor([0, 1, 10, 100, 500, 999])
    loss, parts = d.training_loss(model, video, audio, t=t, noise=noise)
    alpha, sigma = d.alpha_sigma(t)
    x_t = d.q_sample(Pair(video, audio), t, Pair(*noise))
    pred = model(*x_t, t)
    for name, x, e, p in zip(("video", "audio"), (video, audio), noise, pred):
        shape = (-1,) + (1,) * (x.dim() - 1)
        target = alpha.view(shape) * e - sigma.view(shape) * x  # v
        assert parts[name].item() == pytest.approx(((p - target) ** 2).mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(3.0 * parts["video"].item() + 0.5 * parts["audio"].item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"video must be \[B, F, C, H, W\]"):
        d.training_loss(model, audio, audio)
    with pytest.raises(ValueError, match="batch sizes differ"):
        d.training_loss(model, video, audio[:2])
    with pytest.raises(ValueError, match=r"t must have shape \(6,\)"):
        d.training_loss(model, video, audio, t=t[:2])
    with pytest.raises(ValueError, match="model's audio output has shape"):
        d.training_loss(lambda v, a, t: (v, a[:, :, :2]), video, audio)


@pytest.mark.parametrize("schedule,prediction", [("linear", "eps"), ("linear", "v"), ("linear", "x0"),
                                                 ("cosine", "eps")])
def test_training_loss_gradient_vanishes_at_the_optimal_denoiser(schedule, prediction):
    """The exact denoiser minimises the expected loss, so the expected gradient with respect to
    any perturbation of it (here gain and bias) is 0. Estimated over 16 x 1000 samples with
    uniform t; the mean must be within 4 standard errors of 0, while a perturbed model (gain 0.1)
    must show a gradient more than 8 standard errors away from 0 (the test has power)."""
    mean, cov = gaussian_data()
    d = GaussianDiffusion(schedule=schedule, prediction=prediction, loss_weights=(1.0, 2.0))
    model = GaussianDenoiser(d, mean, cov)
    g = torch.Generator().manual_seed(2)
    chol = torch.linalg.cholesky(cov)

    def gradients() -> torch.Tensor:  # [16, 2]: (d/d gain, d/d bias) per chunk
        out = []
        for _ in range(16):
            video, audio = unflatten(mean + torch.randn(1000, D, generator=g, dtype=F64) @ chol.T)
            loss, _ = d.training_loss(model, video, audio, generator=g)
            out.append(torch.stack(torch.autograd.grad(loss, [model.gain, model.bias])))
        return torch.stack(out)

    grads = gradients()
    z = grads.mean(0) / (grads.std(0) / 4)
    assert z.abs().max() < 4, z
    with torch.no_grad():
        model.gain.fill_(0.1)
    grads = gradients()
    assert (grads.mean(0)[0] / (grads.std(0)[0] / 4)).abs() > 8


# ---------------------------------------------------------------------------- timestep samplers
def test_uniform_sampler_weights_are_one():
    d = GaussianDiffusion(num_steps=10, schedule="cosine")
    t, w = d.timestep_sampler.sample(500, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 9 and len(t.unique()) == 10
    assert torch.equal(w, torch.ones(500))


def test_loss_aware_sampler_probabilities_and_unbiased_weights():
    n = 20
    s = LossAwareSampler(n, history=3, uniform_prob=0.1)
    s.update(torch.arange(n), torch.ones(n))
    assert not s.warmed_up and torch.allclose(s.probs(), torch.full((n,), 1 / n, dtype=F64))
    for _ in range(3):  # the history keeps the last 3 losses: t + 1 at timestep t
        s.update(torch.arange(n), torch.arange(n, dtype=F64) + 1)
    assert s.warmed_up
    rms = torch.arange(n, dtype=F64) + 1
    assert torch.allclose(s.probs(), 0.9 * rms / rms.sum() + 0.1 / n, rtol=1e-12)
    # Importance weights make E[w f(t)] the uniform mean of f for any f (here f(t) = t^2).
    t, w = s.sample(200_000, generator=torch.Generator().manual_seed(0))
    f = t.double() ** 2
    estimate, stderr = (w * f).mean().item(), (w * f).std().item() / math.sqrt(len(t))
    assert abs(estimate - (torch.arange(n, dtype=F64) ** 2).mean().item()) < 4 * stderr


def test_training_loss_updates_a_loss_aware_sampler():
    mean, cov = gaussian_data()
    d = GaussianDiffusion(num_steps=50, timestep_sampler="loss-aware")
    model = GaussianDenoiser(d, mean, cov)
    video, audio = unflatten(torch.randn(64, D, dtype=F64))
    for _ in range(20):
        d.training_loss(model, video, audio)
    sampler = d.timestep_sampler
    assert sampler.warmed_up  # 1280 draws fill every timestep's history of 10
    p = sampler.probs()  # now loss-based: valid and no longer uniform
    assert torch.isclose(p.sum(), torch.tensor(1.0, dtype=F64)) and (p > 0).all() and p.std() > 0


def test_drop_labels():
    y = torch.arange(1000) % 7
    out = drop_labels(y, null_y=7, p=0.25, generator=torch.Generator().manual_seed(0))
    dropped = out == 7
    assert torch.equal(out[~dropped], y[~dropped])
    assert abs(dropped.float().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 1000)


def test_exported():
    assert mmdiffusion.GaussianDiffusion is GaussianDiffusion
