"""Tree-structured Parzen estimator: Optuna's TPESampler (multivariate)."""

import optuna

from ..bench.contracts.method import Method, MethodContext, best_params, startup_trials
from ..bench.toolkit.seeding import TrialSeeded


def make_sampler(ctx: MethodContext) -> optuna.samplers.BaseSampler:
    sampler = optuna.samplers.TPESampler(seed=ctx.seed, n_startup_trials=startup_trials(ctx), multivariate=True)
    return TrialSeeded(sampler, ctx.seed)


METHOD = Method("TPE, Bayesian optimisation with Parzen estimators (Optuna TPESampler)", make_sampler, choose=best_params)
