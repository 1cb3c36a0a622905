"""Hyperband with TPE, the usual BOHB-like pairing: Optuna's ``TPESampler`` (multivariate)
proposes, ``HyperbandPruner`` runs several successive-halving brackets over the lower-level
solve (resource 1,000 = one whole solve, smallest rung = the task's first checkpoint,
reduction factor 3).

Example (on a task with a fidelity)::

    diffhpo run --task gmm-schedule --method hyperband,tpe
"""

import optuna

from ..bench.fidelity import FIDELITY_STEPS
from .base import Method, MethodContext, best_params
from .fidelity import min_resource
from .tpe import make_sampler  # the same proposals as `tpe`


def make_pruner(ctx: MethodContext) -> optuna.pruners.BasePruner:
    return optuna.pruners.HyperbandPruner(min_resource=min_resource(ctx), max_resource=FIDELITY_STEPS,
                                          reduction_factor=3)


METHOD = Method("Hyperband with TPE (BOHB-like): Optuna TPESampler + HyperbandPruner over the training",
                make_sampler, choose=best_params, make_pruner=make_pruner)
