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
* ``verdict.md``: the verdict lines and the mean-rank table per profile (what ``diffhpo run``
  prints at its end).
* ``comparison.md``: the verdict first (:mod:`diffhpo.bench.analysis.verdict`), then all of the
  above as text, with the Friedman test per profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .toolkit import atomic
from .analysis import pairs as pairs_mod
from .analysis import ranks as ranks_mod
from .analysis import regret as regret_mod
from .analysis import verdict as verdict_mod

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
    verdict: list[str] = field(default_factory=list)  # one line per task, and across tasks


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
                      pairs=pairs, pairs_over_tasks=pairs_mod.over_tasks(pts, pairs), curves=curves,
                      verdict=verdict_mod.lines(pts, pairs, friedman))


def write_tables(comp: Comparison, out: Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"regret": out / "regret.csv", "ranks": out / "ranks.csv", "pairs": out / "pairs.csv",
             "pairs_over_tasks": out / "pairs_over_tasks.csv", "comparison_md": out / "comparison.md",
             "verdict_md": out / "verdict.md"}
    atomic.write_csv(comp.points, paths["regret"])
    atomic.write_csv(comp.ranks, paths["ranks"])
    atomic.write_csv(comp.pairs, paths["pairs"])
    atomic.write_csv(comp.pairs_over_tasks, paths["pairs_over_tasks"])
    atomic.write_text(paths["comparison_md"], markdown(comp))
    atomic.write_text(paths["verdict_md"], brief(comp))
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


def brief(comp: Comparison) -> str:
    """The verdict lines, then each profile's mean-rank table (``verdict.md``)."""
    out = ["Verdict:", *[f"- {line}" for line in comp.verdict], ""]
    for f in comp.friedman:
        out += [f"Mean rank over (task, seed) blocks, profile {f.profile} (1 = best):", "",
                _dashed(f.mean_ranks.round(2).rename_axis("method").reset_index()).to_markdown(index=False), ""]
    return "\n".join(out)


def markdown(comp: Comparison) -> str:
    out = ["# diffhpo comparison", "", "## Verdict", "", *[f"- {line}" for line in comp.verdict], "",
           verdict_mod.HOW, "", POINTS_TEXT, ""]
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


def pair_matrices(comp: Comparison, task: str, profile: str) -> tuple[pd.DataFrame, ...] | None:
    """(wins, totals, significant), method x method: seeds where the row beats the column, the
    seeds compared, and whether the row is significantly better (Holm p < ALPHA). ``task`` =
    ALL_TASKS: tasks where the row's median final value beats the column's, and significance
    from Nemenyi's test where the Friedman test rejects."""
    if task == ALL_TASKS:
        p = comp.pairs_over_tasks
        p = p[p.profile == profile] if len(p) else p
        n_col = "tasks"
    else:
        p = comp.pairs
        p = p[(p.task == task) & (p.profile == profile)] if len(p) else p
        n_col = "seeds"
    if not len(p):
        return None
    methods = sorted(set(p.a) | set(p.b))
    wins = pd.DataFrame(0, index=methods, columns=methods)
    totals, sig = wins.copy(), pd.DataFrame(False, index=methods, columns=methods)
    f = next((f for f in comp.friedman if f.profile == profile), None)
    for r in p.itertuples():
        wins.loc[r.a, r.b], wins.loc[r.b, r.a] = r.a_wins, r.a_losses
        totals.loc[r.a, r.b] = totals.loc[r.b, r.a] = getattr(r, n_col)
        if task != ALL_TASKS and pd.notna(r.p_holm) and r.p_holm < pairs_mod.ALPHA:
            a_better = (-1.0 if r.direction == "maximize" else 1.0) * r.median_difference < 0
            sig.loc[r.a, r.b], sig.loc[r.b, r.a] = a_better, not a_better
        elif task == ALL_TASKS and f is not None and f.tested and f.p_value < pairs_mod.ALPHA \
                and r.a in f.nemenyi.index and r.b in f.nemenyi.index and f.nemenyi.loc[r.a, r.b] < pairs_mod.ALPHA:
            rank = f.mean_ranks[f"rank {regret_mod.FINAL}"]
            sig.loc[r.a, r.b], sig.loc[r.b, r.a] = rank[r.a] < rank[r.b], rank[r.b] < rank[r.a]
    return wins, totals, sig


MATRIX_CAPTION = ("Pairs of methods: the row's wins against the column over seeds (across tasks: over tasks, "
                  "by median final value); * = significantly better (Holm-adjusted Wilcoxon; across tasks: "
                  "Nemenyi after a significant Friedman test). Every row, with p-values and confidence "
                  "intervals, is in `pairs.csv` and `pairs_over_tasks.csv`.")


def cost_frame(cells: pd.DataFrame, task: str, profile: str) -> pd.DataFrame:
    """Per method: 25/50/75% over seeds of the final value (quality), search wall seconds,
    search CPU seconds, peak RSS and peak GPU memory (MiB)."""
    c = cells[(cells.task == task) & (cells.profile == profile)]
    col = f"final_{c.primary.iloc[0]}" if len(c) else ""
    rows = []
    for method, g in c.groupby("method", sort=True):
        row = {"method": method}
        for name, series in [("quality", g[col] if col in g else pd.Series(dtype=float)),
                             ("wall_s", g.search_wall_s), ("cpu_s", g.search_cpu_s),
                             ("rss_mib", g.peak_rss_mib), ("gpu_mib", g.peak_gpu_mib)]:
            s = pd.to_numeric(series, errors="coerce").dropna()
            for q, label in [(0.25, "q25"), (0.5, "median"), (0.75, "q75")]:
                row[f"{name}_{label}"] = float(s.quantile(q)) if len(s) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def cost_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The readable table of :func:`cost_frame`: median [25%, 75%] over seeds."""
    def fmt(r, name, spec):
        if pd.isna(r[f"{name}_median"]):
            return "-"
        return f"{r[f'{name}_median']:{spec}} [{r[f'{name}_q25']:{spec}}, {r[f'{name}_q75']:{spec}}]"

    cols = {"final value": ("quality", ".4g"), "search wall s": ("wall_s", ".3g"), "search CPU s": ("cpu_s", ".3g"),
            "peak RSS MiB": ("rss_mib", ".0f"), "peak GPU MiB": ("gpu_mib", ".0f")}
    return pd.DataFrame({"method": frame.method, **{k: [fmt(r, n, s) for _, r in frame.iterrows()]
                                                    for k, (n, s) in cols.items()}})


COST_CAPTION = ("Time and memory per method, median [25%, 75%] over seeds: search wall and CPU seconds "
                "(all trials of a cell), peak resident memory and peak GPU memory (search and final protocol; "
                "'-': no GPU used).")
