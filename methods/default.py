"""Baseline ``default``: no search, the task's default hyperparameters.

One trial evaluates ``task.default_params()`` (for ``mnist-schedule`` the standard cosine
schedule ``(0, 1, 1, 0.008)``, the DDIM default the paper compares against); the final
protocol re-evaluates it like every method's choice. ``max_trials`` is 1, so the cell
spends one evaluation (one cost unit unless the task charges more, ``Task.evaluation_cost``)
whatever its budget.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

from ..bench.contracts.method import Method, MethodContext, best_params


class DefaultSampler(BaseSampler):
    """Proposes the same fixed parameters in every trial."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = dict(params)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        value = self.params[param_name]  # as the distribution defines it (an int 1 of a float range is 1.0)
        return param_distribution.to_external_repr(param_distribution.to_internal_repr(value))


def make_sampler(ctx: MethodContext) -> optuna.samplers.BaseSampler:
    return DefaultSampler(ctx.task.default_params())


METHOD = Method(
    "no search: the task's default hyperparameters (e.g. the standard cosine schedule)",
    make_sampler,
    choose=best_params,
    max_trials=lambda ctx: 1,
)
