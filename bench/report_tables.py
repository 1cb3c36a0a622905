"""The per-task summary table of the report, shared by ``summary.md`` (:mod:`.report`) and
``report.html`` (:mod:`.report_page`); apart from both so that neither imports the other."""

from __future__ import annotations

import pandas as pd


def objective_text(cells: pd.DataFrame, task: str) -> str:
    primary = cells[(cells.task == task)].primary.dropna()
    if not len(primary):
        return ""
    return (f"Upper-level objective: `{primary.iloc[0]}`. Metrics are final-protocol values, "
            "median [min, max] over seeds.")


def summary_table(g: pd.DataFrame) -> pd.DataFrame:
    """The readable table of one task and profile's rows of the summary."""
    table = pd.DataFrame({"method": g.method, "seeds": [f"{n}" if d == n else f"{n} ({d} done)"
                                                        for n, d in zip(g.n_seeds, g.n_done)]})
    metrics = [c[:-7] for c in g.columns if c.endswith("_median") and not c.startswith("cost_ratio")]
    for m in metrics:
        if g[f"{m}_median"].notna().any():
            table[m] = [_fmt_range(a, b, c) for a, b, c in zip(g[f"{m}_median"], g[f"{m}_min"], g[f"{m}_max"])]
    table["trials/seed"] = g.trials_per_seed.map(lambda x: f"{x:g}")
    table["search wall s (total)"] = g.search_wall_s_total.map(lambda x: f"{x:.2f}")
    table["cost ratio"] = g.cost_ratio_median.map(lambda x: f"{x:.3g}")
    table["peak RSS MiB"] = g.peak_rss_mib.map(lambda x: f"{x:.0f}")
    if g.peak_gpu_mib.notna().any():
        table["peak GPU MiB"] = g.peak_gpu_mib.map(lambda x: "" if pd.isna(x) else f"{x:.0f}")
    chosen = [c for c in g.columns if c.startswith("chosen_")]
    if chosen:
        table["chosen (median)"] = [
            ", ".join(f"{c[7:]}={row[c]:.3g}" for c in chosen if pd.notna(row[c])) for _, row in g.iterrows()
        ]
    return table


def _fmt_range(med: float, lo: float, hi: float) -> str:
    if pd.isna(med):
        return ""
    if lo == hi:
        return f"{med:.4g}"
    return f"{med:.4g} [{lo:.4g}, {hi:.4g}]"
