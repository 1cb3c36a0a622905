"""The verdict: one line per task and one across tasks, worded from the tests' results.

**Per task and profile** (:func:`per_task`): the best method is the one with the best median
final-protocol value over its seeds (ties: the first name alphabetically). Every other method
is then put in one of four groups by the pairwise test of :mod:`.pairs` against the best:

* *beats*: the Wilcoxon test, Holm-adjusted over the task's pairs, rejects at ``ALPHA`` and
  the best method is the better one;
* *beaten by*: the same, the other way round (possible: a better median is not a better
  paired difference);
* *cannot be told apart from*: tested, Holm p >= ``ALPHA``; where no pair of the task could
  reach Holm p < ``ALPHA`` at all (the exact two-sided signed-rank test's smallest p-value is
  2 / 2^n for n seeds, times the number of tested pairs after Holm), the line says so, with the
  number of seeds that could;
* *too few seeds to test*: fewer than :data:`.pairs.MIN_PAIRS` seeds with a non-zero difference;
  the line says how many there are and how many the test needs.

**Across tasks** (:func:`across_tasks`, per profile): the best method by mean rank of the final
value over (task, seed) blocks (:mod:`.ranks`). Where the Friedman test rejects at ``ALPHA``,
the best method *beats* every method whose Nemenyi p-value against it is below ``ALPHA`` and
*cannot be told apart from* the others; where it does not reject, from all of them; where it
cannot run, the line gives the test's note (too few blocks, and how many it needs).

Nothing is written by hand: every word comes from these frames, so the same storage always
gives the same lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .pairs import MIN_PAIRS
from .ranks import ALPHA, Friedman
from .regret import ALL_TASKS, FINAL


@dataclass
class Verdict:
    task: str  # ALL_TASKS for the line across tasks
    profile: str
    best: str
    seeds: int  # seeds (per task) or (task, seed) blocks (across tasks)
    beats: list[str] = field(default_factory=list)
    beaten_by: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    untested: list[str] = field(default_factory=list)
    untested_note: str = ""
    value: str = ""  # the best method's median final value, as text
    power_note: str = ""  # why 'cannot be told apart' may be for want of seeds

    def line(self) -> str:
        where = "All tasks" if self.task == ALL_TASKS else self.task
        unit = "(task, seed) blocks" if self.task == ALL_TASKS else "seeds"
        parts = [f"{where} ({self.profile}, {self.seeds} {unit}): best {self.best}{self.value}"]
        if self.beats:
            parts.append(f"significantly better than {', '.join(self.beats)}")
        if self.beaten_by:
            parts.append(f"significantly worse than {', '.join(self.beaten_by)}")
        if self.tied:
            parts.append(f"cannot be told apart from {', '.join(self.tied)}" + self.power_note)
        if self.untested:
            others = "every other method" if not (self.beats or self.beaten_by or self.tied) else ", ".join(self.untested)
            parts.append(f"too few seeds to test against {others} ({self.untested_note})")
        return "; ".join(parts) + "."


def _median_final(pts: pd.DataFrame) -> pd.Series:
    f = pts[(pts["at"] == FINAL) & pts.value.notna()]
    return f.groupby("method").value.median()


def per_task(pts: pd.DataFrame, pairs: pd.DataFrame) -> list[Verdict]:
    out = []
    for (task, profile), g in pts.groupby(["task", "profile"], sort=True):
        med = _median_final(g)
        if med.empty:
            continue
        maximise = g.direction.iloc[0] == "maximize"
        med = med.sort_index()
        best = str(med.idxmax() if maximise else med.idxmin())
        seeds = int(g[(g["at"] == FINAL) & (g.method == best) & g.value.notna()].seed.nunique())
        v = Verdict(task=str(task), profile=str(profile), best=best, seeds=seeds,
                    value=f" (median final {g.primary.iloc[0]} {med[best]:.4g}, {'higher' if maximise else 'lower'} "
                          "is better)")
        p = pairs[(pairs.task == task) & (pairs.profile == profile)] if len(pairs) else pairs
        nonzero = []
        for other in med.index:
            if other == best:
                continue
            rows = p[((p.a == best) & (p.b == other)) | ((p.a == other) & (p.b == best))] if len(p) else p
            if not len(rows) or pd.isna(rows.p_holm.iloc[0]):
                v.untested.append(str(other))
                if len(rows):
                    r = rows.iloc[0]
                    nonzero.append(int(r.seeds - r.ties))
                continue
            r = rows.iloc[0]
            if r.p_holm >= ALPHA:
                v.tied.append(str(other))
                continue
            sign = -1.0 if r.direction == "maximize" else 1.0
            a_better = sign * r.median_difference < 0
            (v.beats if (r.a == best) == a_better else v.beaten_by).append(str(other))
        n_pairs = int(p.p_holm.notna().sum()) if len(p) else 0
        if v.tied and not v.beats and n_pairs:
            tested = [int(r.seeds - r.ties) for r in p.itertuples() if pd.notna(r.p_holm)]
            floor = n_pairs * 2.0 / 2 ** max(tested)
            if floor >= ALPHA:
                need = next(n for n in range(MIN_PAIRS, 64) if n_pairs * 2.0 / 2 ** n < ALPHA)
                v.power_note = (f" (whatever the data, {max(tested)} seeds cannot reach Holm p < {ALPHA} over "
                                f"{n_pairs} pairs: the smallest possible is {min(floor, 1.0):.2g}; it takes {need} seeds)")
        if v.untested:
            most = max(nonzero) if nonzero else 0
            v.untested_note = (f"at most {most} seed(s) with a non-zero difference; the test needs {MIN_PAIRS}")
        out.append(v)
    return out


def across_tasks(friedman: list[Friedman]) -> list[Verdict]:
    out = []
    for f in friedman:
        r = f.mean_ranks[f"rank {FINAL}"].dropna()
        if r.empty:
            continue
        best = str(r.sort_index().idxmin())
        v = Verdict(task=ALL_TASKS, profile=f.profile, best=best, seeds=f.n_blocks,
                    value=f" (mean rank {r[best]:.2f} of {len(r)} methods, 1 = best)")
        others = [str(m) for m in r.index if m != best]
        if not f.tested:
            v.untested, v.untested_note = others, f.note
        elif f.p_value >= ALPHA:
            v.tied = others
        else:
            for m in others:
                p = float(f.nemenyi.loc[best, m]) if f.nemenyi is not None else np.nan
                (v.beats if p < ALPHA else v.tied).append(m)
        out.append(v)
    return out


def lines(pts: pd.DataFrame, pairs: pd.DataFrame, friedman: list[Friedman]) -> list[str]:
    """Across tasks first (where more than one task was run), then one line per task."""
    multi = {p for p, g in pts.groupby("profile") if g.task.nunique() > 1}
    top = [v.line() for v in across_tasks(friedman) if v.profile in multi]
    return top + [v.line() for v in per_task(pts, pairs)]


CD_NOTE = ("The diagram: each method's mean rank of its final value over the (task, seed) blocks (1 = best, "
           "left); methods joined by a black bar cannot be told apart (Nemenyi, p >= 0.05).")
HOW = (f"How to read it: 'significantly better' = paired Wilcoxon test over seeds, Holm-adjusted over the "
       f"task's pairs, p < {ALPHA} (across tasks: Friedman test, then Nemenyi, p < {ALPHA}); 'cannot be told "
       f"apart' = tested, not significant; a test needs {MIN_PAIRS} seeds with a non-zero difference.")
