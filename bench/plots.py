"""PNG plots: convergence against wall time, and the trials over the search space."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import atomic  # noqa: E402


def write_plots(trials: pd.DataFrame, cells: pd.DataFrame, folder: Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if trials.empty:
        return paths
    for (task, profile), tcells in cells.groupby(["task", "profile"]):
        t = trials[(trials.task == task) & (trials.profile == profile)]
        if t.empty:
            continue
        primary = tcells.primary.iloc[0]
        paths.append(convergence(t, tcells, primary, folder / f"{task}_{profile}_convergence.png"))
        paths.append(search_space(t, tcells, primary, folder / f"{task}_{profile}_trials.png"))
    return paths


def convergence(trials: pd.DataFrame, cells: pd.DataFrame, primary: str, path: Path) -> Path:
    """Best upper-level value so far against search wall time: median line over seeds and
    a min-max band, one colour per method."""
    maximise = _direction(cells) == "maximize"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = trials[trials.state == "COMPLETE"]
    tmax = max(float(trials.elapsed_s.max()), 1e-6)
    tmin = max(float(done.elapsed_s.min()) if len(done) else 1e-6, 1e-6)
    grid = np.geomspace(tmin, tmax, 200)
    for i, (method, g) in enumerate(done.groupby("method")):
        curves = []
        for _, s in g.groupby("seed"):
            s = s.sort_values(["elapsed_s", "number"], kind="stable")  # simulated workers end out of order
            best = s.value.cummax() if maximise else s.value.cummin()
            idx = np.searchsorted(s.elapsed_s.to_numpy(), grid, side="right") - 1
            curve = np.where(idx >= 0, best.to_numpy()[np.clip(idx, 0, None)], np.nan)
            curves.append(curve)
        curves = np.array(curves)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # all-NaN columns before a seed's first trial
            med = np.nanmedian(curves, axis=0)
            lo, hi = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
        color = f"C{i}"
        ax.plot(grid, med, color=color, label=method)
        ax.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("search wall time (s)")
    ax.set_ylabel(f"best {primary} so far")
    task = cells.task.iloc[0]
    ax.set_title(f"{task}: best {primary} so far (median over seeds, band = min-max)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)


def search_space(trials: pd.DataFrame, cells: pd.DataFrame, primary: str, path: Path) -> Path:
    """Each method's trials over the search space (first two parameters; colour = value),
    with each seed's chosen point marked by a star. One parameter: value against it.
    Methods may search different parameters (e.g. ``weighted-sum``'s w beside lambda), so
    each panel uses the parameters its own trials set and has its own axes."""
    all_params = [c for c in trials.columns if c.startswith("param_") and trials[c].notna().any()]
    methods = sorted(trials.method.unique())
    ncol = min(len(methods), 3)
    nrow = int(np.ceil(len(methods) / ncol))
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(4.2 * ncol, 3.8 * nrow), squeeze=False
    )
    done = trials[trials.state == "COMPLETE"]
    vmin, vmax = (done.value.min(), done.value.max()) if len(done) else (0, 1)
    for ax, method in zip(axes.flat, methods):
        g = done[done.method == method]
        c = cells[cells.method == method]
        ax.set_title(method)
        params = [p for p in all_params if g[p].notna().any()]
        if not params:
            continue
        x = params[0]
        logx = _log_axis(trials[x])
        if len(params) == 1:
            ax.scatter(g[x], g.value, s=14, alpha=0.8)
            if f"final_{primary}" in c:
                ax.scatter(c[x], c[f"final_{primary}"], marker="*", s=160, color="red", label="chosen")
            ax.set_xlabel(x[6:])
            ax.set_ylabel(primary)
        else:
            y = params[1]
            for _, walk in g[g.oracle].groupby("seed"):  # iterates of first-order methods
                ax.plot(walk[x], walk[y], color="grey", linewidth=0.6, alpha=0.7)
            sc = ax.scatter(g[x], g[y], c=g.value, s=14, cmap="viridis", vmin=vmin, vmax=vmax)
            ax.scatter(c[x], c[y], marker="*", s=160, color="red", label="chosen")
            ax.set_xlabel(x[6:])
            ax.set_ylabel(y[6:])
            if _log_axis(trials[y]):
                ax.set_yscale("log")
            fig.colorbar(sc, ax=ax, label=primary)
        if logx:
            ax.set_xscale("log")
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.suptitle(f"{cells.task.iloc[0]}: trials over the search space (star: chosen)")
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)


def _log_axis(values: pd.Series) -> bool:
    v = values.dropna().astype(float)
    return bool(len(v) and (v > 0).all() and v.max() / v.min() > 100)


def _direction(cells: pd.DataFrame) -> str:
    return str(cells["direction"].iloc[0]) if "direction" in cells else "minimize"


def regret_curves(curves: pd.DataFrame, title: str, path: Path) -> Path:
    """Median regret over seeds with its 25-75% band, one colour per method: against the
    fraction of the budget spent and, where ``curves`` has it, against search wall time
    (:func:`diffhpo.bench.analysis.regret.curves` of one task and profile, or
    :func:`~diffhpo.bench.analysis.regret.pooled`). A run enters the median at its first
    completed trial, so a pooled curve can rise where a task's runs join it."""
    panels = [(a, label) for a, label in [("fraction", "fraction of the budget spent"),
                                          ("elapsed_s", "search wall time (s)")] if (curves.axis == a).any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    kind = curves.kind.iloc[0]
    ylabel = "normalised regret (0 = best, 1 = default)" if kind == "normalised" else "regret"
    for ax, (axis, xlabel) in zip(axes.flat, panels):
        c = curves[curves.axis == axis]
        for i, (method, m) in enumerate(c.groupby("method", sort=True)):
            ax.plot(m.x, m["median"], color=f"C{i}", label=f"{method} ({m.n_seeds.iloc[0]} runs)")
            ax.fill_between(m.x, m.q25, m.q75, color=f"C{i}", alpha=0.2, linewidth=0)
        vals = c[["median", "q25", "q75"]].to_numpy(float)
        vals = vals[np.isfinite(vals)]
        if len(vals) and (vals > 0).all():
            ax.set_yscale("log")
        else:  # zero or negative regret (the best value reached, or beaten by a lucky search value)
            pos = np.abs(vals[vals != 0])
            ax.set_yscale("symlog", linthresh=float(max(pos.min(), 1e-12)) if len(pos) else 1e-3)
        if axis == "elapsed_s":
            ax.set_xscale("log")
        if kind == "normalised":
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"{title}\nmedian, band = 25-75%", fontsize="medium")
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)


