"""Recorded benchmarks: a task's real evaluations stored as a table (``diffhpo record``).

A *recording* evaluates a fixed plan of (configuration, seed) pairs with the task's own
``evaluate``, on the suite's storage, and exports the result as one table file
(:func:`export_table`) that the surrogate tasks (:mod:`diffhpo.tasks.surrogate`) replay.
The idea is that of the tabular and surrogate benchmarks of classic HPO (HPOBench, YAHPO
Gym, Syne Tune's blackbox repository): record once, answer in milliseconds afterwards.

The plan (:func:`make_plan`), deterministic in its arguments:

* ``configs`` design points: a scrambled Sobol sequence (:class:`scipy.stats.qmc.Sobol`,
  seeded by ``design_seed``) in the space's internal coordinates (log scale for log
  parameters, :mod:`diffhpo.bench.contracts.space`), or for a one-dimensional space optionally
  ``linspace`` (evenly spaced internal coordinates: log-spaced lambdas). Design point ``c`` is
  evaluated on seed ``c``: one seed per configuration, so the mean model averages over seeds
  instead of fitting one seed's landscape.
* ``K`` replicated configurations, each on the ``R`` seeds ``REPLICATE_SEED + r``: the task's
  default (a space variant's centre where the default names other parameters), then the default grid's points, then design points 0, 1, ... (duplicates dropped),
  until there are K. The same seeds for every replicated configuration (common random
  numbers): the Spearman between two seeds across these configurations is the noise ceiling of
  :mod:`benchmarks.surrogate_validation`.

Storage and resume. One Optuna study per recording (named by :func:`recording_name`) in any
suite storage. Each planned evaluation is enqueued with its plan index and asked in plan order
(one trial per evaluation, intermediate values through :func:`diffhpo.bench.contracts.fidelity.progress_reporter`,
measurements through :func:`diffhpo.bench.measure.measure`); an evaluation cut off by an
interruption is marked FAIL ``interrupted`` and done again on the next run, so a killed and
rerun recording holds the same completed evaluations as an uninterrupted one. ``--shard I/N``
takes the plan indices ``i % N == I``: N workers or machines share one storage (PostgreSQL,
MySQL) without overlapping. The exported table is rewritten every ``export_every``
evaluations and at the end; a run that finds an exported (possibly partial) table of the
same plan first loads its rows into the storage, so a long recording can be spread over
sittings from *committed* partial tables, without the storage file.

Table format: gzip-compressed CSV (``gzip`` with mtime 0, so the bytes, and the checksum, are
a function of the content). CSV rather than Parquet because ``pyarrow`` is an optional extra.
Its first line is ``# `` followed by the JSON metadata (:func:`table_metadata`: task, profile,
the task's configuration and its key, the space, metrics, checkpoints, the plan, provenance),
then one row per evaluation: ``index, config, role, seed``, ``p_<param>``, ``m_<metric>``,
``iv_<step>`` (the primary metric at step/1000 of the lower-level solve), ``state``,
``wall_s, cpu_s, peak_rss_mib``, ``git_commit, host``. Beside it ``<file>.sha256`` holds its
SHA-256 (``sha256sum`` format); :func:`load_table` refuses a file without it or not matching it.
"""

from __future__ import annotations

import itertools
import json
import math
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from .contracts import space as sp
from .contracts.errors import DiffhpoError
from .contracts.fidelity import FIDELITY_STEPS, progress_reporter
from .measure import measure
# the table format lives on the toolkit floor; re-exported here for `rec.load_table` and the like
from .provenance import git_commit, provenance
# the table format lives on the toolkit floor; re-exported here for `rec.load_table` and the like
from .toolkit.recordings import (  # noqa: F401
    FORMAT, MAX_FILE_BYTES, REPLICATE_SEED, TABLES_DIR, Table, check_table_for, checkpoints_of, default_table_path,
    load_table, recording_name, sha256_file, space_json, table_meta, table_stem, task_version, write_table)

PLAN_KEY = "record_index"
ROLES = ("design", "default", "grid")


@dataclass(frozen=True)
class Planned:
    index: int
    config: int  # configuration number (0..configs-1: design points; then the extra replicated ones)
    role: str
    params: dict[str, Any]
    seed: int


@dataclass
class Plan:
    entries: list[Planned]
    configs: int
    replicated: int
    seeds_per_replicate: int
    design: str
    design_seed: int
    replicated_configs: list[int] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"configs": self.configs, "replicated": self.replicated, "replicate_seeds": self.seeds_per_replicate,
                "design": self.design, "design_seed": self.design_seed, "evaluations": len(self.entries),
                "replicate_seed_base": REPLICATE_SEED, "replicated_configs": self.replicated_configs}


