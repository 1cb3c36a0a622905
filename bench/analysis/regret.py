"""Best-so-far values at fractions of the budget, and regret.

**Value at a budget fraction.** A cell's budget fraction after trial n is the cost counted
up to and including trial n (completed trials, and trials that failed while evaluating;
not those interrupted or released) divided by the cell's budget (column
``budget_fraction`` of ``trials.csv``). The value at fraction f is the best *search*
value (the primary metric as the trials measured it) among the completed trials reached
by then, the last trial's fraction capped at 1 (the last trial may overshoot the budget;
a search stopped early, by a time budget or a finished grid, keeps its last best value).
``final`` is the final-protocol value of the cell: the chosen hyperparameters
re-evaluated with seed 1000 + seed, the same for every method. So ``25%``, ``50%`` and
``100%`` are search values on one scale (the curves use them too), and ``final`` is the
value the method delivers; they differ where evaluations are noisy.

**Estimates are not search values.** A bilevel outer iteration's value is the oracle's
estimate at its iterate where the task says so (``OracleResult.evaluated`` false): the
reward tasks' bank estimate of the upper score, or the FID of the single loop's partially
trained network. Neither is an evaluation of the configuration, and the bank estimate is
optimistic where its effective sample size is small, so those trials give no value at
25%, 50% or 100% (NaN; the ranks there leave such a method out, see
:mod:`.ranks`); the method's ``final`` value ranks as every other. ``quadratic``'s oracle
solves the lower level exactly, so its values count.

**Best value** of a task and profile: the task's exact optimum of the primary metric
(study attribute ``optimum``) where the task knows it, otherwise the best final value of
any method in the storage (``best_source`` says which). Search values can beat a best
final value on noisy tasks (the search saw a lucky seed), so regret can then be negative.

**Regret** = value - best for a minimised metric, best - value for a maximised one.
**Normalised regret** = (value - best) / (reference - best): 0 at the best value, 1 at
the reference, the final value of the ``default`` method (the task's default
hyperparameters) on the same task, profile and seed, or the median over its seeds where
that seed is missing. Without a ``default`` cell, or where the default is itself the best
value (reference = best), normalised regret is undefined (NaN) and the notes say so.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

KEYS = ["task", "profile", "method", "seed"]
AT = {"25%": 0.25, "50%": 0.5, "100%": 1.0}
FINAL = "final"
DEFAULT_METHOD = "default"
ALL_TASKS = "(all tasks)"
_EPS = 1e-9  # fractions are sums of float costs


def _maximise(direction: str) -> bool:
    return str(direction) == "maximize"


def search_path(trials: pd.DataFrame, maximise: bool) -> pd.DataFrame:
    """One cell's best-so-far search value after each completed counted trial, with its
    budget fraction (capped at 1) and cumulative search seconds (for simulated workers the
    simulated end, ``sim_end_s``). Trials whose value is an oracle's estimate (column
    ``estimate``) are not search values and are left out."""
    estimate = trials["estimate"].astype(bool) if "estimate" in trials else False
    t = trials[trials.counted.astype(bool) & (trials.state == "COMPLETE") & trials.value.notna() & ~estimate]
    # In order of the time the result was known: number order for a plain run; the simulated
    # end for simulated workers (bench/simulate.py), where the fraction is then the budget
    # handed out by the latest trial finished so far.
    t = t.sort_values(["elapsed_s", "number"], kind="stable")
    best = t.value.cummax() if maximise else t.value.cummin()
    return pd.DataFrame({
        "fraction": np.maximum.accumulate(np.minimum(t.budget_fraction.to_numpy(float), 1.0)),
        "elapsed_s": t.elapsed_s.to_numpy(float),
        "best": best.to_numpy(float),
    })


def value_at(path: pd.DataFrame, x: np.ndarray, axis: str = "fraction") -> np.ndarray:
    """Best-so-far value at each x (NaN before the first completed trial)."""
    idx = np.searchsorted(path[axis].to_numpy(float), np.asarray(x, float) + _EPS, side="right") - 1
    vals = path.best.to_numpy(float)
    return np.where(idx >= 0, vals[np.clip(idx, 0, None)] if len(vals) else np.nan, np.nan)


def _cell_trials(trials: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    if trials.empty:
        return {}
    return {k: g for k, g in trials.groupby(KEYS, sort=False)}


def points(trials: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Long frame: one row per cell and ``at`` in 25%, 50%, 100% (search values) and
    final (final-protocol value), with ``value``, ``direction`` and ``estimated`` (true at
    the search fractions of a cell whose trials are all oracle estimates: it has no search
    value by design, not for want of a trial)."""
    by_cell = _cell_trials(trials)
    rows = []
    for _, c in cells.iterrows():
        key = tuple(c[k] for k in KEYS)
        t = by_cell.get(key)
        final_col = f"final_{c.primary}"
        base = {k: c[k] for k in KEYS} | {"primary": c.primary, "direction": c.direction, "estimated": False}
        if t is not None:
            path = search_path(t, _maximise(c.direction))
            estimated = path.empty and "estimate" in t and bool(t["estimate"].astype(bool).any())
            for label, vals in zip(AT, value_at(path, np.array(list(AT.values())))):
                rows.append(base | {"at": label, "value": vals, "estimated": estimated})
        else:
            rows += [base | {"at": label, "value": np.nan} for label in AT]
        rows.append(base | {"at": FINAL, "value": float(c[final_col]) if final_col in c and pd.notna(c[final_col]) else np.nan})
    return pd.DataFrame(rows)


