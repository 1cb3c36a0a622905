"""The comparison of methods: regret, ranks and tests, written as tables and text.

Files (in the report folder):

* ``regret.csv``: one row per cell and point (``at`` = 25%, 50%, 100% of the budget, search
  values; ``final``, the final-protocol value) with value, best, best_source, reference,
  regret and normalised_regret (see :mod:`diffhpo.bench.analysis.regret`).
* ``ranks.csv``: mean rank per task and method at each point over seeds, and rows with
  task ``(all tasks)``: the mean rank over every (task, seed) block of the profile.
* ``pairs.csv``: per task and pair of methods, wins/ties/losses over seeds, median
  difference with its bootstrap confidence interval, Wilcoxon p-value and Holm-adjusted.
* ``pairs_over_tasks.csv``: per profile and pair, the tasks where A's median final value beats
  B's, ties or loses, and where the per-task test finds A or B significantly better.
* ``comparison.md``: all of the above as text, with the Friedman test per profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import atomic
from .analysis import pairs as pairs_mod
from .analysis import ranks as ranks_mod
from .analysis import regret as regret_mod

ALL_TASKS = regret_mod.ALL_TASKS


@dataclass
class Comparison:
    points: pd.DataFrame  # regret.csv
    references: pd.DataFrame
    ranks: pd.DataFrame  # ranks.csv
    friedman: list[ranks_mod.Friedman]
    pairs: pd.DataFrame  # pairs.csv
    pairs_over_tasks: pd.DataFrame  # pairs_over_tasks.csv
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)


def compare(trials: pd.DataFrame, cells: pd.DataFrame) -> Comparison:
    pts = regret_mod.add_regret(regret_mod.points(trials, cells), cells)
    per_task = ranks_mod.per_task(pts)
    friedman = ranks_mod.across_tasks(pts)
    overall = [f.mean_ranks.rename_axis("method").reset_index().assign(task=ALL_TASKS, profile=f.profile,
                                                                       seeds=f.n_blocks)
               for f in friedman]
    ranks = pd.concat([per_task, *overall], ignore_index=True)[per_task.columns] if len(per_task) else per_task
    curves = pd.concat([regret_mod.curves(trials, cells, axis) for axis in ("fraction", "elapsed_s")]
                       + [regret_mod.pooled(trials, cells)], ignore_index=True)
    pairs = pairs_mod.pairwise(pts)
    return Comparison(points=pts, references=regret_mod.references(cells), ranks=ranks, friedman=friedman,
                      pairs=pairs, pairs_over_tasks=pairs_mod.over_tasks(pts, pairs), curves=curves)


def write_tables(comp: Comparison, out: Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"regret": out / "regret.csv", "ranks": out / "ranks.csv", "pairs": out / "pairs.csv",
             "pairs_over_tasks": out / "pairs_over_tasks.csv", "comparison_md": out / "comparison.md"}
    atomic.write_csv(comp.points, paths["regret"])
    atomic.write_csv(comp.ranks, paths["ranks"])
    atomic.write_csv(comp.pairs, paths["pairs"])
    atomic.write_csv(comp.pairs_over_tasks, paths["pairs_over_tasks"])
    atomic.write_text(paths["comparison_md"], markdown(comp))
    return paths


def regret_table(comp: Comparison, task: str, profile: str) -> pd.DataFrame:
    """Per method: median [25%, 75%] over seeds of the (normalised) regret at each point."""
    ref = comp.references.set_index(["task", "profile"]).loc[(task, profile)]
    col = "regret" if ref.note else "normalised_regret"
    p = comp.points[(comp.points.task == task) & (comp.points.profile == profile)]
    rows = []
    for method, g in p.groupby("method", sort=True):
        row = {"method": method}
        for at in ranks_mod.ORDER:
            v = g[g["at"] == at][col].dropna()
            row[f"{col.replace('_', ' ')} {at}"] = (
                "" if v.empty else f"{v.median():.3g} [{v.quantile(0.25):.3g}, {v.quantile(0.75):.3g}]")
        rows.append(row)
    return pd.DataFrame(rows)


def rank_table(comp: Comparison, task: str, profile: str) -> pd.DataFrame:
    r = comp.ranks[(comp.ranks.task == task) & (comp.ranks.profile == profile)].drop(columns=["task", "profile"])
    return r.sort_values(f"rank {regret_mod.FINAL}").round(2)


def pair_table(comp: Comparison, task: str, profile: str) -> pd.DataFrame:
    p = comp.pairs
    if p.empty:
        return p
    p = p[(p.task == task) & (p.profile == profile)]
    return pd.DataFrame({
        "A": p.a, "B": p.b, "seeds": p.seeds,
        "A wins / ties / losses": [f"{w} / {t} / {lo}" for w, t, lo in zip(p.a_wins, p.ties, p.a_losses)],
        "median A - B": p.median_difference.map(lambda x: f"{x:.4g}"),
        f"{pairs_mod.CONFIDENCE:.0%} CI": [
            "" if pd.isna(lo) else f"[{lo:.4g}, {hi:.4g}]" for lo, hi in zip(p.ci_low, p.ci_high)],
        "Wilcoxon p": p.p_value.map(lambda x: "" if pd.isna(x) else f"{x:.3g}"),
        "reading": [pairs_mod.verdict(r) for _, r in p.iterrows()],
    })


def tasks_table(comp: Comparison, profile: str) -> pd.DataFrame:
    p = comp.pairs_over_tasks
    if p.empty:
        return p
    p = p[p.profile == profile]
    return pd.DataFrame({
        "A": p.a, "B": p.b, "tasks": p.tasks,
        "A wins / ties / losses (median over seeds)": [f"{w} / {t} / {lo}" for w, t, lo in zip(p.a_wins, p.ties, p.a_losses)],
        "significantly better (Holm, per task): A / B": [f"{x} / {y}" for x, y in zip(p.a_significantly_better,
                                                                                      p.b_significantly_better)],
    })


TASKS_CAPTION = "Pairs of methods over tasks (a task counts once; 'significantly' needs the per-task test):"


def reference_text(comp: Comparison, task: str, profile: str) -> str:
    ref = comp.references.set_index(["task", "profile"]).loc[(task, profile)]
    text = f"Best value of `{ref.primary}` ({ref.direction}): {ref.best:.6g}, the {ref.best_source}."
    if ref.note:
        return f"{text} Regret = distance to it in the metric's units; {ref.note}."
    return (f"{text} Normalised regret = (value - best) / (default - best): 0 = best, 1 = the task's default "
            f"hyperparameters (method `default`, final value, median {ref.reference_median:.6g} over "
            f"{ref.default_seeds} seed(s)).")


POINTS_TEXT = ("Columns 25%, 50%, 100%: best search value reached by that fraction of the budget; final: the "
               "chosen hyperparameters re-evaluated under the final protocol (seed 1000 + seed). '-' at a search "
               "fraction: the method's trials are an oracle's estimates (the bilevel method's bank estimate or "
               "partially trained network), not evaluations, so only its final value is ranked.")


def _dashed(table: pd.DataFrame) -> pd.DataFrame:
    """Missing values shown as '-' (a rank that does not exist, not a number)."""
    return table.astype(object).where(table.notna(), "-")


def markdown(comp: Comparison) -> str:
    out = ["# diffhpo comparison", "", POINTS_TEXT, ""]
    for f in comp.friedman:
        out += [f"## All tasks, profile {f.profile}", "", ranks_mod.describe(f), "",
                _dashed(f.mean_ranks.round(2).rename_axis("method").reset_index()).to_markdown(index=False), ""]
        tt = tasks_table(comp, f.profile)
        if len(tt):
            out += [TASKS_CAPTION, "", tt.to_markdown(index=False), ""]
    for task, profile in comp.references[["task", "profile"]].itertuples(index=False):
        out += [f"## {task} ({profile} profile)", "", reference_text(comp, task, profile), "",
                "Regret, median [25%, 75%] over seeds:", "",
                regret_table(comp, task, profile).to_markdown(index=False), "",
                "Mean rank over seeds (1 = best):", "", _dashed(rank_table(comp, task, profile)).to_markdown(index=False), ""]
        pt = pair_table(comp, task, profile)
        if len(pt):
            out += ["Pairs of methods, final values over seeds:", "", pt.to_markdown(index=False), ""]
    return "\n".join(out)
