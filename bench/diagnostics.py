"""Diagnostics of the report: why a method wins or loses, read from the stored trials.

The page has one section per method that records diagnostics (``Diagnostics: <method>``), with one
:class:`Diagnostic` per task in it. They come from three places:

* built in (:func:`builtin`), from any storage: *pruning* (methods whose trials a pruner stopped:
  trials bought per budget, the fraction pruned at each rung) and *search against final* (tasks
  with a known optimum: the gap between each method's best search value, or the oracle's estimate,
  and its final-protocol value, both as regret to the optimum);
* **the hook of a task**: ``Task.diagnostics(cells, trials, folder)`` (a classmethod, see
  :meth:`diffhpo.bench.contracts.task.Task.diagnostics`), reached through the task registry;
* **the hook of a method**: the ``diagnostics`` field of its :class:`~diffhpo.bench.contracts.method.Method`,
  a callable ``(cells, trials, folder) -> list[Diagnostic]``, reached through the method registry.

A hook gets its task's (or method's) rows of ``cells.csv`` and ``trials.csv`` (every scalar user
attribute of a trial is a column ``attr_<name>``), may write PNGs into ``folder``, and returns
:class:`Diagnostic` objects; an empty list when it has nothing to say. The machinery never imports
a task or a method: the hooks are found on the registered objects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .contracts.diagnostic import Diagnostic, attrs
from .contracts.fidelity import FIDELITY_STEPS


def pruning(cells: pd.DataFrame, trials: pd.DataFrame, pruners: frozenset[str] = frozenset()) -> list[Diagnostic]:
    """Per pruning method and task (``pruners``: the methods with a pruner, shown even where it
    stopped nothing; any other method with PRUNED trials too): trials per seed,
    trials per budget unit (what the budget bought), and at each rung (the checkpoints a trial
    reported at, as fractions of the lower-level solve) the share of the trials that reached it
    and were stopped there."""
    out = []
    if trials.empty or "intermediate" not in trials:
        return out
    for (method, task, profile), t in trials.groupby(["method", "task", "profile"], sort=True):
        if not ((t.state == "PRUNED").any() or method in pruners and (t.intermediate.fillna("") != "").any()):
            continue
        c = cells[(cells.method == method) & (cells.task == task) & (cells.profile == profile)]
        n = t.groupby("seed").size()
        budget = float(c.budget.astype(float).median()) if len(c) else np.nan
        rungs: dict[float, list[int]] = {}
        for _, r in t[t.intermediate.fillna("").astype(str) != ""].iterrows():
            steps = sorted(int(k) for k in json.loads(r.intermediate))
            for i, step in enumerate(steps):
                reached = rungs.setdefault(step, [0, 0])
                reached[0] += 1
                reached[1] += int(r.state == "PRUNED" and i == len(steps) - 1)
        table = pd.DataFrame([{"rung (fraction of the solve)": f"{s / FIDELITY_STEPS:.3g}", "trials reaching it": a,
                               "stopped there": b, "share stopped": f"{b / a:.0%}"} for s, (a, b) in sorted(rungs.items())])
        out.append(Diagnostic(method, f"{task} ({profile}): pruning", paragraphs=[
            f"{n.median():g} trials per seed (median over {len(n)} seeds) for a budget of {budget:g} cost units: "
            f"{n.median() / budget:.2f} trials per unit; {(t.state == 'PRUNED').mean():.0%} of all trials pruned."],
            tables=[("Trials at each rung, all seeds:", table)]))
    return out


def known_optimum(cells: pd.DataFrame, trials: pd.DataFrame) -> list[Diagnostic]:
    """Per task with a known optimum: each method's best search value (the value its trials
    measured, or the oracle's estimate) and its final value, as regret to the optimum, median over
    seeds; the gap = final - search (a large gap: the search saw a value the final protocol does
    not reproduce)."""
    out = []
    if "optimum" not in cells or trials.empty:
        return out
    for (task, profile), c in cells[cells.optimum.notna()].groupby(["task", "profile"], sort=True):
        sign = -1.0 if c.direction.iloc[0] == "maximize" else 1.0
        opt, col = float(c.optimum.iloc[0]), f"final_{c.primary.iloc[0]}"
        rows = []
        for method, g in c.groupby("method", sort=True):
            t = trials[(trials.task == task) & (trials.profile == profile) & (trials.method == method)
                       & (trials.state == "COMPLETE")]
            if t.empty or col not in g:
                continue
            best = t.groupby("seed").value.min() if sign > 0 else t.groupby("seed").value.max()
            final = g.set_index("seed")[col].astype(float)
            both = pd.DataFrame({"search": sign * (best - opt), "final": sign * (final - opt)}).dropna()
            if both.empty:
                continue
            est = bool(t.estimate.astype(bool).any()) if "estimate" in t else False
            rows.append({"method": method, "search value is": "oracle estimate" if est else "evaluation",
                         "search regret": f"{both.search.median():.4g}", "final regret": f"{both.final.median():.4g}",
                         "gap (final - search)": f"{(both.final - both.search).median():.4g}", "seeds": len(both)})
        if rows:
            out.append(Diagnostic("every method", f"{task} ({profile}): search value against final value", paragraphs=[
                f"Regret to the known optimum {opt:.6g} of `{c.primary.iloc[0]}`, median over seeds: the best value the "
                "search saw, and the chosen configuration's final-protocol value."], tables=[("", pd.DataFrame(rows))]))
    return out


def builtin(cells: pd.DataFrame, trials: pd.DataFrame, pruners: frozenset[str] = frozenset()) -> list[Diagnostic]:
    return pruning(cells, trials, pruners) + known_optimum(cells, trials)


def collect_all(cells: pd.DataFrame, trials: pd.DataFrame, folder: Path) -> list[Diagnostic]:
    """Built-in diagnostics, then every task's and method's hook (registries)."""
    from ..methods import METHODS
    from .contracts.registry import TASKS

    pruners = frozenset(m for m in cells.method.unique() if m in METHODS and METHODS.get(m).make_pruner is not None)
    out = builtin(cells, trials, pruners)
    for task in sorted(cells.task.unique()):
        if task in TASKS:
            sel = trials[trials.task == task] if not trials.empty else trials
            out += list(TASKS.get(task).diagnostics(cells[cells.task == task], sel, Path(folder)))
    for method in sorted(cells.method.unique()):
        hook = getattr(METHODS.get(method), "diagnostics", None) if method in METHODS else None
        if hook is not None:
            sel = trials[trials.method == method] if not trials.empty else trials
            out += list(hook(cells[cells.method == method], sel, Path(folder)))
    return out
