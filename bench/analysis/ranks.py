"""Average ranks at budget fractions, and the Friedman test with Nemenyi post-hoc tests.

**Per task.** For each seed, the methods of a task are ranked by their value at 25%, 50%
and 100% of the budget (best-so-far search values) and by their final-protocol value
(rank 1 = best; ties share the average rank; a method with no value yet at that fraction,
or a cell that failed, ranks last). The table gives the mean rank over seeds. A method
whose trials are oracle estimates (the bilevel method on the reward and schedule tasks,
see :mod:`.regret`) has no search value: it is left out of the ranks at 25%, 50% and
100% (shown blank) and ranked by its final value only.

**Across tasks** (per profile). Each (task, seed) run is one block: the methods run on
every task of the profile are ranked within each block by their final-protocol value, and
the mean rank over blocks is reported (with equal seeds per task, the mean over tasks of
the per-task mean ranks). Blocks with a missing final value are dropped. The Friedman test
(:func:`scipy.stats.friedmanchisquare`) asks whether the mean ranks differ more than
chance; Nemenyi's post-hoc test (:func:`scikit_posthocs.posthoc_nemenyi_friedman`) gives
the p-value of each pair, and the critical-difference diagram
(:func:`scikit_posthocs.critical_difference_diagram`) joins methods that are not
significantly different at ``ALPHA``. Blocks of one task share that task, so the
conclusions are about these tasks (over random seeds), not about tasks in general.

With fewer than ``MIN_BLOCKS`` blocks or fewer than 3 methods no test is run and the note
says why: with k = 3 methods and 4 blocks even perfect agreement gives chi2 = 8, p = 0.018
from the chi-square approximation, which is unreliable for so few blocks (Demsar 2006
recommends it from about 10 blocks); 5 is the floor here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats

from .regret import AT, FINAL

ALPHA = 0.05
MIN_BLOCKS = 5
MIN_METHODS = 3
ORDER = [*AT, FINAL]


def _signed(pts: pd.DataFrame) -> pd.Series:
    """Values with lower = better."""
    return pts.value.where(pts.direction != "maximize", -pts.value)


def _block_ranks(matrix: pd.DataFrame, estimated: pd.DataFrame | None = None) -> pd.DataFrame:
    """Ranks within each row (block), missing values last. Entries of ``estimated`` (cells
    without search values by design) are then blanked: ranked last, they left the other
    methods' ranks what they would be without them."""
    ranks = matrix.rank(axis=1, method="average", na_option="bottom")
    return ranks if estimated is None else ranks.mask(estimated.reindex_like(ranks).fillna(False).astype(bool))


def _mean_rank(matrix: pd.DataFrame, estimated: pd.DataFrame) -> pd.Series:
    """Mean rank over blocks; blank for a method with an estimate-only cell in any block
    (a mean over the remaining blocks would compare it on other tasks than the rest)."""
    flags = estimated.reindex_like(matrix).fillna(False).astype(bool)
    return _block_ranks(matrix, flags).mean(axis=0).mask(flags.any(axis=0))


