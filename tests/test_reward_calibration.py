"""Calibrated guidance weighting and the twisted-SMC corrector (issue 16, reward.guidance):
the exact relation on a Gaussian, and the distance to the exact tilt on gmm-reward."""


import pytest
import torch

from diffhpo.tasks.gmm import GmmRewardTask
from diffhpo.tasks.gmm.mixture import DTYPE, Mixture, Quadratic, tilt
from diffhpo.tasks.reward.guidance import guided_eps

pytestmark = pytest.mark.usefixtures("session_cache")

#: seed-to-seed spread of the distance at the noise floor on gmm-reward quick (sampler=exact:
#: 0.045 to 0.061 at lambda = 10 over seeds 0-2, benchmarks/gmm_reward_fidelity.py)
NOISE = 0.02


@pytest.mark.parametrize("grad_through", ["unet", "decoder"])
@pytest.mark.parametrize("ab", [0.999, 0.5, 0.01, 1e-4])
def test_calibrated_weight_gives_the_exact_tilted_eps_for_a_gaussian(grad_through, ab):
    """p_pre = N(m, s^2 I), r2 = -(kappa/2)|x - c|^2: the calibrated guided eps equals the exact
    eps of the tilted Gaussian's noisy marginal; Algorithm 5's constant weight does not
    (unless the posterior is sharp). In decoder mode the derivation assumes unit data
    variance, so that case uses s = 1."""
    s2 = 0.3 if grad_through == "unet" else 1.0
    p = Mixture(torch.ones(1, dtype=DTYPE), torch.tensor([[0.4, -0.2]], dtype=DTYPE), s2 * torch.eye(2, dtype=DTYPE)[None])
    r2 = Quadratic.well([2.0, 1.0], 3.0)
    lam = 0.2
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    eps_fn = lambda z, t, c: p.eps(z, ab)  # noqa: E731
    reward = lambda z, c: r2(z)  # noqa: E731
    exact = tilt(p, r2, lam).eps(x, ab)
    _, cal, _ = guided_eps(eps_fn, x, 0, None, ab, reward=reward, scale=1 / lam, grad_through=grad_through,
                           weighting="calibrated")
    eps, const, _ = guided_eps(eps_fn, x, 0, None, ab, reward=reward, scale=1 / lam, grad_through=grad_through)
    assert torch.allclose(cal, exact, atol=1e-8, rtol=1e-6)
    v = s2 * (1 - ab) / (1 - ab + ab * s2)  # posterior variance
    if 3.0 * v / lam > 0.1:
        assert (const - exact).abs().max() > 0.05 * (exact - eps).abs().max()  # >5% error in the shift


def _fid(task, lam, seed=0):
    return task.evaluate({"lam": lam}, seed)["fidelity"]


@pytest.mark.parametrize("grad_through", ["unet", "decoder"])
def test_calibrated_sampler_is_no_farther_from_the_tilt_on_the_grid(grad_through):
    """gmm-reward quick, seed 0, the default grid {0.01, 0.1, 1, 10, 100}: the calibrated
    sampler is within NOISE of today's everywhere and at least 35% closer where guidance is
    strong (lambda <= 1)."""
    const = GmmRewardTask("quick", grad_through=grad_through)
    cal = GmmRewardTask("quick", grad_through=grad_through, weighting="calibrated")
    for lam in [0.01, 0.1, 1.0, 10.0, 100.0]:
        a, b = _fid(const, lam), _fid(cal, lam)
        assert b <= a + NOISE, (lam, a, b)
        if lam <= 1.0:
            assert b <= 0.65 * a, (lam, a, b)


@pytest.mark.xfail(strict=True, reason="known limit of the weight (issue 16), not a defect: with grad_through=unet at "
                   "lambda = 3 the distance is 0.18 against Algorithm 5's 0.07 (seed 0; 0.18 with 200 steps too, so "
                   "not discretisation). The weight assumes a Gaussian posterior x0 | x_t with Tweedie's first two "
                   "moments; at high noise that posterior is p_pre itself, a mixture, whose exact tilt reweights "
                   "components. The samples' mean x is 0.78: the tilt of the Gaussian with p_pre's mean and "
                   "covariance has 0.80, the exact tilt 0.91 (the test below). Twisted SMC (constant proposal): 0.13 / "
                   "0.12 with 16 / 64 particles at 50 steps, 0.06 with 16 particles at 200 steps")
def test_calibrated_unet_at_weak_guidance():
    const = GmmRewardTask("quick")
    cal = GmmRewardTask("quick", weighting="calibrated")
    assert _fid(cal, 3.0) <= _fid(const, 3.0) + NOISE


def test_calibrated_weight_at_weak_guidance_tilts_a_gaussian_of_p_pres_two_moments():
    """The cause of the shortfall above (measured, gmm-reward quick, seed 0, lambda = 3): the
    calibrated sampler's mean lies within 0.05 of the mean of the tilt of N(mean, cov of
    p_pre) (0.78 against 0.80 in x) and more than 0.08 short of the exact tilt's (0.91):
    a weight built from the posterior's first two moments cannot see how the tilt
    reweights the mixture's components. Algorithm 5's constant weight over-steers by the
    factor 1 + kappa v_t / lambda and lands nearer by chance (0.93)."""
    task = GmmRewardTask("quick", weighting="calibrated")
    p, lam = task.p_pre, 3.0
    mean = (p.weights[:, None] * p.means).sum(0)
    second = (p.weights[:, None, None] * (p.covs + p.means[:, :, None] * p.means[:, None, :])).sum(0)
    gauss = Mixture(torch.ones(1, dtype=DTYPE), mean[None], (second - mean[:, None] * mean[None, :])[None])
    r2 = task.r2.scaled(task.config.guidance)
    g = tilt(gauss, r2, lam).means[0]
    exact = tilt(p, r2, lam)
    e = (exact.weights[:, None] * exact.means).sum(0)
    x = task.generate({"lam": lam}, 0, task.config.n_samples)["gmm"].to(DTYPE).mean(0)
    assert abs(float(x[0] - g[0])) < 0.05 and float(e[0] - x[0]) > 0.08, (x, g, e)


def test_twisted_smc_converges_to_the_exact_tilt_as_particles_grow():
    """gmm-reward quick, seed 0, lambda = 0.1 (strong guidance; the guided DDIM sampler's
    distance is 1.28 against a floor of 0.03-0.04): the twisted-SMC corrector's distance falls
    with the particle count (benchmarks/gmm_reward_fidelity.py --smc: 1.275, 0.355, 0.206,
    0.117 for 1, 4, 16, 64 particles, mean of 2 seeds)."""
    f = [_fid(GmmRewardTask("quick", particles=k), 0.1) for k in (1, 4, 16)]
    assert f[1] < 0.5 * f[0] and f[2] < 0.75 * f[1], f
    assert f[2] < 0.3, f
