"""Bayesian optimisation with a Gaussian process: optuna-integration's BoTorchSampler
(default BoTorch candidates: a GP with log expected improvement). The first
``n_startup`` trials are random (a quarter of the budget, between 2 and 10), as is usual."""

import warnings

import optuna

from .base import Method, MethodContext, best_params
from .seeding import TrialSeeded


def make_sampler(ctx: MethodContext) -> optuna.samplers.BaseSampler:
    from optuna_integration import BoTorchSampler

    n_startup = max(2, min(10, int(ctx.budget) // 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorchSampler is marked experimental
        sampler = BoTorchSampler(seed=ctx.seed, n_startup_trials=n_startup)
    return TrialSeeded(sampler, ctx.seed)


METHOD = Method("Bayesian optimisation, GP + expected improvement (optuna-integration BoTorchSampler)", make_sampler, choose=best_params)
