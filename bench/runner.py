"""The benchmark runner: the matrix tasks x methods x seeds, one Optuna study per cell.

Budget: every method of a cell gets the same budget in the task's cost unit (one
lower-level solve by default; ``Task.evaluation_cost`` says what an evaluation costs where
it is a multiple of that, and the task's oracle what an outer iteration of the bilevel
method costs in that unit), and optionally the same wall-clock budget (search
seconds, sampler time included). A trial starts while the spent cost is below the
budget, so the last trial may overshoot it by less than its own cost. Failed trials count
towards the budget (they used the compute); trials cut off by an interruption do not.
See :mod:`diffhpo.bench.search` for the exact accounting with several workers.

After the search, the method's chosen hyperparameters (best trial, or the method's own
choice) are re-evaluated once under the task's final protocol with the seed
``FINAL_SEED_OFFSET + seed``, the same for every method, and stored with the study.

Resume: rerunning the same command reopens every study. Finished cells are skipped,
unfinished ones continue from their stored trials (samplers rebuild their state from the
storage), and trials left RUNNING by a killed process are marked FAILED ("interrupted")
and enqueued again.

Parallel workers: ``run --workers N`` starts N ``diffhpo worker`` processes per cell
(journal or PostgreSQL/MySQL storage; SQLite is single-process), waits for them, finishes
whatever a crashed worker left, then runs the final protocol. ``diffhpo worker`` joins an
existing cell from any machine (see :func:`join_cell`).

Simulated workers: ``run --simulate-workers N`` runs each cell of a task with a time model
as N asynchronous workers on a simulated clock, in this process (:mod:`diffhpo.bench.simulate`);
the cell records N (``simulated_workers``) and a rerun must give the same.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from ..methods import METHODS
from .contracts.method import Method, MethodContext
from .toolkit.seeding import seeded
from .contracts import options as opt
from . import storage as st
from . import hooks, workers
from .contracts.errors import DiffhpoError
from .measure import measure
from .contracts.registry import TASKS
from .search import Cell, CountedTrialsPruner, EnvironmentStop, fresh, ledger, search, search_over
from .contracts.seeds import check_seeds, final_seeds
from .contracts.task import DefaultMatrix
from .simulate import check_simulate, search_simulated

Task = Any  # a diffhpo.bench.contracts.task.Task; bench/ names tasks only through the registry


@dataclass
class RunSpec:
    tasks: list[str]
    methods: list[str]
    seeds: list[int] | None  # None: each task's default_seeds, from seed_start
    profile: str = "quick"
    out: Path = Path("results")
    storage: str | None = None
    budget: float | None = None
    time_budget: float | None = None
    task_options: dict[str, str] = field(default_factory=dict)
    method_options: dict[str, dict[str, str]] = field(default_factory=dict)
    progress: bool = True
    workers: int = 1
    heartbeat: float | None = None
    create_only: bool = False
    seed_start: int = 0
    simulate_workers: int | None = None  # simulated asynchronous workers (bench/simulate.py)
    # The default matrix (`diffhpo run` without --task): each task's ``default_matrix`` entry
    # for the profile applies (its options under the user's, its pruners=False).
    default_matrix: bool = False

    def seeds_for(self, task: Task) -> list[int]:
        """The seeds of ``task``'s cells: the given ones, or the task's ``default_seeds``
        (the surrogates 20, the known-answer tasks 10, the real MNIST tasks 1) from ``seed_start``."""
        if self.seeds is not None:
            return list(self.seeds)
        return list(range(self.seed_start, self.seed_start + int(getattr(task, "default_seeds", 1))))

    def matrix_entry(self, task: type[Task] | Task) -> DefaultMatrix | None:
        """``task``'s :class:`~diffhpo.bench.contracts.task.DefaultMatrix` for this run (None:
        not the default matrix, or the task runs the same cells there)."""
        if not self.default_matrix:
            return None
        return dict(getattr(task, "default_matrix", {}) or {}).get(self.profile)

    def matrix_options(self, entry: DefaultMatrix | None) -> dict[str, Any]:
        """The options of ``entry`` that apply: those the user did not give (``--option``; and
        ``budget`` where ``--budget`` is given)."""
        return {k: v for k, v in (entry.options.items() if entry else ())
                if k not in self.task_options and not (k == "budget" and self.budget is not None)}


@dataclass
class CellOutcome:
    study_name: str
    status: str
    spent: float
    n_trials: int


def build_tasks(spec: RunSpec) -> dict[str, Task]:
    """Every task of the matrix with its options checked, then each task's
    :meth:`~diffhpo.bench.contracts.task.Task.check_ready` (data, weights, drivers, devices): a
    missing piece stops the run here, before any cell spends budget.

    In the default matrix a task's ``default_matrix`` options come first and the user's
    ``--option`` values override them (``--budget`` overrides a ``budget`` there); only the
    user's count as given (:attr:`~diffhpo.bench.contracts.task.Task.given_options`). Each task
    keeps its entry as ``matrix_entry`` (None outside the default matrix), which
    :func:`skip_reason` reads."""
    tasks = {}
    for name in spec.tasks:
        cls = TASKS.get(name)
        entry = spec.matrix_entry(cls)
        task = cls(spec.profile, **spec.matrix_options(entry), **spec.task_options)
        task.given_options = frozenset(spec.task_options)
        task.matrix_entry = entry
        tasks[name] = task
    for task in tasks.values():
        task.check_ready()
    return tasks


def default_matrix_lines(spec: RunSpec, tasks: Mapping[str, Task]) -> list[str]:
    """One line per task whose default-matrix cells differ from ``-t NAME``'s (what the
    run's first lines say)."""
    lines = []
    for name, task in tasks.items():
        entry = getattr(task, "matrix_entry", None)
        if entry is None:
            continue
        kept = spec.matrix_options(entry)
        parts = [", ".join(f"{k}={v}" for k, v in kept.items())] if kept else []
        if not entry.pruners:
            parts.append("no pruning methods")
        if parts:
            lines.append(f"default matrix: {name} runs with {'; '.join(parts)} ({entry.why}; "
                         f"`diffhpo run -t {name}` runs the full cells)")
    return lines


