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

from ...bench.toolkit import atomic  # noqa: E402


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
    return atomic.save_figure(fig, path, dpi=110)


def _ws_lambda(task_cls, cells: pd.DataFrame) -> float:
    profile = cells.profile.iloc[0]
    try:
        return float(task_cls.profiles[profile].ws_lambda)
    except (KeyError, AttributeError):
        return 1.0


def sample_grids(task_cls, cells: pd.DataFrame, path: Path) -> Path | None:
    from ...bench.contracts.seeds import FINAL_SEED_OFFSET
    from .final_files import _params_key, final_grid_dir

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
    return atomic.save_figure(fig, path, dpi=110)


def premise(task_cls, cells: pd.DataFrame, trials: pd.DataFrame, folder: Path) -> list[Path]:
    """Issue 16's premise diagnostic, per profile: ``<task>_<profile>_premise.png`` and
    ``<task>_<profile>_premise.csv``. On one axis of lambda: the bank estimate of
    ``E_{p*_lambda}[r1]`` (premise 2: what the bilevel oracle optimises) with its effective
    sample size on a second axis, the guided sampler's actual upper score at the grid
    method's lambdas (premise 1: mean over seeds), and each method's final choice (realised
    upper score; hollow: the bank's prediction there, ``final_bank_upper``). The bank curve is
    the one the final protocol of the first seed wrote for these cells' configuration
    (``premise_seed<seed>_<config key>.csv`` next to the sample grids, shared by every
    storage on the machine; cells.csv's ``config_key``). The CSV has one row per
    lambda of the bank curve and of the grid: ``lam, bank_upper, bank_ess, sampler_upper``
    (``sampler_upper`` empty off the grid)."""
    from .final_files import final_grid_dir

    out = []
    if cells is None or len(cells) == 0:
        return out
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    primary = task_cls.upper_metric
    done = cells[cells.status == "done"] if "status" in cells else cells
    for profile, c in done.groupby("profile"):
        first = c.loc[c.seed.idxmin()]
        seed = int(first.seed)
        key = str(first.config_key)[:8] if "config_key" in c and pd.notna(first.config_key) else "*"
        found = sorted(final_grid_dir(task_cls.name, str(profile)).glob(f"premise_seed{seed}_{key}.csv"),
                       key=lambda p: p.stat().st_mtime)
        bank = pd.read_csv(found[-1]) if found else pd.DataFrame(columns=["lam", "bank_upper", "bank_ess"])
        t = trials[(trials.profile == profile)] if len(trials) and "profile" in trials else pd.DataFrame()
        grid = pd.Series(dtype=float)
        if len(t) and "param_lam" in t:
            g = t[(t.method == "grid") & (t.state == "COMPLETE") & t.param_lam.notna()]
            grid = g.groupby("param_lam").value.mean().sort_index()
        table = bank.set_index("lam")[["bank_upper", "bank_ess"]] if len(bank) else pd.DataFrame(
            columns=["bank_upper", "bank_ess"])
        rows = {float(k): v for k, v in grid.items()}
        merged = []
        for lam in sorted(set(map(float, table.index)) | set(rows)):
            near = [x for x in table.index if np.isclose(float(x), lam, rtol=1e-6)]
            b = table.loc[near[0]] if near else None
            s = [v for k, v in rows.items() if np.isclose(k, lam, rtol=1e-6)]
            merged.append({"lam": lam, "bank_upper": float(b.bank_upper) if b is not None else np.nan,
                           "bank_ess": float(b.bank_ess) if b is not None else np.nan,
                           "sampler_upper": s[0] if s else np.nan})
        merged = pd.DataFrame(merged).drop_duplicates("lam")
        csv = folder / f"{task_cls.name}_{profile}_premise.csv"
        atomic.write_csv(merged, csv)
        out.append(csv)
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        if len(bank):
            ax.plot(bank.lam, bank.bank_upper, "-", color="C1", label=f"bank estimate of E_p*[r1] (seed {seed})")
            ax2 = ax.twinx()
            ax2.plot(bank.lam, bank.bank_ess, ":", color="grey", label="bank ESS")
            ax2.set_yscale("log")
            ax2.set_ylabel("effective sample size of the bank", color="grey")
        if len(grid):
            ax.plot(grid.index, grid.values, "o-", color="black", label="guided sampler (grid trials, mean over seeds)")
        markers = "s^vDP*Xph<>"
        col = f"final_{primary}"
        for i, (method, m) in enumerate(sorted(done[done.profile == profile].groupby("method"), key=lambda kv: kv[0])):
            if "param_lam" not in m or not m.param_lam.notna().any() or col not in m:
                continue
            color = f"C{(i + 2) % 10}"
            mk = markers[i % len(markers)]
            ax.scatter(m.param_lam, m[col], marker=mk, s=70, color=color, edgecolor="black", zorder=5,
                       label=f"{method}: lambda={m.param_lam.median():.3g}")
            if "final_bank_upper" in m:
                ax.scatter(m.param_lam, m.final_bank_upper, marker=mk, s=70, facecolor="none", edgecolor=color,
                           zorder=5)
        ax.set_xscale("log")
        ax.set_xlabel("lambda (KL strength)")
        ax.set_ylabel(primary)
        ax.set_title(f"{task_cls.name} ({profile}): bank estimate vs guided sampler (hollow: bank's prediction "
                     f"at the choice)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        png = folder / f"{task_cls.name}_{profile}_premise.png"
        atomic.save_figure(fig, png, dpi=110)
        out.append(png)
    return out
