"""One tidy long-format table of every trial and every final evaluation.

``results_long.csv`` (and ``results_long.parquet`` when pyarrow is installed): one row per
(record, metric), where a record is a search trial (``kind`` = ``trial``) or a cell's
final-protocol evaluation (``kind`` = ``final``). Columns:

* ``source`` (the storage the row came from), ``task``, ``profile``, ``method``, ``seed``,
  ``kind``, ``number`` (trial number; empty for final), ``state`` (trial state, or the
  cell's status for final), ``counted`` (counts towards the budget), ``worker``;
* ``budget``, ``cost``, ``budget_fraction`` (counted cost so far / budget; for final: the
  whole search), ``elapsed_s`` (cumulative search seconds, or with simulated workers the
  trial's simulated end ``sim_end_s``; for final: the search's),
  ``wall_s`` (this evaluation's seconds);
* ``metric``, ``value``, ``primary`` (the cell's objective), ``direction`` (of the
  objective), ``optimum`` (the task's known optimum, where known), ``params`` (JSON);
* the environment that wrote the table (:func:`diffhpo.bench.provenance.provenance`):
  ``git_commit``, ``python``, ``platform``, ``host``, ``version_<package>``.

A failed trial without metrics has one row, metric = the objective, value empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .toolkit import atomic

ID = ["source", "task", "profile", "method", "seed"]
PROVENANCE = ["git_commit", "python", "platform", "host"]


def _params_json(frame: pd.DataFrame) -> pd.Series:
    cols = [c for c in frame.columns if c.startswith("param_")]
    return frame[cols].apply(
        lambda r: json.dumps({c[6:]: (v.item() if hasattr(v, "item") else v) for c, v in r.items() if pd.notna(v)},
                             sort_keys=True), axis=1) if cols else pd.Series("{}", index=frame.index)


def _melt(frame: pd.DataFrame, prefix: str, keep: list[str]) -> pd.DataFrame:
    metric_cols = [c for c in frame.columns if c.startswith(prefix) and c != "final_wall_s"]
    long = frame[keep + metric_cols].melt(id_vars=keep, value_vars=metric_cols, var_name="metric", value_name="value")
    long["metric"] = long.metric.str[len(prefix):]
    long = long[long.value.notna()]
    # records with no metric at all keep one row (metric = objective, value empty)
    missing = frame.loc[~frame.index.isin(frame[metric_cols].dropna(how="all").index), keep]
    missing = missing.assign(metric=missing.primary, value=np.nan)
    return pd.concat([long, missing], ignore_index=True)


def long_table(trials: pd.DataFrame, cells: pd.DataFrame, provenance: dict[str, str]) -> pd.DataFrame:
    """The tidy table of ``trials`` and ``cells`` (frames of :func:`diffhpo.bench.report.collect`,
    with a ``source`` column)."""
    info = cells[ID + ["budget", "primary", "direction", "optimum", "status", "spent", "search_wall_s",
                       "final_wall_s"]]
    parts = []
    if not trials.empty:
        t = trials.merge(info[ID + ["budget", "primary", "direction", "optimum"]], on=ID, how="left")
        t = t.assign(kind="trial", params=_params_json(t))
        keep = ID + ["kind", "number", "state", "counted", "worker", "budget", "cost", "budget_fraction",
                     "elapsed_s", "wall_s", "primary", "direction", "optimum", "params"]
        parts.append(_melt(t, "metric_", keep))
    f = cells.assign(kind="final", number=np.nan, state=cells.status, counted=False, worker="", cost=np.nan,
                     budget_fraction=cells.spent / cells.budget, elapsed_s=cells.search_wall_s,
                     wall_s=cells.final_wall_s, params=_params_json(cells))
    keep = ID + ["kind", "number", "state", "counted", "worker", "budget", "cost", "budget_fraction", "elapsed_s",
                 "wall_s", "primary", "direction", "optimum", "params"]
    parts.append(_melt(f, "final_", keep))
    out = pd.concat(parts, ignore_index=True)
    out["number"] = out.number.astype("Int64")
    for key in PROVENANCE + sorted(k for k in provenance if k.startswith("version_")):
        out[key] = provenance.get(key, "")
    order = ["source", "task", "profile", "method", "seed", "kind", "number", "metric"]
    return out.sort_values(order, kind="stable").reset_index(drop=True)[
        order + [c for c in out.columns if c not in order]]


def write(table: pd.DataFrame, out: Path) -> list[Path]:
    """``results_long.csv``, and ``results_long.parquet`` when pyarrow is installed."""
    paths = [Path(out) / "results_long.csv"]
    atomic.write_csv(table, paths[0])
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return paths
    paths.append(Path(out) / "results_long.parquet")
    atomic.write(paths[1], lambda p: table.to_parquet(p, index=False))
    return paths
