"""Grid search: Optuna's GridSampler over the task's default grid, visited in a seeded
random order (a budget smaller than the grid visits a random subset of grid points)."""

import math

import optuna

from ..bench.contracts.method import Method, MethodContext, best_params
from ..bench.toolkit.seeding import TrialSeeded, slot


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, with grid points assigned by slot and no stop at the end.

    Optuna gives trial number n the n-th point of the seeded grid order. A trial retried
    after an interruption takes a new number, so numbering would skip a point; the point is
    assigned by the trial's slot instead (:func:`diffhpo.bench.toolkit.seeding.slot`), and a
    retry keeps its original's point (its ``grid_id`` system attribute is copied).

    ``GridSampler.after_trial`` calls ``study.stop()`` once every grid point has been
    visited, and ``Study.stop`` raises outside ``study.optimize``. The runner asks and tells
    trials itself and ends the search at ``max_trials`` (the grid's size), so the end of
    the grid needs no stop here.
    """

    def before_trial(self, study, trial) -> None:
        if "grid_id" in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return
        n = slot(study, trial)
        if n < self._n_min_trials:
            study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
            study._storage.set_trial_system_attr(trial._trial_id, "grid_id", n)
            return
        super().before_trial(study, trial)

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
