"""The surrogate model of a recorded table (:mod:`diffhpo.bench.record`): a mean model per
metric, a seed-noise model fitted on the replicates, a wall-time and a memory model.

Choices (freedom exists; the reasons):

* **Mean model**: one multi-output scikit-learn :class:`~sklearn.ensemble.ExtraTreesRegressor`
  (100 trees, ``min_samples_leaf=3``, seeded) over the configuration, whose outputs are the
  primary metric at each checkpoint (``name@fraction``: the learning curve) and every metric's
  final value, each standardised. Tree ensembles as in Syne Tune's blackbox repository and
  YAHPO's baselines: no scaling of inputs needed, fitted in about a second, and one pass over
  the trees answers every output (a surrogate evaluation: 1.8 ms on the shipped table). Chosen
  by measured held-out accuracy (``benchmarks/surrogate_validation.py --compare-models``,
  gmm-schedule quick, primary metric, 5-fold Spearman / R^2): ExtraTrees 0.927 / 0.864,
  RandomForest 0.918 / 0.850, HistGradientBoosting 0.913 / 0.838. Inputs: each parameter's
  internal coordinate (log scale for log parameters) scaled to [0, 1]. The checkpoints' values
  come from fewer samples (``checkpoint_samples``) than the final one; the model learns that.
* **Noise model**, per metric and fraction, on the K replicated configurations: the seed
  standard deviation ``s_c`` of each is regressed as a power law of its mean,
  ``log s = a + b log |m|`` (``b`` clipped to [0, 2]: 0 is constant noise, 1 a constant
  coefficient of variation), for metrics whose replicated means are all positive; otherwise the
  pooled standard deviation (``b = 0``). A draw is ``mean + s(mean) z`` with ``z`` standard
  normal from a generator seeded by SHA-256 of (configuration rounded to 12 digits, seed,
  metric): a rerun gives the same numbers and every other seed (a final-protocol seed too) an
  independent draw. The same ``z`` serves every checkpoint of one evaluation (a learning curve
  keeps its seed's luck, as a real training's curve does); metrics draw independently.
* **Wall time**: ExtraTrees of ``log wall_s`` over the configuration, times a log-normal seed
  factor whose sigma is the pooled seed spread of ``log wall_s`` on the replicates (mean 1).
  Fitted only on the rows recorded with the process's cores to itself: rows whose CPU/wall
  ratio is below half the table's 90th percentile (:data:`STARVED`) measured other work's load,
  not the task (:func:`timed_rows`). Measured: mnist-schedule's first 32 rows, recorded on one
  core beside other runs, have ratios 0.33 to 0.99 and 77 to 248 s of wall, the 168 recorded
  alone 1.81 to 1.99 and 36 to 69 s; gmm-schedule's 286 of 1,100 rows recorded at load 3 to 7
  fall below the cut (ratio 5th / 50th / 90th percentile 0.25 / 0.97 / 1.00).
  **Memory**: ExtraTrees of ``peak_rss_mib`` (no noise).
* **Known optimum**: the mean model's best final value over a scrambled Sobol set of 2^14
  points of the space (seed 0) and the table's own configurations.

Fitting is cached (pickle) in ``DIFFHPO_CACHE/surrogate`` under the table's SHA-256 and the
scikit-learn version, so constructing a task after the first time takes milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ...bench.toolkit.cache import cache_dir
from ...bench.contracts.fidelity import FIDELITY_STEPS
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...bench.toolkit.recordings import Table
from ...bench.contracts import space as sp

MODEL_VERSION = 4
N_TREES = 100
LEAF = 3
OPT_POINTS = 2**14


def estimator(kind: str = "extratrees", seed: int = 0):
    """A fresh regressor of the given kind (the validation script compares them)."""
    from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor, RandomForestRegressor

    if kind == "extratrees":
        return ExtraTreesRegressor(n_estimators=N_TREES, min_samples_leaf=LEAF, random_state=seed, n_jobs=1)
    if kind == "randomforest":
        return RandomForestRegressor(n_estimators=N_TREES, min_samples_leaf=LEAF, random_state=seed, n_jobs=1)
    if kind == "gradientboosting":
        return HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=seed)
    raise ValueError(f"unknown model kind {kind!r}")


def predict(est: Any, x: np.ndarray) -> np.ndarray:
    """``est.predict(x)``; for a tree ensemble, the mean of its trees' predictions computed
    directly (:meth:`sklearn.tree.BaseDecisionTree.tree_` ``.predict``), without the joblib
    dispatch of :meth:`~sklearn.ensemble.ForestRegressor.predict` that costs milliseconds per call."""
    trees = getattr(est, "estimators_", None)
    if trees is None or not hasattr(trees[0], "tree_"):
        return est.predict(x)
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    # tree_.predict: (n, 1) for one output, (n, outputs, 1) for several
    out = np.mean([t.tree_.predict(x32) for t in trees], axis=0)
    return out.reshape(len(x32), -1) if est.n_outputs_ > 1 else out.reshape(len(x32))


def unit_features(space: Mapping[str, Any], params: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
    """Each parameter's internal coordinate scaled to [0, 1] (columns in the space's order)."""
    box = sp.bounds(space)
    cols = []
    for j, (n, d) in enumerate(space.items()):
        v = np.asarray(params[n], dtype=float).reshape(-1)
        u = np.log(v) if sp.is_log(d) else v
        width = box[j, 1] - box[j, 0]
        cols.append((u - box[j, 0]) / width if width > 0 else np.zeros_like(u))
    return np.stack(cols, axis=1)


def output_names(meta: Mapping[str, Any]) -> list[str]:
    """The mean model's outputs: the primary metric at each checkpoint (``name@fraction``),
    then every metric's final value."""
    primary = meta["metrics"][0]["name"]
    return [f"{primary}@{f:g}" for f in meta["checkpoints"]] + [m["name"] for m in meta["metrics"]]


