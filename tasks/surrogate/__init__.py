"""Surrogate tasks: a recorded table of a real task (:mod:`diffhpo.bench.record`) replayed by
a fitted model (:mod:`.model`) in milliseconds.

A surrogate task keeps its real task's search space (per variant: one table each), metrics,
directions, checkpoints (its ``evaluate`` reports the modelled learning curve through
``report=``, so the pruning methods run), cost unit, budget per profile, final protocol
(``final_repeats``; a final-protocol seed is an independent draw of the noise model) and
``evaluation_cost``. It has no networks, hence no first-order oracle: the bilevel method
runs there in its zeroth-order mode, and the task's description says so.

* ``known_optimum()`` is the surrogate mean's optimum by dense search (:func:`.model.fit`), so
  regret is exact on these tasks (negative on a lucky seed, as on the real tasks).
* ``modelled_seconds(params, seed)``: the modelled wall seconds of one evaluation, deterministic
  in (params, seed) (the simulated workers' clock); ``modelled_memory_mib(params)`` the peak RSS.
* Construction checks the table (missing, corrupt, checksum, another task, profile, task
  version or space: one ``error:`` line) before any work; profiles: the recorded one and
  ``smoke`` (the same table with the real task's smoke budget, for tests and CI).

Built-in surrogates are listed in :data:`BUILTIN` (name -> real task, recorded profile, tables
per space variant); one registers when its tables ship under ``assets/recordings/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from ...bench.contracts.errors import DiffhpoError
from ...bench.contracts.options import option
from ...bench.toolkit import recordings as rec
from ...bench.contracts.task import Metric, Task
from . import model as M

#: where the shipped tables are
TABLES_DIR = rec.TABLES_DIR

#: name -> (real task, recorded profile, {space variant: table file under assets/recordings/}, task options)
BUILTIN: dict[str, tuple[str, str, dict[str, str], dict[str, Any]]] = {
    "gmm-schedule-surrogate": ("gmm-schedule", "quick", {"default": "gmm-schedule.quick.default.csv.gz"}, {}),
    "mnist-schedule-surrogate": ("mnist-schedule", "quick", {"default": "mnist-schedule.quick.default.csv.gz"}, {}),
    "reward-mnist-surrogate": ("reward-mnist", "quick", {"default": "reward-mnist.quick.default.csv.gz",
                                                         "weighted-sum": "reward-mnist.quick.weighted-sum.csv.gz"}, {}),
    "reward-mnist-bold-surrogate": ("reward-mnist", "quick",
                                    {"default": "reward-mnist.quick.default.objective-bold.csv.gz",
                                     "weighted-sum": "reward-mnist.quick.weighted-sum.objective-bold.csv.gz"},
                                    {"objective": "bold"}),
}


@dataclass(frozen=True)
class SurrogateConfig:
    budget: float = option(6.0, "budget per cell in the real task's cost unit", gt=0)
    final_repeats: int = option(1, "final-protocol seeds (the real task's)", ge=1)
    noise: float = option(1.0, "scale of the modelled seed noise (0: the mean model only)", ge=0)


class SurrogateTask(Task):
    """Base of the surrogate tasks (:func:`make_surrogate` makes the subclasses)."""

    real_task: ClassVar[str]
    real_cls: ClassVar[type]
    recorded_profile: ClassVar[str]
    real_options: ClassVar[dict[str, Any]] = {}
    tables: ClassVar[dict[str, Path]]
    # In the default matrix (issue 23): a shipped table needs no download, and 20 seeds
    # separate methods where the real MNIST tasks afford one. Measured on 2 idle cores: the
    # 20-seed cells of gmm-schedule-surrogate 61 s and mnist-schedule-surrogate 38 s of the
    # default run (BoTorch's sampler most of it), reward-mnist-surrogate 55 s and
    # reward-mnist-bold-surrogate 110 s run alone.
    offline = True
    default_seeds = 20

    def __init__(self, profile: str = "quick", **options: Any) -> None:
        super().__init__(profile, **options)
        self.real = self.real_cls(self.recorded_profile, **self.real_options)
        self._models: dict[str, M.Surrogate] = {}
        self._tables: dict[str, rec.Table] = {}
        version = rec.task_version(self.real)
        for variant, path in self.tables.items():
            space = self.real.search_space_for(variant)
            if space is None:
                raise DiffhpoError(f"task {self.name!r}: the real task {self.real_task!r} has no space {variant!r}")
            table = rec.load_table(path)
            rec.check_table_for(table, task=self.real_task, profile=self.recorded_profile, version=version,
                                variant=variant, space=space)
            self._tables[variant] = table
        self._models = {v: M.fitted(t, self.real.search_space_for(v)) for v, t in self._tables.items()}

    # -- declarations ----------------------------------------------------------------------
    @property
    def metrics(self) -> list[Metric]:
        return self.real.metrics

    def search_space(self):
        return self.real.search_space_for("default") if "default" in self.tables else {}

    def search_space_for(self, variant: str):
        return self.real.search_space_for(variant) if variant in self.tables else None

    def default_grid(self) -> dict[str, list]:
        return self.real.default_grid()

    def default_grid_for(self, variant: str):
        return self.real.default_grid_for(variant) if variant in self.tables else None

    def default_params(self) -> dict[str, Any]:
        return self.real.default_params()

    def evaluation_cost(self, params: Mapping[str, Any]) -> float:
        return self.real.evaluation_cost(params)

    def known_optimum(self) -> float | None:
        return self._models["default"].optimum if "default" in self._models else None

    def _model_for(self, params: Mapping[str, Any]) -> M.Surrogate:
        for variant, model in self._models.items():
            if set(params) == set(model.space):
                return model
        raise DiffhpoError(f"task {self.name!r}: parameters {sorted(params)} match no recorded space "
                           f"({', '.join(self._models)})")

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, params: Mapping[str, Any], seed: int, *, final: bool = False, report=None) -> dict[str, float]:
        """The mean model plus the seed's noise draw for every metric; with ``report``, the
        modelled curve at the recorded checkpoints first (the same draw ``z`` along it)."""
        model = self._model_for(params)
        scale = float(self.config.noise)
        primary = model.primary
        means = model.predict_all(params)
        z = {primary: M.draw(params, seed, primary)}
        if report is not None:
            for frac in model.checkpoints:
                key = f"{primary}@{frac:g}"
                if key in means:
                    report(frac, means[key] + scale * model.noise_std(key, means[key]) * z[primary])
        out = {}
        for name, m in means.items():
            if "@" in name:
                continue
            zz = z[primary] if name == primary else M.draw(params, seed, name)
            out[name] = m + scale * model.noise_std(name, m) * zz
        if final and self.known_optimum() is not None and "regret" in {x.name for x in self.metrics} \
                and model is self._models.get("default"):
            out["regret"] = out[primary] - self.known_optimum()
        return out

    def modelled_seconds(self, params: Mapping[str, Any], seed: int) -> float:
        """Modelled wall seconds of one evaluation of ``params`` on ``seed`` (deterministic)."""
        import math

        model = self._model_for(params)
        x = M.unit_features(model.space, {n: [params[n]] for n in model.space})
        mu = float(M.predict(model.wall, x)[0])
        s = model.wall_sigma
        return float(math.exp(mu + s * M.draw(params, seed, "wall_s") - s * s / 2))

    def modelled_memory_mib(self, params: Mapping[str, Any]) -> float:
        model = self._model_for(params)
        x = M.unit_features(model.space, {n: [params[n]] for n in model.space})
        return float(M.predict(model.memory, x)[0])


def make_surrogate(name: str, real_task: str, recorded_profile: str, tables: Mapping[str, str | Path],
                   real_options: Mapping[str, Any] | None = None, real_cls: type | None = None) -> type[SurrogateTask]:
    """A surrogate task class of ``real_task``'s tables (paths, or names under assets/recordings/)."""
    if real_cls is None:
        from ...bench.contracts.registry import TASKS

        real_cls = TASKS.get(real_task)
    cls = real_cls
    paths = {v: (Path(p) if Path(p).is_absolute() or Path(p).parent != Path(".") else TABLES_DIR / p)
             for v, p in tables.items()}
    profiles = {}
    for prof in dict.fromkeys([recorded_profile, "smoke"]):
        if prof in cls.profiles:
            real_cfg = cls.profiles[prof]
            profiles[prof] = SurrogateConfig(budget=float(real_cfg.budget),
                                             final_repeats=int(getattr(real_cfg, "final_repeats", 1)))
    attrs = dict(
        name=name, real_task=real_task, real_cls=cls, recorded_profile=recorded_profile, real_options=dict(real_options or {}),
        tables=paths, cost_unit=cls.cost_unit, has_fidelity=cls.has_fidelity, profiles=profiles,
        description=(f"surrogate of {real_task} ({recorded_profile} table; a fitted model answers in "
                     "milliseconds; no networks, so the bilevel method runs in zeroth-order mode)"),
    )
    return type(f"Surrogate_{real_task.replace('-', '_')}", (SurrogateTask,), attrs)


def builtin_surrogates(real: Mapping[str, type]) -> list[type[SurrogateTask]]:
    """The built-in surrogates whose tables ship complete (``real``: task name -> its class). A table
    committed part-way through its recording (a long recording is committed in chunks and resumed
    from them) registers nothing until it is complete."""
    out = []
    for name, (task, profile, tables, opts) in BUILTIN.items():
        metas = [rec.table_meta(TABLES_DIR / t) for t in tables.values()]
        if task in real and all(m is not None and m.get("complete", False) for m in metas):
            out.append(make_surrogate(name, task, profile, tables, opts, real_cls=real[task]))
    return out