def _matrix(g: pd.DataFrame, at: str, index) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(signed values, estimated flags) at ``at``: blocks x methods."""
    rows = g[g["at"] == at]
    flags = rows.assign(estimated=rows["estimated"].astype(bool) if "estimated" in rows else False)
    return (rows.pivot(index=index, columns="method", values="signed"),
            flags.pivot(index=index, columns="method", values="estimated"))


def per_task(pts: pd.DataFrame) -> pd.DataFrame:
    """One row per task, profile and method: mean rank over seeds at each point of ORDER."""
    pts = pts.assign(signed=_signed(pts))
    rows = []
    for (task, profile), g in pts.groupby(["task", "profile"], sort=True):
        table = {}
        for at in ORDER:
            table[f"rank {at}"] = _block_ranks(*_matrix(g, at, "seed")).mean(axis=0)
        df = pd.DataFrame(table)
        df.insert(0, "seeds", g[g["at"] == FINAL].groupby("method").seed.nunique())
        df = df.reset_index().rename(columns={"index": "method"})
        rows.append(df.assign(task=task, profile=profile))
    if not rows:
        return pd.DataFrame()
    out = pd.concat(rows, ignore_index=True)
    return out[["task", "profile", "method", "seeds", *[f"rank {at}" for at in ORDER]]]


@dataclass
class Friedman:
    """The across-task comparison of one profile."""

    profile: str
    methods: list[str]
    excluded: list[str]  # methods not run on every task of the profile
    n_blocks: int
    n_tasks: int
    mean_ranks: pd.DataFrame  # method x ORDER, mean rank over blocks
    statistic: float | None = None
    p_value: float | None = None
    nemenyi: pd.DataFrame | None = None  # pairwise p-values
    cd: float | None = None  # Nemenyi critical difference of mean ranks at ALPHA
    note: str = ""

    @property
    def tested(self) -> bool:
        return self.p_value is not None


def across_tasks(pts: pd.DataFrame) -> list[Friedman]:
    """One :class:`Friedman` per profile: blocks = (task, seed) runs."""
    pts = pts.assign(signed=_signed(pts))
    results = []
    for profile, g in pts.groupby("profile", sort=True):
        tasks = sorted(g.task.unique())
        per = g.groupby("task").method.unique()
        common = sorted(set.intersection(*(set(per[t]) for t in tasks)))
        excluded = sorted(set(g.method) - set(common))
        g = g[g.method.isin(common)]
        mats = {at: _matrix(g, at, ["task", "seed"]) for at in ORDER}
        final = mats[FINAL][0].dropna()
        mean_ranks = pd.DataFrame({f"rank {at}": _mean_rank(*(m.loc[final.index] for m in mats[at])) for at in ORDER})
        mean_ranks = mean_ranks.sort_values(f"rank {FINAL}")
        res = Friedman(profile=str(profile), methods=common, excluded=excluded, n_blocks=len(final),
                       n_tasks=final.index.get_level_values(0).nunique(), mean_ranks=mean_ranks)
        if len(common) < MIN_METHODS:
            res.note = f"the Friedman test needs at least {MIN_METHODS} methods run on every task; {len(common)} were"
        elif len(final) < MIN_BLOCKS:
            res.note = (f"too few runs for the Friedman test: {len(final)} (task, seed) block(s) with every method's "
                        f"final value; it needs at least {MIN_BLOCKS}")
        else:
            stat = stats.friedmanchisquare(*(final[m].to_numpy() for m in final.columns))
            res.statistic, res.p_value = float(stat.statistic), float(stat.pvalue)
            res.nemenyi = sp.posthoc_nemenyi_friedman(final)
            k, n = final.shape[1], final.shape[0]
            q = stats.studentized_range.ppf(1 - ALPHA, k, np.inf) / np.sqrt(2.0)
            res.cd = float(q * np.sqrt(k * (k + 1) / (6.0 * n)))
            if not np.isfinite(res.statistic):  # every block a complete tie
                res.statistic = res.p_value = None
                res.nemenyi = res.cd = None
                res.note = "every block is a tie: the Friedman test is undefined"
        results.append(res)
    return results


def describe(res: Friedman) -> str:
    """One paragraph of text for the report."""
    head = (f"Profile `{res.profile}`: {len(res.methods)} methods on {res.n_tasks} task(s), "
            f"{res.n_blocks} (task, seed) blocks, ranked by final value.")
    if res.excluded:
        head += f" Not on every task, left out: {', '.join(res.excluded)}."
    if not res.tested:
        return f"{head} No test: {res.note}."
    verdict = "the mean ranks differ" if res.p_value < ALPHA else "no significant difference between the mean ranks"
    return (f"{head} Friedman chi2 = {res.statistic:.3g}, p = {res.p_value:.3g}: {verdict} at alpha = {ALPHA}. "
            f"Nemenyi critical difference: {res.cd:.3g} ranks.")
