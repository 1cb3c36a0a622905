"""The bilevel method's diagnostics on the schedule tasks (``gmm-schedule``, ``mnist-schedule``):
the penalty method's premise and the signal-to-noise ratio of the hypergradient's two terms,
computed from the outer iterations' user attributes (``gamma``, ``yz_distance``, ``zo_<name>``,
``penalty_<name>``). Shared by the report (:meth:`ScheduleDiagnostics.diagnostics`, the task
hook of :mod:`diffhpo.bench.diagnostics`) and ``benchmarks/bilevel_ablation.py``.

**SNR** of a term, per coordinate: ``|mean_k t_k| / std_k t_k`` over the outer iterations k
of one cell (see the benchmark's docstring for why over iterations). ``|zo| / |penalty|``: the
ratio of the terms' root-mean-square sizes in normalised coordinates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

TERMS = ("zo", "penalty")


def snr(values: np.ndarray) -> np.ndarray:
    """|mean| / std over iterations (axis 0), per coordinate."""
    return np.abs(values.mean(0)) / np.maximum(values.std(0, ddof=1), 1e-300)


def normalised(ranges: Mapping[str, tuple[float, float]], attrs: Mapping, term: str) -> np.ndarray:
    """A hypergradient term recorded by the oracle (``<term>_<name>``, natural units) in the
    sampler's normalised coordinates."""
    width = np.array([hi - lo for lo, hi in ranges.values()])
    return np.array([attrs[f"{term}_{n}"] for n in ranges]) * width


def term_table(ranges: Mapping[str, tuple[float, float]], attrs_by_seed: Sequence[Sequence[Mapping]]) -> dict[str, np.ndarray]:
    """Median over seeds (cells of at least 3 iterations) of each term's per-coordinate SNR
    (``snr_zo``, ``snr_penalty``) and of the rms ratio ``ratio``."""
    out: dict[str, list] = {f"snr_{t}": [] for t in TERMS} | {"ratio": []}
    for attrs in attrs_by_seed:
        if len(attrs) < 3:
            continue
        terms = {t: np.array([normalised(ranges, a, t) for a in attrs]) for t in TERMS}
        for t in TERMS:
            out[f"snr_{t}"].append(snr(terms[t]))
        rms = {t: np.sqrt(np.mean(terms[t] ** 2)) for t in TERMS}
        out["ratio"].append(rms["zo"] / max(rms["penalty"], 1e-300))
    return {k: np.median(np.array(v), axis=0) for k, v in out.items() if v}


def premise_row(ranges: Mapping[str, tuple[float, float]], attrs: Sequence[Mapping]) -> dict[str, float]:
    """The penalty method's premise, ``y - z = O(w / gamma)`` (Kwon et al. 2023: the penalised
    minimiser y*_gamma is within O(1/gamma) of z* = theta*(q) when g is strongly convex in theta),
    checked on one cell (its outer iterations' attributes, in order): the weight-space distance
    |y - z| (``yz_distance``), gamma and the penalty term's norm (normalised coordinates) at the
    first and the last outer iteration. Under the premise |y - z| shrinks as gamma grows and the
    penalty term keeps its size; a |y - z| that grows makes the penalty term grow with gamma and
    drown the zeroth-order term."""
    first, last = attrs[0], attrs[-1]
    pen = [float(np.linalg.norm(normalised(ranges, a, "penalty"))) for a in (first, last)]
    return {"gamma first": first["gamma"], "gamma last": last["gamma"], "|y-z| first": first["yz_distance"],
            "|y-z| last": last["yz_distance"], "|penalty| first": pen[0], "|penalty| last": pen[1]}


def _has_terms(attrs: Mapping, ranges) -> bool:
    return all(f"{t}_{n}" in attrs for t in TERMS for n in ranges) and "gamma" in attrs and "yz_distance" in attrs


