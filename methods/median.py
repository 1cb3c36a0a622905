"""Median stopping with TPE, the most common pruning baseline: a trial stops at a checkpoint
where its value is worse than the median of the earlier trials at that checkpoint
(Optuna's ``MedianPruner``; no pruning during TPE's random start-up).

Example (on a task with a fidelity)::

    diffhpo run --task gmm-schedule --method median,tpe
"""

import optuna

from ..bench.contracts.method import Method, MethodContext, best_params, startup_trials
from .tpe import make_sampler  # the same proposals as `tpe`


def make_pruner(ctx: MethodContext) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials(ctx), n_warmup_steps=0)


METHOD = Method("median stopping with TPE: Optuna TPESampler + MedianPruner over the training",
                make_sampler, choose=best_params, make_pruner=make_pruner)
