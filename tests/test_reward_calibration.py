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


@pytest.mark.xfail(strict=True, reason="known shortfall (issue 16): with grad_through=unet the Gaussian-posterior "
                   "weight over-damps at weak guidance on the mixture: 0.19 vs 0.08 at lambda = 3")
def test_calibrated_unet_at_weak_guidance():
    const = GmmRewardTask("quick")
    cal = GmmRewardTask("quick", weighting="calibrated")
    assert _fid(cal, 3.0) <= _fid(const, 3.0) + NOISE


def test_twisted_smc_converges_to_the_exact_tilt_as_particles_grow():
    """gmm-reward quick, seed 0, lambda = 0.1 (strong guidance; the guided DDIM sampler's
    distance is 1.28 against a floor of 0.03-0.04): the twisted-SMC corrector's distance falls
    with the particle count (benchmarks/gmm_reward_fidelity.py --smc: 1.275, 0.355, 0.206,
    0.117 for 1, 4, 16, 64 particles, mean of 2 seeds)."""
    f = [_fid(GmmRewardTask("quick", particles=k), 0.1) for k in (1, 4, 16)]
    assert f[1] < 0.5 * f[0] and f[2] < 0.75 * f[1], f
    assert f[2] < 0.3, f
