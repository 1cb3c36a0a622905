"""gmm tasks: the closed-form mixture maths (tasks/gmm/mixture.py) against autograd, Monte
Carlo and finite differences."""

import math

import pytest
import torch

from diffhpo.tasks.gmm.distance import energy_distance
from diffhpo.tasks.gmm.mixture import DTYPE, Quadratic, random_mixture, tilt


@pytest.fixture(scope="module")
def p():
    return random_mixture(0, 8, 1.5, 0.1, 0.35)


def _points(n=64, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=DTYPE) * 1.5


@pytest.mark.parametrize("ab", [1.0, 0.9, 0.3, 0.01, 1e-4])
def test_exact_eps_matches_autograd_of_the_noisy_log_density(p, ab):
    x = _points().requires_grad_(True)
    noisy = p.noisy(ab)
    (grad,) = torch.autograd.grad(noisy.log_prob(x).sum(), x)
    assert torch.allclose(noisy.score(x.detach()), grad, rtol=1e-9, atol=1e-9)
    assert torch.allclose(p.eps(x.detach(), ab), -math.sqrt(1 - ab) * grad, rtol=1e-9, atol=1e-12)


def test_noisy_marginal_matches_the_forward_process(p):
    g = torch.Generator().manual_seed(1)
    ab = 0.4
    x0 = p.sample(200_000, g)
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=g, dtype=DTYPE)
    noisy = p.noisy(ab)
    mean = noisy.mean()
    cov = sum(w * (c + torch.outer(m - mean, m - mean)) for w, m, c in zip(noisy.weights, noisy.means, noisy.covs))
    assert torch.allclose(xt.mean(0), mean, atol=0.01)
    assert torch.allclose(torch.cov(xt.T), cov, atol=0.01)


@pytest.mark.parametrize("lam", [0.5, 1.0, 5.0])
def test_closed_form_tilt_matches_importance_reweighted_samples(p, lam):
    r2 = Quadratic.well([2.5, 0.0], 3.0)
    r1 = Quadratic.well(p.means[0], 1.0)
    x = p.sample(400_000, torch.Generator().manual_seed(2))
    logw = r2(x) / lam
    w = torch.softmax(logw, 0)
    ess = float(1 / (w**2).sum())
    assert ess > 1000  # the check below has power
    t = tilt(p, r2, lam)
    se = 5 / math.sqrt(ess)  # 5 standard errors of a unit-variance mean
    assert torch.allclose((w[:, None] * x).sum(0), t.mean(), atol=se)
    assert float((w * r1(x)).sum()) == pytest.approx(t.expect(r1), abs=5 * se)
    assert float(t.weights.sum()) == pytest.approx(1.0, abs=1e-12)


def test_tilt_of_one_gaussian_by_a_linear_reward_shifts_its_mean(p):
    one = type(p)(torch.ones(1, dtype=DTYPE), p.means[:1], p.covs[:1])
    b = torch.tensor([0.5, -1.0], dtype=DTYPE)
    t = tilt(one, Quadratic(torch.zeros(2, 2, dtype=DTYPE), b), 2.0)
    assert torch.allclose(t.means[0], p.means[0] + p.covs[0] @ b / 2.0)
    assert torch.allclose(t.covs[0], p.covs[0])


def test_expectation_of_a_quadratic_matches_monte_carlo(p):
    r = Quadratic.well([0.3, -0.2], 2.0, peak=1.0)
    x = p.sample(400_000, torch.Generator().manual_seed(3))
    assert float(r(x).mean()) == pytest.approx(p.expect(r), abs=0.01)


def test_energy_distance_separates_laws_and_is_differentiable(p):
    g = torch.Generator().manual_seed(4)
    a, b = p.sample(1000, g), p.sample(1000, g)
    shifted = b + torch.tensor([0.3, 0.0], dtype=DTYPE)
    same, other = float(energy_distance(a, b)), float(energy_distance(a, shifted))
    assert same < 0.08 and other > 3 * same
    x = a.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy_distance(x, shifted), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
