"""PNG plots: convergence against wall time, and the trials over the search space."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .toolkit import atomic  # noqa: E402


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
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)  # off the data
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")


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
    ylabel = "normalised regret (0 = best, 1 = default)" if kind == "normalised" else "regret (metric units)"
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
    _legend_right(fig, axes)  # off the data
    fig.suptitle(f"{title}\nmedian, band = 25-75%", fontsize="medium")
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")


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


def _legend_right(fig, axes) -> None:
    """One legend for the figure, right of the panels (off the data)."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[x] for x in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize="small", frameon=False)


def regret_panels(curves: pd.DataFrame, pooled: pd.DataFrame, title: str, path: Path) -> Path:
    """Small multiples: one panel per task (median regret over seeds against the fraction of the
    budget, 25-75% band), and a last panel with the pooled normalised regret of every (task, seed)
    run where there is one. Colours follow the method names (the same in every panel); the legend
    sits right of the panels, off the data."""
    tasks = sorted(curves.task.unique())
    panels = [(t, curves[curves.task == t]) for t in tasks] + ([("all tasks (pooled)", pooled)] if len(pooled) else [])
    methods = sorted(set(curves.method) | set(pooled.method if len(pooled) else []))
    colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, c) in zip(axes.flat, panels):
        for method, m in c.groupby("method", sort=True):
            ax.plot(m.x, m["median"], color=colour[method], label=method)
            ax.fill_between(m.x, m.q25, m.q75, color=colour[method], alpha=0.15, linewidth=0)
        normalised = c.kind.iloc[0] == "normalised"
        vals = c[["median", "q25", "q75"]].to_numpy(float).ravel()
        vals = vals[np.isfinite(vals)]
        if len(vals) and (vals > 0).all():  # else linear: a symlog axis around 0 reads badly in a small panel
            ax.set_yscale("log")
        absent = [m for m in methods if m not in set(c.method)]
        if absent and not name.startswith("all"):
            ax.text(0.02, 0.02, f"no search values: {', '.join(absent)}", transform=ax.transAxes, fontsize=7,
                    color="0.35", va="bottom")
        if normalised:
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        runs = int(c.groupby("method").n_seeds.first().max())
        ax.set_title(f"{name} ({runs} {'runs' if name.startswith('all') else 'seeds'})", fontsize=9)
        ax.set_xlabel("fraction of the budget spent")
        ax.set_ylabel("normalised regret (1 = default)" if normalised else "regret (metric units)")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    _legend_right(fig, axes)
    fig.suptitle(f"{title}: median over seeds, band 25-75%", fontsize="medium")
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")


def pair_matrix(wins: pd.DataFrame, totals: pd.DataFrame, significant: pd.DataFrame, title: str, path: Path) -> Path:
    """Method x method heatmap: cell (A, B) = share of the comparisons (seeds, or tasks) that row
    A wins against column B, annotated ``wins/n``; a star where A is significantly better."""
    methods = list(wins.index)
    share = (wins / totals.where(totals > 0)).to_numpy(float)
    k = len(methods)
    fig, ax = plt.subplots(figsize=(2.6 + 0.75 * k, 1.4 + 0.6 * k))
    im = ax.imshow(share, cmap="RdBu", vmin=0, vmax=1)
    for i, a in enumerate(methods):
        for j, b in enumerate(methods):
            if i == j:
                continue
            n = int(totals.loc[a, b])
            text = f"{int(wins.loc[a, b])}/{n}" + ("*" if bool(significant.loc[a, b]) else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(share[i, j]) and abs(share[i, j] - 0.5) > 0.3 else "black")
    ax.set_xticks(range(k), methods, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), methods, fontsize=8)
    ax.set_xlabel("against (column)")
    ax.set_ylabel("method (row) wins")
    fig.colorbar(im, ax=ax, label="share of wins", fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)


def cost_quality(table: pd.DataFrame, primary: str, direction: str, title: str, path: Path) -> Path:
    """Final quality against search wall time and against peak memory, one point per method:
    median over seeds with interquartile bars on both axes; the Pareto front (no other method
    both cheaper and better) joined by a line, its methods' names in bold. ``table``: one row per
    method with columns ``<x>_q25/_median/_q75`` for x in quality, wall_s, rss_mib."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    sign = -1.0 if direction == "maximize" else 1.0
    for ax, (x, label) in zip(axes.flat, [("wall_s", "search wall time (s)"), ("rss_mib", "peak RSS (MiB)")]):
        front = _pareto(table[f"{x}_median"].to_numpy(float), sign * table["quality_median"].to_numpy(float))
        for i, (_, r) in enumerate(table.iterrows()):
            ax.errorbar(r[f"{x}_median"], r.quality_median,
                        xerr=[[r[f"{x}_median"] - r[f"{x}_q25"]], [r[f"{x}_q75"] - r[f"{x}_median"]]],
                        yerr=[[r.quality_median - r.quality_q25], [r.quality_q75 - r.quality_median]],
                        fmt="o", color=f"C{i % 10}", capsize=3, label=r.method)
            ax.annotate(r.method, (r[f"{x}_median"], r.quality_median), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, fontweight="bold" if front[i] else "normal")
        f = table[front].sort_values(f"{x}_median")
        ax.plot(f[f"{x}_median"], f.quality_median, "--", color="grey", linewidth=1, label="Pareto front")
        if (table[f"{x}_q25"] > 0).all() and table[f"{x}_q75"].max() / max(table[f"{x}_q25"].min(), 1e-12) > 30:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"final {primary} ({'higher' if sign < 0 else 'lower'} = better)")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    fig.suptitle(f"{title}: median over seeds, bars 25-75%", fontsize="medium")
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")


def _pareto(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """True for points no other point beats on both (lower cost, lower loss; one strictly)."""
    out = np.ones(len(cost), bool)
    for i in range(len(cost)):
        dominated = (cost <= cost[i]) & (loss <= loss[i]) & ((cost < cost[i]) | (loss < loss[i]))
        out[i] = not dominated.any()
    return out
