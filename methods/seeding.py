"""Per-slot seeding of stock Optuna samplers.

Optuna samplers keep a random state in memory; a resumed run (or a second worker) would
restart it and, e.g., repeat the random start-up points. :class:`TrialSeeded` wraps any
sampler and reseeds every random state it holds from ``(seed, slot)`` before each trial,
so the proposals depend only on the seed, the slot and the stored history: state any
worker can rebuild.

The *slot* of a trial is its configuration's place in the cell, not Optuna's trial
number. A trial cut off by an interruption (or released unevaluated) is retried as a new
trial with a new number; the retry keeps its original's slot (Optuna's ``failed_trial``
system attribute points to the original), and a fresh trial takes the next slot (the
number of fresh trials numbered before it). So an interrupted and resumed cell draws the
same configurations, in the same order, as one uninterrupted process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


def derive_seed(*parts: int) -> int:
    """A 31-bit seed determined by integer parts."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def reseed(sampler: BaseSampler, seed: int) -> None:
    """Reseed every random state held by ``sampler`` (and samplers it holds)."""
    for i, (name, value) in enumerate(sorted(vars(sampler).items())):
        sub = derive_seed(seed, i)
        if isinstance(value, LazyRandomState):
            setattr(sampler, name, LazyRandomState(sub))
        elif isinstance(value, np.random.RandomState):
            value.seed(sub)
        elif isinstance(value, BaseSampler):
            reseed(value, sub)
        elif name == "_seed" and isinstance(value, int):  # BoTorchSampler's torch seed
            setattr(sampler, name, sub)


RETRY_OF = "failed_trial"  # Optuna's system attribute: the number of the trial a retry copies


def slot(study: Study, trial: FrozenTrial) -> int:
    """The configuration slot of ``trial`` in its cell (see the module docstring). A storage
    seen through a filter (a pruner's view without interrupted trials) is read unfiltered
    through its ``unfiltered`` attribute: the slots count every trial ever created."""
    storage = getattr(study._storage, "unfiltered", study._storage)
    trials = storage.get_all_trials(study._study_id, deepcopy=False)
    original = trial.system_attrs.get(RETRY_OF)
    if original is not None and int(original) != trial.number:
        trial = next((t for t in trials if t.number == int(original)), trial)
    return sum(1 for t in trials if t.number < trial.number and RETRY_OF not in t.system_attrs)


class TrialSeeded(BaseSampler):
    """Delegates to ``inner``, reseeding it from ``(seed, slot)`` before each trial."""

    def __init__(self, inner: BaseSampler, seed: int) -> None:
        self.inner = inner
        self.seed = seed

    def __str__(self) -> str:
        return f"TrialSeeded({type(self.inner).__name__})"

    def reseed_rng(self) -> None:  # called by Optuna for n_jobs > 1; seeding stays per trial
        pass

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        reseed(self.inner, derive_seed(self.seed, slot(study, trial)))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: list[float] | None
    ) -> None:
        self.inner.after_trial(study, trial, state, values)