def parse_replicates(text: str) -> tuple[int, int]:
    """``K:R`` -> (K, R), with one clear error otherwise."""
    k, sep, r = str(text).partition(":")
    try:
        kk, rr = int(k), int(r)
    except ValueError:
        kk = rr = -1
    if not sep or kk < 0 or rr < 0:
        raise DiffhpoError(f"--replicates takes K:R (K configurations on R seeds each, e.g. 20:5), got {text!r}")
    if kk == 0 or rr == 0:
        raise DiffhpoError(f"--replicates {text}: 0 replicates; give K >= 1 configurations on R >= 2 seeds (e.g. 20:5)")
    if rr < 2:
        raise DiffhpoError(f"--replicates {text}: R = {rr} seed gives no seed spread; give R >= 2 (e.g. 20:5)")
    return kk, rr


def check_space(space: Mapping[str, BaseDistribution], what: str) -> None:
    bad = [n for n, d in space.items() if not sp.is_numeric(d)]
    if not space or bad:
        raise DiffhpoError(f"{what}: only numeric search spaces can be recorded"
                           + (f" ({bad[0]!r} is not numeric)" if bad else " (the space is empty)"))


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple((n, round(float(v), 12)) for n, v in sorted(params.items()))


def make_plan(task: Any, space: Mapping[str, BaseDistribution], grid: Mapping[str, list] | None, *, configs: int,
              replicated: int, seeds: int, design: str = "sobol", design_seed: int = 0) -> Plan:
    """The deterministic list of evaluations (see the module docstring)."""
    d = len(space)
    if configs < d:
        raise DiffhpoError(f"--configs {configs} is below the space's dimension {d} ({', '.join(space)}); "
                           f"give at least {d}")
    if design not in ("sobol", "linspace"):
        raise DiffhpoError(f"unknown --design {design!r}; valid: sobol, linspace")
    if design == "linspace" and d != 1:
        raise DiffhpoError(f"--design linspace needs a one-dimensional space; this one has {d} ({', '.join(space)})")
    box = sp.bounds(space)
    if design == "sobol":
        from scipy.stats import qmc

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "balance properties ... power of 2": any n is fine for a design
            unit = qmc.Sobol(d, scramble=True, seed=int(design_seed)).random(int(configs))
    else:
        unit = np.linspace(0.0, 1.0, int(configs)).reshape(-1, 1)
    names = list(space)
    points = [{n: sp.from_internal(space[n], float(box[j, 0] + u[j] * (box[j, 1] - box[j, 0])))
               for j, n in enumerate(names)} for u in unit]
    entries = [Planned(i, i, "design", p, i) for i, p in enumerate(points)]
    # replicated configurations: the default, the grid, then design points
    default = task.default_params()
    if set(default) != set(names):  # another variant's space (weighted-sum's w): its centre
        default = sp.centre(space)
    candidates: list[tuple[str, dict, int | None]] = [("default", {n: default[n] for n in names}, None)]
    if grid:
        for combo in itertools.product(*(grid[n] for n in names)):
            candidates.append(("grid", {n: sp.snap(space[n], v) for n, v in zip(names, combo)}, None))
    candidates += [("design", p, i) for i, p in enumerate(points)]
    seen: set = set()
    chosen: list[tuple[str, dict, int | None]] = []
    design_keys = {_key(p): i for i, p in enumerate(points)}
    for role, p, i in candidates:
        k = _key(p)
        if k in seen:
            continue
        seen.add(k)
        chosen.append((role, p, i if i is not None else design_keys.get(k)))
        if len(chosen) == replicated:
            break
    replicated_configs = []
    next_config = len(points)
    for role, p, i in chosen:
        c = i if i is not None else next_config
        if i is None:
            next_config += 1
        replicated_configs.append(c)
        for r in range(int(seeds)):
            entries.append(Planned(len(entries), c, role, dict(p), REPLICATE_SEED + r))
    return Plan(entries, int(configs), len(chosen), int(seeds), design, int(design_seed), replicated_configs)


