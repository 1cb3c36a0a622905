"""Hyperband with TPE, the usual BOHB-like pairing: Optuna's ``TPESampler`` (multivariate)
proposes, ``HyperbandPruner`` runs several successive-halving brackets over the lower-level
solve (resource 1,000 = one whole solve, smallest rung = the task's first checkpoint,
reduction factor 3).

Example (on a task with a fidelity)::

    diffhpo run --task gmm-schedule --method hyperband,tpe
"""

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from ..bench.contracts.fidelity import FIDELITY_STEPS
from ..bench.contracts.method import Method, MethodContext, best_params
from .fidelity import min_resource
from ..bench.toolkit.seeding import slot
from .tpe import make_sampler  # the same proposals as `tpe`


@dataclass(frozen=True)
class _Numbered:
    number: int


class SlotHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's ``HyperbandPruner`` with each trial's bracket drawn from its slot
    (:func:`.seeding.slot`) instead of its trial number: Optuna hashes
    ``(study name, trial number)``, so a trial retried after an interruption (a new number)
    could land in another bracket, and a resumed cell would prune differently from an
    uninterrupted one. Keyed by slot, the retry stays in its original's bracket."""

    def _get_bracket_id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        return super()._get_bracket_id(study, _Numbered(slot(study, trial)))


def make_pruner(ctx: MethodContext) -> optuna.pruners.BasePruner:
    return SlotHyperbandPruner(min_resource=min_resource(ctx), max_resource=FIDELITY_STEPS, reduction_factor=3)


METHOD = Method("Hyperband with TPE (BOHB-like): Optuna TPESampler + HyperbandPruner over the training",
                make_sampler, choose=best_params, make_pruner=make_pruner)
