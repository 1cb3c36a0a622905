"""Tree-structured Parzen estimator: Optuna's TPESampler (multivariate)."""

import optuna

from .base import Method, MethodContext, best_params
from .seeding import TrialSeeded


def make_sampler(ctx: MethodContext) -> optuna.samplers.BaseSampler:
    n_startup = max(2, min(10, int(ctx.budget) // 4))
    sampler = optuna.samplers.TPESampler(seed=ctx.seed, n_startup_trials=n_startup, multivariate=True)
    return TrialSeeded(sampler, ctx.seed)


METHOD = Method("TPE, Bayesian optimisation with Parzen estimators (Optuna TPESampler)", make_sampler, choose=best_params)
