"""One worker's search loop on one cell (shared by `diffhpo run` and `diffhpo worker`).

Budget accounting is exact with any number of workers. A trial *counts* when it is
COMPLETE or failed with a recorded cost (its evaluation raised or returned NaN); trials cut
off by an interruption, trials released unevaluated, and trials failed for a cause outside
their configuration (:func:`~diffhpo.bench.contracts.errors.environment_cause`: a missing or corrupted
file, permissions, a full disk), do not. The last kind also stops the cell's search
(:class:`EnvironmentStop`) and is retried by the next run. Before asking, a worker
checks that the counted cost plus the expected cost of the trials still running is below
the budget, and waits while it is not (a running trial may still fail). After asking, it
admits its trial only if the trials *numbered before it* leave room: trial numbers are
assigned atomically by the storage, so the first trials in number order fill the budget
and a trial that lost a race is released (FAILED with reason ``released: ...``, its
configuration enqueued again for a later run with a larger budget). A sampler may also
decline a trial (``admit``) or ask workers to wait (``ready``): the bilevel sampler does
both, because its outer iterations are sequential.

A trial's cost, in the task's cost unit: ``task.evaluation_cost(params)`` for an evaluation
(1 unless the task says otherwise; a pruned trial the fraction it ran times that), what the
oracle reports for a bilevel outer iteration.
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from .contracts.method import Method, MethodContext
from . import hooks, workers
from .contracts.errors import ENVIRONMENT, environment_cause
from .contracts.fidelity import progress_reporter
from .measure import measure

Task = Any  # a diffhpo.bench.contracts.task.Task; bench/ names tasks only through the registry

POLL_S = 0.2
INTERRUPTED = "interrupted"


@dataclass
class Cell:
    """Everything a worker needs to search one cell."""

    study: optuna.Study
    task: Task
    method_name: str
    method: Method
    ctx: MethodContext
    sampler: optuna.samplers.BaseSampler
    seed: int
    budget: float
    time_budget: float | None = None
    workdir: Path | None = None
    on_start: Any = None  # (trial, ask seconds) once admitted: the simulated clock (bench/simulate.py)

    @property
    def max_trials(self) -> int | None:
        return self.method.max_trials(self.ctx) if self.method.max_trials is not None else None

    @property
    def use_oracle(self) -> bool:
        return self.method.uses_oracle and self.task.has_oracle


UNCOUNTED = (INTERRUPTED, "released", ENVIRONMENT)


class EnvironmentStop(Exception):
    """A trial failed for a cause outside its configuration (:func:`~diffhpo.bench.contracts.errors.environment_cause`):
    the cell's search stops at once, instead of spending its budget on trials that would
    all fail the same way. The trial is not counted and its configuration is enqueued
    again, so the next run, on a repaired machine, retries the cell instead of finding it
    spent."""


def counts(t: FrozenTrial) -> bool:
    """Whether a trial used its share of the budget: completed, pruned (the fraction of the
    lower-level solve it ran), or failed while evaluating."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    reason = str(t.user_attrs.get("fail_reason", ""))
    return t.state == TrialState.FAIL and "cost" in t.user_attrs and not reason.startswith(UNCOUNTED)


@dataclass
class Ledger:
    spent: float
    running_cost: float
    n_counted: int
    n_running: int
    elapsed: float


