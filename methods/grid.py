"""Grid search: Optuna's GridSampler over the task's default grid, visited in a seeded
random order (a budget smaller than the grid visits a random subset of grid points)."""

import math

import optuna

from .base import Method, MethodContext, best_params
from .seeding import TrialSeeded


def make_sampler(ctx: MethodContext) -> optuna.samplers.BaseSampler:
    return TrialSeeded(optuna.samplers.GridSampler(dict(ctx.grid), seed=ctx.seed), ctx.seed)


def grid_size(ctx: MethodContext) -> int:
    return math.prod(len(v) for v in ctx.grid.values())


METHOD = Method(
    "grid search over the task's default grid (Optuna GridSampler)",
    make_sampler,
    choose=best_params,
    max_trials=grid_size,
)