def output_column(meta: Mapping[str, Any], output: str) -> str:
    name, at, frac = output.partition("@")
    return f"iv_{int(round(float(frac) * FIDELITY_STEPS))}" if at else f"m_{name}"


@dataclass
class MeanModel:
    """One multi-output regressor over the configuration: every output standardised (so that
    the trees' joint squared-error splits weigh the outputs alike), predicted in one call
    (a surrogate evaluation: one pass over the trees, about a millisecond)."""

    space: dict
    outputs: list[str]
    est: Any
    mu: np.ndarray
    sd: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, outputs) in natural units."""
        y = predict(self.est, x)
        return y.reshape(len(x), -1) * self.sd + self.mu


def fit_mean(frame: pd.DataFrame, meta: Mapping[str, Any], space: Mapping[str, Any],
             kind: str = "extratrees") -> MeanModel:
    """The mean model on the COMPLETE rows of ``frame``; outputs with fewer than half their
    values finite (``regret``, which only the final protocol gives) are left out, and rows
    with a missing output dropped."""
    ok = frame[frame["state"] == "COMPLETE"]
    outs = [o for o in output_names(meta)
            if output_column(meta, o) in ok and ok[output_column(meta, o)].notna().mean() >= 0.5]
    y = ok[[output_column(meta, o) for o in outs]].to_numpy(float)
    good = np.isfinite(y).all(axis=1)
    y = y[good]
    x = unit_features(space, {n: ok[f"p_{n}"].to_numpy()[good] for n in space})
    mu, sd = y.mean(axis=0), y.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    est = estimator(kind)
    z = (y - mu) / sd
    if kind == "gradientboosting":
        from sklearn.multioutput import MultiOutputRegressor

        est = MultiOutputRegressor(est)
    est.fit(x, z)
    return MeanModel(dict(space), outs, est, mu, sd)


@dataclass
class NoiseModel:
    a: float  # log-scale intercept (power law) or log of the pooled std
    b: float  # exponent on |mean| (0: constant)

    def std(self, mean: np.ndarray | float) -> np.ndarray:
        m = np.abs(np.asarray(mean, dtype=float))
        return np.exp(self.a) * np.power(np.maximum(m, 1e-12), self.b)


def fit_noise(means: np.ndarray, stds: np.ndarray) -> NoiseModel:
    """Power law ``s = exp(a) |m|^b`` by least squares in log-log where all means are positive
    (``b`` in [0, 2]), else the pooled std."""
    means, stds = np.asarray(means, float), np.asarray(stds, float)
    ok = np.isfinite(means) & np.isfinite(stds) & (stds > 0)
    means, stds = means[ok], stds[ok]
    if len(stds) == 0:
        return NoiseModel(np.log(1e-12), 0.0)
    pooled = NoiseModel(float(np.log(np.sqrt(np.mean(stds**2)))), 0.0)
    if len(stds) < 3 or np.any(means <= 0) or np.ptp(np.log(means)) < 1e-9:
        return pooled
    lm, ls = np.log(means), np.log(stds)
    b = float(np.clip(np.polyfit(lm, ls, 1)[0], 0.0, 2.0))
    a = float(np.mean(ls - b * lm))
    return NoiseModel(a, b)


def replicate_spread(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per replicated configuration (rows on replicate seeds): mean, std (ddof 1), count."""
    from ...bench.toolkit.recordings import REPLICATE_SEED

    rep = frame[(frame["seed"] >= REPLICATE_SEED) & (frame["state"] == "COMPLETE")]
    g = rep.groupby("config")[column]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})
    return out[out["n"] >= 2]