def check_spec(spec: RunSpec) -> dict[str, Method]:
    """Every value of the run checked before anything runs; the methods by name."""
    check_seeds(spec.seeds if spec.seeds is not None else [spec.seed_start, spec.seed_start + 9])
    for what, value in (("--budget", spec.budget), ("--time-budget", spec.time_budget),
                        ("--heartbeat", spec.heartbeat)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise DiffhpoError(f"{what} must be a positive finite number, got {value:g}")
    if spec.budget is not None and "budget" in spec.task_options:
        raise DiffhpoError(f"--budget {spec.budget:g} and --option budget={spec.task_options['budget']} both set the "
                           "budget per cell; give one of them")
    if spec.workers < 1:
        raise DiffhpoError(f"--workers must be at least 1, got {spec.workers}")
    check_simulate(spec.simulate_workers, spec.tasks, TASKS, spec.workers)
    if spec.storage is not None:
        st.check_url(spec.storage)
    if spec.workers > 1 and (spec.storage or "sqlite").startswith("sqlite"):
        raise DiffhpoError(
            "--workers needs a storage several processes can share: SQLite is single-process; "
            "use --storage journal:///FILE (one machine) or postgresql://... (several machines)"
        )
    methods = {name: METHODS.get(name) for name in spec.methods}
    _check_method_options(spec, methods)
    check_folders({"output folder": spec.out})
    return methods


def check_folders(folders: Mapping[str, Path]) -> None:
    """Every folder a run writes, checked before any cell (nothing is created here): the
    given ones (``--out``, which also holds the single loop's state under ``work/``), the
    diffhpo cache (``$DIFFHPO_CACHE``, else ``~/.cache/diffhpo``) and matplotlib's config
    folder. A folder that cannot be made or written is refused with one line naming it; for
    matplotlib's *default* folder (under an unwritable HOME) the choice is to point
    ``MPLCONFIGDIR`` into the diffhpo cache instead, which matplotlib would otherwise replace
    by a temporary folder with a warning on stderr (an ``MPLCONFIGDIR`` set by the user is
    checked like the others)."""
    from .toolkit.cache import cache_root

    todo = {**folders, "diffhpo cache ($DIFFHPO_CACHE, default ~/.cache/diffhpo)": cache_root()}
    mpl = os.environ.get("MPLCONFIGDIR")
    if mpl:
        todo["matplotlib's config folder ($MPLCONFIGDIR)"] = Path(mpl)
    for what, folder in todo.items():
        why = st.unwritable(Path(folder))
        if why:
            raise DiffhpoError(f"{what} {str(folder)!r} is not writable: {why}; nothing was run")
    if not mpl:  # matplotlib's defaults (MPLCONFIGDIR replaces both): config and cache folders
        defaults = [Path(os.environ.get(var) or Path.home() / sub) / "matplotlib"
                    for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"))]
        if any(st.unwritable(d) for d in defaults):
            os.environ["MPLCONFIGDIR"] = str(cache_root() / "matplotlib")


def run_matrix(spec: RunSpec, *, log: Callable[[str], None] = print,
               tasks: Mapping[str, Task] | None = None) -> list[CellOutcome]:
    """Run (or resume) every cell of the matrix in order: task, then seed, then method.

    Everything that can be checked is checked before the first cell: options, seeds,
    budgets, the storage URL and every task's :meth:`check_ready`. A cell whose search
    completed no trial, or whose final protocol raised, is reported in its outcome's
    status (``failed: ...``) and the matrix goes on. ``tasks``: the tasks already built
    (and checked) by :func:`build_tasks`."""
    methods = check_spec(spec)
    tasks = dict(tasks) if tasks is not None else build_tasks(spec)
    check_applies(tasks, methods)
    check_options_act(spec, tasks, methods)
    url = spec.storage if spec.storage is not None else st.default_url(st.ensure_writable(spec.out))
    outcomes = []
    with workers.sqlite_lock(url), st.storage_errors(url), st.opened(url, heartbeat=spec.heartbeat) as storage:
        for line in default_matrix_lines(spec, tasks):
            log(line)
        planned = []  # (task, method name, method, seed) of every cell that applies
        for task_name, task in tasks.items():
            seeds = spec.seeds_for(task)
            check_seeds(seeds)
            for seed in seeds:
                for method_name, method in methods.items():
                    why = skip_reason(task, method)
                    if why:
                        if seed == seeds[0]:
                            log(f"{task_name}.{method_name}: skipped ({why})")
                        continue
                    planned.append((task, method_name, method, seed))
        # Every cell's stored settings checked before the first is created or changed: a
        # refused rerun leaves the storage as it was.
        for task, method_name, method, seed in planned:
            name, attrs = _described(task, method_name, method, seed, spec.budget, spec.time_budget,
                                     spec.method_options.get(method_name, {}), spec.simulate_workers)
            _check_stored(name, _stored_attrs(storage, name), attrs)
        cells = [prepare_cell(storage, task, method_name, method, seed, budget=spec.budget,
                              time_budget=spec.time_budget, method_options=spec.method_options.get(method_name, {}),
                              workdir=spec.out / "work", simulate_workers=spec.simulate_workers)
                 for task, method_name, method, seed in planned]
        per_task = ", ".join(f"{name} {len(spec.seeds_for(t))}" for name, t in tasks.items())
        log(f"diffhpo run: {len(cells)} cell(s) ({len(tasks)} task(s) x {len(methods)} method(s); seeds: {per_task}), "
            f"profile {spec.profile}, storage {st.shown(url)}")
        for cell in cells:
            if spec.create_only:
                log(f"{cell.study.study_name}: created in {st.shown(url)}")
                continue
            outcome = run_cell(cell, url=url, n_workers=spec.workers, progress=spec.progress,
                               exclusive=url.startswith("sqlite"), heartbeat=spec.heartbeat)
            log(f"{outcome.study_name}: {outcome.status} ({outcome.n_trials} trials, cost {outcome.spent:g})")
            outcomes.append(outcome)
        if not spec.create_only:
            _log_failures([c.study for c in cells], log)
    return outcomes


def check_applies(tasks: Mapping[str, Task], methods: Mapping[str, Method]) -> None:
    """Refuse a matrix in which no method applies to any task (:func:`skip_reason`), before
    the output folder or the storage is created: such a run would do nothing and exit 0."""
    skipped = {(t, m): skip_reason(task, method) for t, task in tasks.items() for m, method in methods.items()}
    if skipped and all(skipped.values()):
        groups: dict[tuple[str, str], list[str]] = {}
        for (t, m), reason in skipped.items():
            groups.setdefault((t, reason), []).append(m)
        why = "; ".join(f"{', '.join(ms)} on {t}: {reason}" for (t, reason), ms in groups.items())
        raise DiffhpoError(f"nothing to run: no method of --method applies to any task of --task ({why}); "
                           "nothing written")


def check_options_act(spec: RunSpec, tasks: Mapping[str, Task], methods: Mapping[str, Method]) -> None:
    """Refuse a ``--method-option`` that acts on no task of the matrix the method applies to
    (the method's options declare it with ``inert_on(task, given)``), before anything is made."""
    for name, raw in spec.method_options.items():
        declared = methods[name].options
        if not raw or not isinstance(declared, type) or not hasattr(declared, "inert_on"):
            continue
        config = opt.apply(f"method {name!r}", declared(), raw)
        given = frozenset(raw)
        applies = [t for t in tasks.values() if not skip_reason(t, methods[name])]
        inert = [dict(config.inert_on(t, given)) for t in applies]
        for key in sorted(given):
            if applies and all(key in why for why in inert):
                reasons = "; ".join(f"on {t.name}: {why[key]}" for t, why in zip(applies, inert))
                raise DiffhpoError(f"method {name!r}: option {key}={raw[key]} has no effect on any task of the "
                                   f"matrix ({reasons}); leave it out")


def skip_reason(task: Task, method: Method) -> str | None:
    """Why ``method`` does not apply to ``task`` (None: it applies)."""
    if task.search_space_for(method.space) is None:
        return f"the task has no {method.space!r} search space"
    if method.make_pruner is not None and not task.has_fidelity:
        return "a pruning method, and the task has no fidelity: its lower-level solve reports no progress"
    entry = getattr(task, "matrix_entry", None)  # set by build_tasks in the default matrix
    if method.make_pruner is not None and entry is not None and not entry.pruners:
        return "a pruning method, left out of this task's cells in the default matrix"
    return None


def _log_failures(studies: list[optuna.Study], log: Callable[[str], None]) -> None:
    """Failed trials of the run's cells, counted per reason (first line, 100 characters)."""
    reasons: dict[str, int] = {}
    for study in studies:
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            reason = str(t.user_attrs.get("fail_reason", "unknown")).strip().splitlines()[0][:100]
            reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        log("failed trials by reason: " + "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])))


def _check_method_options(spec: RunSpec, methods: Mapping[str, Method]) -> None:
    for name, opts in spec.method_options.items():
        if name not in methods:
            raise DiffhpoError(f"--method-option for {name!r}, which is not in --method")
        checked_method_options(name, methods[name], opts)


def checked_method_options(name: str, method: Method, raw: Mapping[str, Any]) -> dict[str, Any]:
    """A method's ``--method-option`` values, converted and checked against its declared
    options (:mod:`diffhpo.bench.contracts.options`); only the keys given are returned."""
    declared = method.options
    if not isinstance(declared, type):  # a plug-in naming its keys only: numbers where they parse
        for key in raw:
            if key not in declared:
                raise DiffhpoError(
                    f"method {name!r} has no option {key!r}; valid options: {', '.join(declared) or 'none'}"
                )
        return {k: _number_or_text(v) for k, v in raw.items()}
    checked = opt.apply(f"method {name!r}", declared(), raw)
    return {k: getattr(checked, k) for k in raw}


def resolved_method_settings(name: str, method: Method, raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """Every setting the method will use (declared options, given or not, after its
    ``resolved`` hook: a preset's values, the defaults of this version), as stored with a
    new cell (``method_settings``) so that a rerun under changed defaults is refused instead
    of continuing the trajectory under another rule (issue 27). None for a plug-in that
    declares only option names."""
    declared = method.options
    if not isinstance(declared, type):
        return None
    import dataclasses

    checked = opt.apply(f"method {name!r}", declared(), raw)
    return json.loads(json.dumps(dataclasses.asdict(checked), default=str))


def _number_or_text(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _cell_attrs(task: Task, method_name: str, seed: int, budget: float, time_budget, method_options,
                settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = {
        st.CELL_MARK: True,
        "task": task.name,
        "method": method_name,
        "seed": seed,
        "profile": task.profile,
        "budget": budget,
        "time_budget": time_budget,
        "method_options": dict(method_options),
        "cost_unit": task.cost_unit,
        "primary": task.primary.name,
        "metric_directions": {m.name: m.direction for m in task.metrics},
        "config": json.loads(json.dumps(task.describe_config(), default=str)),
        "optimum": task.known_optimum(),
    }
    if settings is not None:
        out["method_settings"] = dict(settings)
    return out


def _described(task: Task, method_name: str, method: Method, seed: int, budget: float | None,
               time_budget: float | None, method_options: Mapping[str, str] | None,
               simulate_workers: int | None = None) -> tuple[str, dict[str, Any]]:
    """The cell's study name and the description it is stored with (:func:`_cell_attrs`;
    ``simulated_workers`` where the cell runs on simulated workers)."""
    budget = float(budget if budget is not None else task.budget)
    options = checked_method_options(method_name, method, method_options or {})
    settings = resolved_method_settings(method_name, method, method_options or {})
    attrs = _cell_attrs(task, method_name, seed, budget, time_budget, options, settings)
    if simulate_workers is not None:
        attrs["simulated_workers"] = int(simulate_workers)
    return st.study_name(task.name, method_name, task.profile, seed), attrs


def _stored_attrs(storage: BaseStorage, name: str) -> dict[str, Any]:
    """The user attributes of study ``name`` (empty when there is none), read without
    creating it."""
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    except KeyError:
        return {}


def _check_stored(name: str, old: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
    """Refuse to continue cell ``name``, stored with ``old``, under the settings ``attrs``
    (the task's settings must be equal; the rest: :func:`_check_rerun`). A study not yet
    marked as a cell (new, or its description cut short) is not compared."""
    if not old.get(st.CELL_MARK):
        return
    if old.get("config") != attrs["config"]:
        raise DiffhpoError(
            f"study {name!r} already exists in this storage with other task settings "
            f"({_config_changes(old.get('config') or {}, attrs['config'])}); "
            "use another --out or --storage, or the same --option values as before"
        )
    _check_rerun(name, old, attrs)


def _check_rerun(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """A rerun continues a cell under the settings it was created with. Method options
    never change: a cell that records every setting its method used (``method_settings``,
    :func:`resolved_method_settings`) is compared on those, so a rerun under other defaults
    (another default step rule, say) is refused naming both values and the options that
    restore the stored ones; an older cell without that record (or a plug-in's) is compared
    on the options given, as before (it resumes under the current defaults). The budget
    (and the time budget) may grow, which extends the search and
    repeats the final protocol, but never shrink, which would label more trials than the
    budget allows with the smaller one."""
    if old.get("simulated_workers") != new.get("simulated_workers"):
        def how(n):
            return "without --simulate-workers" if n is None else f"with --simulate-workers {n}"
        raise DiffhpoError(
            f"study {name!r} was run {how(old.get('simulated_workers'))}, not {how(new.get('simulated_workers'))}; "
            "rerun with the stored value, or use another --out or --storage"
        )
    before, now = old.get("method_settings"), new.get("method_settings")
    if before is not None and now is not None:  # both record every setting: compare what is used
        if before != now:
            keys = sorted(k for k in {**before, **now} if before.get(k) != now.get(k))
            stored = " ".join(f"{k}={_setting(before.get(k))}" for k in keys)
            given = " ".join(f"{k}={_setting(now.get(k))}" for k in keys)
            method = new.get("method", old.get("method"))
            fix = " ".join(f"--method-option {method}.{k}={_setting(before.get(k))}" for k in keys)
            raise DiffhpoError(
                f"study {name!r} was run with --method-option {_shown('method_options', old.get('method_options'))}, "
                f"which resolved to {stored}; now {given}; rerun with {fix}, or use another --out or --storage"
            )
    elif old.get("method_options", {}) != new["method_options"]:  # a cell stored before the record (or a plug-in)
        raise DiffhpoError(
            f"study {name!r} was run with --method-option {_shown('method_options', old.get('method_options'))}, "
            f"not {_shown('method_options', new['method_options'])}; rerun with the stored values, "
            "or use another --out or --storage"
        )
    for key, flag in (("budget", "--budget"), ("time_budget", "--time-budget")):
        before, now = old.get(key), new[key]
        if before != now and (now is not None and before is not None and now < before
                              or (now is not None) != (before is not None)):
            raise DiffhpoError(
                f"study {name!r} was run with {flag} {_shown(key, before)}; a rerun may keep or raise it, "
                f"not set {_shown(key, now)} (use another --out or --storage for a smaller budget)"
            )


def prepare_cell(
    storage: BaseStorage,
    task: Task,
    method_name: str,
    method: Method,
    seed: int,
    *,
    budget: float | None = None,
    time_budget: float | None = None,
    method_options: Mapping[str, str] | None = None,
    workdir: Path | None = None,
    simulate_workers: int | None = None,
) -> Cell:
    """Create (or reopen) the cell's study with its description, and its sampler. A cell
    stored with other settings is refused (:func:`_check_stored`) before anything is
    written to it; :func:`run_matrix` checks every cell so before it creates the first."""
    budget = float(budget if budget is not None else task.budget)
    options = checked_method_options(method_name, method, method_options or {})
    name, attrs = _described(task, method_name, method, seed, budget, time_budget, method_options, simulate_workers)
    _check_stored(name, _stored_attrs(storage, name), attrs)
    space = task.search_space_for(method.space)
    if space is None:
        raise DiffhpoError(f"method {method_name!r} needs a {method.space!r} search space, which task {task.name!r} lacks")
    ctx = MethodContext(task=task, search_space=space, grid=task.default_grid_for(method.space) or {}, seed=seed,
                        budget=budget, options=options)
    sampler = seeded(method.make_sampler(ctx), seed)  # slot-true, also a plain sampler of an external method
    # No pruner: NopPruner, not create_study's default (MedianPruner would stop the trials of
    # every method on a task that reports intermediate values).
    pruner = CountedTrialsPruner(method.make_pruner(ctx)) if method.make_pruner is not None else optuna.pruners.NopPruner()
    study = optuna.create_study(storage=storage, study_name=name, direction=task.primary.direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    old = study.user_attrs
    if old.get(st.CELL_MARK):
        if study.user_attrs.get("status") == "done" and (old.get("budget") != attrs["budget"]
                                                        or old.get("time_budget") != attrs["time_budget"]):
            study.set_user_attr("status", "searching")  # a larger budget: search on, final protocol again
    # Each attribute is its own commit: the cell mark goes last, so a process killed while
    # describing the study leaves it unmarked, and the next run completes the description
    # instead of comparing against a half-written one.
    if old.get(st.CELL_MARK) and "method_settings" not in old:
        attrs.pop("method_settings", None)  # a cell stored before the record: its settings are not known
    for key, value in sorted(attrs.items(), key=lambda kv: kv[0] == st.CELL_MARK):
        if old.get(key) != value:
            study.set_user_attr(key, value)
    return Cell(study=study, task=task, method_name=method_name, method=method, ctx=ctx, sampler=sampler,
                seed=seed, budget=budget, time_budget=time_budget, workdir=workdir)


def _config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The task settings a rerun would change, each as ``--option KEY=stored (now given)``."""
    def text(v: Any) -> str:
        return "(none)" if v is None else ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    keys = [k for k in {**old, **new} if old.get(k) != new.get(k)]
    return "; ".join(f"stored --option {k}={text(old.get(k))}, now {text(new.get(k))}" for k in keys)


def _setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(key: str, value: Any) -> str:
    if key == "method_options":
        return " ".join(f"{k}={v}" for k, v in sorted((value or {}).items())) or "(none)"
    return "(none)" if value is None else f"{value:g}"


def run_cell(cell: Cell, *, url: str, n_workers: int = 1, progress: bool = True, exclusive: bool = True,
             heartbeat: float | None = None) -> CellOutcome:
    """Search (in this process or in ``n_workers`` worker processes), then the final protocol."""
    study = cell.study
    workers.clear_stale_claim(study)
    led = ledger(study.get_trials(deepcopy=False))
    if study.user_attrs.get("status") == "done" and search_over(cell, led):
        return CellOutcome(study.study_name, "done (skipped)", led.spent, len(study.trials))
    simulated = study.user_attrs.get("simulated_workers")
    if simulated is not None:
        return finish_cell(cell, search_simulated(cell, int(simulated), progress=progress))
    if n_workers > 1:
        _spawn_workers(url, study.study_name, n_workers, cell.workdir, heartbeat)
    try:
        led = search(cell, exclusive=exclusive, progress=progress)  # finishes what crashed workers left
    except EnvironmentStop as stop:
        return _stopped(cell, stop)
    return finish_cell(cell, led)


def _stopped(cell: Cell, stop: EnvironmentStop) -> CellOutcome:
    """A cell whose search stopped for a cause outside its configuration: its status says
    so and the next run searches it again (only a ``done`` cell is skipped)."""
    study = cell.study
    status = f"failed: {stop} (fix it and rerun: the cell is retried)"
    study.set_user_attr("status", status)
    led = ledger(study.get_trials(deepcopy=False))
    return CellOutcome(study.study_name, status, led.spent, len(study.trials))


def finish_cell(cell: Cell, led) -> CellOutcome:
    """The final protocol, run by exactly one process (see :func:`workers.claim_final`)."""
    study = cell.study
    n = len(study.trials)
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        study.set_user_attr("status", "failed: no trial completed")
        return CellOutcome(study.study_name, "failed: no trial completed", led.spent, n)
    with workers.claim_final(study) as mine:
        if not mine:
            return CellOutcome(study.study_name, "searched (another process runs the final protocol)", led.spent, n)
        if study._storage.get_study_user_attrs(study._study_id).get("status") == "done":
            return CellOutcome(study.study_name, "done (skipped)", led.spent, n)
        try:
            fresh(study)  # the trials as stored now, not as this worker saw them when it joined
            _final_protocol(cell)
        except (KeyboardInterrupt, DiffhpoError):
            raise
        except Exception as exc:  # the matrix goes on; the run exits non-zero at the end
            status = f"failed: final protocol: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            study.set_user_attr("status", status)
            return CellOutcome(study.study_name, status, led.spent, n)
    return CellOutcome(study.study_name, "done", led.spent, n)


def _spawn_workers(url: str, study_name: str, n: int, workdir: Path | None, heartbeat: float | None) -> None:
    cmd = [sys.executable, "-m", "diffhpo", "worker", "--storage", url, "--study", study_name,
           "--no-final", "--no-progress"]
    if workdir is not None:
        cmd += ["--workdir", str(workdir)]
    if heartbeat is not None:
        cmd += ["--heartbeat", str(heartbeat)]
    procs = [subprocess.Popen(cmd, env=dict(os.environ)) for _ in range(n)]
    try:
        for p in procs:
            p.wait()
    except BaseException:
        for p in procs:
            p.terminate()
        raise


def join_cell(url: str, study_name: str, *, final: bool = True, progress: bool = True,
              workdir: Path | None = None, heartbeat: float | None = None) -> CellOutcome:
    """`diffhpo worker`: join an existing cell, rebuilding task and method from the study."""
    with st.storage_errors(url), st.opened(url, heartbeat=heartbeat, existing=True) as storage:
        return _join_cell(storage, url, study_name, final=final, progress=progress, workdir=workdir)


def join_matrix(url: str, *, tasks: list[str] | None = None, methods: list[str] | None = None,
                profiles: list[str] | None = None, final: bool = True, progress: bool = True,
                workdir: Path | None = None, heartbeat: float | None = None,
                log: Callable[[str], None] = print) -> list[CellOutcome]:
    """`diffhpo worker` without ``--study``: work on the matrix stored at ``url`` (its cells
    among ``tasks``, ``methods`` and ``profiles`` where given) until no cell is left for it.

    The worker takes one cell (:func:`next_cell`) and searches it with :func:`_join_cell`.
    It leaves the cell as soon as the cell has no room for a trial of its own while other
    workers' trials run there (the cell's budget is taken, though not yet spent): waiting
    there would idle it for up to one trial, at the end of every cell, while other cells
    have room (measured: README, "How many workers each option held"). The worker whose
    trial ends last finds the search over and nothing running, and runs the final protocol
    when it wins the claim (:func:`workers.claim_final`; with ``final`` False it leaves it).
    A cell left full is not visited: :func:`next_cell` offers it again only once it has
    room (a running trial was cut off and its copy waits), and not within ``WAIT_S`` of
    leaving it. Each cell is searched exactly as by ``diffhpo worker --study`` (same budget
    accounting, heartbeats, retries by slot), so the guarantees hold across cells. Once a
    worker's search of a cell is over, whatever it found there (done, searched with the
    final protocol claimed by another process, failed), it does not come back, so a failed
    cell or a final protocol held by a process on another host never keeps it looping. It
    returns once every matching cell is done or visited, and waits (looking again each
    ``WAIT_S``) while the only unfinished cells are full; while waiting it fails and
    retries their cut-off trials (:func:`_sweep`). Tasks are built once per worker and
    reused across its cells.

    A matching set with no cell at all is refused before any work (one ``error:`` line)."""
    with st.storage_errors(url), st.opened(url, heartbeat=heartbeat, existing=True) as storage:
        filters = dict(tasks=tasks, methods=methods, profiles=profiles)
        if not st.cell_studies(storage, **filters):
            given = "; ".join(f"--{k.rstrip('s')} {','.join(v)}" for k, v in filters.items() if v)
            raise DiffhpoError(f"storage {st.shown(url)!r} holds no diffhpo cells"
                               + (f" matching {given}" if given else "")
                               + "; create them with `diffhpo run --storage URL ... --create-only`")
        visited: set[str] = set()
        outcomes: list[CellOutcome] = []
        built: dict = {}
        left_at: dict[str, float] = {}  # cells this worker left full, and when
        while True:
            now = time.monotonic()
            resting = {n for n, t in left_at.items() if now - t < WAIT_S}
            name, left = next_cell(storage, visited | resting, **filters)
            if name is None:
                if not left and not resting:
                    return outcomes
                _sweep(storage, visited, filters)
                time.sleep(WAIT_S)  # every unfinished cell is full: its last trials run elsewhere
                continue
            outcome = _join_cell(storage, url, name, final=final, progress=progress, workdir=workdir,
                                 leave_full=True, tasks=built)
            if outcome.status == LEFT:  # not visited: offered again once it has room (a trial cut off)
                left_at[name] = time.monotonic()
            else:
                visited.add(name)
                log(f"{outcome.study_name}: {outcome.status} ({outcome.n_trials} trials, cost {outcome.spent:g})")
                outcomes.append(outcome)
            if left_at:  # back from a cell: sweep the cells it left, which no worker may be in
                _sweep(storage, visited, filters, only=left_at)


WAIT_S = 1.0  # a matrix worker with no open cell looks again after this long
LEFT = "left"  # a matrix worker's outcome of a cell whose budget other workers' running trials hold


def _sweep(storage: BaseStorage, visited: set[str], filters: Mapping[str, Any],
           only: Collection[str] | None = None) -> None:
    """Fail (and retry) the cut-off trials of the unfinished cells (among ``only`` where
    given), as a worker searching them would: stale heartbeats, processes of this host that
    are gone (:func:`workers.fail_orphans`). A cell whose last trials were cut off has no
    room and no worker, so without this sweep the matrix workers would wait for it forever;
    a worker also sweeps the cells it left full each time it comes back from a cell, so that
    such a trial is retried while other cells still run, not only at the matrix's end."""
    for summary in st.cell_studies(storage, **filters):
        if summary.study_name in visited or summary.user_attrs.get("status") == "done":
            continue
        if only is not None and summary.study_name not in only:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
        if is_heartbeat_enabled(storage):
            optuna.storages.fail_stale_trials(study)
        workers.fail_orphans(study, exclusive=False)


def next_cell(storage: BaseStorage, visited: set[str] = frozenset(), **filters) -> tuple[str | None, int]:
    """The cell a matrix worker takes next, and the number of unfinished cells left to it.

    Assignment rule (the aim: every worker busy until the end of the matrix):

    1. Only cells not done, not visited by this worker, and not on simulated workers.
    2. A cell is *open* when it has room for one more trial: its budget minus the spent
       cost minus the expected cost of its running trials is positive
       (:func:`~diffhpo.bench.search.ledger`), or nothing runs in it (a search whose
       budget is spent but whose final protocol is pending is open too). A *sequential*
       cell (a method with ``uses_oracle``, the bilevel methods, whose outer iterations
       run one after another) is open only while no trial of it runs: a second worker
       would only wait there.
    3. Among open cells: sequential cells first (their chain of iterations cannot be
       shortened by more workers, so it is started as early as possible), then the most
       remaining cost (budget minus spent and running cost, in the cell's cost unit),
       then the name (a fixed order, the same in every worker).

    The remaining cost is an estimate from the stored trials; grid cells end earlier at
    their grid's size, which the worker finds when it joins. ``None`` when no cell is
    open: the caller waits while unfinished cells are left, and stops when none are."""
    best, key_best, left = None, None, 0
    for summary in st.cell_studies(storage, **filters):
        a = summary.user_attrs
        name = summary.study_name
        if name in visited or a.get("status") == "done" or a.get("simulated_workers") is not None:
            continue
        left += 1
        trials = storage.get_all_trials(summary._study_id, deepcopy=False)
        led = ledger(trials)
        remaining = float(a.get("budget", 0.0)) - led.spent - led.running_cost
        try:
            sequential = bool(METHODS.get(a.get("method")).uses_oracle)
        except DiffhpoError:  # a method not installed here: _join_cell names the problem
            sequential = False
        room = remaining > 0 and not (sequential and led.n_running)
        if not (room or led.n_running == 0):
            continue
        key = (not sequential, -remaining, name)
        if key_best is None or key < key_best:
            best, key_best = name, key
    return best, left


def _join_cell(storage: BaseStorage, url: str, study_name: str, *, final: bool, progress: bool,
               workdir: Path | None, leave_full: bool = False, tasks: dict | None = None) -> CellOutcome:
    """Search one stored cell (:func:`~diffhpo.bench.search.search`), then run its final
    protocol where this process wins the claim. ``leave_full``: return ``left`` as soon as
    the cell has no room while other workers' trials run in it. ``tasks``: the tasks this
    worker built, by (name, profile, options), reused across its cells as one process's
    matrix reuses them."""
    try:
        summary = next(s for s in storage.get_all_studies() if s.study_name == study_name)
    except StopIteration:
        names = [s.study_name for s in st.cell_studies(storage)]
        raise DiffhpoError(
            f"no study {study_name!r} in {st.shown(url)!r}; create it with `diffhpo run` first "
            f"(studies there: {', '.join(names) or 'none'})"
        ) from None
    a = summary.user_attrs
    if not a.get(st.CELL_MARK):
        raise DiffhpoError(f"study {study_name!r} is not a diffhpo cell")
    if a.get("simulated_workers") is not None:
        raise DiffhpoError(f"study {study_name!r} runs on simulated workers in one process; resume it with `diffhpo run`")
    check_folders({"--workdir": workdir} if workdir is not None else {})
    key = json.dumps([a["task"], a["profile"], a["config"]], sort_keys=True, default=str)
    task = (tasks or {}).get(key)
    if task is None:
        task = TASKS.get(a["task"])(a["profile"], **a["config"])
        task.check_ready()
        if tasks is not None:
            tasks[key] = task
    cell = prepare_cell(storage, task, a["method"], METHODS.get(a["method"]), int(a["seed"]),
                        budget=a["budget"], time_budget=a.get("time_budget"),
                        method_options=a.get("method_options", {}), workdir=workdir)
    with workers.sqlite_lock(url):
        try:
            led = search(cell, exclusive=url.startswith("sqlite"), progress=progress, leave_full=leave_full)
        except EnvironmentStop as stop:
            return _stopped(cell, stop)
    if led.n_running:  # left: the last of the other workers' trials finishes the cell
        return CellOutcome(study_name, LEFT, led.spent, len(cell.study.trials))
    if final and cell.study.user_attrs.get("status") != "done":
        return finish_cell(cell, led)
    return CellOutcome(study_name, "searched", led.spent, len(cell.study.trials))


def _final_protocol(cell: Cell) -> None:
    """Re-evaluate the method's choice under the task's final protocol, ``task.final_repeats``
    times on independent lower-level seeds (:func:`~diffhpo.bench.contracts.seeds.final_seeds`): the
    stored ``final_metrics`` are the means, ``final_metrics_std`` the spreads (sample std).
    Each finished repeat is stored at once, so an interrupted final protocol resumes.
    ``final_worker`` records the process that ran it (host:pid, device) and its start and end
    (Unix seconds; a resumed final protocol: this process's part)."""
    study, task, method, seed = cell.study, cell.task, cell.method, cell.seed
    params = method.choose(study) if method.choose is not None else dict(study.best_trial.params)
    params = {k: (v if isinstance(v, (int, str)) else float(v)) for k, v in params.items()}
    seeds = final_seeds(seed, task.final_repeats)
    partial = study.user_attrs.get("final_partial") or {}
    started = time.time()
    runs = list(partial.get("runs", [])) if partial.get("params") == params else []
    measured = list(partial.get("measures", [])) if runs else []
    for s in seeds[len(runs):]:
        hooks.pause("final", study.study_name, f"repeat {len(runs)}")
        with measure() as m:
            metrics = task.evaluate(params, s, final=True)
        runs.append({k: float(v) for k, v in metrics.items()})
        measured.append(m.as_attrs())
        study.set_user_attr("final_partial", {"params": params, "runs": runs, "measures": measured})
    keys = list(runs[0])
    mean = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    study.set_user_attr("final_params", params)
    study.set_user_attr("final_metrics", mean)
    if len(runs) > 1:
        study.set_user_attr("final_metrics_std", {k: float(np.std([r[k] for r in runs], ddof=1)) for k in keys})
        study.set_user_attr("final_runs", runs)
    study.set_user_attr("final_seed", seeds[0])
    study.set_user_attr("final_seeds", seeds)
    study.set_user_attr("final_measure", _combined(measured))
    study.set_user_attr("final_worker", {"worker": workers.worker_id(), "device": workers.device(),
                                         "start": started, "end": time.time()})
    study.set_user_attr("status", "done")


def _combined(measures: list[dict]) -> dict:
    """One measurement of several repeats: times add up, peaks are the largest."""
    out: dict = {}
    for m in measures:
        for k, v in m.items():
            if isinstance(v, (int, float)) and v == v:
                out[k] = max(out.get(k, v), v) if k.startswith("peak") else out.get(k, 0.0) + v
            else:
                out.setdefault(k, v)
    return out
