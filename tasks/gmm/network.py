"""``gmm-schedule``'s epsilon-network and its data stream.

:class:`EpsMLP`: ``eps_theta(x_t, t)`` for d-dimensional data, a multilayer perceptron on
``x_t`` concatenated with sinusoidal features of ``t / T`` (Vaswani et al. 2017's
frequencies, as diffusion UNets embed time), SiLU activations. It returns an object with
``.sample`` (the diffusers output convention), so the schedule code of ``mnist-schedule``
(training, DDIM sampling, the single loop) runs it unchanged.

:class:`MixtureStream`: minibatches ``(x0, t, eps)`` of *fresh* draws from the mixture, a
pure function of ``(seed, step)`` like :class:`..mnist_schedule.training.BatchStream`.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from ...bench.toolkit.seeding import derive_seed
from .mixture import Mixture

INIT, STEP = 41, 42  # derive_seed purpose tags


class EpsMLP(nn.Module):
    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, n_freq: int = 8, T: int = 1000) -> None:
        super().__init__()
        self.T, self.n_freq = int(T), int(n_freq)
        layers: list[nn.Module] = []
        d = dim + 2 * self.n_freq
        for _ in range(int(depth)):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        layers.append(nn.Linear(d, dim))
        self.net = nn.Sequential(*layers)
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(self.n_freq) / self.n_freq),
                             persistent=False)

    def forward(self, x: torch.Tensor, t) -> SimpleNamespace:
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(len(x)) / self.T
        arg = 1000.0 * t[:, None] * self.freqs[None].to(x.dtype)
        h = torch.cat([x, torch.sin(arg), torch.cos(arg)], 1)
        return SimpleNamespace(sample=self.net(h))


def build_mlp(seed: int, width: int, depth: int) -> EpsMLP:
    """A fresh network whose initial weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, INIT))
        return EpsMLP(width=width, depth=depth)


class MixtureStream:
    """``batch(step) -> (x0, t, eps)``: ``batch_size`` fresh mixture draws, timesteps uniform on
    ``0 .. T-1`` and noises, all from ``(seed, step)``."""

    def __init__(self, mixture: Mixture, batch_size: int, seed: int, T: int) -> None:
        self.mixture, self.batch_size, self.seed, self.T = mixture, int(batch_size), int(seed), int(T)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, STEP, step))
        x0 = self.mixture.sample(self.batch_size, g).float()
        t = torch.randint(0, self.T, (self.batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        return x0, t, eps
