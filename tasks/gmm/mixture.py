"""Closed-form maths of 2-D Gaussian mixtures under the diffusion forward process and under
exponential tilts (the analytic model of the tasks ``gmm-reward`` and ``gmm-schedule``).

* **Mixture.** ``p(x) = sum_k pi_k N(x; mu_k, Sigma_k)`` in ``d`` dimensions (here 2).
* **Noisy marginals.** The forward process ``x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps``
  (Ho et al. 2020, eq. 4) maps each component to ``N(sqrt(ab_t) mu_k, ab_t Sigma_k + (1 - ab_t) I)``
  with the same weights, so ``p_t`` is again a mixture (:meth:`Mixture.noisy`) and its score
  is ``grad log p_t(x) = -sum_k r_k(x) S_k^{-1} (x - m_k)`` with responsibilities ``r_k``.
  The exact epsilon-prediction is ``eps*(x_t, t) = -sqrt(1 - ab_t) grad log p_t(x_t)``
  (the minimiser of the denoising loss; method.md, Application 2): :meth:`Mixture.eps`.
* **Quadratic rewards.** ``r(x) = -1/2 x^T A x + b^T x + c`` with ``A`` symmetric positive
  semi-definite (:class:`Quadratic`): linear rewards (``A = 0``) and concave quadratics.
* **Tilts.** ``p_pre(x) exp(r(x) / lam)`` is again a mixture (:func:`tilt`; method.md,
  Application 1, ``p*_lambda ~ p_pre exp(r2 / lambda)``): component k becomes
  ``N(mu'_k, Sigma'_k)`` with precision ``P'_k = Sigma_k^{-1} + A / lam``,
  ``mu'_k = P'_k^{-1} (Sigma_k^{-1} mu_k + b / lam)``, and weight ``pi'_k ~ pi_k Z_k``,
  ``log Z_k = 1/2 mu'^T P' mu' - 1/2 mu_k^T Sigma_k^{-1} mu_k + 1/2 log det(Sigma'_k Sigma_k^{-1})``
  (completing the square; the constant ``c / lam`` cancels in the normalisation).
* **Moments.** ``E[r] = sum_k pi_k (-1/2 tr(A Sigma_k) - 1/2 mu_k^T A mu_k + b^T mu_k + c)``
  (:meth:`Mixture.expect`).

Everything is float64 torch, differentiable where the tests need autograd (the score is
checked against ``torch.autograd.grad`` of :meth:`Mixture.log_prob`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...bench.contracts.options import option

DTYPE = torch.float64


@dataclass(frozen=True)
class Quadratic:
    """``r(x) = -1/2 x^T A x + b^T x + c`` (``A`` symmetric PSD: concave or linear)."""

    A: torch.Tensor  # (d, d)
    b: torch.Tensor  # (d,)
    c: float = 0.0

    @staticmethod
    def well(centre, curvature: float, peak: float = 0.0) -> "Quadratic":
        """``peak - curvature/2 |x - centre|^2``."""
        m = torch.as_tensor(centre, dtype=DTYPE)
        a = float(curvature) * torch.eye(len(m), dtype=DTYPE)
        return Quadratic(a, a @ m, float(peak) - 0.5 * float(m @ a @ m))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        A, b = self.A.to(x.dtype), self.b.to(x.dtype)
        return -0.5 * ((x @ A) * x).sum(-1) + x @ b + self.c

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return -x @ self.A.to(x.dtype) + self.b.to(x.dtype)

    def __add__(self, other: "Quadratic") -> "Quadratic":
        return Quadratic(self.A + other.A, self.b + other.b, self.c + other.c)

    def scaled(self, w: float) -> "Quadratic":
        if w < 0:
            raise ValueError("a negative multiple of a concave reward is not concave")
        return Quadratic(w * self.A, w * self.b, w * self.c)


@dataclass(frozen=True)
class Mixture:
    """``sum_k weights[k] N(means[k], covs[k])``; tensors float64."""

    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, d)
    covs: torch.Tensor  # (K, d, d)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    # -- the forward process -------------------------------------------------------------
    def noisy(self, alphabar: float) -> "Mixture":
        """The marginal of ``x_t`` when ``x_0`` follows this mixture (module docstring)."""
        ab = float(alphabar)
        eye = torch.eye(self.dim, dtype=DTYPE)
        return Mixture(self.weights, math.sqrt(ab) * self.means, ab * self.covs + (1.0 - ab) * eye)

    # -- density, score, epsilon ---------------------------------------------------------------
    def _terms(self, x: torch.Tensor):
        """Per-component log densities ``(N, K)`` and ``S_k^{-1} (x - m_k)`` ``(N, K, d)``."""
        x = x.to(DTYPE)
        prec = torch.linalg.inv(self.covs)  # (K, d, d)
        diff = x[:, None, :] - self.means[None]  # (N, K, d)
        sol = torch.einsum("kij,nkj->nki", prec, diff)
        maha = (diff * sol).sum(-1)
        logdet = torch.logdet(self.covs)
        logn = -0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        return logn + torch.log(self.weights)[None], sol

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self._terms(x)[0], dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``grad_x log p(x)`` in closed form."""
        logs, sol = self._terms(x)
        resp = torch.softmax(logs, dim=1)
        return -(resp[..., None] * sol).sum(1)

    def eps(self, x_t: torch.Tensor, alphabar: float) -> torch.Tensor:
        """The exact epsilon-prediction at noise level ``alphabar`` (module docstring)."""
        return -math.sqrt(1.0 - float(alphabar)) * self.noisy(alphabar).score(x_t)

    # -- moments and sampling ---------------------------------------------------------------------
    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def expect(self, r: Quadratic) -> float:
        """``E[r(x)]`` in closed form."""
        A = r.A
        quad = torch.einsum("ij,kji->k", A, self.covs) + torch.einsum("ki,ij,kj->k", self.means, A, self.means)
        per = -0.5 * quad + self.means @ r.b + r.c
        return float(self.weights @ per)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` exact draws (component by inverse CDF of a uniform, then ``mu + L z``)."""
        u = torch.rand(int(n), generator=generator, dtype=DTYPE)
        z = torch.randn(int(n), self.dim, generator=generator, dtype=DTYPE)
        return self.transform(u, z)

    def transform(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Draws from uniforms ``u`` (component choice) and standard normals ``z``: the same
        ``(u, z)`` under two mixtures give coupled samples (common random numbers)."""
        cdf = torch.cumsum(self.weights, 0)
        k = torch.searchsorted(cdf / cdf[-1], u.to(DTYPE).contiguous()).clamp(max=len(self.weights) - 1)
        chol = torch.linalg.cholesky(self.covs)
        return self.means[k] + torch.einsum("nij,nj->ni", chol[k], z.to(DTYPE))


def tilt(p: Mixture, r: Quadratic, lam: float) -> Mixture:
    """``p exp(r / lam)``, normalised (module docstring); ``lam = inf`` returns ``p``."""
    lam = float(lam)
    if math.isinf(lam):
        return p
    A, b = r.A / lam, r.b / lam
    prec0 = torch.linalg.inv(p.covs)
    prec = prec0 + A[None]
    cov = torch.linalg.inv(prec)
    cov = 0.5 * (cov + cov.transpose(1, 2))
    h = torch.einsum("kij,kj->ki", prec0, p.means) + b[None]
    mean = torch.einsum("kij,kj->ki", cov, h)
    log_z = (0.5 * (mean * h).sum(-1) - 0.5 * (p.means * torch.einsum("kij,kj->ki", prec0, p.means)).sum(-1)
             + 0.5 * (torch.logdet(cov) - torch.logdet(p.covs)))
    logw = torch.log(p.weights) + log_z
    return Mixture(torch.softmax(logw, 0), mean, cov)


@dataclass(frozen=True)
class MixtureOptions:
    """The options of a task's seeded mixture (:func:`random_mixture`), shared by both mixture
    tasks' configs (their base class)."""

    data_seed: int = option(0, "seed of the mixture", ge=0)
    n_components: int = option(8, "components of the mixture", ge=1, le=64)
    radius: float = option(1.5, "component means lie in the disc of this radius", gt=0)
    std_low: float = option(0.1, "smallest axis std of a component", gt=0)
    std_high: float = option(0.35, "largest axis std of a component", gt=0)

    def rules(self):
        yield self.std_low <= self.std_high, "std_low must not exceed std_high"

    def mixture(self) -> "Mixture":
        return random_mixture(self.data_seed, self.n_components, self.radius, self.std_low, self.std_high)


def random_mixture(seed: int, n_components: int, radius: float, std_low: float, std_high: float) -> Mixture:
    """A seeded mixture: means uniform in the disc of ``radius``, each covariance a random
    rotation of axis standard deviations uniform in ``[std_low, std_high]``, weights from a
    Dirichlet(2) draw (so no component is negligible)."""
    rng = np.random.default_rng(seed)
    k = int(n_components)
    ang = rng.uniform(0, 2 * np.pi, k)
    rad = radius * np.sqrt(rng.uniform(0, 1, k))
    means = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    covs = []
    for _ in range(k):
        s = rng.uniform(std_low, std_high, 2)
        th = rng.uniform(0, np.pi)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        covs.append(rot @ np.diag(s**2) @ rot.T)
    weights = rng.dirichlet(np.full(k, 2.0))
    t = lambda a: torch.tensor(np.asarray(a), dtype=DTYPE)  # noqa: E731
    return Mixture(t(weights), t(means), t(np.stack(covs)))
