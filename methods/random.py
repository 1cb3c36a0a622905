"""Random search: Optuna's RandomSampler (uniform, or log-uniform for log-scale parameters)."""

import optuna

from ..bench.contracts.method import Method, MethodContext, best_params
from ..bench.toolkit.seeding import TrialSeeded


def make_sampler(ctx: MethodContext) -> optuna.samplers.BaseSampler:
    return TrialSeeded(optuna.samplers.RandomSampler(seed=ctx.seed), ctx.seed)


METHOD = Method("random search (Optuna RandomSampler)", make_sampler, choose=best_params)