def table_metadata(task: Any, variant: str, plan: Plan, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    return {
        "format": FORMAT, "task": task.name, "profile": task.profile, "space_variant": variant,
        "task_version": task_version(task), "task_config": json.loads(json.dumps(task.describe_config(), default=str)),
        "task_options": {k: getattr(task.config, k) for k in sorted(task.given_options)},
        "space": space_json(space),
        "metrics": [{"name": m.name, "direction": m.direction} for m in task.metrics],
        "checkpoints": checkpoints_of(task), "cost_unit": task.cost_unit, "plan": plan.describe(),
    }


# -- recording -------------------------------------------------------------------------------------


def _fail_leftovers(study: optuna.Study, mine: Callable[[int], bool]) -> None:
    """Trials of an earlier run of this shard left RUNNING (killed) or WAITING: FAIL, done again."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        idx = t.system_attrs.get(PLAN_KEY, t.user_attrs.get(PLAN_KEY))
        if idx is not None and mine(int(idx)):
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted: an earlier run stopped")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def done_indices(study: optuna.Study, plan: Plan | None = None) -> dict[int, optuna.trial.FrozenTrial]:
    """Plan index -> its finished trial (COMPLETE, or FAIL with an evaluation error). With
    ``plan``, a trial counts for the entry of the same parameters and seed, whatever index it
    was recorded under: a recording whose plan grew (more design points, whose Sobol prefix is
    the same, or more replicated configurations) reuses every evaluation it already holds."""
    where = {(_key(e.params), e.seed): e.index for e in plan.entries} if plan is not None else None
    out = {}
    for t in study.get_trials(deepcopy=False):
        idx = t.user_attrs.get(PLAN_KEY)
        if idx is None:
            continue
        finished = t.state == TrialState.COMPLETE or (
            t.state == TrialState.FAIL and "evaluation_error" in t.user_attrs)
        if not finished:
            continue
        if where is not None:
            idx = where.get((_key(t.params), t.user_attrs.get("seed")))
            if idx is None:
                continue
        out[int(idx)] = t
    return out


def _import_table(study: optuna.Study, table: pd.DataFrame, meta: dict, plan: Plan,
                  space: Mapping[str, BaseDistribution], have: set[int]) -> int:
    """Rows of an exported table (an earlier sitting's) not in the storage yet: added as trials."""
    def rounded(params: Mapping[str, Any], seed: int) -> tuple:
        return tuple(sorted((n, float(f"{float(v):.8g}")) for n, v in params.items())) + (int(seed),)

    where = {rounded(e.params, e.seed): e.index for e in plan.entries}
    n = 0
    for _, row in table.iterrows():
        idx = where.get(rounded({k: row[f"p_{k}"] for k in space}, row["seed"]))
        if idx is None or idx in have:
            continue  # not in this plan (or a rounding edge case: evaluated again), or stored already
        e = plan.entries[idx]
        attrs = {PLAN_KEY: idx, "seed": e.seed, "config": e.config, "role": e.role, "imported": True}
        for c in ("wall_s", "cpu_s", "peak_rss_mib", "git_commit", "host"):
            if c in row and not (isinstance(row[c], float) and math.isnan(row[c])):
                attrs[c] = row[c].item() if hasattr(row[c], "item") else row[c]
        metrics = {c[2:]: float(row[c]) for c in row.index if c.startswith("m_") and pd.notna(row[c])}
        for k, v in metrics.items():
            attrs[f"metric_{k}"] = v
        iv = {int(c[3:]): float(row[c]) for c in row.index if c.startswith("iv_") and pd.notna(row[c])}
        primary = meta["metrics"][0]["name"]
        ok = row["state"] == "COMPLETE"
        if not ok:
            attrs["evaluation_error"] = str(row.get("error", "") or "recorded failure")
        study.add_trial(optuna.create_trial(
            state=TrialState.COMPLETE if ok else TrialState.FAIL, params=e.params,
            distributions=dict(space), value=float(metrics[primary]) if ok else None,
            intermediate_values=iv, user_attrs=attrs))
        n += 1
    return n


def record(task: Any, study: optuna.Study, plan: Plan, space: Mapping[str, BaseDistribution], *,
           shard: tuple[int, int] = (0, 1), on_done: Callable[[int], None] | None = None,
           log: Callable[[str], None] = print) -> int:
    """Evaluate every planned entry of this shard that the study does not hold yet; returns how
    many were evaluated now. ``on_done(n_done_total)`` after each evaluation (the exporter)."""
    me, of = shard
    if not isinstance(study.pruner, optuna.pruners.NopPruner):
        raise ValueError("a recording's study needs optuna.pruners.NopPruner: every evaluation runs to its end")
    mine = lambda i: i % of == me  # noqa: E731
    _fail_leftovers(study, mine)
    have = set(done_indices(study, plan))
    todo = [e for e in plan.entries if mine(e.index) and e.index not in have]
    if have:
        log(f"resuming: {len(have)} of {len(plan.entries)} evaluations stored, {len(todo)} to do in this shard")
    fidelity = bool(getattr(task, "has_fidelity", False))
    host, commit = socket.gethostname(), git_commit()
    n = 0
    for e in todo:
        study.enqueue_trial(e.params, user_attrs={PLAN_KEY: e.index}, skip_if_exists=False)
        trial = study.ask(fixed_distributions=dict(space))
        if trial.user_attrs.get(PLAN_KEY) != e.index:  # another process's enqueued trial: give it back
            raise DiffhpoError(f"recording {study.study_name!r}: trial {trial.number} is not plan entry {e.index}; "
                               "two recordings of the same shard share this storage")
        for k, v in {"seed": e.seed, "config": e.config, "role": e.role, "host": host, "git_commit": commit}.items():
            trial.set_user_attr(k, v)
        reporter, _ = progress_reporter(trial)
        try:
            with measure() as m:
                if fidelity:
                    metrics = task.evaluate(e.params, e.seed, report=reporter)
                else:
                    metrics = task.evaluate(e.params, e.seed)
        except KeyboardInterrupt:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as exc:  # the task failed here: recorded, not retried (it would fail again)
            for k, v in m.as_attrs().items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("evaluation_error", f"{type(exc).__name__}: {exc}"[:500])
            study.tell(trial, state=TrialState.FAIL)
        else:
            for k, v in m.as_attrs().items():
                trial.set_user_attr(k, v)
            for k, v in metrics.items():
                trial.set_user_attr(f"metric_{k}", float(v))
            value = float(metrics.get(task.primary.name, float("nan")))
            if math.isfinite(value):
                study.tell(trial, value)
            else:
                trial.set_user_attr("evaluation_error", f"{task.primary.name} is {value}")
                study.tell(trial, state=TrialState.FAIL)
        n += 1
        if on_done is not None:
            on_done(len(have) + n)
    return n


# -- tables ----------------------------------------------------------------------------------------


#: a reported step this close to a checkpoint's step is that checkpoint's value (1% of a solve)
CHECKPOINT_TOLERANCE = 10


def checkpoint_value(intermediate: dict[int, float], step: int) -> float:
    """The primary metric a trial reported at the checkpoint ``step`` (``round(fraction x
    FIDELITY_STEPS)``), or NaN. A task reports its *measured* progress, which rounding to whole
    training steps moves off the checkpoint: ``mnist-schedule`` quick reports its half-way FID
    at step 501 (the checkpoint falls between two of its training steps), and an exact lookup
    lost that column of its first table. The nearest reported step within
    :data:`CHECKPOINT_TOLERANCE` is taken."""
    near = [s for s in intermediate if abs(s - step) <= CHECKPOINT_TOLERANCE]
    return float(intermediate[min(near, key=lambda s: (abs(s - step), s))]) if near else float("nan")


def table_frame(study: optuna.Study, plan: Plan, meta: dict) -> pd.DataFrame:
    """One row per finished planned evaluation, in plan order."""
    names = list(meta["space"])
    metric_names = [m["name"] for m in meta["metrics"]]
    steps = [int(round(f * FIDELITY_STEPS)) for f in meta["checkpoints"]]
    rows = []
    for idx, t in sorted(done_indices(study, plan).items()):
        e = plan.entries[idx]
        row: dict[str, Any] = {"index": idx, "config": e.config, "role": e.role, "seed": e.seed}
        row.update({f"p_{n}": e.params[n] for n in names})
        row.update({f"m_{k}": t.user_attrs.get(f"metric_{k}", float("nan")) for k in metric_names})
        row.update({f"iv_{s}": checkpoint_value(t.intermediate_values, s) for s in steps})
        row["state"] = "COMPLETE" if t.state == TrialState.COMPLETE else "FAIL"
        row["error"] = t.user_attrs.get("evaluation_error", "")
        for c in ("wall_s", "cpu_s", "peak_rss_mib"):
            row[c] = t.user_attrs.get(c, float("nan"))
        row["git_commit"] = t.user_attrs.get("git_commit", "")
        row["host"] = t.user_attrs.get("host", "")
        rows.append(row)
    cols = (["index", "config", "role", "seed"] + [f"p_{n}" for n in names] + [f"m_{k}" for k in metric_names]
            + [f"iv_{s}" for s in steps] + ["state", "error", "wall_s", "cpu_s", "peak_rss_mib", "git_commit", "host"])
    return pd.DataFrame(rows, columns=cols)


def export_table(study: optuna.Study, plan: Plan, meta: dict, path: Path, *, command: str | None = None) -> str:
    frame = table_frame(study, plan, meta)
    meta = dict(meta, rows=len(frame), complete=len(frame) == len(plan.entries),
                provenance=provenance(command))
    meta["provenance"].pop("written_utc", None)  # keeps the bytes a function of the content
    return write_table(path, frame, meta)


def elapsed_since(t0: float) -> str:
    return f"{time.perf_counter() - t0:.0f} s"
