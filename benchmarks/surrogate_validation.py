"""Validate the surrogate models (:mod:`diffhpo.tasks.surrogate.model`) on recorded tables.

For each table (default: every ``assets/recordings/*.csv.gz``) and each output of the mean
model (every metric's final value, and the primary metric at each checkpoint, ``name@fraction``):

* **held-out accuracy**: 5-fold cross-validation grouped by configuration (a replicated
  configuration's seeds stay in one fold), scored on the design rows (one seed per
  configuration): Spearman correlation and R^2 of the predicted mean against the measured value,
  over all held-out rows of the folds together;
* **noise ceiling**: the Spearman between two seeds of the replicated configurations (the same
  seeds for every one of them), averaged over the seed pairs; no model of the mean can be
  expected to rank single-seed measurements better than one seed ranks another;
* **noise calibration**: for each replicated configuration, the noise model's predicted seed
  std (fitted leave-one-configuration-out, at the configuration's measured mean) against its
  measured seed std; the median and the root-mean-square ratio predicted / measured (1 is
  calibrated).

``--compare-models`` also prints the primary metric's held-out figures for ExtraTrees,
RandomForest and HistGradientBoosting (the choice of :mod:`..tasks.surrogate.model`).

    python benchmarks/surrogate_validation.py [TABLE ...] [--compare-models] [--folds 5]

Prints a Markdown table (the README's "Recorded benchmarks and surrogates" figures).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from optuna.distributions import json_to_distribution
from scipy.stats import spearmanr

from diffhpo.bench import record as rec
from diffhpo.tasks.surrogate import model as M


def space_of(table: rec.Table) -> dict:
    import json

    return {n: json_to_distribution(json.dumps(d)) for n, d in table.meta["space"].items()}


def held_out(table: rec.Table, kind: str = "extratrees", folds: int = 5, seed: int = 0) -> dict[str, tuple[float, float, int]]:
    """Output -> (Spearman, R^2, rows) of the grouped k-fold held-out predictions on design rows."""
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold

    space, meta = space_of(table), table.meta
    frame = table.frame[table.frame["state"] == "COMPLETE"].reset_index(drop=True)
    groups = frame["config"].to_numpy()
    n_groups = len(np.unique(groups))
    k = min(folds, n_groups)
    pred: dict[str, list] = {}
    meas: dict[str, list] = {}
    for train, test in GroupKFold(n_splits=k).split(frame, groups=groups):
        model = M.fit_mean(frame.iloc[train], meta, space, kind)
        te = frame.iloc[test]
        te = te[te["seed"] < rec.REPLICATE_SEED]
        if te.empty:
            continue
        p = model.predict(M.unit_features(space, {n: te[f"p_{n}"].to_numpy() for n in space}))
        for j, out in enumerate(model.outputs):
            pred.setdefault(out, []).extend(p[:, j])
            meas.setdefault(out, []).extend(te[M.output_column(meta, out)].to_numpy(float))
    res = {}
    for out in pred:
        a, b = np.asarray(pred[out]), np.asarray(meas[out])
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 3:
            continue
        rho = spearmanr(a[ok], b[ok]).statistic if np.ptp(b[ok]) > 0 else float("nan")
        res[out] = (float(rho), float(r2_score(b[ok], a[ok])), int(ok.sum()))
    return res


def noise_ceiling(table: rec.Table, column: str) -> float:
    """Mean over seed pairs of the Spearman across replicated configurations."""
    rep = table.frame[(table.frame["seed"] >= rec.REPLICATE_SEED) & (table.frame["state"] == "COMPLETE")]
    wide = rep.pivot_table(index="config", columns="seed", values=column)
    rhos = []
    for a, b in itertools.combinations(wide.columns, 2):
        pair = wide[[a, b]].dropna()
        if len(pair) >= 3 and np.ptp(pair[a]) > 0 and np.ptp(pair[b]) > 0:
            rhos.append(spearmanr(pair[a], pair[b]).statistic)
    return float(np.mean(rhos)) if rhos else float("nan")


def calibration(table: rec.Table, column: str) -> tuple[float, float]:
    """(median, RMS) ratio of the leave-one-configuration-out predicted seed std to the measured one."""
    s = M.replicate_spread(table.frame, column)
    s = s[np.isfinite(s["std"]) & (s["std"] > 0)]
    if len(s) < 3:
        return float("nan"), float("nan")
    ratios, pred = [], []
    for c in s.index:
        rest = s.drop(index=c)
        nm = M.fit_noise(rest["mean"].to_numpy(), rest["std"].to_numpy())
        p = float(nm.std(s.loc[c, "mean"]))
        pred.append(p)
        ratios.append(p / s.loc[c, "std"])
    rms = float(np.sqrt(np.mean(np.square(pred))) / np.sqrt(np.mean(np.square(s["std"]))))
    return float(np.median(ratios)), rms


def validate(path: Path, folds: int, compare: bool) -> list[str]:
    table = rec.load_table(path)
    meta = table.meta
    t0 = time.perf_counter()
    scores = held_out(table, folds=folds)
    lines = []
    name = f"{meta['task']} {meta['profile']} {meta['space_variant']}"
    n_conf = int(table.frame["config"].nunique())
    for out, (rho, r2, n) in scores.items():
        col = M.output_column(meta, out)
        ceil = noise_ceiling(table, col)
        med, rms = calibration(table, col)
        lines.append(f"| {name} | {out} | {n} | {rho:.3f} | {r2:.3f} | {ceil:.3f} | {med:.2f} | {rms:.2f} |")
    print(f"{path.name}: {len(table.frame)} evaluations, {n_conf} configurations, "
          f"{meta['plan']['replicated']} x {meta['plan']['replicate_seeds']} seeds replicated; "
          f"cross-validation {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if compare:
        primary = meta["metrics"][0]["name"]
        for kind in ("extratrees", "randomforest", "gradientboosting"):
            t1 = time.perf_counter()
            rho, r2, n = held_out(table, kind=kind, folds=folds)[primary]
            print(f"  model {kind}: {primary} held-out Spearman {rho:.3f}, R^2 {r2:.3f} "
                  f"({time.perf_counter() - t1:.1f} s for {folds} folds)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="*", type=Path, help="table files (default: assets/recordings/*.csv.gz)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--compare-models", action="store_true")
    args = ap.parse_args(argv)
    tables = args.tables
    if not tables:  # the shipped tables, less those still being recorded (committed in chunks)
        tables = []
        for path in sorted(rec.TABLES_DIR.glob("*.csv.gz")):
            meta = rec.table_meta(path) or {}
            if meta.get("complete", False):
                tables.append(path)
            else:
                print(f"skipped {path.name}: recording incomplete ({meta.get('rows')} of "
                      f"{meta.get('plan', {}).get('evaluations')} evaluations)", file=sys.stderr)
    if not tables:
        print(f"error: no tables given and none in {rec.TABLES_DIR}", file=sys.stderr)
        return 2
    if args.folds < 2:
        print(f"error: --folds must be at least 2, got {args.folds}", file=sys.stderr)
        return 2
    rows = []
    for path in tables:
        try:
            rows += validate(path, args.folds, args.compare_models)
        except rec.DiffhpoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print("| table | output | held-out rows | Spearman | R^2 | noise ceiling | noise std pred/meas (median) | (RMS) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
