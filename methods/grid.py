"""Grid search: Optuna's GridSampler over the task's default grid, visited in a seeded
random order (a budget smaller than the grid visits a random subset of grid points)."""

import math

import optuna

from .base import Method, MethodContext, best_params
from .seeding import TrialSeeded


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, except at the end of the grid.

    ``GridSampler.after_trial`` calls ``study.stop()`` once every grid point has been
    visited, and ``Study.stop`` raises outside ``study.optimize``. The runner asks and tells
    trials itself and ends the search at ``max_trials`` (the grid's size), so the end of
    the grid needs no stop here.
    """

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(ctx: MethodContext) -> optuna.samplers.BaseSampler:
    return TrialSeeded(_GridSampler(dict(ctx.grid), seed=ctx.seed), ctx.seed)


def grid_size(ctx: MethodContext) -> int:
    return math.prod(len(v) for v in ctx.grid.values())


METHOD = Method(
    "grid search over the task's default grid (Optuna GridSampler)",
    make_sampler,
    choose=best_params,
    max_trials=grid_size,
)