@dataclass
class Surrogate:
    space: dict
    metrics: list[dict]
    checkpoints: list[float]
    mean: MeanModel
    noise: dict[str, NoiseModel]  # "metric" or "metric@fraction"
    wall: Any
    wall_sigma: float
    memory: Any
    optimum: float
    optimum_params: dict[str, float]
    info: dict = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return self.metrics[0]["name"]

    def predict_all(self, params: Mapping[str, Any]) -> dict[str, float]:
        """Every output of the mean model at ``params`` (``metric`` and ``primary@fraction``)."""
        x = unit_features(self.space, {n: [params[n]] for n in self.space})
        return dict(zip(self.mean.outputs, map(float, self.mean.predict(x)[0])))

    def noise_std(self, output: str, mean: float) -> float:
        model = self.noise.get(output)
        return float(model.std(mean)) if model is not None else 0.0


def draw(params: Mapping[str, Any], seed: int, what: str) -> float:
    """A standard-normal number fixed by (configuration, seed, what)."""
    key = json.dumps([sorted((n, float(f"{float(v):.12g}")) for n, v in params.items()), int(seed), what])
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    return float(rng.standard_normal())


#: a row whose CPU/wall ratio is below this fraction of the table's 90th percentile was starved
#: by other work on the recording machine (module docstring, "Wall time")
STARVED = 0.5


def timed_rows(rows) -> np.ndarray:
    """Which rows the wall-time model is fitted on (a boolean mask): those not starved by other
    work (:data:`STARVED`)."""
    ratio = rows["cpu_s"].to_numpy(float) / np.maximum(rows["wall_s"].to_numpy(float), 1e-9)
    return ratio >= STARVED * np.percentile(ratio, 90)


def fit(table: Table, space: Mapping[str, Any], kind: str = "extratrees") -> Surrogate:
    """Fit every model of a table (see the module docstring)."""
    from scipy.stats import qmc

    meta, frame = table.meta, table.frame
    ok = frame[frame["state"] == "COMPLETE"]
    primary = meta["metrics"][0]["name"]
    mean = fit_mean(frame, meta, space, kind)
    noise: dict[str, NoiseModel] = {}
    for out in mean.outputs:
        s = replicate_spread(frame, output_column(meta, out))
        noise[out] = fit_noise(s["mean"].to_numpy(), s["std"].to_numpy())
    x = unit_features(space, {n: ok[f"p_{n}"] for n in space})
    timed = timed_rows(ok)
    logw = np.log(np.maximum(ok["wall_s"].to_numpy(float)[timed], 1e-6))
    wall = estimator("extratrees").fit(x[timed], logw)
    spread = replicate_spread(ok[timed].assign(logw=logw), "logw")
    wall_sigma = float(np.sqrt(np.mean(spread["std"] ** 2))) if len(spread) else 0.0
    memory = estimator("extratrees").fit(x, ok["peak_rss_mib"].to_numpy(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cand = np.r_[qmc.Sobol(len(space), scramble=True, seed=0).random(OPT_POINTS), x]
    vals = mean.predict(cand)[:, mean.outputs.index(primary)]
    i = int(np.argmax(vals) if meta["metrics"][0]["direction"] == "maximize" else np.argmin(vals))
    box = sp.bounds(space)
    best = {n: sp.from_internal(d, float(box[j, 0] + cand[i, j] * (box[j, 1] - box[j, 0])))
            for j, (n, d) in enumerate(space.items())}
    return Surrogate(dict(space), meta["metrics"], list(meta["checkpoints"]), mean, noise, wall, wall_sigma, memory,
                     float(vals[i]), best, {"kind": kind, "rows": int(len(ok)), "sha256": table.sha256})


def fitted(table: Table, space: Mapping[str, Any]) -> Surrogate:
    """:func:`fit`, cached under the table's checksum and the scikit-learn version."""
    import sklearn

    key = hashlib.sha256(f"{table.sha256}|{sklearn.__version__}|{MODEL_VERSION}".encode()).hexdigest()[:24]
    path = cache_dir("surrogate") / f"{key}.pkl"
    if path.is_file():
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except Exception:  # a damaged cache entry is refitted
            pass
    model = fit(table, space)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(model, f)
    os.replace(tmp, path)
    return model