def ledger(trials: list[FrozenTrial], before: int | None = None) -> Ledger:
    """Spent cost, expected cost of running trials, counts and search seconds."""
    sel = [t for t in trials if before is None or t.number < before]
    done = [t for t in sel if counts(t)]
    last = max((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.number, default=None)
    expected = float(last.user_attrs.get("cost", 1.0)) if last is not None else 1.0
    running = [t for t in sel if t.state == TrialState.RUNNING]
    return Ledger(
        spent=sum(float(t.user_attrs.get("cost", 1.0)) for t in done),
        running_cost=expected * len(running),
        n_counted=len(done),
        n_running=len(running),
        elapsed=sum(float(t.user_attrs.get("ask_s", 0.0)) + float(t.user_attrs.get("wall_s", 0.0)) for t in sel),
    )


def search_over(cell: Cell, led: Ledger) -> bool:
    return (
        led.spent >= cell.budget
        or (cell.time_budget is not None and led.elapsed >= cell.time_budget)
        or (cell.max_trials is not None and led.n_counted >= cell.max_trials)
    )


def _full(cell: Cell, led: Ledger) -> bool:
    """No room for one more trial while the running ones are counted."""
    return (
        led.spent + led.running_cost >= cell.budget
        or (cell.max_trials is not None and led.n_counted + led.n_running >= cell.max_trials)
    )


def search(cell: Cell, *, exclusive: bool, progress: bool = True, leave_full: bool = False) -> Ledger:
    """Ask, admit, evaluate and tell until the cell's budget is spent and nothing runs.

    With ``leave_full`` (a matrix worker, :func:`~diffhpo.bench.runner.join_matrix`) it
    returns as soon as the cell has no room for a trial of its own while trials of other
    workers still run in it (budget taken, or spent with trials still running): it would only
    wait for them, and the last of them finishes the cell. The returned ledger tells the two
    returns apart: trials still running (``n_running``) only when the worker left. Without
    it the worker waits, and every worker of a cell returns once its search is over."""
    study = cell.study
    workers.fail_orphans(study, exclusive=exclusive)
    led = ledger(study.get_trials(deepcopy=False))
    bar = tqdm(
        total=cell.budget, initial=min(led.spent, cell.budget),
        desc=f"{cell.task.name}/{cell.method_name}/s{cell.seed}", unit="cost",
        disable=None if progress else True, leave=False, dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:g}/{total:g} [{elapsed}<{remaining}{postfix}]",
    )
    shown = min(led.spent, cell.budget)
    try:
        while True:
            fresh(study)
            if is_heartbeat_enabled(study._storage):
                optuna.storages.fail_stale_trials(study)
            workers.fail_orphans(study, exclusive=False)
            led = ledger(study.get_trials(deepcopy=False))
            now = min(led.spent, cell.budget)
            bar.update(now - shown)
            shown = now
            _postfix(bar, study)
            if leave_full and led.n_running and (search_over(cell, led) or _full(cell, led)):
                return led
            if search_over(cell, led):
                if led.n_running == 0:
                    workers.fail_waiting(study, "released: the search ended before this retry ran")
                    return led
                time.sleep(POLL_S)
                continue
            ready = getattr(cell.sampler, "ready", None)
            if _full(cell, led) or (ready is not None and not ready(study)):
                time.sleep(POLL_S)
                continue
            _one_trial(cell, exclusive)
    finally:
        bar.close()


def fresh(study: optuna.Study) -> None:
    """Drop the study's cache of trials. Optuna fills it at a sampler's first
    ``_get_trials(use_cache=True)`` and clears it only in ``ask`` and ``tell``; a worker that
    waits (the bilevel sampler's ``ready``), or that runs the final protocol of a cell other
    workers searched, asks nothing, so it would go on seeing the trials of the moment it
    joined: never ready again (a cell that hangs once its other worker is killed), and a
    method's choice made from a trajectory cut short."""
    study._thread_local.cached_all_trials = None


def _postfix(bar: tqdm, study: optuna.Study) -> None:
    try:
        bar.set_postfix_str(f"best={study.best_value:.4g}", refresh=False)
    except ValueError:
        pass


def _admit(cell: Cell, trial: optuna.Trial) -> tuple[bool, str, bool]:
    """(admitted, reason, enqueue a copy) for a freshly asked trial."""
    study = cell.study
    stored = getattr(study._storage, "unfiltered", study._storage)  # the budget counts what a view hides
    led = ledger(stored.get_all_trials(study._study_id, deepcopy=False), before=trial.number)
    if _full(cell, led):
        return False, "released: budget taken by earlier trials", True
    admit = getattr(cell.sampler, "admit", None)
    if admit is not None and not admit(study, trial):
        return False, "released: this step is already being evaluated by another worker", False
    return True, "", False


def _release(study: optuna.Study, trial: optuna.Trial, reason: str, copy: bool) -> None:
    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    frozen = study._storage.get_trial(trial._trial_id)
    study.tell(trial, state=TrialState.FAIL)
    if copy:  # the copy keeps the released trial's configuration slot
        system = {k: v for k, v in frozen.system_attrs.items() if k != "fixed_params"}
        system.setdefault(workers.RETRY_OF, frozen.number)
        study.add_trial(optuna.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            system_attrs=system,
        ))