def learning_curves(curves: pd.DataFrame, title: str, path: Path) -> Path:
    """One panel per method: each trial's intermediate values against the fraction of the
    lower-level solve; trials a pruner stopped are faded, completed ones drawn solid."""
    methods = sorted(curves.method.unique())
    cols = min(4, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, methods):
        for (_, _, number), c in curves[curves.method == method].groupby(["seed", "profile", "number"]):
            pruned = c.state.iloc[0] == "PRUNED"
            ax.plot(c.fraction, c.value, marker=".", lw=0.8, color="0.6" if pruned else "C0",
                    alpha=0.35 if pruned else 0.9)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("fraction of the lower-level solve")
        ax.set_xlim(0, 1)
    for row in axes:
        row[0].set_ylabel("upper metric")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)


def critical_difference(mean_ranks: pd.Series, pvalues: pd.DataFrame, title: str, path: Path) -> Path:
    """Critical-difference diagram (scikit-posthocs): mean ranks on the axis, methods not
    significantly different (post-hoc p >= 0.05) joined by a bar. The critical difference
    itself belongs in ``title`` (scikit-posthocs draws its bar over the tick labels)."""
    import scikit_posthocs as sp

    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(mean_ranks)))
    colours = {m: f"C{i}" for i, m in enumerate(sorted(mean_ranks.index))}  # as in the other plots
    sp.critical_difference_diagram(mean_ranks, pvalues, ax=ax, color_palette=colours)
    ax.set_title(title, fontsize="medium", pad=12)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)
