"""The guided DDIM sampler (paper Algorithm 5) on an analytic model: data ~ N(0, I), whose
exact noise prediction is ``eps(x_t) = sqrt(1 - alphabar_t) x_t``. With a linear reward
``r2(x) = a . x`` the tilted target ``p_pre exp(r2 / lambda)`` is ``N(a / lambda, I)``, and the
guided sampler must reach its mean, in pixel space and through a linear "decoder"."""

from __future__ import annotations

import math

import pytest
import torch

from diffhpo.tasks.reward.guidance import GRAD_THROUGH, ddim_scheduler, guided_ddim, sample_images

SCHED = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon",
         "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "trailing"}


def gaussian_eps(scheduler):
    alphas = scheduler.alphas_cumprod

    def eps(x, t, cond=None):
        return math.sqrt(1.0 - float(alphas[int(t)])) * x

    return eps


def _noise(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("grad_through", GRAD_THROUGH)
def test_guidance_reaches_the_tilted_mean(grad_through):
    a = torch.tensor([1.0, -0.5], dtype=torch.float64)
    lam = 2.0
    sched = ddim_scheduler(SCHED, 50)
    x = guided_ddim(gaussian_eps(sched), sched, _noise(4000, 2), reward=lambda x, c: x @ a, scale=1.0 / lam,
                    grad_through=grad_through)
    assert torch.allclose(x.mean(0), a / lam, atol=0.05), x.mean(0)


def test_ancestral_steps_reach_the_tilted_law_and_are_seeded():
    """With ``eta = 1`` (DDPM-like steps) and the exact tilted noise prediction ("unet" mode),
    the samples reach the mean of the tilted law N(a / lambda, I) and nearly its spread (the
    posterior-variance steps of eta = 1 under-disperse a little over 50 coarse steps: measured
    std 0.94 and 0.95); the step noise comes from the generator."""
    a = torch.tensor([1.0, -0.5], dtype=torch.float64)
    lam = 2.0

    def run(seed):
        sched = ddim_scheduler(SCHED, 50)
        return guided_ddim(gaussian_eps(sched), sched, _noise(4000, 2), reward=lambda x, c: x @ a, scale=1.0 / lam,
                           eta=1.0, generator=torch.Generator().manual_seed(seed))

    x = run(7)
    assert torch.allclose(x.mean(0), a / lam, atol=0.06), x.mean(0)
    assert ((x.std(0) > 0.9) & (x.std(0) < 1.05)).all(), x.std(0)
    assert torch.equal(x, run(7)) and not torch.equal(x, run(8))
    sched = ddim_scheduler(SCHED, 5)
    with pytest.raises(ValueError, match="seeded generator"):
        guided_ddim(gaussian_eps(sched), sched, _noise(2, 2), eta=1.0)


def test_unguided_and_zero_scale_are_the_pre_trained_model():
    sched = ddim_scheduler(SCHED, 20)
    noise = _noise(2000, 2)
    x0 = guided_ddim(gaussian_eps(sched), ddim_scheduler(SCHED, 20), noise)
    x1 = guided_ddim(gaussian_eps(sched), ddim_scheduler(SCHED, 20), noise, reward=lambda x, c: x.sum(1), scale=0.0)
    assert torch.equal(x0, x1)
    assert x0.mean(0).abs().max() < 0.06


def test_sign_and_strength_follow_lambda():
    """A smaller lambda (larger guidance / lambda) moves the samples further along grad r2."""
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    means = []
    for lam in (4.0, 1.0, 0.5):
        sched = ddim_scheduler(SCHED, 30)
        x = guided_ddim(gaussian_eps(sched), sched, _noise(2000, 2), reward=lambda x, c: x @ a, scale=1.0 / lam)
        means.append(float(x[:, 0].mean()))
    assert means[0] < means[1] < means[2]
    assert means == pytest.approx([0.25, 1.0, 2.0], abs=0.06)


@pytest.mark.parametrize("grad_through", GRAD_THROUGH)
def test_latent_model_gradient_through_a_decoder(grad_through):
    """Latent z ~ N(0, I), decoder D(z) = M z, reward b . D(z): the tilted latent mean is M^T b / lambda."""
    M = torch.tensor([[1.0, 0.5], [0.0, 2.0], [1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([0.3, 0.2, -0.1], dtype=torch.float64)
    lam = 0.5
    sched = ddim_scheduler(SCHED, 40)
    decode = lambda z: z @ M.T  # noqa: E731
    z = guided_ddim(gaussian_eps(sched), sched, _noise(4000, 2, seed=1), reward=lambda x, c: x @ b,
                    scale=1.0 / lam, grad_through=grad_through, decode=decode)
    assert torch.allclose(z.mean(0), M.T @ b / lam, atol=0.05)


def test_sample_images_batches_by_condition_and_counts_passes():
    sched_calls = []

    def factory():
        sched_calls.append(1)
        return ddim_scheduler(SCHED, 5)

    seen = []

    def eps(x, t, cond):
        seen.append((cond, len(x)))
        return torch.zeros_like(x)

    noise = _noise(7, 3)
    run = sample_images(eps, factory, noise, ["a"] * 3 + ["b"] * 4, reward=lambda x, c: x.sum(1), scale=1.0,
                        grad_through="unet", batch_size=2)
    assert run.samples.shape == (7, 3)
    assert len(sched_calls) == 4  # batches: a(2) a(1) b(2) b(2)
    assert {c for c, _ in seen} == {"a", "b"} and max(n for _, n in seen) == 2
    assert (run.unet_forwards, run.unet_backwards, run.reward_grads) == (5, 5, 5)
    plain = sample_images(eps, factory, noise, None)
    assert (plain.unet_backwards, plain.reward_grads) == (0, 0)


def test_exact_step_count_and_bad_options():
    assert len(ddim_scheduler(SCHED, 7).timesteps) == 7
    with pytest.raises(ValueError):
        ddim_scheduler(SCHED, 0)
    sched = ddim_scheduler(SCHED, 3)
    with pytest.raises(ValueError, match="grad_through"):
        guided_ddim(gaussian_eps(sched), sched, _noise(2, 2), reward=lambda x, c: x.sum(1), scale=1.0,
                    grad_through="nowhere")


def test_exact_denoiser_of_a_small_data_set_reproduces_its_images():
    """The sampler under the shipped model's scheduler (clipping, trailing spacing, 25 steps)
    with the exact noise prediction of a mixture of K training images (posterior-weighted
    Tweedie mean) lands on those images: poor samples of a trained network are the
    network's, not the sampler's."""
    from diffhpo.bench.toolkit.data import load_mnist
    from diffhpo.tasks.reward.mnist_models import SAMPLE_STEPS, SCHEDULER_CONFIG, to_unit_range

    images, labels = load_mnist("mnist5k", "train")
    data = to_unit_range(images[:100]).double()
    alphas = ddim_scheduler(SCHEDULER_CONFIG, SAMPLE_STEPS).alphas_cumprod.double()

    def eps(x, t, cond=None):
        ab = alphas[int(t)]
        x = x.double()
        d2 = ((x[:, None] - ab.sqrt() * data[None]) ** 2).flatten(2).sum(-1)
        x0 = torch.einsum("bk,kchw->bchw", torch.softmax(-d2 / (2 * (1 - ab)), dim=1), data)
        return ((x - ab.sqrt() * x0) / (1 - ab).sqrt()).float()

    noise = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    run = sample_images(eps, lambda: ddim_scheduler(SCHEDULER_CONFIG, SAMPLE_STEPS), noise, batch_size=32)
    dist = ((run.samples.double()[:, None] - data[None]) ** 2).flatten(2).mean(-1)
    nearest = dist.min(1)
    assert nearest.values.max() < 1e-6
    assert len(set(labels[:100][nearest.indices].tolist())) >= 5  # many digits, not one mode
