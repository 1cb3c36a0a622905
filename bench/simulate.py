"""Simulated asynchronous workers (``diffhpo run --simulate-workers N``) on tasks with a time model.

A task with a time model defines ``modelled_seconds(params, seed) -> float``: the modelled
wall seconds of one evaluation, deterministic in ``params`` and ``seed`` (the surrogate
tasks replay the recorded wall time). With ``--simulate-workers N`` one process runs the
cell as N asynchronous workers would on a simulated clock, the design of Syne Tune's
simulator backend and of mfhpo-simulator's ask-and-tell mode (Watanabe et al. 2024,
"Fast Benchmarking of Asynchronous Multi-Fidelity Optimization on Zero-Cost Benchmarks",
``benchmark_simulator/_simulator/_worker_manager_for_ask_and_tell.py``, v1.4.6):

- each simulated worker has a cumulative time; the next trial goes to the worker with the
  smallest one (ties: the lowest index), and starts when that worker is free and the
  sampler is free (``max(sampler clock, worker time)``, mfhpo-simulator's default
  ``allow_parallel_sampling=False``: one sampler serves every worker);
- the sampler's own time counts: the measured seconds of the ask (``ask_s``, wall clock)
  move the sampler clock and delay the trial's start;
- a trial ends ``modelled_seconds(params, seed)`` after its start (a pruned trial after the
  fraction it ran times that);
- the sampler sees the results of the trials that ended by the simulated time of its ask
  (``sim_end_s <= sim_ask_s``); the others it sees as RUNNING, without values,
  intermediate values or user attributes (:class:`SimulatedView`). The pruner sees the
  same view as the trial's ask did: the running trials' intermediate values are hidden
  too, a conservative approximation (a real pruner would see the rungs they reported by
  then).

Every trial records ``sim_worker``, ``sim_ask_s``, ``sim_start_s``, ``sim_end_s``,
``sim_model_s`` (its modelled seconds) and ``sim_visible`` (the finished trials its sampler
saw); the report's time axis uses ``sim_end_s`` where present.

Why our own loop and not mfhpo-simulator itself: its ``simulate(opt)`` owns the loop, draws
its own evaluation seeds, keeps its state in memory and writes its results to a JSON file
at the end, with a budget in evaluations or total time. The runner needs the cell's seed,
its Optuna storage, the exact budget in cost units (:mod:`diffhpo.bench.search`) and resume
after a kill. So this module follows its design with the runner's own ask/admit/evaluate/
tell (:func:`diffhpo.bench.search._one_trial`), and keeps no state in memory: before each
trial the clock is rebuilt from the stored trials (:func:`clock`), worker ``w``'s time
being the latest ``sim_end_s`` of its counted trials and the sampler clock the latest
``sim_start_s``. Trials that do not count (cut off by an interruption, released) never
happened on the simulated clock; their retry is asked afresh. So a killed and resumed cell
gives the trial sequence of an uninterrupted one, up to the noise of the measured ask
times (they only move trials by milliseconds against modelled seconds; a reordering needs
two events closer than that).

Budget: the same rules as a plain run. Every trial is evaluated before the next is asked,
so the stored trials are the counted and the simulated-running ones together, and a trial
starts while their cost is below the budget, exactly the rule of N real workers.
``--time-budget`` is in simulated seconds here: no trial starts at or after it.

A sampler that is not ``ready`` at the ask time (the bilevel sampler waiting for its
iteration), or one whose trial was released, makes the free worker wait until the next
running trial ends (the next ``sim_end_s`` after the ask time).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from . import workers
from .contracts.errors import DiffhpoError
from .search import Cell, Ledger, _one_trial, _postfix, counts, ledger, search_over

KEYS = ("sim_worker", "sim_ask_s", "sim_start_s", "sim_end_s", "sim_model_s", "sim_visible")
SHOWN_WHILE_RUNNING = ("worker", "sim_worker", "sim_ask_s", "sim_start_s", "sim_model_s", "sim_visible")


def has_time_model(task_or_class: Any) -> bool:
    return callable(getattr(task_or_class, "modelled_seconds", None))


def check_simulate(n: int | None, task_names: list[str], tasks_registry: Any, n_workers: int) -> None:
    """Refuse ``--simulate-workers`` values before any work: below 1, with real workers, or on
    a task without a time model (the line names the tasks that have one)."""
    if n is None:
        return
    if n < 1:
        raise DiffhpoError(f"--simulate-workers must be at least 1, got {n}")
    if n_workers > 1:
        raise DiffhpoError("--simulate-workers runs the simulated workers in one process; it excludes --workers")
    timed = [name for name, cls in tasks_registry.items() if has_time_model(cls)]
    for name in task_names:
        if not has_time_model(tasks_registry.get(name)):
            raise DiffhpoError(
                f"--simulate-workers needs a task with a time model (modelled_seconds); task {name!r} has none; "
                f"tasks with one: {', '.join(timed) or 'none'}"
            )


@dataclasses.dataclass
class Clock:
    worker_free: np.ndarray  # per simulated worker, the time it finishes its last trial
    sampler_free: float  # the end of the last ask
    ends: list[float]  # sim_end_s of every counted simulated trial

    def next_ask(self) -> tuple[int, float]:
        w = int(np.argmin(self.worker_free))
        return w, max(self.sampler_free, float(self.worker_free[w]))

    def next_event_after(self, t: float) -> float | None:
        later = [e for e in self.ends if e > t]
        return min(later) if later else None


def clock(trials: list[FrozenTrial], n: int) -> Clock:
    """The simulated clock rebuilt from the stored trials (see the module docstring)."""
    free = np.zeros(n, dtype=float)
    sampler = 0.0
    ends = []
    for t in trials:
        u = t.user_attrs
        if not counts(t) or "sim_end_s" not in u:
            continue
        w, end = int(u["sim_worker"]), float(u["sim_end_s"])
        if not 0 <= w < n:
            raise DiffhpoError(f"trial {t.number} ran on simulated worker {w}, not one of this cell's {n}")
        free[w] = max(free[w], end)
        sampler = max(sampler, float(u["sim_start_s"]))
        ends.append(end)
    return Clock(free, sampler, ends)


def _ended_by(t: FrozenTrial, now: float) -> bool:
    end = t.user_attrs.get("sim_end_s")
    return end is None or float(end) <= now


class SimulatedView:
    """A storage as the sampler sees it at simulated time ``now``: finished trials that end
    after ``now`` are shown RUNNING, without their results. Writes go to the storage; the
    tell of a counted simulated trial first records its ``sim_end_s``."""

    def __init__(self, storage, model) -> None:
        self._inner = storage
        self._model = model  # (params) -> modelled seconds
        self.now = 0.0
        self.worker = 0

    @property
    def unfiltered(self):
        return getattr(self._inner, "unfiltered", self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _shown(self, t: FrozenTrial) -> FrozenTrial:
        if not counts(t) or _ended_by(t, self.now):  # a trial cut off never ran on the simulated clock
            return t
        return FrozenTrial(
            number=t.number, state=TrialState.RUNNING, value=None, values=None, datetime_start=t.datetime_start,
            datetime_complete=None, params=t.params, distributions=t.distributions,
            user_attrs={k: v for k, v in t.user_attrs.items() if k in SHOWN_WHILE_RUNNING},
            system_attrs=t.system_attrs, intermediate_values={}, trial_id=t._trial_id,
        )

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        shown = [self._shown(t) for t in self._inner.get_all_trials(study_id, deepcopy=deepcopy)]
        return shown if states is None else [t for t in shown if t.state in states]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._shown(self._inner.get_trial(trial_id))

    def get_n_trials(self, study_id: int, state=None) -> int:
        states = None if state is None else (tuple(state) if isinstance(state, (tuple, list)) else (state,))
        return len(self.get_all_trials(study_id, deepcopy=False, states=states))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        done = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            raise ValueError("No trials are completed yet.")
        maximise = self._inner.get_study_directions(study_id)[0] == StudyDirection.MAXIMIZE
        return (max if maximise else min)(done, key=lambda t: t.value)

    def start(self, trial: optuna.Trial, ask_s: float) -> None:
        """Called by the search loop once a trial is admitted: its place on the clock."""
        visible = sum(1 for t in self._inner.get_all_trials(trial.study._study_id, deepcopy=False)
                      if t.number != trial.number and counts(t) and _ended_by(t, self.now))
        model = float(self._model(trial.params))
        if not (math.isfinite(model) and model >= 0):
            raise DiffhpoError(f"modelled_seconds returned {model!r} for {trial.params}; it must be finite and >= 0")
        for k, v in (("sim_worker", self.worker), ("sim_ask_s", self.now), ("sim_start_s", self.now + ask_s),
                     ("sim_model_s", model), ("sim_visible", visible)):
            self._inner.set_trial_user_attr(trial._trial_id, k, v)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        if state.is_finished():
            t = self._inner.get_trial(trial_id)
            u = t.user_attrs
            reason = str(u.get("fail_reason", ""))
            counted = state != TrialState.FAIL or ("cost" in u and not reason.startswith(("interrupted", "released")))
            if counted and "sim_start_s" in u and "sim_end_s" not in u:
                share = float(u.get("pruned_at", 1.0)) if state == TrialState.PRUNED else 1.0
                self._inner.set_trial_user_attr(trial_id, "sim_end_s",
                                                float(u["sim_start_s"]) + share * float(u["sim_model_s"]))
        return self._inner.set_trial_state_values(trial_id, state, values)


def _over(cell: Cell, led: Ledger, ask_at: float) -> bool:
    untimed = dataclasses.replace(cell, time_budget=None)
    return search_over(untimed, led) or (cell.time_budget is not None and ask_at >= cell.time_budget)


def search_simulated(cell: Cell, n_workers: int, *, progress: bool = True) -> Ledger:
    """The cell's search on ``n_workers`` simulated workers (see the module docstring)."""
    study = cell.study
    workers.fail_orphans(study, exclusive=True)  # one process runs a simulated cell
    seed = cell.seed
    view = SimulatedView(study._storage, lambda params: cell.task.modelled_seconds(params, seed))
    sim_study = optuna.Study(study.study_name, view, sampler=cell.sampler, pruner=study.pruner)
    sim_cell = dataclasses.replace(cell, study=sim_study, on_start=view.start)
    bar = tqdm(total=cell.budget, desc=f"{cell.task.name}/{cell.method_name}/s{cell.seed} (sim x{n_workers})",
               unit="cost", disable=None if progress else True, leave=False, dynamic_ncols=True)
    shown, wait_until, last_n = 0.0, 0.0, -1
    try:
        while True:
            trials = study.get_trials(deepcopy=False)
            led = ledger(trials)
            clk = clock(trials, n_workers)
            worker, ask_at = clk.next_ask()
            if led.n_counted == last_n:  # the last round added no trial: wait for the next event
                nxt = clk.next_event_after(max(ask_at, wait_until))
                wait_until = nxt if nxt is not None else wait_until
            last_n = led.n_counted
            ask_at = max(ask_at, wait_until)
            bar.update(min(led.spent, cell.budget) - shown)
            shown = min(led.spent, cell.budget)
            _postfix(bar, study)
            if _over(cell, led, ask_at):
                workers.fail_waiting(study, "released: the search ended before this retry ran")
                return led
            view.now, view.worker = ask_at, worker
            sim_study._thread_local.cached_all_trials = None  # Optuna's per-study trial cache is of another time
            ready = getattr(cell.sampler, "ready", None)
            if ready is not None and not ready(sim_study):
                nxt = clk.next_event_after(ask_at)
                if nxt is None:
                    raise DiffhpoError(f"{study.study_name}: the sampler is not ready and no simulated trial is running")
                wait_until, last_n = nxt, -1
                continue
            _one_trial(sim_cell, exclusive=True)
    finally:
        bar.close()