def _one_trial(cell: Cell, exclusive: bool) -> None:
    study = cell.study
    trial = None
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # heartbeats are run by this loop, not by Study.optimize
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        for i, (name, dist) in enumerate(cell.ctx.search_space.items()):
            hooks.pause("suggest", study.study_name, f"trial {trial.number}, {i} parameter(s) stored")
            trial._suggest(name, dist)  # what study.ask(fixed_distributions=...) does, one by one
        study._storage.set_trial_system_attr(trial._trial_id, workers.ASKED, True)
        ask_s = time.perf_counter() - t0
        trial.set_user_attr(workers.WORKER_KEY, workers.worker_id())  # host:pid
        trial.set_user_attr(workers.DEVICE_KEY, workers.device())
        admitted, reason, copy = _admit(cell, trial)
        if not admitted:
            _release(study, trial, reason, copy)
            time.sleep(POLL_S)
            return
        trial.set_user_attr("ask_s", ask_s)
        hooks.pause("evaluate", study.study_name, f"trial {trial.number}")
        if cell.on_start is not None:
            cell.on_start(trial, ask_s)
        _evaluate_and_tell(cell, trial)
        hooks.pause("tell", study.study_name, f"trial {trial.number}")
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (cli.py): leave no RUNNING trial behind
        reason = f"{INTERRUPTED}: {getattr(exc, 'signal_name', 'SIGINT')}"
        if trial is not None:
            frozen = study._storage.get_trial(trial._trial_id)
            if frozen.state == TrialState.RUNNING:
                workers.fail_and_retry(study, frozen, reason)
        if exclusive:  # this process alone uses the storage: a trial cut off inside ask is ours too
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                workers.fail_and_retry(study, t, reason)
        raise


class _CountedTrialsView:
    """A storage as a pruner should see it: without the trials cut off by an interruption or
    released unevaluated. Their retry reports the same intermediate values again, and
    successive halving counts every trial holding a rung value as a competitor, so an
    interrupted trial would otherwise change later pruning decisions."""

    def __init__(self, storage) -> None:
        self._inner = storage

    @property
    def unfiltered(self):
        """The storage itself (``methods.seeding.slot`` counts every trial ever created)."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        trials = self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [t for t in trials if not (t.state == TrialState.FAIL and not counts(t))]


class CountedTrialsPruner(optuna.pruners.BasePruner):
    """Runs ``inner`` on the study without its interrupted or released trials, so a resumed
    cell prunes exactly as an uninterrupted one."""

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        view = optuna.Study(study.study_name, _CountedTrialsView(study._storage), sampler=study.sampler,
                            pruner=self.inner)
        return self.inner.prune(view, trial)


def _evaluate_and_tell(cell: Cell, trial: optuna.Trial) -> None:
    study, task = cell.study, cell.task
    params = trial.params
    cost = float(task.evaluation_cost(params)) if not cell.use_oracle else 1.0
    reporter, progress = progress_reporter(trial)
    try:
        with get_heartbeat_thread(trial._trial_id, study._storage), measure() as m:
            if cell.use_oracle:
                octx = cell.sampler.oracle_context(study, trial)
                if cell.workdir is not None:
                    octx.workdir = Path(cell.workdir) / study.study_name
                result = task.oracle(params, cell.seed, octx)
                metrics, cost = result.metrics, float(result.cost)
                extra: dict[str, Any] = {
                    "hypergrad": {k: float(v) for k, v in result.grad.items()},
                    "iteration": octx.iteration, "gamma": octx.gamma, **result.info,
                    "evaluated": bool(getattr(result, "evaluated", False)),
                }
            elif task.has_fidelity:
                metrics, extra = task.evaluate(params, cell.seed, report=reporter), {}
            else:
                metrics, extra = task.evaluate(params, cell.seed), {}
    except optuna.TrialPruned as exc:  # the method's pruner stopped it: it cost what it ran
        _record(trial, m.as_attrs(), progress["fraction"] * cost, {"pruned_at": progress["fraction"]})
        trial.set_user_attr("prune_reason", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        return
    except Exception as exc:
        _record(trial, m.as_attrs(), cost, {})
        cause = environment_cause(exc)
        reason = f"{type(exc).__name__}: {exc}"
        if cause is not None:
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            reason = f"{ENVIRONMENT}: {type(cause).__name__}: {first}"
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("traceback", traceback.format_exc()[-2000:])
        study.tell(trial, state=TrialState.FAIL)
        if cause is not None:
            workers.retry(study, study._storage.get_trial(trial._trial_id))
            raise EnvironmentStop(reason) from exc
        return
    _record(trial, m.as_attrs(), cost, extra)
    for k, v in metrics.items():
        trial.set_user_attr(f"metric_{k}", float(v))
    value = float(metrics.get(task.primary.name, float("nan")))
    if not math.isfinite(value):
        trial.set_user_attr("fail_reason", f"{task.primary.name} is {value}")
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)


def _record(trial: optuna.Trial, measured: dict, cost: float, extra: dict) -> None:
    for k, v in {**measured, **extra, "cost": cost}.items():
        trial.set_user_attr(k, v)
