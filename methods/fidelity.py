"""What the pruning methods share: the resource axis of a task's fidelity.

Tasks with a fidelity report the upper metric at fractions of the lower-level solve
(:attr:`diffhpo.bench.contracts.task.Task.has_fidelity`); the runner stores them as Optuna intermediate
values at step ``round(fraction x 1000)`` (:data:`diffhpo.bench.contracts.fidelity.FIDELITY_STEPS`), so
a whole solve is 1,000 resource units and the first rung of successive halving and
Hyperband is the task's first checkpoint.
"""

from __future__ import annotations

from ..bench.contracts.fidelity import FIDELITY_STEPS
from ..bench.contracts.method import MethodContext


def min_resource(ctx: MethodContext) -> int:
    """Steps of the task's first checkpoint (its profile's ``checkpoints``), at least 1."""
    checkpoints = tuple(getattr(ctx.task.config, "checkpoints", ()) or (0.25,))
    return max(1, int(round(min(checkpoints) * FIDELITY_STEPS)))

