"""Any diffhpo task as an OptunaHub benchmark problem (``optunahub.benchmarks.BaseProblem``).

The OptunaHub packages in ``optunahub/benchmarks/`` are one call each::

    from diffhpo.hub import problem_class

    Problem = problem_class("quadratic")

and a plain ``study.optimize(Problem(), n_trials=...)`` then searches the task's default
search space, each trial one ``Task.evaluate`` (one lower-level solve) returning the task's
primary metric (the upper-level objective) in its direction. ``Problem(oracle=True)``
evaluates with the task's first-order oracle instead where the task has one and the study's
sampler asks for it (the bilevel sampler: ``oracle_context``), recording the hypergradient
in the trial's ``hypergrad`` user attribute, as diffhpo's runner does. Every other metric
of a trial is stored as the user attribute ``metric_<name>``.
"""

from __future__ import annotations

from typing import Any

import optuna
import optunahub

from .tasks import TASKS
from .bench.contracts.task import Task


class TaskProblem(optunahub.benchmarks.BaseProblem):
    """A diffhpo task as a single-objective OptunaHub problem.

    ``task`` is a registered task name (``diffhpo list``) or a :class:`Task` instance;
    ``profile`` and ``options`` are its profile and ``--option`` settings; ``seed`` is the
    seed every evaluation receives (the runner's cell seed).
    """

    def __init__(self, task: str | Task, *, profile: str = "quick", seed: int = 0, oracle: bool = False,
                 **options: Any) -> None:
        self.task = TASKS.get(task)(profile, **options) if isinstance(task, str) else task
        self.seed = int(seed)
        self.oracle = bool(oracle)

    @property
    def search_space(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return self.task.search_space()

    @property
    def directions(self) -> list[optuna.study.StudyDirection]:
        return [optuna.study.StudyDirection.MAXIMIZE if self.task.primary.direction == "maximize"
                else optuna.study.StudyDirection.MINIMIZE]

    @property
    def known_optimum(self) -> float | None:
        """The optimal value of the objective, where the task can compute it."""
        return self.task.known_optimum()

    def evaluate(self, params: dict[str, Any]) -> float:
        return float(self.task.evaluate(params, self.seed)[self.task.primary.name])

    def __call__(self, trial: optuna.Trial) -> float:
        sampler = trial.study.sampler
        params = {n: trial._suggest(n, d) for n, d in self.search_space.items()}
        if not (self.oracle and self.task.has_oracle and hasattr(sampler, "oracle_context")):
            metrics = self.task.evaluate(params, self.seed)
        else:
            result = self.task.oracle(params, self.seed, sampler.oracle_context(trial.study, trial))
            trial.set_user_attr("hypergrad", dict(result.grad))
            metrics = result.metrics
        for name, value in metrics.items():
            if name != self.task.primary.name:
                trial.set_user_attr(f"metric_{name}", float(value))
        return float(metrics[self.task.primary.name])


def problem_class(task: str, doc: str | None = None) -> type[TaskProblem]:
    """A ``Problem`` class for the registered task ``task``: ``Problem(profile="quick",
    seed=0, oracle=False, **options)``."""

    class Problem(TaskProblem):
        def __init__(self, *, profile: str = "quick", seed: int = 0, oracle: bool = False, **options: Any) -> None:
            super().__init__(task, profile=profile, seed=seed, oracle=oracle, **options)

    Problem.__doc__ = doc or f"The diffhpo task {task!r} as an OptunaHub problem (see diffhpo.hub)."
    Problem.__qualname__ = Problem.__name__ = "Problem"
    return Problem
