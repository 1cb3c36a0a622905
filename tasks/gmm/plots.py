"""Pictures of the mixture tasks for the report.

``gmm-reward`` (:func:`reward_plots`), for each profile in the cells:

* ``<task>_<profile>_lambda.png``: on one axis of lambda, the exact curve
  ``E_{p*_lambda}[r1]`` with ``lambda*``, a dense sweep of the guided sampler's upper score
  (seed 0, search-time sample count), the bank estimate of the bilevel oracle (seed 0's
  bank, the self-normalised ``E[r1]``), and each method's final-protocol choice (its lambda,
  its final upper score). The task is built from the profile's defaults (``--option``
  overrides of the run are not stored with the cells).
* ``<task>_<profile>_samples.png``: per method, the first seed's final samples over the
  contours of the exact density of what its parameters ask for.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ...bench.toolkit import atomic  # noqa: E402

SWEEP = 25  # guided-sampler lambdas of the dense sweep


def _params(row) -> dict:
    return {k[6:]: float(row[k]) for k in row.index if k.startswith("param_") and pd.notna(row[k])}


def reward_plots(task_cls, cells: pd.DataFrame, folder: Path) -> list[Path]:
    paths = []
    if cells is None or len(cells) == 0:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    done = cells[cells.status == "done"] if "status" in cells else cells
    for profile, c in done.groupby("profile"):
        task = task_cls(str(profile))
        paths.append(_lambda_plot(task, c, folder / f"{task_cls.name}_{profile}_lambda.png"))
        p = _samples_plot(task, c, folder / f"{task_cls.name}_{profile}_samples.png")
        if p is not None:
            paths.append(p)
    return paths


def curves(task, seed: int = 0, n_sweep: int = SWEEP, n_dense: int = 200) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (lambdas, upper scores)}`` on the task's lambda range: ``exact`` (the tilt's
    E[r1], dense), ``guided`` (the guided sampler's mean r1, ``n_sweep`` lambdas, search-time
    sample count, seed ``seed``) and ``bank`` (the bilevel oracle's self-normalised estimate on
    seed ``seed``'s bank of the task's solver, dense)."""
    from ..reward import penalty as pen

    cfg = task.config
    lams = np.geomspace(cfg.lam_low, cfg.lam_high, n_dense)
    sweep = np.geomspace(cfg.lam_low, cfg.lam_high, n_sweep)
    guided = type(task)(task.profile, sampler="guided")
    r1, r2 = task.bank(seed).per_condition(cfg.guidance)[0]
    return {
        "exact": (lams, np.array([task.exact_upper(v) for v in lams])),
        "guided": (sweep, np.array([guided.evaluate({"lam": v}, seed)["upper"] for v in sweep])),
        "bank": (lams, np.array([pen.tilted_mean(r1, r2, v) for v in lams])),
    }


def _lambda_plot(task, cells: pd.DataFrame, path: Path) -> Path:
    cv = curves(task)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    lams, exact = cv["exact"]
    ax.plot(lams, exact, color="black", label="exact E[r1] of the tilt")
    ax.axvline(task.lambda_star(), color="black", linestyle=":", label=f"lambda* = {task.lambda_star():.3g}")
    ax.plot(*cv["guided"], "o-", color="C0", ms=3, label="guided sampler (seed 0)")
    ax.plot(*cv["bank"], "--", color="C1", label=f"bank estimate (seed 0, sampler={task.config.sampler})")
    markers = "s^vDP*Xph<>"
    for i, (method, c) in enumerate(sorted(cells.groupby("method"), key=lambda kv: kv[0])):
        if "param_lam" in c and c.param_lam.notna().any():
            ax.scatter(c.param_lam, c["final_upper"], marker=markers[i % len(markers)], s=60, color=f"C{i + 2}",
                       edgecolor="black", zorder=5, label=f"{method}: lambda={c.param_lam.median():.3g}")
    span = max(exact) - min(exact)
    ax.set_ylim(min(exact) - 0.5 * span, max(exact) + 0.3 * span)  # a diverging sampler falls off the axis
    ax.set_xscale("log")
    ax.set_xlabel("lambda (KL strength)")
    ax.set_ylabel("upper score E[r1]")
    ax.set_title(f"{task.name} ({task.profile}): exact, guided and bank curves; markers: final runs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)


def _samples_plot(task, cells: pd.DataFrame, path: Path) -> Path | None:
    from ...bench.contracts.seeds import FINAL_SEED_OFFSET
    from ..reward.final_files import _params_key, final_grid_dir

    panels = []
    for method, c in sorted(cells.groupby("method"), key=lambda kv: kv[0]):
        row = c.sort_values("seed").iloc[0]
        params = _params(row)
        file = final_grid_dir(task.name, task.profile) / f"{_params_key(params)}_seed{int(row.seed) + FINAL_SEED_OFFSET}.npy"
        if file.is_file():
            panels.append((method, params, np.load(file)))
    if not panels:
        return None
    ncol = min(len(panels), 4)
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.4 * nrow), squeeze=False)
    g = np.linspace(-3, 3.5, 120)
    gx, gy = np.meshgrid(g, g)
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1))
    for ax, (method, params, x) in zip(axes.flat, panels):
        dens = task.target(params).log_prob(grid).exp().numpy().reshape(gx.shape)
        ax.contour(gx, gy, dens, levels=8, colors="black", linewidths=0.6)
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color="C0")
        label = ", ".join(f"{k}={v:.3g}" for k, v in params.items()) or "no guidance"
        outside = int(np.sum((x < g[0]).any(1) | (x > g[-1]).any(1)))
        ax.set_title(f"{method} ({label})" + (f"; {outside} of {len(x)} off the axes" if outside else ""), fontsize=8)
        ax.set_xlim(g[0], g[-1])
        ax.set_ylim(g[0], g[-1])
        ax.set_aspect("equal")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{task.name}: final samples over the exact density of each method's choice", fontsize=10)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)
