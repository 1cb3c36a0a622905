"""The benchmark runner: the matrix tasks x methods x seeds, one Optuna study per cell.

Budget: every method of a cell gets the same budget in the task's cost unit (one
lower-level solve by default; the task's oracle reports what an outer iteration of the
bilevel method costs in that unit), and optionally the same wall-clock budget (search
seconds, sampler time included). A trial starts while the spent cost is below the
budget, so the last trial may overshoot it by less than its own cost. Failed trials count
towards the budget (they used the compute), trials cut off by an interruption do not.

After the search, the method's chosen hyperparameters (best trial, or the method's own
choice) are re-evaluated once under the task's final protocol with the seed
``FINAL_SEED_OFFSET + seed``, the same for every method, and stored with the study.

Resume: rerunning the same command reopens every study. Finished cells are skipped,
unfinished ones continue from their stored trials (samplers rebuild their state from the
storage), and trials left RUNNING by a killed process are marked FAILED ("interrupted")
and not counted, so their configuration is proposed again.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from tqdm.auto import tqdm

from ..methods import METHODS
from ..methods.base import Method, MethodContext
from ..tasks import TASKS
from ..tasks.base import Task
from . import storage as st
from .errors import DiffhpoError
from .measure import measure

FINAL_SEED_OFFSET = 1000
INTERRUPTED = "interrupted"


@dataclass
class RunSpec:
    tasks: list[str]
    methods: list[str]
    seeds: list[int]
    profile: str = "quick"
    out: Path = Path("results")
    storage: str | None = None
    budget: float | None = None
    time_budget: float | None = None
    task_options: dict[str, str] = field(default_factory=dict)
    method_options: dict[str, dict[str, str]] = field(default_factory=dict)
    progress: bool = True


@dataclass
class CellOutcome:
    study_name: str
    status: str
    spent: float
    n_trials: int


def build_tasks(spec: RunSpec) -> dict[str, Task]:
    tasks = {}
    for name in spec.tasks:
        cls = TASKS.get(name)
        tasks[name] = cls(spec.profile, **spec.task_options)
    return tasks


def run_matrix(spec: RunSpec, *, log: Callable[[str], None] = print) -> list[CellOutcome]:
    """Run (or resume) every cell of the matrix in order: task, then seed, then method."""
    methods = {name: METHODS.get(name) for name in spec.methods}
    _check_method_options(spec, methods)
    url = spec.storage or st.default_url(st.ensure_writable(spec.out))
    storage = st.open_storage(url)
    tasks = build_tasks(spec)
    outcomes = []
    for task_name, task in tasks.items():
        for seed in spec.seeds:
            for method_name, method in methods.items():
                outcome = run_cell(
                    storage, task, method_name, method, seed,
                    budget=spec.budget, time_budget=spec.time_budget,
                    method_options=spec.method_options.get(method_name, {}),
                    progress=spec.progress, workdir=spec.out / "work",
                )
                log(f"{outcome.study_name}: {outcome.status} ({outcome.n_trials} trials, cost {outcome.spent:g})")
                outcomes.append(outcome)
    return outcomes


def _check_method_options(spec: RunSpec, methods: Mapping[str, Method]) -> None:
    for name, opts in spec.method_options.items():
        if name not in methods:
            raise DiffhpoError(f"--method-option for {name!r}, which is not in --method")
        for key in opts:
            if key not in methods[name].options:
                raise DiffhpoError(
                    f"method {name!r} has no option {key!r}; valid options: "
                    f"{', '.join(methods[name].options) or 'none'}"
                )


def _coerce_method_options(opts: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in opts.items():
        try:
            out[key] = int(raw)
        except ValueError:
            try:
                out[key] = float(raw)
            except ValueError:
                out[key] = raw
    return out


def _cell_attrs(task: Task, method_name: str, seed: int, budget: float) -> dict[str, Any]:
    return {
        st.CELL_MARK: True,
        "task": task.name,
        "method": method_name,
        "seed": seed,
        "profile": task.profile,
        "budget": budget,
        "cost_unit": task.cost_unit,
        "primary": task.primary.name,
        "metric_directions": {m.name: m.direction for m in task.metrics},
        "config": json.loads(json.dumps(task.describe_config(), default=str)),
    }


def _spent(trials: list[optuna.trial.FrozenTrial]) -> float:
    total = 0.0
    for t in trials:
        if t.state == TrialState.COMPLETE or (
            t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") != INTERRUPTED
        ):
            total += float(t.user_attrs.get("cost", 1.0))
    return total


def _elapsed(trials: list[optuna.trial.FrozenTrial]) -> float:
    return sum(float(t.user_attrs.get("ask_s", 0.0)) + float(t.user_attrs.get("wall_s", 0.0)) for t in trials)


def _fail_stale_running(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed process of a single-process run."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def run_cell(
    storage: BaseStorage,
    task: Task,
    method_name: str,
    method: Method,
    seed: int,
    *,
    budget: float | None = None,
    time_budget: float | None = None,
    method_options: Mapping[str, str] | None = None,
    progress: bool = True,
    workdir: Path | None = None,
) -> CellOutcome:
    """Search, then re-evaluate the chosen hyperparameters under the final protocol."""
    budget = float(budget if budget is not None else task.budget)
    name = st.study_name(task.name, method_name, task.profile, seed)
    space = task.search_space()
    ctx = MethodContext(
        task=task, search_space=space, grid=task.default_grid(), seed=seed, budget=budget,
        options=_coerce_method_options(method_options or {}),
    )
    sampler = method.make_sampler(ctx)
    study = optuna.create_study(
        storage=storage, study_name=name, direction=task.primary.direction,
        sampler=sampler, load_if_exists=True,
    )
    attrs = _cell_attrs(task, method_name, seed, budget)
    old = study.user_attrs
    if old.get(st.CELL_MARK) and old.get("config") != attrs["config"]:
        raise DiffhpoError(
            f"study {name!r} already exists in this storage with other task settings; "
            "use another --out or --storage, or the same --option values as before"
        )
    for key, value in attrs.items():
        if old.get(key) != value:
            study.set_user_attr(key, value)
    _fail_stale_running(study)

    trials = study.get_trials(deepcopy=False)
    spent, elapsed = _spent(trials), _elapsed(trials)
    max_trials = method.max_trials(ctx) if method.max_trials is not None else None
    counted = lambda ts: sum(1 for t in ts if t.state == TrialState.COMPLETE or (
        t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") != INTERRUPTED))

    def search_over() -> bool:
        return (
            spent >= budget
            or (time_budget is not None and elapsed >= time_budget)
            or (max_trials is not None and counted(study.get_trials(deepcopy=False)) >= max_trials)
        )

    if study.user_attrs.get("status") == "done" and search_over():
        return CellOutcome(name, "done (skipped)", spent, len(trials))

    use_oracle = method.uses_oracle and task.has_oracle
    bar = tqdm(
        total=budget, initial=min(spent, budget), desc=f"{task.name}/{method_name}/s{seed}",
        unit="cost", disable=None if progress else True, leave=False, dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:g}/{total:g} [{elapsed}<{remaining}{postfix}]",
    )
    try:
        while not search_over():
            cost, dt = _run_trial(study, task, sampler, space, seed, use_oracle, workdir)
            spent += cost
            elapsed += dt
            bar.update(cost)
            _postfix(bar, study)
    finally:
        bar.close()

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        study.set_user_attr("status", "failed: no trial completed")
        return CellOutcome(name, "failed: no trial completed", spent, len(study.trials))
    _final_protocol(study, task, method, seed)
    return CellOutcome(name, "done", spent, len(study.trials))


def _postfix(bar: tqdm, study: optuna.Study) -> None:
    try:
        bar.set_postfix_str(f"best={study.best_value:.4g}", refresh=False)
    except ValueError:
        pass


def _run_trial(
    study: optuna.Study, task: Task, sampler, space, seed: int, use_oracle: bool, workdir: Path | None
) -> tuple[float, float]:
    """Ask, evaluate (black box or oracle), record, tell. Returns (cost, seconds)."""
    t0 = time.perf_counter()
    trial = study.ask(fixed_distributions=space)
    ask_s = time.perf_counter() - t0
    trial.set_user_attr("ask_s", ask_s)
    params = trial.params
    cost = 1.0
    try:
        with measure() as m:
            if use_oracle:
                octx = sampler.oracle_context(study, trial)
                if workdir is not None:
                    octx.workdir = Path(workdir) / study.study_name
                result = task.oracle(params, seed, octx)
                metrics, cost = result.metrics, float(result.cost)
                trial.set_user_attr("hypergrad", {k: float(v) for k, v in result.grad.items()})
                trial.set_user_attr("iteration", octx.iteration)
                trial.set_user_attr("gamma", octx.gamma)
                for k, v in result.info.items():
                    trial.set_user_attr(k, v)
            else:
                metrics = task.evaluate(params, seed)
    except KeyboardInterrupt:
        trial.set_user_attr("fail_reason", INTERRUPTED)
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as exc:
        for k, v in m.as_attrs().items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("cost", cost)
        trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
        trial.set_user_attr("traceback", traceback.format_exc()[-2000:])
        study.tell(trial, state=TrialState.FAIL)
        return cost, ask_s + m.wall_s
    for k, v in m.as_attrs().items():
        trial.set_user_attr(k, v)
    trial.set_user_attr("cost", cost)
    for k, v in metrics.items():
        trial.set_user_attr(f"metric_{k}", float(v))
    value = float(metrics.get(task.primary.name, float("nan")))
    if not math.isfinite(value):
        trial.set_user_attr("fail_reason", f"{task.primary.name} is {value}")
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)
    return cost, ask_s + m.wall_s


def _final_protocol(study: optuna.Study, task: Task, method: Method, seed: int) -> None:
    choose = method.choose
    params = choose(study) if choose is not None else dict(study.best_trial.params)
    final_seed = FINAL_SEED_OFFSET + seed
    with measure() as m:
        metrics = task.evaluate(params, final_seed, final=True)
    study.set_user_attr("final_params", {k: (v if isinstance(v, (int, str)) else float(v)) for k, v in params.items()})
    study.set_user_attr("final_metrics", {k: float(v) for k, v in metrics.items()})
    study.set_user_attr("final_seed", final_seed)
    study.set_user_attr("final_measure", m.as_attrs())
    study.set_user_attr("status", "done")
