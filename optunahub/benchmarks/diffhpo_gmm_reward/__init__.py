"""OptunaHub package ``benchmarks/diffhpo_gmm_reward``: diffhpo's ``gmm-reward`` task (the KL
strength lambda of reward-guided diffusion sampling on a 2-D Gaussian mixture, with an exact
answer) as a benchmark problem."""

from diffhpo.hub import problem_class

Problem = problem_class(
    "gmm-reward",
    "KL strength lambda of reward-guided diffusion sampling (Xiao et al. 2025, Application 1) on an exact 2-D "
    "Gaussian-mixture model: maximise the mean upper score r1 of the guided samples; the exact optimum of the "
    "tilt is known. Problem(profile='quick', seed=0, oracle=False, **options); options as in "
    "`diffhpo list --options gmm-reward`.",
)

__all__ = ["Problem"]