def report_diagnostics(task_name: str, ranges_of, cells: pd.DataFrame, trials: pd.DataFrame, folder: Path) -> list:
    """The bilevel cells' premise rows and term SNRs, per profile (``ranges_of(config)``: the
    search ranges of a cell's task settings, a dict from cells.csv's ``config``)."""
    from ..bench.contracts.diagnostic import Diagnostic, attrs

    out = []
    if trials.empty or "attr_gamma" not in trials:
        return out
    for (method, profile), t in trials[trials.attr_gamma.notna() & (trials.state == "COMPLETE")].groupby(
            ["method", "profile"], sort=True):
        c = cells[(cells.method == method) & (cells.profile == profile)]
        config = json.loads(c.config.iloc[0]) if len(c) and "config" in c and isinstance(c.config.iloc[0], str) else {}
        ranges = ranges_of(config)
        by_seed = {s: [attrs(r) for _, r in g.sort_values("number").iterrows()] for s, g in t.groupby("seed")}
        by_seed = {s: [a for a in v if _has_terms(a, ranges)] for s, v in by_seed.items()}
        by_seed = {s: v for s, v in by_seed.items() if v}
        if not by_seed:
            continue
        premise = pd.DataFrame([{"seed": s} | premise_row(ranges, v) for s, v in sorted(by_seed.items())])
        grew = int((premise["|y-z| last"] > premise["|y-z| first"]).sum())
        snrs = term_table(ranges, list(by_seed.values()))
        tables = [("The premise y - z = O(w/gamma), first and last outer iteration of each seed "
                   "(|y-z| in weight space, |penalty| in normalised coordinates):", premise.round(4))]
        if snrs:
            row = {"term": [], **{n: [] for n in ranges}}
            for term in TERMS:
                row["term"].append(f"SNR {term}")
                for n, x in zip(ranges, snrs[f"snr_{term}"]):
                    row[n].append(f"{x:.2f}")
            tables.append((f"Hypergradient terms: SNR = |mean| / std over a cell's iterations, median over seeds; "
                           f"|zo| / |penalty| (rms ratio) = {float(snrs['ratio']):.3g}:", pd.DataFrame(row)))
        k = int(np.median([len(v) for v in by_seed.values()]))
        out.append(Diagnostic(method, f"{task_name} ({profile}): the premise and the terms' signal", paragraphs=[
            f"|y - z| grew from the first to the last outer iteration in {grew} of {len(premise)} seeds. A term "
            f"whose SNR is well below 1/sqrt(K) = {1 / np.sqrt(max(k, 1)):.2f} (K = {k} iterations) cannot move "
            "the schedule on purpose."], tables=tables))
    return out


#: The paper's headline claim on noise-schedule tuning (Xiao et al., ICML 2025, the schedule
#: experiment; method.md, Application 2): about 30% lower FID than the default schedule at about
#: 2.5 times the time of one training.
PAPER_CLAIM = {"relative": -0.30, "trainings": 2.5}


def claim_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Each method's final primary value relative to the ``default`` method's (the task's default
    schedule, no search) on the same seeds, its spent budget (trainings, the task's cost unit: the
    last trial may overshoot the budget by less than its own cost) and its search time in trainings
    (``cost_ratio``: the search wall time over one black-box evaluation's median wall time); one row
    per profile and method with a default cell to compare with. Empty where the storage has no
    ``default`` cell."""
    rows = []
    if cells.empty or "primary" not in cells or "default" not in set(cells.method):
        return pd.DataFrame(rows)
    for profile, c in cells.groupby("profile", sort=True):
        primary = c.primary.dropna()
        if primary.empty or f"final_{primary.iloc[0]}" not in c:
            continue
        col = f"final_{primary.iloc[0]}"
        base = c[c.method == "default"].set_index("seed")[col].dropna()
        for method, g in c[c.method != "default"].groupby("method", sort=True):
            g = g[g.seed.isin(base.index) & g[col].notna()]
            if g.empty:
                continue
            rel = g[col].to_numpy(float) / base.loc[g.seed].to_numpy(float) - 1.0
            rows.append({"profile": profile, "method": method, "seeds": len(g),
                         f"{primary.iloc[0]} vs default (median)": f"{np.median(rel):+.0%}",
                         "per seed": " / ".join(f"{x:+.0%}" for x in rel),
                         "better on": f"{int((rel < 0).sum())} of {len(rel)}",
                         "spent (trainings, median)": f"{g.spent.median():.2f}" if "spent" in g else "",
                         "search time (trainings, median)": f"{g.cost_ratio.median():.2f}",
                         "search wall s (median)": f"{g.search_wall_s.median():.0f}"})
    return pd.DataFrame(rows)


def claim_diagnostics(task_name: str, cells: pd.DataFrame) -> list:
    """The paper's headline claim beside what this storage measured (:func:`claim_table`), for the
    report's "every method" diagnostics; nothing without a ``default`` cell."""
    from ..bench.contracts.diagnostic import Diagnostic

    table = claim_table(cells)
    if table.empty:
        return []
    claimed = (f"Claimed (Xiao et al. 2025, schedule tuning): about {PAPER_CLAIM['relative']:+.0%} FID against "
               f"the default schedule at about {PAPER_CLAIM['trainings']:g} times the time of one training. "
               "Measured here: each method's final value against the default schedule's on the same seeds "
               "(negative: better), and its search time in units of one evaluation (one training and its "
               "metric).")
    return [Diagnostic("every method", f"{task_name}: the paper's headline claim, claimed / measured here",
                       paragraphs=[claimed], tables=[("", table)])]
