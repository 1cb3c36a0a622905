"""The toy tasks the tests share (issue 25): one hyperparameter ``x`` in [-1, 1], one metric
``loss`` (minimised), a budget counted in evaluations. Imported by test modules as ``toys``
(``tests/`` is on the path through conftest.py).

* :class:`ToyTask`: ``loss = x^2``; a test subclasses it and overrides :meth:`ToyTask.loss` (or
  ``evaluate``), the profile (:func:`smoke`) or the grid; ``calls`` counts evaluations.
* :class:`CurvesTask`: the same with a fidelity, a "training" of four checkpoints,
  ``loss(x, f) = (x - 0.3)^2 + (1 - f) / 4``.
* :func:`registered`: a context manager that registers a task class under its name, resets the
  class attributes given, and unregisters it afterwards.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from optuna.distributions import FloatDistribution

from diffhpo.bench.contracts import TASKS, Metric, Task, option

CHECKPOINTS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class ToyConfig:
    budget: float = option(6.0, "evaluations per cell", gt=0)
    final_repeats: int = option(1, "final-protocol repeats", ge=1, le=20)
    checkpoints: tuple = option(CHECKPOINTS[:-1], "fractions of the solve where a fidelity task reports", gt=0, lt=1)


def smoke(budget: float = 6.0, **more: Any) -> dict[str, ToyConfig]:
    """``profiles`` of a toy task: the one profile ``smoke`` with this budget."""
    return {"smoke": ToyConfig(budget=float(budget), **more)}


class ToyTask(Task):
    """x in [-1, 1], loss x^2, budget 6 evaluations; ``calls`` counts every evaluate."""

    name = "toy"
    description = "test task"
    profiles = smoke(6)
    grid = (-1.0, 0.0, 1.0)
    calls = 0

    def __init__(self, profile: str = "smoke", **options: Any) -> None:
        super().__init__(profile, **options)

    @property
    def metrics(self):
        return [Metric("loss", "minimize")]

    def search_space(self):
        return {"x": FloatDistribution(-1, 1)}

    def default_grid(self):
        return {"x": list(self.grid)}

    def loss(self, params, seed: int, final: bool) -> float:
        return params["x"] ** 2

    def evaluate(self, params, seed, *, final=False):
        type(self).calls += 1
        return {"loss": self.loss(params, seed, final)}


class CurvesTask(ToyTask):
    """A "training" of four checkpoints: ``loss(x, f) = (x - 0.3)^2 + (1 - f) / 4``; ``calls``
    counts checkpoints, and ``interrupt_at`` raises KeyboardInterrupt at that call."""

    name = "curves"
    description = "test task with a fidelity"
    has_fidelity = True
    profiles = smoke(8)
    interrupt_at = None

    def evaluate(self, params, seed, *, final=False, report=None):
        loss = 0.0
        for f in CHECKPOINTS:
            type(self).calls += 1
            if type(self).calls == type(self).interrupt_at:
                raise KeyboardInterrupt
            loss = (params["x"] - 0.3) ** 2 + (1 - f) / 4
            if report is not None and f < 1.0:
                report(f, loss)
        return {"loss": loss}


@contextmanager
def registered(cls: type[Task], **reset: Any) -> Iterator[type[Task]]:
    """Register ``cls`` under ``cls.name`` for the block, with the class attributes ``reset``
    (default: ``calls=0``) set first; unregister it afterwards."""
    for key, value in {"calls": 0, **reset}.items():
        setattr(cls, key, value)
    TASKS.register(cls.name, cls)
    try:
        yield cls
    finally:
        TASKS.unregister(cls.name)

