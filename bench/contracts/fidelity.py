"""A task's fidelity: intermediate values of the upper metric during the lower-level solve.

A task with ``has_fidelity = True`` calls ``report(fraction, value)`` at its checkpoints
(:attr:`diffhpo.bench.contracts.task.Task.has_fidelity`). The value is stored as an Optuna intermediate
value at step ``round(fraction x FIDELITY_STEPS)``, so a whole solve is 1,000 resource
units for every task, and pruners (successive halving, Hyperband, median stopping) and
optuna-dashboard read it as usual.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

FIDELITY_STEPS = 1000


def progress_reporter(trial: optuna.Trial) -> tuple[Any, dict]:
    """``report(fraction, value)`` for a task with a fidelity: stores the upper metric at
    that fraction of the lower-level solve as an Optuna intermediate value, and raises
    ``optuna.TrialPruned`` when the study's pruner stops the trial there; and the record
    of the fraction reached (the cost of a pruned trial, in the task's cost unit)."""
    progress = {"fraction": 0.0}

    def report(fraction: float, value: float) -> None:
        fraction = float(fraction)
        progress["fraction"] = fraction
        if math.isfinite(float(value)):
            trial.report(float(value), int(round(fraction * FIDELITY_STEPS)))
        if fraction < 1.0 and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at {fraction:.3g} of the lower-level solve")

    return report, progress
