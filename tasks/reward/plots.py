"""The reward tasks' pictures for the report (:meth:`RewardTask.write_plots`).

* ``upper_vs_lambda``: the upper score of the grid method's trials against lambda (mean over
  seeds, min-max band), with each method's chosen lambda and final-protocol upper score
  marked (``none`` as a horizontal line: no guidance is lambda = infinity; ``weighted-sum``
  at its fixed lambda, labelled with its chosen w).
* ``sample_grids``: one panel per method with the first images per condition of its
  final-protocol run (first seed), read from the PNGs the final evaluations wrote.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def upper_vs_lambda(task_cls, cells: pd.DataFrame, trials: pd.DataFrame, path: Path) -> Path | None:
    primary = task_cls.upper_metric
    col = f"final_{primary}"
    if col not in cells:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = pd.DataFrame()
    if len(trials) and "param_lam" in trials:
        grid = trials[(trials.method == "grid") & (trials.state == "COMPLETE") & trials.param_lam.notna()]
    if len(grid):
        g = grid.groupby("param_lam").value.agg(["mean", "min", "max"]).sort_index()
        ax.plot(g.index, g["mean"], "o-", color="black", label="grid trials (mean over seeds)")
        ax.fill_between(g.index, g["min"], g["max"], color="black", alpha=0.12, linewidth=0)
    done = cells[cells.status == "done"] if "status" in cells else cells
    markers = "s^vDP*Xph<>"
    for i, (method, c) in enumerate(sorted(done.groupby("method"), key=lambda kv: kv[0])):
        color = f"C{i}"
        score = c[col].mean()
        if "param_lam" in c and c.param_lam.notna().any():
            ax.scatter(c.param_lam, c[col], marker=markers[i % len(markers)], s=90, color=color,
                       edgecolor="black", zorder=5, label=f"{method}: lambda={c.param_lam.median():.3g}")
        elif "param_w" in c and c.param_w.notna().any():
            lam = _ws_lambda(task_cls, c)
            ax.scatter([lam] * len(c), c[col], marker=markers[i % len(markers)], s=90, color=color,
                       edgecolor="black", zorder=5, label=f"{method}: w={c.param_w.median():.3g} at lambda={lam:g}")
        elif np.isfinite(score):
            ax.axhline(score, color=color, linestyle="--", label=f"{method} (no guidance)")
    ax.set_xscale("log")
    ax.set_xlabel("lambda (KL strength)")
    ax.set_ylabel(primary)
    ax.set_title(f"{task_cls.name}: {primary} vs lambda (markers: final run at each method's choice)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ws_lambda(task_cls, cells: pd.DataFrame) -> float:
    profile = cells.profile.iloc[0]
    try:
        return float(task_cls.profiles[profile].ws_lambda)
    except (KeyError, AttributeError):
        return 1.0


def sample_grids(task_cls, cells: pd.DataFrame, path: Path) -> Path | None:
    from ...bench.seeds import FINAL_SEED_OFFSET
    from .common import _params_key, final_grid_dir

    done = cells[cells.status == "done"] if "status" in cells else cells
    panels = []
    for method, c in sorted(done.groupby("method"), key=lambda kv: kv[0]):
        row = c.sort_values("seed").iloc[0]
        params = {k[6:]: row[k] for k in c.columns if k.startswith("param_") and pd.notna(row[k])}
        folder = final_grid_dir(task_cls.name, str(row.profile))
        pattern = f"{_params_key(params)}_seed{int(row.seed) + FINAL_SEED_OFFSET}_*.png"
        found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            label = ", ".join(f"{k}={v:.3g}" for k, v in params.items()) or "no guidance"
            panels.append((f"{method} ({label})", found[-1]))
    if not panels:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    ncol = min(len(panels), 4)
    nrow = int(np.ceil(len(panels) / ncol))
    h, w = plt.imread(panels[0][1]).shape[:2]
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, (3.6 * h / w + 0.45) * nrow + 0.4), squeeze=False)
    for ax, (title, png) in zip(axes.flat, panels):
        ax.imshow(plt.imread(png), cmap="gray")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{task_cls.name}: final samples per method (rows: conditions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
