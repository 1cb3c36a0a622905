"""The sections of ``report.html``: comparison across tasks, then each task (summary,
regret, ranks, pairs, plots, the task's own pictures), then how the report was made."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import comparison as cmp
from .analysis import ranks as ranks_mod
from .html import Section
from .report import objective_text, summary_table


def sections(summary: pd.DataFrame, cells: pd.DataFrame, comp: cmp.Comparison, pictures: dict[str, list[Path]],
             info: dict[str, str], written: dict[str, Path]) -> list[Section]:
    out = [Section("Across tasks", paragraphs=[cmp.POINTS_TEXT], children=[
        Section(f"Profile {f.profile}", paragraphs=[ranks_mod.describe(f)],
                tables=[("Mean rank over (task, seed) blocks (1 = best):",
                         f.mean_ranks.round(2).rename_axis("method").reset_index()),
                        (cmp.TASKS_CAPTION, cmp.tasks_table(comp, f.profile))],
                images=pictures.get(f.profile, []))
        for f in comp.friedman])]
    for task in sorted(cells.task.unique()):
        children = []
        for profile in sorted(cells[cells.task == task].profile.unique()):
            s = summary[(summary.task == task) & (summary.profile == profile)]
            tables = [(objective_text(cells, task), summary_table(s)),
                      ("Regret, median [25%, 75%] over seeds:", cmp.regret_table(comp, task, profile)),
                      ("Mean rank over seeds (1 = best):", cmp.rank_table(comp, task, profile))]
            pt = cmp.pair_table(comp, task, profile)
            if len(pt):
                tables.append(("Pairs of methods, final values over seeds:", pt))
            children.append(Section(f"{task}, profile {profile}", paragraphs=[cmp.reference_text(comp, task, profile)],
                                    tables=tables, images=pictures.get(f"{task}/{profile}", [])))
        if pictures.get(task):
            children.append(Section(f"{task}: the task's own pictures", images=pictures[task]))
        out.append(Section(f"Task {task}", children=children))
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
