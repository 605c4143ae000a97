"""Samplers, zero-shot conditioning and classifier-free guidance against closed forms.

The model is the exact denoiser of a joint Gaussian (``GaussianDenoiser`` from test_diffusion), so:

* a deterministic sampler is an affine map of its initial noise; running it on the 17 points
  ``0, e_1 .. e_16`` gives that map, hence the exact law ``N(b, M M^T)`` of its samples;
* ancestral DDPM/DDIM is a linear-Gaussian chain whose moments follow a closed-form recursion;
* the conditional law given any subset of coordinates is a Schur complement.

Sampling tolerances: for ``n`` samples of a ``D``-dim Gaussian, ``T = 2 n KL(N(m, C) || N(mu, S))``
(``m, C`` the sample moments) is ~ chi^2 with ``k = D + D (D + 1) / 2`` degrees of freedom, and
noncentral with ``delta = 2 n KL(law || target)`` when the sampler's exact law is off target.
We accept ``T < k + delta + 5 sqrt(2 (k + 2 delta))`` (5 standard deviations).
"""
from __future__ import annotations

import math

import pytest
import torch
from test_diffusion import AUDIO, D, DV, F64, VIDEO, GaussianDenoiser, flatten, gaussian_data, unflatten

import mmdiffusion
from mmdiffusion.diffusion import GaussianDiffusion, Pair
from mmdiffusion.sampling import (DEFAULT_STEPS, SAMPLERS, Condition, SamplingSchedule, sample, sample_ddpm,
                                  sampling_schedule)

N = 4000  # samples per Monte Carlo test, one batch

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_kl(m1: torch.Tensor, c1: torch.Tensor, m0: torch.Tensor, c0: torch.Tensor) -> float:
    """``KL(N(m1, c1) || N(m0, c0))`` in nats."""
    c0_inv = torch.linalg.inv(c0)
    d = m1 - m0
    return 0.5 * (torch.trace(c0_inv @ c1) + d @ c0_inv @ d - len(m0) - torch.logdet(c0_inv @ c1)).item()


