"""Sampling: deterministic DDIM (Song et al. 2021, eta = 0) from diffusers' ``DDIMScheduler``
configured with *our* betas (``trained_betas``), so the sampler uses exactly the schedule
the network was trained under.

Settings (documented choices):

* ``num_inference_steps`` is the profile's ``sample_steps``, passed explicitly and checked
  (``len(scheduler.timesteps) == steps``): there is no fallback to 1000 steps (a defect of
  the reference code, method.md).
* ``timestep_spacing="trailing"``: the first denoising step is ``t = T`` (index 999), where
  the sampler's starting distribution N(0, I) is the forward process's (Lin et al. 2024,
  "Common diffusion noise schedules and sample steps are flawed"). diffusers' default
  "leading" spacing would start at ``t = T - T/steps`` and mix the schedule's terminal
  noise level into the comparison.
* ``clip_sample=True`` (diffusers' default, range 1): the predicted x0 is clipped to the
  data range [-1, 1] at every step (``clip_range`` for other data); ``set_alpha_to_one=True``: the last step lands on
  ``alphabar = 1`` (clean images).
* The initial noise comes from a seeded generator and is drawn once for all ``n``
  images, so two schedules sampled with the same seed start from the same noise (common
  random numbers, which the zeroth-order estimator relies on).
"""

from __future__ import annotations

import numpy as np
import torch

from .schedules import T_DEFAULT

IMAGE_SIZE = 28  # MNIST's side; a profile may train and sample at a smaller one (``image_size``)


def ddim_scheduler(betas: torch.Tensor, steps: int, clip_range: float = 1.0):
    """A ``DDIMScheduler`` with ``trained_betas = betas`` and ``steps`` inference steps; the
    predicted x0 is clipped to ``[-clip_range, clip_range]`` (images: 1; ``gmm-schedule``'s
    2-D data: the range of its mixture)."""
    from diffusers import DDIMScheduler

    betas = np.asarray(betas.detach().cpu().double().numpy(), dtype=np.float64)
    sched = DDIMScheduler(
        num_train_timesteps=len(betas), trained_betas=betas, clip_sample=True, clip_sample_range=float(clip_range), set_alpha_to_one=True,
        steps_offset=0, prediction_type="epsilon", timestep_spacing="trailing",
    )
    steps = int(steps)
    if not 1 <= steps <= len(betas):
        raise ValueError(f"sample_steps must be between 1 and {len(betas)}, got {steps}")
    sched.set_timesteps(steps)
    if len(sched.timesteps) != steps:
        raise RuntimeError(f"DDIMScheduler made {len(sched.timesteps)} timesteps, {steps} were asked for")
    return sched


def initial_noise(n: int, seed: int, size: int = IMAGE_SIZE, shape: tuple | None = None) -> torch.Tensor:
    """``n`` standard normal samples of ``shape`` (default one-channel ``size x size`` images)."""
    g = torch.Generator().manual_seed(int(seed))
    shape = tuple(shape) if shape is not None else (1, int(size), int(size))
    return torch.randn((int(n),) + shape, generator=g)


def ddim_chain(model, scheduler, x: torch.Tensor) -> torch.Tensor:
    """Run the DDIM chain from noise ``x`` (differentiable when called with grad enabled)."""
    for t in scheduler.timesteps:
        eps = model(x, t).sample
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x


@torch.no_grad()
def sample(model, betas: torch.Tensor, n: int, steps: int, seed: int, batch_size: int = 250,
           size: int = IMAGE_SIZE, shape: tuple | None = None, clip_range: float = 1.0) -> torch.Tensor:
    """``n`` images in [-1, 1] (float32, ``n x 1 x size x size``) from noise seeded by ``seed``;
    ``shape``: another sample shape; ``clip_range``: the data range (x0 clipping and the final clamp)."""
    was_training = model.training
    model.eval()
    noise = initial_noise(n, seed, size, shape)
    out = []
    for i in range(0, int(n), int(batch_size)):
        sched = ddim_scheduler(betas, steps, clip_range)
        out.append(ddim_chain(model, sched, noise[i : i + batch_size]).clamp(-clip_range, clip_range))
    model.train(was_training)
    return torch.cat(out)


def reference_cosine_scheduler(steps: int, T: int = T_DEFAULT):
    """diffusers' own cosine schedule (``squaredcos_cap_v2``) with the same sampler settings
    (for the test that our default cosine betas reproduce it)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(
        num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True, set_alpha_to_one=True,
        steps_offset=0, prediction_type="epsilon", timestep_spacing="trailing",
    )
    sched.set_timesteps(int(steps))
    return sched
