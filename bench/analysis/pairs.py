"""Per pair of methods and task: wins, ties and losses over seeds, a paired test and a
bootstrap confidence interval of the median difference (final-protocol values).

The seeds of two methods on one task are paired (same seed, same final-protocol seed).
``difference`` = value of A - value of B in the metric's units; A *wins* a seed when it is
better in the metric's direction, and a tie is a difference within 1e-9 relative.

* Paired test: Wilcoxon's signed-rank test (:func:`scipy.stats.wilcoxon`, two-sided,
  exact where possible, zero differences dropped), Holm-adjusted over the pairs of a task
  (:func:`statsmodels.stats.multitest.multipletests`).
* Confidence interval: percentile bootstrap of the median difference
  (:func:`scipy.stats.bootstrap`, paired by seed, 9,999 resamples, seeded).

Across tasks (:func:`over_tasks`), per profile: on how many tasks A's median final value over
seeds beats B's, ties or loses, and on how many of those the per-task test finds A (or B)
significantly better (Holm p < 0.05).

Both tests need at least ``MIN_PAIRS`` seeds with a non-zero difference: with 5, the smallest
two-sided exact p-value of the signed-rank test is 2 / 2^5 = 0.0625, so it could never
reject at 0.05, and a bootstrap of 5 values has few distinct medians. Below that the row
gives counts only and says "too few seeds".
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from .ranks import ALPHA
from .regret import FINAL

MIN_PAIRS = 6
CONFIDENCE = 0.95
RESAMPLES = 9999


def pairwise(pts: pd.DataFrame, at: str = FINAL) -> pd.DataFrame:
    """One row per task, profile and pair (A, B) of methods, A before B alphabetically."""
    rows = []
    sel = pts[pts["at"] == at]
    for (task, profile), g in sel.groupby(["task", "profile"], sort=True):
        matrix = g.pivot(index="seed", columns="method", values="value")
        sign = -1.0 if g.direction.iloc[0] == "maximize" else 1.0
        task_rows = []
        for a, b in itertools.combinations(sorted(matrix.columns), 2):
            pair = matrix[[a, b]].dropna()
            diff = (pair[a] - pair[b]).to_numpy(float, copy=True)
            tie = np.isclose(pair[a].to_numpy(float), pair[b].to_numpy(float), rtol=1e-9, atol=0.0)
            diff[tie] = 0.0
            better = sign * diff < 0
            row = {"task": task, "profile": profile, "direction": g.direction.iloc[0], "a": a, "b": b,
                   "seeds": len(diff),
                   "a_wins": int(better.sum()), "ties": int(tie.sum()), "a_losses": int((~better & ~tie).sum()),
                   "median_difference": float(np.median(diff)) if len(diff) else np.nan,
                   "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "p_holm": np.nan, "note": ""}
            nonzero = int((~tie).sum())
            if nonzero < MIN_PAIRS:
                row["note"] = f"too few seeds: {nonzero} with a non-zero difference, the test needs {MIN_PAIRS}"
            else:
                row["p_value"] = float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)
                ci = stats.bootstrap((diff,), np.median, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                                     method="percentile", rng=np.random.default_rng(0)).confidence_interval
                row["ci_low"], row["ci_high"] = float(ci.low), float(ci.high)
            task_rows.append(row)
        tested = [r for r in task_rows if not np.isnan(r["p_value"])]
        if tested:
            holm = multipletests([r["p_value"] for r in tested], alpha=ALPHA, method="holm")[1]
            for r, p in zip(tested, holm):
                r["p_holm"] = float(p)
        rows += task_rows
    return pd.DataFrame(rows)


def _better(a: float, b: float, direction: str) -> int:
    """+1 when a is better than b, -1 when worse, 0 for a tie (1e-9 relative)."""
    if np.isclose(a, b, rtol=1e-9, atol=0.0):
        return 0
    return 1 if (a < b) != (direction == "maximize") else -1


def over_tasks(pts: pd.DataFrame, per_task: pd.DataFrame, at: str = FINAL) -> pd.DataFrame:
    """One row per profile and pair (A, B): tasks where A's median over seeds is better,
    equal or worse than B's, and tasks where the per-task test finds either significantly
    better (``per_task``: the frame of :func:`pairwise`)."""
    rows = []
    sel = pts[(pts["at"] == at) & pts.value.notna()]
    for profile, g in sel.groupby("profile", sort=True):
        med = g.groupby(["task", "method"]).value.median().unstack()
        direction = g.groupby("task").direction.first()
        for a, b in itertools.combinations(sorted(med.columns), 2):
            both = med[[a, b]].dropna()
            outcome = [_better(both.at[t, a], both.at[t, b], direction[t]) for t in both.index]
            tested = per_task[(per_task.profile == profile) & (per_task.a == a) & (per_task.b == b)
                              & (per_task.p_holm < ALPHA)] if len(per_task) else per_task
            sig = [_better(r.median_difference, 0.0, r.direction) for r in tested.itertuples()]
            rows.append({"profile": profile, "a": a, "b": b, "tasks": len(both), "a_wins": outcome.count(1),
                         "ties": outcome.count(0), "a_losses": outcome.count(-1),
                         "a_significantly_better": sig.count(1), "b_significantly_better": sig.count(-1)})
    return pd.DataFrame(rows)


def verdict(row: pd.Series) -> str:
    """Short reading of one pairwise row."""
    if row.note:
        return row.note
    if row.p_holm < ALPHA:
        sign = -1.0 if row.direction == "maximize" else 1.0
        winner = row.a if sign * row.median_difference < 0 else row.b
        return f"{winner} better (Holm p = {row.p_holm:.3g})"
    return f"no significant difference (Holm p = {row.p_holm:.3g})"