def moment_statistic(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """``2 n KL(sample moments || N(mean, cov))`` for samples ``x`` ``[n, D]``."""
    return 2 * len(x) * gaussian_kl(x.mean(0), torch.cov(x.T), mean, cov)


def chi2_bound(dim: int, kl_bias: float = 0.0, n: int = N) -> float:
    k, delta = dim + dim * (dim + 1) / 2, 2 * n * kl_bias
    return k + delta + 5 * math.sqrt(2 * (k + 2 * delta))


def exact_law(model, diffusion, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and covariance ``[D, D]`` of a deterministic sampler's output (affine map)."""
    basis = torch.cat([torch.zeros(1, D, dtype=F64), torch.eye(D, dtype=F64)])
    out = flatten(*sample(model, diffusion, (D + 1, *VIDEO), (D + 1, *AUDIO), noise=unflatten(basis),
                          progress=False, dtype=F64, **kwargs))
    columns = out[1:] - out[0]
    return out[0], columns.T @ columns


def ancestral_law(diffusion, mean, cov, steps: int, eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact moments of DDIM(eta) / DDPM (eta = 1) samples: with ``d = mean + K (x - a mean)``,
    ``x' = a' d + sqrt(s'^2 - c^2) (x - a d) / s + c z`` is affine-Gaussian in ``x``."""
    sched = sampling_schedule(diffusion, steps, "uniform")
    lam, u = torch.linalg.eigh(cov)
    eye = torch.eye(D, dtype=F64)
    m, c = torch.zeros(D, dtype=F64), eye.clone()
    for i in range(len(sched)):
        a, s, a1, s1 = sched.alpha[i], sched.sigma[i], sched.alpha[i + 1], sched.sigma[i + 1]
        gain = u @ torch.diag(a * lam / (a**2 * lam + s**2)) @ u.T
        noise = eta * s1 / s * math.sqrt(max(0.0, 1 - (a / a1) ** 2))
        q = math.sqrt(max(0.0, s1**2 - noise**2)) / s
        p = a1 - q * a
        step = q * eye + p * gain
        m = step @ m + p * (eye - a * gain) @ mean
        c = step @ c @ step.T + noise**2 * eye
    return m, c


def draw(model, diffusion, n: int = N, seed: int = 1, **kwargs) -> torch.Tensor:
    """``n`` samples as ``[n, D]`` float64."""
    return flatten(*sample(model, diffusion, (n, *VIDEO), (n, *AUDIO), progress=False,
                           generator=torch.Generator().manual_seed(seed), **kwargs))


@pytest.fixture(scope="module")
def data():
    return gaussian_data()


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion()  # the paper's: linear, 1000 steps, eps


# ------------------------------------------------------------------------- unconditional laws
def test_ddpm_1000_reproduces_the_data_distribution(data, diffusion):
    """Exact chain moments: KL(DDPM-1000 law || data) ~ 1e-3 nats (2n KL = 8 against a chi^2 sd of
    17 at n = 4000: indistinguishable). 4000 samples must pass the test against the data itself."""
    mean, cov = data
    law_mean, law_cov = ancestral_law(diffusion, mean, cov, 1000)
    bias = gaussian_kl(law_mean, law_cov, mean, cov)
    assert bias < 2e-3
    x = draw(GaussianDenoiser(diffusion, mean, cov), diffusion, sampler="ddpm", steps=1000)
    assert moment_statistic(x, law_mean, law_cov) < chi2_bound(D)
    assert moment_statistic(x, mean, cov) < chi2_bound(D, bias)
    assert (x.mean(0) - mean).abs().max() < 5 * (cov.diag() / N).sqrt().max()


@pytest.mark.parametrize("sampler,steps,budget", [
    # First-order DDIM: KL ~ steps^-2, 0.053 nats at 50 steps (0.013 at 100).
    ("ddim", 50, 0.06),
    # DPM-Solver++ with the published 20 log-SNR steps: 3.3e-3 (2M) and 2.4e-4 (3M) nats,
    # below the ~0.02 nats that n = 4000 samples can resolve.
    ("dpmpp-2m", 20, 5e-3),
    ("dpmpp-3m", 20, 1e-3),
    ("unipc", 20, 3e-3),  # 1.5e-3
])
def test_fast_samplers_come_close_to_the_data(data, diffusion, sampler, steps, budget):
    mean, cov = data
    model = GaussianDenoiser(diffusion, mean, cov)
    law_mean, law_cov = exact_law(model, diffusion, sampler=sampler, steps=steps)
    bias = gaussian_kl(law_mean, law_cov, mean, cov)
    assert bias < budget
    x = draw(model, diffusion, sampler=sampler, steps=steps)  # float32, batched, seeded
    assert moment_statistic(x, law_mean, law_cov) < chi2_bound(D)
    assert moment_statistic(x, mean, cov) < chi2_bound(D, bias)


def test_ddpm_step_draws_from_the_forward_posterior(diffusion):
    """One ancestral step t -> t - 1 samples q(x_{t-1} | x_t, x0) of Ho et al. (2020):
    mean ``beta_t sqrt(abar_{t-1}) / (1 - abar_t) x0 + (1 - abar_{t-1}) sqrt(1 - beta_t) / (1 - abar_t) x_t``,
    variance ``beta_t (1 - abar_{t-1}) / (1 - abar_t)``; checked on 64000 standardised residuals."""
    t, full = 500, sampling_schedule(diffusion, 1000, "uniform")
    i = full.t.index(float(t))
    assert full.t[i + 1] == t - 1
    one_step = SamplingSchedule((float(t),), full.alpha[i:i + 2], full.sigma[i:i + 2], full.lam[i:i + 2])
    g = torch.Generator().manual_seed(0)
    x0, x_t = (Pair(*unflatten(torch.randn(N, D, generator=g, dtype=F64))) for _ in range(2))
    out = sample_ddpm(lambda x, _: (x, x0), x_t, one_step, generator=g, progress=False)
    beta = diffusion.betas[t].item()
    abar, abar_prev = diffusion.alphas_cumprod[t].item(), diffusion.alphas_cumprod[t - 1].item()
    mean = (beta * abar_prev**0.5 / (1 - abar)) * x0 + ((1 - abar_prev) * (1 - beta) ** 0.5 / (1 - abar)) * x_t
    z = flatten(*((out - mean) / (beta * (1 - abar_prev) / (1 - abar)) ** 0.5))
    assert abs(z.mean().item()) < 5 / z.numel() ** 0.5 and abs(z.std().item() - 1) < 5 / (2 * z.numel()) ** 0.5


def test_ancestral_chain_matches_the_sampler_exactly(data, diffusion):
    """The moment recursion above and DDIM(eta=0) (an affine map) agree to float64 round-off."""
    mean, cov = data
    law_mean, law_cov = exact_law(GaussianDenoiser(diffusion, mean, cov), diffusion, sampler="ddim", steps=50)
    ref_mean, ref_cov = ancestral_law(diffusion, mean, cov, 50, eta=0.0)
    torch.testing.assert_close(law_mean, ref_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(law_cov, ref_cov, rtol=0, atol=1e-12)


def test_solver_convergence_orders(data, diffusion):
    """Relative covariance error against a 1000-step solution halves per doubling of steps for
    DDIM (order 1), quarters for DPM-Solver++(2M) and drops >= 8x for (3M) and UniPC-2 (predictor
    order 2 + corrector); measured orders on 20 -> 40 -> 80 log-SNR steps: 0.95-0.97, 1.96-2.02,
    4.2 and 2.96-3.02. (With the published 3M coefficient of the second difference, half of the
    Taylor one, 3M measures 2.2-2.7 here and 2.0 from 80 steps on: second order.)"""
    mean, cov = data
    model = GaussianDenoiser(diffusion, mean, cov)
    _, ref = exact_law(model, diffusion, sampler="dpmpp-3m", steps=1000)
    for sampler, order in (("ddim", 0.9), ("dpmpp-2m", 1.9), ("dpmpp-3m", 2.9), ("unipc", 2.8)):
        errors = [(exact_law(model, diffusion, sampler=sampler, steps=s, spacing="logsnr")[1] - ref).norm()
                  / ref.norm() for s in (20, 40, 80)]
        measured = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
        assert min(measured) > order, (sampler, measured)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_prediction_types_give_the_same_samples(data, sampler):
    """eps, v and x0 models of the same denoiser are one model: identical samples (float64)."""
    mean, cov = data
    outs = []
    for prediction in ("eps", "v", "x0"):
        d = GaussianDiffusion(schedule="cosine", prediction=prediction)
        outs.append(draw(GaussianDenoiser(d, mean, cov), d, n=8, sampler=sampler, steps=12, dtype=F64))
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------ determinism, callback
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_deterministic_for_a_seed(data, diffusion, sampler):
    mean, cov = data
    model = GaussianDenoiser(diffusion, mean, cov)
    given = torch.randn(8, *AUDIO)
    kwargs = dict(n=8, sampler=sampler, steps=10, condition=Condition(audio=given))
    a, b = draw(model, diffusion, **kwargs), draw(model, diffusion, **kwargs)
    c = draw(model, diffusion, seed=2, **kwargs)
    assert torch.equal(a, b)
    assert not torch.allclose(a[:, :DV], c[:, :DV])
    assert torch.equal(a[:, DV:], given.flatten(1).double())


def test_callback_progress_and_model_timesteps(data, diffusion):
    mean, cov = data
    model = GaussianDenoiser(diffusion, mean, cov)
    seen = []
    sample(model, diffusion, (3, *VIDEO), (3, *AUDIO), sampler="ddim", steps=7, progress=False, callback=seen.append)
    assert [s["step"] for s in seen] == list(range(7)) and len(model.calls) == 7  # NFE = steps
    assert [s["t"] for s in seen] == [999.0, 832.0, 666.0, 500.0, 333.0, 166.0, 0.0]  # rounded
    assert all(c["t"].dtype == torch.long and c["t"].shape == (3,) for c in model.calls)
    assert seen[0]["denoised"].video.shape == (3, *VIDEO) and seen[0]["x"].audio.shape == (3, *AUDIO)
    model.calls.clear()
    sample(model, diffusion, (3, *VIDEO), (3, *AUDIO), steps=5, progress=False)  # dpmpp-2m, log-SNR grid
    ts = [c["t"][0].item() for c in model.calls]
    assert len(ts) == 5 and ts[0] == 999 and ts[-1] == 0 and model.calls[1]["t"].dtype == F64
    lam = diffusion.log_snr(torch.tensor(ts, dtype=F64))
    torch.testing.assert_close(lam.diff(), lam.diff().mean().expand(4), rtol=1e-12, atol=0)
    for sampler in SAMPLERS:  # one step: the model's clean estimate at t = 999 from the initial noise
        model.calls.clear()
        noise = unflatten(torch.randn(3, D, dtype=F64))
        out = sample(model, diffusion, (3, *VIDEO), (3, *AUDIO), sampler=sampler, steps=1, noise=noise,
                     dtype=F64, progress=False)
        assert len(model.calls) == 1 and model.calls[0]["t"].tolist() == [999] * 3
        alpha, sigma = diffusion.alpha_sigma(torch.full((3,), 999))
        torch.testing.assert_close(flatten(*out), model.x0(flatten(*noise), alpha, sigma, None), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------- conditioning
SCENARIOS = {  # name: the given coordinates of the flattened [video (8), audio (8)] vector
    "audio->video": list(range(DV, D)),
    "video->audio": list(range(DV)),
    # video continuation (frame 0 given) + audio continuation (first half given), via masks
    "continuation": [0, 1, 2, 3, DV, DV + 1, DV + 2, DV + 3],
}


def scenario_condition(name: str, x: torch.Tensor, **kwargs) -> Condition:
    video, audio = unflatten(x, torch.float32)
    if name == "audio->video":
        return Condition(audio=audio, **kwargs)
    if name == "video->audio":
        return Condition(video=video, **kwargs)
    video_mask = torch.zeros(1, VIDEO[0], 1, 1, 1, dtype=torch.bool)
    video_mask[:, 0] = True
    audio_mask = torch.arange(AUDIO[1]) < AUDIO[1] // 2  # [L], broadcasts to [B, C, L]
    return Condition(video=video, audio=audio, video_mask=video_mask, audio_mask=audio_mask, **kwargs)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_conditional_sampling_approaches_the_exact_conditional(data, diffusion, name):
    """KL (nats) between the residuals' moments and the exact conditional law, with DPM-Solver++(2M)
    20 steps; measured (audio->video, video->audio, continuation): unconditional 6.2, 6.3, 9.8;
    replacement 1.35, 1.46, 2.24; guidance scale 1: 0.63, 0.66, 1.00; scale 4: 0.08, 0.04, 0.08.
    (DDIM-50: replacement 1.08, 1.19, 1.89; DDPM-1000, audio->video: 0.53, 0.18, 0.06.)
    The sampling noise of these KLs at n = 4000 is ~0.005 nats."""
    mean, cov = data
    model = GaussianDenoiser(diffusion, mean, cov)
    x = mean + torch.randn(N, D, generator=torch.Generator().manual_seed(5), dtype=F64) @ torch.linalg.cholesky(cov).T
    g = SCENARIOS[name]
    r = [i for i in range(D) if i not in g]
    regression = cov[r][:, g] @ torch.linalg.inv(cov[g][:, g])
    cond_mean = mean[r] + (x[:, g] - mean[g]) @ regression.T  # [N, |r|]
    cond_cov = cov[r][:, r] - regression @ cov[g][:, r]

    def kl_to_conditional(condition: Condition | None) -> float:
        out = draw(model, diffusion, condition=condition)
        if condition is not None:  # the given data comes back exactly
            assert torch.equal(out[:, g], x[:, g].float().double())
        res = out[:, r] - cond_mean
        return gaussian_kl(res.mean(0), torch.cov(res.T), torch.zeros(len(r), dtype=F64), cond_cov)

    unconditional = kl_to_conditional(None)
    replacement = kl_to_conditional(scenario_condition(name, x))
    guided = kl_to_conditional(scenario_condition(name, x, method="guidance"))
    guided4 = kl_to_conditional(scenario_condition(name, x, method="guidance", scale=4.0))
    assert unconditional > 5 and replacement < unconditional / 3
    assert guided < 0.6 * replacement and guided4 < 0.15


def test_guidance_applies_the_documented_correction(data, diffusion):
    """For a linear denoiser ``x0(z) = mean + K (z - a mean)`` the guided clean video estimate is
    ``x0_v + scale * a * K_va (x_a - x0_a)``, and the given audio enters re-noised with fresh noise."""
    mean, cov = data
    model = GaussianDenoiser(diffusion, mean, cov)
    given = torch.randn(N, *AUDIO, generator=torch.Generator().manual_seed(3))
    seen = []
    sample(model, diffusion, (N, *VIDEO), (N, *AUDIO), steps=4, progress=False, callback=seen.append,
           condition=Condition(audio=given, method="guidance", scale=2.5), generator=torch.Generator().manual_seed(0))
    sched = sampling_schedule(diffusion, 4, "logsnr")
    lam, u = torch.linalg.eigh(cov)
    given_flat = given.flatten(1).double()
    noises = []
    for s in seen:
        a, sig = sched.alpha[s["step"]], sched.sigma[s["step"]]
        z = flatten(*s["x"])
        gain = u @ torch.diag(a * lam / (a**2 * lam + sig**2)) @ u.T
        x0 = mean + (z - a * mean) @ gain
        expected = x0[:, :DV] + 2.5 * a * (given_flat - x0[:, DV:]) @ gain[DV:, :DV]
        torch.testing.assert_close(flatten(*s["denoised"])[:, :DV], expected, rtol=1e-4, atol=1e-4)
        noises.append((z[:, DV:] - a * given_flat) / sig)
    for e in noises:  # q(z_t | given): unit Gaussian noise, independent between steps
        assert abs(e.mean().item()) < 0.01 and abs(e.std().item() - 1) < 0.01
    assert abs((noises[0] * noises[1]).mean().item()) < 0.01


# --------------------------------------------------------------------- classifier-free guidance
@pytest.fixture(scope="module")
def two_classes(data):
    """Two Gaussian classes sharing the covariance; label 2 is the null class (their mixture)."""
    mean, cov = data
    means = torch.stack([mean - 1.5, mean + 1.5])
    return means, cov


def test_cfg_combines_predictions_per_modality(two_classes, diffusion):
    means, cov = two_classes
    model = GaussianDenoiser(diffusion, means, cov)
    model.null_class = 2
    y = torch.tensor([0, 1, 1])
    seen = []
    sample(model, diffusion, (3, *VIDEO), (3, *AUDIO), steps=3, y=y, cfg_scale=(3.0, 0.5), progress=False,
           callback=seen.append, dtype=F64)
    assert len(model.calls) == 3 and all(c["batch"] == 6 for c in model.calls)  # one doubled call per step
    assert torch.equal(model.calls[0]["y"], torch.tensor([0, 1, 1, 2, 2, 2]))
    sched = sampling_schedule(diffusion, 3, "logsnr")
    for s in seen:
        x = flatten(*s["x"])
        a, sig = (torch.full((3,), v[s["step"]], dtype=F64) for v in (sched.alpha, sched.sigma))
        cond, uncond = model.x0(x, a, sig, y), model.x0(x, a, sig, torch.full((3,), 2))
        expected = uncond + torch.tensor([3.0] * DV + [0.5] * (D - DV), dtype=F64) * (cond - uncond)
        torch.testing.assert_close(flatten(*s["denoised"]), expected, rtol=1e-10, atol=1e-10)
    model.calls.clear()
    sample(model, diffusion, (3, *VIDEO), (3, *AUDIO), steps=3, y=y, progress=False)
    assert all(c["batch"] == 3 and torch.equal(c["y"], y) for c in model.calls)  # scale 1: conditional only


def test_cfg_scale_one_samples_the_class_and_zero_the_mixture(two_classes, diffusion):
    means, cov = two_classes
    model = GaussianDenoiser(diffusion, means, cov)
    y = torch.arange(2000) % 2
    x = draw(model, diffusion, n=2000, y=y, cfg_scale=1.0, null_y=2)
    stderr = (cov.diag() / 1000).sqrt()
    for k in (0, 1):
        assert ((x[y == k].mean(0) - means[k]).abs() < 5 * stderr).all()
    x = draw(model, diffusion, n=2000, y=y, cfg_scale=0.0, null_y=2)
    assert ((x.mean(0) - means.mean(0)).abs() < 5 * (cov.diag() / 2000 + 1.5**2 / 2000).sqrt()).all()
    assert (x[y == 0].mean(0) - x[y == 1].mean(0)).abs().max() < 0.5  # labels ignored


# ---------------------------------------------------------------------------- the real model
def test_drives_a_class_conditional_coupled_unet():
    """Smoke test with a micro CoupledUNet: guidance (backward through the model), per-modality
    classifier-free guidance with the model's null class, model kwargs, determinism."""
    config = mmdiffusion.UNetConfig(
        video_shape=(4, 3, 8, 8), audio_shape=(1, 256), model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        cross_attention_resolutions=(2,), cross_attention_windows=(1,), video_attention_resolutions=(),
        num_head_channels=32, num_heads=1, num_classes=3, dropout=0.0)
    model = mmdiffusion.CoupledUNet(config).eval()
    given = torch.randn(2, 1, 256)

    def run():
        return sample(model, GaussianDiffusion(), (2, 4, 3, 8, 8), (2, 1, 256), steps=2, progress=False,
                      generator=torch.Generator().manual_seed(0), condition=Condition(audio=given, method="guidance"),
                      y=torch.tensor([0, 2]), cfg_scale=(2.0, 1.0), model_kwargs={"cross_shift": 1})

    (video, audio), again = run(), run()
    assert video.shape == (2, 4, 3, 8, 8) and torch.isfinite(video).all() and torch.equal(audio, given)
    assert torch.equal(video, again[0])


# ------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors(data, diffusion):
    mean, cov = data
    model = GaussianDenoiser(diffusion, mean, cov)
    shapes = ((2, *VIDEO), (2, *AUDIO))
    run = lambda **kw: sample(model, diffusion, *shapes, progress=False, **kw)  # noqa: E731
    valid = "ddpm, ddim, dpmpp-2m, dpmpp-3m, unipc"
    with pytest.raises(ValueError, match=f"unknown sampler 'euler'; valid samplers: {valid}"):
        run(sampler="euler")
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps must be an int >= 1"):
            run(steps=steps)
    with pytest.raises(ValueError, match="steps must be <= num_steps"):
        run(sampler="ddpm", steps=1001)
    with pytest.raises(ValueError, match="spacing must be one of"):
        run(spacing="karras")
    with pytest.raises(ValueError, match="eta only applies to sampler='ddim'"):
        run(eta=0.5)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        run(sampler="ddim", eta=-0.5)
    with pytest.raises(ValueError, match=r"video_shape must be 5 positive ints"):
        sample(model, diffusion, (2, 2, 2), shapes[1])
    with pytest.raises(ValueError, match="batch sizes differ"):
        sample(model, diffusion, shapes[0], (3, *AUDIO))
    with pytest.raises(ValueError, match=r"Condition.audio has shape \(2, 1, 7\), expected the sample's audio shape"):
        run(condition=Condition(audio=torch.zeros(2, 1, 7)))
    with pytest.raises(ValueError, match=r"Condition.video has shape"):
        run(condition=Condition(video=torch.zeros(1, *VIDEO)))
    with pytest.raises(ValueError, match=r"Condition.video_mask of shape \(3,\) does not broadcast"):
        run(condition=Condition(video=torch.zeros(shapes[0]), video_mask=torch.ones(3, dtype=torch.bool)))
    with pytest.raises(TypeError, match="Condition.audio_mask must be a bool tensor"):
        Condition(audio=torch.zeros(shapes[1]), audio_mask=torch.ones(8))
    with pytest.raises(ValueError, match="video_mask is given without Condition.video"):
        Condition(audio=torch.zeros(shapes[1]), video_mask=torch.ones(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs given data"):
        Condition()
    with pytest.raises(ValueError, match="method must be one of"):
        Condition(audio=torch.zeros(shapes[1]), method="inpaint")
    with pytest.raises(ValueError, match="scale only applies to method='guidance'"):
        Condition(audio=torch.zeros(shapes[1]), scale=3.0)
    with pytest.raises(ValueError, match="cfg_scale != 1 needs class labels"):
        run(cfg_scale=2.0)
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        run(y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="noise shapes"):
        run(noise=(torch.zeros(shapes[0]), torch.zeros(2, 1, 9)))
    with pytest.raises(ValueError, match="model's video output has shape"):
        sample(lambda v, a, t: (v[:1], a), diffusion, *shapes, progress=False)


def test_defaults_and_exports(data):
    assert DEFAULT_STEPS == {"ddpm": 1000, "ddim": 50, "dpmpp-2m": 20, "dpmpp-3m": 20, "unipc": 20}
    assert mmdiffusion.sample is sample and mmdiffusion.Condition is Condition
    short = GaussianDiffusion(num_steps=30)  # fewer trained timesteps than DDPM's and DDIM's defaults
    model = GaussianDenoiser(short, *data)
    for sampler, steps in (("ddpm", 30), ("ddim", 30), ("dpmpp-2m", 20)):
        model.calls.clear()
        sample(model, short, (1, *VIDEO), (1, *AUDIO), sampler=sampler, progress=False)
        assert len(model.calls) == steps, sampler


# ------------------------------------------------------------------------------------ x0 clipping
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m", "unipc"])
def test_clip_x0_bounds_the_clean_estimate_per_modality(sampler):
    """A model whose clean-data estimate is 5 everywhere: deterministic samplers end on it, and on
    the clipping bound with clip_x0 (one bound per modality)."""
    d = GaussianDiffusion(schedule="cosine", prediction="x0")
    model = lambda v, a, t: (torch.full_like(v, 5.0), torch.full_like(a, 5.0))  # noqa: E731
    shapes = ((2, *VIDEO), (2, *AUDIO))
    kwargs = dict(sampler=sampler, steps=8, progress=False, generator=torch.Generator().manual_seed(0))
    video, audio = sample(model, d, *shapes, **kwargs)
    torch.testing.assert_close(video, torch.full_like(video, 5.0))
    video, audio = sample(model, d, *shapes, clip_x0=(1.0, 2.5), **kwargs)
    torch.testing.assert_close(video, torch.ones_like(video))
    torch.testing.assert_close(audio, torch.full_like(audio, 2.5))
    with pytest.raises(ValueError, match="clip_x0"):
        sample(model, d, *shapes, clip_x0=0.0, **kwargs)
