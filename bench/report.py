"""The report from a storage: ``trials.csv``, ``cells.csv``, ``summary.csv`` and ``summary.md``
here; the comparison of methods (:mod:`.comparison`: regret, ranks, tests), the tidy export
(:mod:`.export`), the plots (:mod:`.plots` and each task's own) and ``report.html``
(:mod:`.html`, :mod:`.report_page`) through :func:`write_frames`.

* ``trials.csv``: one row per trial of every cell (parameters, value, state, cost, wall and
  CPU seconds, sampler seconds, peak memory, every metric, failure reason, and every other
  numeric user attribute as ``attr_<name>``, e.g. the bilevel oracle's ``attr_gamma``).
* ``cells.csv``: one row per cell (task x method x seed): chosen hyperparameters, final
  metrics, trial counts, search wall time and cost ratio, the task settings (``config``, JSON).
* ``summary.csv`` / ``summary.md``: one row per task x method over seeds: chosen
  hyperparameters (median), final metrics (median, min, max), trials per seed (median),
  total search wall time, cost ratio (median), peak memory (max).

Cost ratio = search wall time of the cell / wall time of one lower-level solve of the
task, the latter being the median wall time of all completed black-box trials of that task
and profile in the storage (each is one lower-level solve), or, where no method ran
black-box trials, the median wall time of the final-protocol evaluations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.storages import BaseStorage

from . import hooks
from .report_tables import objective_text, summary_table  # noqa: F401  (also used by report_page)
from . import storage as st
from .toolkit import atomic
from .toolkit.cache import config_key
from .contracts.fidelity import FIDELITY_STEPS
from .search import counts
from .workers import RETRY_OF

KEYS = ["task", "profile", "method", "seed"]


def collect(storage: BaseStorage) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, cells) data frames of every diffhpo cell in the storage."""
    trial_rows, cell_rows = [], []
    for summary in st.cell_studies(storage):
        a = summary.user_attrs
        key = {k: a.get(k) for k in KEYS}
        study_id = storage.get_study_id_from_name(summary.study_name)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        elapsed = spent = 0.0
        budget = float(a.get("budget") or np.nan)
        for t in sorted(trials, key=lambda t: t.number):
            u = t.user_attrs
            elapsed += float(u.get("ask_s", 0.0)) + float(u.get("wall_s", 0.0))
            counted = counts(t)
            spent += float(u.get("cost", 1.0)) if counted else 0.0
            row = dict(key)
            row.update(
                number=t.number, state=t.state.name, value=t.value, worker=u.get("worker", ""),
                oracle="hypergrad" in u, estimate="hypergrad" in u and not u.get("evaluated", False),
                counted=counted, budget_fraction=spent / budget,
                cost=u.get("cost", np.nan), wall_s=u.get("wall_s", np.nan),
                ask_s=u.get("ask_s", np.nan), cpu_s=u.get("cpu_s", np.nan),
                peak_rss_mib=u.get("peak_rss_mib", np.nan), peak_gpu_mib=u.get("peak_gpu_mib", np.nan),
                elapsed_s=float(u.get("sim_end_s", elapsed)),  # simulated workers: the simulated end
                fail_reason=u.get("fail_reason", ""),
                retry_of=t.system_attrs.get(RETRY_OF, ""),
                intermediate=json.dumps({int(k): v for k, v in sorted(t.intermediate_values.items())})
                if t.intermediate_values else "",
            )
            row.update({f"param_{k}": v for k, v in t.params.items()})
            row.update({k: v for k, v in u.items() if k.startswith(("metric_", "sim_"))})
            row.update({f"attr_{k}": v for k, v in u.items()  # the rest, for the diagnostics (bench/diagnostics.py)
                        if not k.startswith(("metric_", "sim_")) and k not in _TRIAL_COLUMNS and _scalar(v)})
            trial_rows.append(row)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        row = dict(key)
        fm = a.get("final_measure", {})
        row.update(
            status=a.get("status", "searching"), budget=a.get("budget"), primary=a.get("primary"),
            optimum=_float_or_nan(a.get("optimum")),
            direction=a.get("metric_directions", {}).get(a.get("primary"), "minimize"),
            n_trials=len(done),
            n_failed=sum(t.state == optuna.trial.TrialState.FAIL and counts(t) for t in trials),
            n_interrupted=sum(t.state == optuna.trial.TrialState.FAIL and not counts(t) for t in trials),
            spent=sum(float(t.user_attrs.get("cost", 1.0)) for t in trials if counts(t)),
            search_wall_s=elapsed,
            search_cpu_s=sum(float(t.user_attrs.get("cpu_s", 0.0)) for t in trials),
            peak_rss_mib=max([float(t.user_attrs.get("peak_rss_mib", 0.0)) for t in trials] + [fm.get("peak_rss_mib", 0.0)]),
            peak_gpu_mib=max([float(t.user_attrs.get("peak_gpu_mib", np.nan)) for t in trials] + [fm.get("peak_gpu_mib", np.nan)]),
            final_wall_s=fm.get("wall_s", np.nan),
        )
        row["config_key"] = config_key(a.get("config") or {})
        row["config"] = json.dumps(a.get("config") or {}, sort_keys=True, default=str)
        row.update({f"param_{k}": v for k, v in a.get("final_params", {}).items()})
        row.update({f"final_{k}": v for k, v in a.get("final_metrics", {}).items()})
        row["n_repeats"] = len(a.get("final_seeds", [])) or (1 if a.get("final_metrics") else 0)
        row.update({f"repeat_std_{k}": v for k, v in a.get("final_metrics_std", {}).items()})
        cell_rows.append(row)
    trials_df = pd.DataFrame(trial_rows)
    cells_df = pd.DataFrame(cell_rows)
    if not cells_df.empty:
        cells_df["solve_wall_s"] = _reference_solve_seconds(trials_df, cells_df)
        cells_df["cost_ratio"] = cells_df["search_wall_s"] / cells_df["solve_wall_s"]
        cells_df = cells_df.sort_values(KEYS).reset_index(drop=True)
    return trials_df, cells_df