def references(cells: pd.DataFrame) -> pd.DataFrame:
    """Per task and profile: the best value and where it comes from, the default's
    final values, and a note where normalised regret is undefined."""
    rows = []
    for (task, profile), g in cells.groupby(["task", "profile"], sort=True):
        primary, direction = g.primary.iloc[0], g.direction.iloc[0]
        finals = g[f"final_{primary}"] if f"final_{primary}" in g else pd.Series(np.nan, index=g.index)
        optimum = g.optimum.dropna() if "optimum" in g else pd.Series(dtype=float)
        if len(optimum):
            best, source = float(optimum.iloc[0]), "known optimum"
        elif finals.notna().any():
            i = finals.idxmax() if _maximise(direction) else finals.idxmin()
            best = float(finals[i])
            source = f"best final value in the storage ({g.method[i]}, seed {g.seed[i]})"
        else:
            best, source = np.nan, "none (no final value)"
        default = g[(g.method == DEFAULT_METHOD) & finals.notna()]
        ref = float(finals[default.index].median()) if len(default) else np.nan
        if not len(default):
            note = "no `default` cell: plain regret only"
        elif np.isclose(ref, best, rtol=1e-12, atol=0.0):
            note = "the default is the best value: normalised regret undefined, plain regret only"
        else:
            note = ""
        rows.append({"task": task, "profile": profile, "primary": primary, "direction": direction,
                     "best": best, "best_source": source, "reference_median": ref,
                     "default_seeds": len(default), "note": note})
    return pd.DataFrame(rows)


def reference_of(cells: pd.DataFrame) -> pd.Series:
    """Per cell: the default's final value on the same task, profile and seed, else the
    median over the default's seeds (NaN without a default cell)."""
    refs = []
    for _, c in cells.iterrows():
        col = f"final_{c.primary}"
        d = cells[(cells.task == c.task) & (cells.profile == c.profile) & (cells.method == DEFAULT_METHOD)]
        d = d[d[col].notna()] if col in d else d.iloc[0:0]
        same = d[d.seed == c.seed]
        refs.append(float(same[col].iloc[0]) if len(same) else (float(d[col].median()) if len(d) else np.nan))
    return pd.Series(refs, index=cells.index, dtype=float)


def _regret(value, best, reference, direction):
    sign = -1.0 if _maximise(direction) else 1.0
    value, best, reference = (np.asarray(v, float) for v in (value, best, reference))
    regret = sign * (value - best)
    span = reference - best
    with np.errstate(all="ignore"):
        normalised = np.where(sign * span > 0, (value - best) / span, np.nan)
    return regret, normalised


