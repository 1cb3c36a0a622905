"""Successive halving: random search whose trials are stopped at rungs of the lower-level
solve (Optuna's ``SuccessiveHalvingPruner``; ASHA's rule: a trial is promoted past a rung
when it is in the top 1/eta of the trials that reached it).

Example (on a task with a fidelity)::

    diffhpo run --task gmm-schedule --method sha,random
"""

import optuna

from ..bench.contracts.method import Method, MethodContext, best_params
from .fidelity import min_resource
from .random import make_sampler  # the same proposals as `random`


def make_pruner(ctx: MethodContext) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource(ctx), reduction_factor=3)


METHOD = Method("successive halving: random search, trials stopped at rungs of the training (Optuna "
                "SuccessiveHalvingPruner)", make_sampler, choose=best_params, make_pruner=make_pruner)