_TRIAL_COLUMNS = {"worker", "cost", "wall_s", "ask_s", "cpu_s", "peak_rss_mib", "peak_gpu_mib", "fail_reason"}


def _scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _float_or_nan(x) -> float:
    return np.nan if x is None else float(x)


def _reference_solve_seconds(trials: pd.DataFrame, cells: pd.DataFrame) -> pd.Series:
    ref = {}
    for (task, profile), group in cells.groupby(["task", "profile"]):
        sel = pd.Series(False, index=trials.index)
        if not trials.empty:
            sel = (trials.task == task) & (trials.profile == profile) & (trials.state == "COMPLETE") & ~trials.oracle
        ref[(task, profile)] = trials.loc[sel, "wall_s"].median() if sel.any() else group["final_wall_s"].median()
    return cells.apply(lambda r: ref[(r.task, r.profile)], axis=1)


def summarise(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per task x profile x method, over seeds."""
    rows = []
    for (task, profile, method), g in cells.groupby(["task", "profile", "method"], sort=True):
        row = {"task": task, "profile": profile, "method": method, "n_seeds": len(g),
               "n_done": int((g.status == "done").sum())}
        for col in [c for c in g.columns if c.startswith("param_")]:
            if g[col].notna().any():
                row[col.replace("param_", "chosen_")] = g[col].median()
        for col in [c for c in g.columns if c.startswith("final_") and c != "final_wall_s"]:
            if g[col].notna().any():
                m = col.replace("final_", "")
                row[f"{m}_median"] = g[col].median()
                row[f"{m}_min"] = g[col].min()
                row[f"{m}_max"] = g[col].max()
        row.update(
            trials_per_seed=g.n_trials.median(),
            failed_trials=int(g.n_failed.sum()),
            search_wall_s_total=g.search_wall_s.sum(),
            cost_ratio_median=g.cost_ratio.median(),
            peak_rss_mib=g.peak_rss_mib.max(),
            peak_gpu_mib=g.peak_gpu_mib.max(),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def unfinished(cells: pd.DataFrame, trials: pd.DataFrame) -> list[str]:
    """One line per cell whose status is not ``done`` (still searching, in its final protocol,
    or failed), with its trial counts and the trials still RUNNING; the first line says how
    many of how many. Empty when every cell is done."""
    if cells.empty:
        return []
    todo = cells[cells.status != "done"]
    if todo.empty:
        return []
    running = (trials[trials.state == "RUNNING"].groupby(KEYS).size() if len(trials) else pd.Series(dtype=int))
    lines = [f"{len(todo)} of {len(cells)} cells are not finished; their seeds count in 'seeds' but a cell "
             "without a final value is left out of the comparison, and the others may still change:"]
    for _, c in todo.iterrows():
        key = tuple(c[k] for k in KEYS)
        run = int(running.get(key, 0)) if len(running) else 0
        lines.append(f"{c.task}.{c.method}.{c.profile}.seed{c.seed}: {c.status} ({c.n_trials} trials done"
                     + (f", {run} running" if run else "") + ")")
    return lines


def markdown(summary: pd.DataFrame, cells: pd.DataFrame, warnings: list[str] = ()) -> str:
    """Readable summary: per task, metrics as 'median [min, max]' over seeds. ``warnings``
    (unfinished cells, a truncated journal, stale files) come first."""
    out = ["# diffhpo summary", ""]
    if warnings:
        out += ["**Warning:**", "", *[f"- {w}" for w in warnings], ""]
    for (task, profile), g in summary.groupby(["task", "profile"], sort=True):
        out.append(f"## {task} ({profile} profile)")
        text = objective_text(cells, task)
        if text:
            out.append(text)
        out.append("")
        out.append(summary_table(g).to_markdown(index=False))
        out.append("")
    return "\n".join(out)


def learning_curves(trials: pd.DataFrame) -> pd.DataFrame:
    """Every intermediate value (tasks with a fidelity), one row each: the cell, the trial,
    its state, the fraction of the lower-level solve and the upper metric there."""
    if trials.empty or "intermediate" not in trials:
        return pd.DataFrame()
    rows = []
    for _, t in trials[trials.intermediate.fillna("").astype(str) != ""].iterrows():
        for step, value in json.loads(t.intermediate).items():
            rows.append({**{k: t[k] for k in [*KEYS, "number", "state"]},
                         "fraction": int(step) / FIDELITY_STEPS, "value": value})
    return pd.DataFrame(rows)


def write_report(storage: BaseStorage, out: Path, *, plots: bool = True, html: bool = True,
                 command: str | None = None, source: str = "", warnings: list[str] = ()) -> dict[str, Path]:
    """Write the tables, the comparison, the export, the plots and ``report.html`` for
    every cell in the storage into ``out``."""
    trials, cells = collect(storage)
    return write_frames(trials, cells, out, plots=plots, html=html, command=command, source=source,
                        warnings=warnings)


def write_frames(trials: pd.DataFrame, cells: pd.DataFrame, out: Path, *, plots: bool = True, html: bool = True,
                 command: str | None = None, source: str = "", warnings: list[str] = ()) -> dict[str, Path]:
    """:func:`write_report` on frames of :func:`collect` (several storages: see
    :mod:`diffhpo.bench.merge`). ``source`` labels the rows of the export where the frames
    have no ``source`` column. ``warnings``: lines the caller found (a truncated journal)
    that summary.md and the page show first, with the unfinished cells (:func:`unfinished`)
    and the stale files of an older report this one removed (:func:`remove_stale`)."""
    import time

    from . import comparison, export
    from .provenance import provenance
    from .provenance import redact_url as redact

    started = time.time_ns()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    warnings = [*warnings, *unfinished(cells, trials)]
    if "source" in cells:  # storage URLs: without passwords
        cells = cells.assign(source=cells.source.map(redact))
        trials = trials.assign(source=trials.source.map(redact)) if "source" in trials else trials
    written = {}
    atomic.write_csv(trials, out / "trials.csv")  # merged storages: with a source column
    atomic.write_csv(cells, out / "cells.csv")
    written["trials"], written["cells"] = out / "trials.csv", out / "cells.csv"
    hooks.pause("report", "", "trials.csv and cells.csv written")
    lc = learning_curves(trials)
    if not lc.empty:
        atomic.write_csv(lc, out / "curves.csv")
        written["curves"] = out / "curves.csv"
    if cells.empty:
        return written
    summary = summarise(cells)
    atomic.write_csv(summary, out / "summary.csv")
    atomic.write_text(out / "summary.md", markdown(summary, cells, warnings))
    written["summary_csv"], written["summary_md"] = out / "summary.csv", out / "summary.md"
    comp = comparison.compare(trials, cells)
    written.update(comparison.write_tables(comp, out))
    info = provenance(command)
    if "source" not in cells:
        cells, trials = cells.assign(source=redact(source)), trials.assign(source=redact(source))
    for i, path in enumerate(export.write(export.long_table(trials, cells, info), out)):
        written[f"export_{i}"] = path
    pictures: dict[str, list[Path]] = {}
    diagnostics = []
    if plots:
        from .diagnostics import collect_all

        pictures = write_pictures(trials, cells, comp, out / "plots")
        diagnostics = collect_all(cells, trials, out / "plots")
        for paths in [*pictures.values(), *(d.images for d in diagnostics)]:
            written.update({p.stem: p for p in paths})
    stale = remove_stale(out, started, () if html else ("report.html",), keep=written.values())
    if stale:
        warnings.append(f"This folder held an older report: {len(stale)} of its files that this report does not "
                        f"write were removed ({', '.join(stale[:6])}{', ...' if len(stale) > 6 else ''}).")
        atomic.write_text(out / "summary.md", markdown(summary, cells, warnings))
    if html:
        from . import html as html_mod
        from .report_page import lead, sections

        written["html"] = html_mod.write(out / "report.html", "diffhpo report",
                                         sections(summary, cells, comp, pictures, info, written, diagnostics),
                                         lead(comp, pictures, warnings))
    return written


#: Files a report writes at the top of its folder (everything under ``plots/`` is the report's too).
REPORT_FILES = ("trials.csv", "cells.csv", "curves.csv", "summary.csv", "summary.md", "regret.csv", "ranks.csv",
                "pairs.csv", "pairs_over_tasks.csv", "comparison.md", "verdict.md", "results_long.csv",
                "results_long.parquet")


def remove_stale(out: Path, started_ns: int, extra: tuple[str, ...] = (), keep=()) -> list[str]:
    """Remove the files of an older report that this one did not rewrite: those of
    :data:`REPORT_FILES` and under ``plots/`` last modified before ``started_ns`` (this report's
    start). A report of fewer tasks, or without learning curves, would otherwise leave the older
    report's curves.csv and task plots beside the new tables. Returns their names (relative).
    The files of ``keep`` (what this report wrote) are never removed, whatever their time: a
    file's mtime comes from the kernel's coarse clock, which can lag ``time.time_ns()`` by a
    few milliseconds, so a file written just after the start can look older than it (a
    fresh-clone CI run lost trials.csv so)."""
    out = Path(out)
    kept = {Path(p).resolve() for p in keep}
    candidates = [out / n for n in (*REPORT_FILES, *extra)] + (sorted((out / "plots").iterdir()) if (out / "plots").is_dir() else [])
    removed = []
    for p in candidates:
        try:
            if p.is_file() and p.resolve() not in kept and p.stat().st_mtime_ns < started_ns:
                p.unlink()
                removed.append(str(p.relative_to(out)))
        except OSError:
            continue
    return removed


def write_pictures(trials: pd.DataFrame, cells: pd.DataFrame, comp, folder: Path) -> dict[str, list[Path]]:
    """Every PNG of the report, keyed by ``task/profile``, by ``task`` (the task's own
    pictures) and by ``profile`` (the across-task diagram)."""
    from . import comparison
    from . import plots as pl
    from .contracts.registry import TASKS

    folder.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, list[Path]] = {}
    for path in pl.write_plots(trials, cells, folder):
        task, profile = path.stem.rsplit("_", 2)[:2]
        pictures.setdefault(f"{task}/{profile}", []).append(path)
    lc = learning_curves(trials)
    for (task, profile), c in lc.groupby(["task", "profile"], sort=True) if len(lc) else []:
        path = pl.learning_curves(c, f"{task} ({profile}): upper metric during the lower-level solve, "
                                     "pruned trials faded", folder / f"{task}_{profile}_curves.png")
        pictures.setdefault(f"{task}/{profile}", []).append(path)
    curves = comp.curves
    for profile, c in curves[curves.axis == "fraction"].groupby("profile", sort=True) if len(curves) else []:
        per_task, pooled = c[c.task != comparison.ALL_TASKS], c[c.task == comparison.ALL_TASKS]
        if per_task.task.nunique() > 1:  # small multiples: one panel per task, and the pooled runs
            path = pl.regret_panels(per_task, pooled, f"regret per task ({profile})", folder / f"{profile}_regret.png")
            pictures.setdefault(profile, []).append(path)
    for (task, profile), c in curves.groupby(["task", "profile"], sort=True) if len(curves) else []:
        if task != comparison.ALL_TASKS:
            path = pl.regret_curves(c, f"{task} ({profile}): {c.kind.iloc[0]} regret over seeds",
                                    folder / f"{task}_{profile}_regret.png")
            pictures.setdefault(f"{task}/{profile}", []).append(path)
    for f in comp.friedman:
        if f.tested:
            title = (f"profile {f.profile}: {len(f.methods)} methods, {f.n_blocks} (task, seed) blocks, "
                     f"Friedman p = {f.p_value:.3g}; Nemenyi critical difference {f.cd:.3g}")
            path = pl.critical_difference(f.mean_ranks["rank final"], f.nemenyi, title,
                                          folder / f"{f.profile}_critical_difference.png")
            pictures.setdefault(f"{f.profile}/cd", []).append(path)
    for (task, profile), _ in cells.groupby(["task", "profile"], sort=True):
        m = comparison.pair_matrices(comp, task, profile)
        if m is not None and len(m[0]) > 1:
            path = pl.pair_matrix(*m, f"{task} ({profile}): seeds the row wins\nagainst the column (* significant, Holm)",
                                  folder / f"{task}_{profile}_pairs.png")
            pictures.setdefault(f"{task}/{profile}/pairs", []).append(path)
        cost = comparison.cost_frame(cells, task, profile)
        if len(cost) and cost.quality_median.notna().any():
            c = cells[(cells.task == task) & (cells.profile == profile)]
            path = pl.cost_quality(cost.dropna(subset=["quality_median"]), str(c.primary.iloc[0]),
                                   str(c.direction.iloc[0]), f"{task} ({profile}): quality against cost",
                                   folder / f"{task}_{profile}_cost.png")
            pictures.setdefault(f"{task}/{profile}/cost", []).append(path)
    for f in comp.friedman:
        m = comparison.pair_matrices(comp, comparison.ALL_TASKS, f.profile)
        if m is not None and len(m[0]) > 1 and cells[cells.profile == f.profile].task.nunique() > 1:
            path = pl.pair_matrix(*m, f"all tasks ({f.profile}): tasks where the row's median\nbeats the column's "
                                      "(* Nemenyi)", folder / f"{f.profile}_pairs.png")
            pictures.setdefault(f"{f.profile}/pairs", []).append(path)
    for task in sorted(cells.task.unique()):
        if task in TASKS:  # the task's own pictures (sample grids, schedules, ...), every profile
            sel = trials[trials.task == task] if not trials.empty else trials
            pictures.setdefault(task, []).extend(TASKS.get(task).write_plots(cells[cells.task == task], sel, folder))
    return pictures
