"""The search space of the schedule tasks (``mnist-schedule``, ``gmm-schedule``): the
four-parameter schedule ``q = (q_s, q_e, q_tau, q_eps)`` of a family (method.md,
Application 2; :mod:`.mnist_schedule.schedules`), one mixin for both tasks.

A task using :class:`ScheduleSpace` has ``config.schedule`` (the family) and sets
``grid_params``, the two parameters its default grid varies (three values each: both ends
and the middle of the range; the others stay at the family's default), chosen by its own
landscape measurement (:mod:`.schedule_landscape`).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from optuna.distributions import FloatDistribution

from .mnist_schedule import schedules as S


class ScheduleSpace:
    grid_params: tuple[str, str] = ("q_e", "q_tau")
    #: The reference code's AdamW learning rates of (q_s, q_e, q_tau, q_eps) in natural units
    #: (method.md, "What the reference code actually does"; its README's ``--lr_beta 0.05 0.05
    #: 1 0.05``), used by the bilevel paper preset (:mod:`diffhpo.methods.bilevel_paper`).
    #: The same for both families: the reference passes one list whatever the family.
    reference_learning_rates: dict[str, float] = {"q_s": 0.05, "q_e": 0.05, "q_tau": 1.0, "q_eps": 0.05}

    @property
    def param_names(self) -> tuple[str, ...]:
        return S.PARAM_NAMES

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        return S.RANGES[self.config.schedule]

    @classmethod
    def diagnostics(cls, cells, trials, folder):
        """The bilevel method's premise rows and term SNRs (:mod:`.schedule_diagnostics`), for
        the report's ``Diagnostics: bilevel`` section; the ranges of each cell's schedule family;
        and, where the storage has ``default`` cells, the paper's headline claim beside every
        method's final value relative to the default schedule."""
        from .schedule_diagnostics import claim_diagnostics, report_diagnostics

        default = next(iter(cls.profiles.values())).schedule
        return report_diagnostics(cls.name, lambda config: S.RANGES[config.get("schedule", default)],
                                  cells, trials, folder) + claim_diagnostics(cls.name, cells)

    def search_space(self) -> dict[str, FloatDistribution]:
        return {n: FloatDistribution(lo, hi) for n, (lo, hi) in self.ranges.items()}

    def default_params(self) -> dict[str, float]:
        """The family's default schedule (cosine: the standard cosine schedule ``(0, 1, 1, 0.008)``)."""
        return dict(zip(S.PARAM_NAMES, S.DEFAULTS[self.config.schedule]))

    def default_grid(self) -> dict[str, list]:
        """Three values of each of ``grid_params`` (9 points), the others at their defaults."""
        d = self.default_params()
        grid = {n: [float(d[n])] for n in S.PARAM_NAMES}
        for n in self.grid_params:
            lo, hi = self.ranges[n]
            grid[n] = [float(lo), float((lo + hi) / 2), float(hi)]
        return grid

    def q_tensor(self, params: Mapping[str, Any]) -> torch.Tensor:
        return S.as_q({n: float(params[n]) for n in S.PARAM_NAMES})

    def schedule_of(self, params_or_q) -> S.Schedule:
        q = params_or_q if torch.is_tensor(params_or_q) else self.q_tensor(params_or_q)
        return S.check_valid(S.schedule(self.config.schedule, q))
