"""Baseline ``weighted-sum`` (the paper's weighted-sum method, method.md Application 1):
guide with the combined reward ``r2 + w * r1`` at a fixed KL strength lambda, and search
the weight ``w`` instead of lambda.

The task defines the space (search-space variant ``"weighted-sum"``: ``w`` on a log
scale) and the fixed lambda (the reward tasks' ``ws_lambda`` option); the search is grid
search over the task's ``w`` grid in a seeded order, the same protocol as ``grid`` over
lambda, on the same budget. Tasks without that variant skip this method.
"""

import math

import optuna

from .base import Method, MethodContext, best_params
from .seeding import TrialSeeded


def make_sampler(ctx: MethodContext) -> optuna.samplers.BaseSampler:
    return TrialSeeded(optuna.samplers.GridSampler(dict(ctx.grid), seed=ctx.seed), ctx.seed)


def grid_size(ctx: MethodContext) -> int:
    return math.prod(len(v) for v in ctx.grid.values())


METHOD = Method(
    "weighted sum: guidance with r2 + w * r1 at a fixed lambda, grid search over w (reward tasks)",
    make_sampler,
    choose=best_params,
    max_trials=grid_size,
    space="weighted-sum",
)
