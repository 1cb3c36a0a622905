"""The sections of ``report.html``: the verdict first (with any warning: unfinished cells, a
truncated journal, stale files removed, and the critical-difference diagram), then the
comparison across tasks, each task (summary, regret, ranks, the pairs matrix, cost against
quality, plots, the task's own pictures), the diagnostics of each method, and how the report
was made."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import comparison as cmp
from .analysis import ranks as ranks_mod
from .analysis import verdict as verdict_mod
from .html import Section
from .report_tables import objective_text, summary_table


def lead(comp: cmp.Comparison, pictures: dict[str, list[Path]], warnings: list[str]) -> list[Section]:
    """What the page opens with: the warnings, the verdict and the critical-difference diagrams."""
    images = [p for f in comp.friedman for p in pictures.get(f"{f.profile}/cd", [])]
    return [Section("Verdict", warnings=warnings, items=comp.verdict or ["No final value in the storage yet."],
                    notes=[verdict_mod.HOW] + ([verdict_mod.CD_NOTE] if images else []), images=images)]


def sections(summary: pd.DataFrame, cells: pd.DataFrame, comp: cmp.Comparison, pictures: dict[str, list[Path]],
             info: dict[str, str], written: dict[str, Path], diagnostics: list = ()) -> list[Section]:
    out = [Section("Across tasks", paragraphs=[cmp.POINTS_TEXT], children=[
        Section(f"Profile {f.profile}", paragraphs=[ranks_mod.describe(f)],
                tables=[("Mean rank over (task, seed) blocks (1 = best):",
                         f.mean_ranks.round(2).rename_axis("method").reset_index())],
                images=pictures.get(f"{f.profile}/pairs", []) + pictures.get(f.profile, []))
        for f in comp.friedman])]
    for task in sorted(cells.task.unique()):
        children = []
        for profile in sorted(cells[cells.task == task].profile.unique()):
            s = summary[(summary.task == task) & (summary.profile == profile)]
            tables = [(objective_text(cells, task), summary_table(s)),
                      ("Regret, median [25%, 75%] over seeds:", cmp.regret_table(comp, task, profile)),
                      ("Mean rank over seeds (1 = best):", cmp.rank_table(comp, task, profile)),
                      (cmp.COST_CAPTION, cmp.cost_table(cmp.cost_frame(cells, task, profile)))]
            pairs = pictures.get(f"{task}/{profile}/pairs", [])
            paragraphs = [cmp.reference_text(comp, task, profile)] + ([cmp.MATRIX_CAPTION] if pairs else [])
            children.append(Section(f"{task}, profile {profile}", paragraphs=paragraphs, tables=tables,
                                    images=pairs + pictures.get(f"{task}/{profile}/cost", [])
                                    + pictures.get(f"{task}/{profile}", [])))
        if pictures.get(task):
            children.append(Section(f"{task}: the task's own pictures", images=pictures[task]))
        out.append(Section(f"Task {task}", children=children))
    by_method: dict[str, list] = {}
    for d in diagnostics:
        by_method.setdefault(d.method, []).append(d)
    for method, ds in sorted(by_method.items()):
        out.append(Section(f"Diagnostics: {method}", children=[
            Section(d.title, paragraphs=d.paragraphs, tables=d.tables, images=d.images) for d in ds]))
    c = cells.drop_duplicates(["task", "profile"])
    setup = pd.DataFrame({"task": c.task, "profile": c.profile, "objective": c.primary, "direction": c.direction,
                          "budget per cell": c.budget,
                          "methods": [", ".join(sorted(cells[(cells.task == t) & (cells.profile == p)].method.unique()))
                                      for t, p in zip(c.task, c.profile)],
                          "seeds": [", ".join(map(str, sorted(cells[(cells.task == t) & (cells.profile == p)].seed.unique())))
                                    for t, p in zip(c.task, c.profile)]})
    files = sorted(p.name for k, p in written.items() if p.suffix != ".png")
    facts = {k.replace("version_", ""): v for k, v in info.items()}
    out.append(Section("How this report was made", facts=facts,
                       paragraphs=["Files written beside this page: " + ", ".join(f"`{f}`" for f in files) + "."],
                       tables=[("The cells in the storage:", setup)]))
    return out
