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

A retry of a trial cut off before all its parameters were stored holds none of them
(``diffhpo.bench.workers.retry``) and is proposed afresh in its slot. Two more kinds of
sampler state are made slot-true here, for samplers the runner wraps without being asked
(an external method returning a plain ``QMCSampler`` or ``CmaEsSampler``, see
:func:`seeded`):

* *study system attributes* a sampler writes while proposing (QMCSampler's sample counter):
  each fresh trial records them as they were before its proposal (``diffhpo:study_attrs``,
  copied to its retries), and a retry's proposal reads that record instead, so it takes the
  same sample as its original did;
* *the trial number*, for samplers that seed a draw with it (``NUMBERED``: CmaEsSampler
  adds it to its seed): they are shown the slot as the number, which is the number the
  trial has in an uninterrupted run.

A retry that already holds a whole configuration is not proposed for at all (Optuna keeps
stored parameters), so a sampler's side effects (a counter, a CMA-ES generation record)
happen once per slot.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, CmaEsSampler, QMCSampler
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
        elif name == "_seed" and isinstance(value, int) and not isinstance(sampler, QMCSampler):
            setattr(sampler, name, sub)  # BoTorchSampler's torch seed (QMC's defines its sequence)


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


STUDY_ATTRS = "diffhpo:study_attrs"  # trial system attribute: the study's system attributes before its proposal
NUMBERED = (CmaEsSampler,)  # samplers that seed a draw with trial.number: shown the slot instead


class _StudyAttrsAsBefore:
    """A storage whose study system attributes read as ``before`` (a retry's record of them as
    they were when its original was proposed); everything else passes through."""

    def __init__(self, storage, before: dict[str, Any]) -> None:
        self._inner, self._before = storage, before

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return dict(self._before)


class TrialSeeded(BaseSampler):
    """Delegates to ``inner``, reseeding it from ``(seed, slot)`` before each trial (see the
    module docstring for the study attributes and trial numbers it makes slot-true).
    Attributes it lacks are the inner sampler's (``oracle_context``, ``admit``, ...)."""

    def __init__(self, inner: BaseSampler, seed: int) -> None:
        self.inner = inner
        self.seed = seed

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __str__(self) -> str:
        return f"TrialSeeded({type(self.inner).__name__})"

    def reseed_rng(self) -> None:  # called by Optuna for n_jobs > 1; seeding stays per trial
        pass

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        n = slot(study, trial)
        if STUDY_ATTRS not in trial.system_attrs:  # a fresh trial (or a retry of one cut off before this)
            before = study._storage.get_study_system_attrs(study._study_id)
            study._storage.set_trial_system_attr(trial._trial_id, STUDY_ATTRS, before)
        reseed(self.inner, derive_seed(self.seed, n))
        self.inner.before_trial(study, self._shown(study, trial, n))

    def _shown(self, study: Study, trial: FrozenTrial, n: int | None = None) -> FrozenTrial:
        """``trial`` as the inner sampler sees it: numbered by its slot for a ``NUMBERED`` one."""
        if not isinstance(self.inner, NUMBERED):
            return trial
        shown = copy.copy(trial)
        shown.number = slot(study, trial) if n is None else n
        return shown

    def _study_for(self, study: Study, trial: FrozenTrial) -> Study:
        """The study as the inner sampler sees it while proposing for ``trial``: a retry reads
        the study system attributes its original saw."""
        before = trial.system_attrs.get(STUDY_ATTRS)
        if RETRY_OF not in trial.system_attrs or before is None:
            return study
        if study._storage.get_study_system_attrs(study._study_id) == before:
            return study  # nothing written since (the usual case: stock samplers write none)
        view = copy.copy(study)
        view._storage = _StudyAttrsAsBefore(study._storage, before)
        return view

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, self._shown(study, trial))

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if search_space and all(n in trial.distributions for n in search_space):
            return {}  # a retry holding its whole configuration: Optuna uses the stored values
        return self.inner.sample_relative(self._study_for(study, trial), self._shown(study, trial), search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(self._study_for(study, trial), self._shown(study, trial), param_name,
                                             param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: list[float] | None
    ) -> None:
        self.inner.after_trial(study, trial, state, values)


def seeded(sampler: BaseSampler, seed: int) -> BaseSampler:
    """``sampler`` made slot-true for the runner: wrapped in :class:`TrialSeeded`, unless it is
    already, or it declares ``rebuilds_from_storage = True`` (its proposals depend on the stored
    trials only, as the bilevel sampler's do). The runner applies this to every method's
    sampler, so an external method may return a plain Optuna sampler."""
    if isinstance(sampler, TrialSeeded) or getattr(sampler, "rebuilds_from_storage", False):
        return sampler
    return TrialSeeded(sampler, seed)
