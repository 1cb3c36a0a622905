"""Per-trial seeding of stock Optuna samplers.

Optuna samplers keep a random state in memory; a resumed run (or a second worker) would
restart it and, e.g., repeat the random start-up points. :class:`TrialSeeded` wraps any
sampler and reseeds every random state it holds from ``(seed, trial.number)`` before each
trial, so the proposals depend only on the seed, the trial number and the stored history:
state any worker can rebuild.
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


class TrialSeeded(BaseSampler):
    """Delegates to ``inner``, reseeding it from ``(seed, trial.number)`` before each trial."""

    def __init__(self, inner: BaseSampler, seed: int) -> None:
        self.inner = inner
        self.seed = seed

    def __str__(self) -> str:
        return f"TrialSeeded({type(self.inner).__name__})"

    def reseed_rng(self) -> None:  # called by Optuna for n_jobs > 1; seeding stays per trial
        pass

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        reseed(self.inner, derive_seed(self.seed, trial.number))
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