def add_regret(pts: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """``points`` with columns best, best_source, reference, regret and normalised_regret."""
    refs = references(cells).set_index(["task", "profile"])
    cell_ref = cells[KEYS].assign(reference=reference_of(cells))
    out = pts.merge(cell_ref, on=KEYS, how="left")
    key = list(zip(out.task, out.profile))
    out["best"] = [refs.best[k] for k in key]
    out["best_source"] = [refs.best_source[k] for k in key]
    out["regret"], out["normalised_regret"] = _regret(out.value, out.best, out.reference, out.direction)
    return out


def _cell_curves(trials: pd.DataFrame, cells: pd.DataFrame, axis: str, n: int):
    """Per task and profile: (grid, kind, {method: [each seed's regret on the grid]})."""
    refs = references(cells).set_index(["task", "profile"])
    cell_ref = reference_of(cells)
    by_cell = _cell_trials(trials)
    out = {}
    for (task, profile), g in cells.groupby(["task", "profile"], sort=True):
        best = refs.best[(task, profile)]
        paths = {i: search_path(by_cell[tuple(c[k] for k in KEYS)], _maximise(c.direction))
                 for i, c in g.iterrows() if tuple(c[k] for k in KEYS) in by_cell}
        if axis == "fraction":
            grid = np.linspace(0.0, 1.0, n)
        else:
            t = [p.elapsed_s for p in paths.values() if len(p)]
            if not t:
                continue
            ts = pd.concat(t)
            grid = np.geomspace(max(float(ts.min()), 1e-6), max(float(ts.max()), 1e-6), n)
        normalised = refs.note[(task, profile)] == ""
        per_method: dict[str, list[np.ndarray]] = {}
        for i, c in g.iterrows():
            if i in paths:
                r, nr = _regret(value_at(paths[i], grid, axis), best, cell_ref[i], c.direction)
                per_method.setdefault(c.method, []).append(nr if normalised else r)
        out[(task, profile)] = (grid, "normalised" if normalised else "plain", per_method)
    return out


def _band(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN columns before every seed's first trial
        return tuple(np.nanquantile(np.array(rows), [0.25, 0.5, 0.75], axis=0))


def curves(trials: pd.DataFrame, cells: pd.DataFrame, axis: str, n: int = 101) -> pd.DataFrame:
    """Median and 25-75% band over seeds of each method's regret against ``axis``
    (``fraction`` of the budget, or ``elapsed_s`` search seconds), per task and profile.
    ``kind`` is ``normalised`` where the task has a default reference, else ``plain``."""
    rows = []
    for (task, profile), (grid, kind, per_method) in _cell_curves(trials, cells, axis, n).items():
        for method, regs in sorted(per_method.items()):
            q25, med, q75 = _band(regs)
            if np.isnan(med).all():  # no completed trial in any seed
                continue
            rows.append(pd.DataFrame({"task": task, "profile": profile, "method": method, "axis": axis, "kind": kind,
                                      "x": grid, "median": med, "q25": q25, "q75": q75, "n_seeds": len(regs)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def pooled(trials: pd.DataFrame, cells: pd.DataFrame, n: int = 101) -> pd.DataFrame:
    """Across tasks, per profile: median and 25-75% band of the normalised regret of every
    (task, seed) run of a method against the fraction of the budget, over the tasks that
    have a default reference (``n_seeds`` counts the runs pooled); only profiles with at
    least two such tasks. Wall time is not pooled: its scale differs between tasks."""
    pools: dict[tuple[str, str], list[np.ndarray]] = {}
    tasks: dict[str, set[str]] = {}
    grid = np.linspace(0.0, 1.0, n)
    for (task, profile), (_, kind, per_method) in _cell_curves(trials, cells, "fraction", n).items():
        if kind == "normalised":
            tasks.setdefault(profile, set()).add(task)
            for method, regs in per_method.items():
                pools.setdefault((profile, method), []).extend(regs)
    rows = []
    for (profile, method), regs in sorted(pools.items()):
        if len(tasks[profile]) < 2:
            continue
        q25, med, q75 = _band(regs)
        if np.isnan(med).all():
            continue
        rows.append(pd.DataFrame({"task": ALL_TASKS, "profile": profile, "method": method, "axis": "fraction",
                                  "kind": "normalised", "x": grid, "median": med, "q25": q25, "q75": q75,
                                  "n_seeds": len(regs)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
