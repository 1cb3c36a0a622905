"""The Task interface: what every benchmark task declares and provides.

A task is one bilevel hyperparameter problem. It declares

* its search space (Optuna distributions) and a default grid,
* its metrics and their directions; the first metric is the upper-level objective,
* its budget per profile, in its own cost unit (one lower-level solve by default),
* how to evaluate one hyperparameter setting (one full lower-level solve, then the
  upper-level metrics): :meth:`Task.evaluate`,
* optionally a first-order oracle for the bilevel method: :meth:`Task.oracle` returns the
  upper-level metrics at the current iterate together with a hypergradient estimate.

Settings live in a per-profile config dataclass (``Task.profiles``) whose fields are
declared with :func:`diffhpo.bench.contracts.options.option` (default, meaning, valid range);
``diffhpo run --option key=value`` overrides them, and every value is checked by
:func:`diffhpo.bench.contracts.options.apply` before any work starts.

Before any cell runs, the runner calls :meth:`Task.check_ready` on every task of the
matrix: a task that needs files, weights, drivers or a device it cannot find raises a
:class:`~diffhpo.bench.contracts.errors.DiffhpoError` there (one line: what is missing and where to
put it) instead of failing every trial.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from optuna.distributions import BaseDistribution

from .errors import DiffhpoError
from .options import apply as apply_options

if TYPE_CHECKING:
    import pandas as pd

DIRECTIONS = ("minimize", "maximize")
ZO_TERMS = ("on", "off", "noise")  # OracleContext.zo_term / penalty_term: the single loop's ablation switches


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str
    description: str = ""

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric direction must be one of {DIRECTIONS}")


@dataclass
class OracleContext:
    """What the bilevel method tells the task's oracle about the current outer iteration.

    ``preset``: the method's preset (``"paper"``: an oracle that knows the reference code's
    iteration structure uses it, :data:`diffhpo.tasks.single_loop.PAPER_LOOP`, except for
    settings the user gave as task options, :attr:`Task.given_options`). ``zo_term``: an
    ablation switch for oracles with a zeroth-order term (``on``; ``off``: the term is
    zero; ``noise``: Gaussian noise of the term's norm); ``penalty_term``: the same switch
    for the penalty term; other oracles ignore all three.

    The single loop's drift variants (issue 27; :mod:`diffhpo.tasks.single_loop`, set by
    the bilevel method's options of the same names; other oracles ignore them):
    ``prox_mu`` the weight of the proximal term ``(mu/2) |y - z|^2`` on y's objective (0:
    none); ``resync_every`` re-sync ``y <- z`` every K outer iterations (0: never);
    ``y_step_ratio`` the fraction of the inner steps that y takes (1: all)."""

    iteration: int
    gamma: float
    workdir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    preset: str = "default"
    zo_term: str = "on"
    penalty_term: str = "on"
    prox_mu: float = 0.0
    resync_every: int = 0
    y_step_ratio: float = 1.0


@dataclass
class OracleResult:
    """Upper-level metrics at the iterate and a hypergradient estimate.

    ``grad`` holds d(primary metric)/d(param) in each parameter's natural scale (not in
    log scale); the method converts. ``cost`` is in the task's cost unit.

    ``evaluated``: whether ``metrics`` are what :meth:`Task.evaluate` returns at these
    parameters (``quadratic``: the exact lower-level solution). Otherwise (the default)
    they are the oracle's *estimates* (the reward tasks' bank estimate, the single loop's
    partially trained network), and the report does not count them as search values.
    """

    metrics: dict[str, float]
    grad: dict[str, float]
    cost: float
    info: dict[str, float] = field(default_factory=dict)
    evaluated: bool = False


@dataclass(frozen=True)
class DefaultMatrix:
    """How a task enters the *default matrix* (``diffhpo run`` with no ``--task``, the
    README's main job) on one profile, where that differs from ``diffhpo run -t NAME``.

    The default matrix has a wall-time target (45 minutes on 2 idle CPU cores, issue 23), so
    an expensive task may run a smaller cell there: ``options`` are task settings applied
    before the user's (``--option`` and ``--budget`` win), and ``pruners=False`` leaves the
    pruning methods out of the task's cells (they are then compared on the task's surrogate
    and on the cheaper tasks). ``why`` says so in the run's first lines. A task outside this
    mapping (or a profile outside it) runs the same cells in both matrices."""

    options: Mapping[str, Any] = field(default_factory=dict)
    pruners: bool = True
    why: str = ""


class Task(abc.ABC):
    """Base class of all tasks. Subclasses set the class variables and implement the
    abstract methods; ``profiles`` maps each profile name to a config dataclass instance,
    which must have a ``budget`` field (cost units per cell)."""

    name: ClassVar[str]
    description: ClassVar[str]
    cost_unit: ClassVar[str] = "lower-level solves"
    offline: ClassVar[bool] = True  # part of the default matrix (needs no download)
    # What `diffhpo list` says of a task outside the default matrix (``offline = False``).
    offline_note: ClassVar[str] = "needs downloaded weights"
    # A task whose lower-level solve is iterative sets ``has_fidelity = True``: its evaluate then
    # takes ``report=``, a callable ``report(fraction, value)`` it calls at its checkpoints
    # (fractions of the solve, a profile setting) with the upper metric there; the call
    # raises ``optuna.TrialPruned`` when the method's pruner stops the trial, which then
    # costs the fraction it ran. Pruning methods skip tasks without a fidelity.
    has_fidelity: ClassVar[bool] = False
    # A task whose oracle honours the single loop's ablation switches (``OracleContext.zo_term``
    # and ``penalty_term``) says so; the bilevel method refuses the switches elsewhere.
    ablation_switches: ClassVar[bool] = False
    # Seeds of the default matrix (``diffhpo run`` without --seeds): cheap tasks with a known
    # answer (and the surrogates, 20) afford enough seeds to separate methods from noise; the real
    # MNIST tasks one.
    default_seeds: ClassVar[int] = 1
    # Profile -> how the task's cells differ in the default matrix (:class:`DefaultMatrix`);
    # empty: the same cells as with ``-t NAME``.
    default_matrix: ClassVar[Mapping[str, DefaultMatrix]] = {}
    profiles: ClassVar[Mapping[str, Any]]

    def __init__(self, profile: str = "quick", **options: Any) -> None:
        if profile not in self.profiles:
            raise DiffhpoError(
                f"task {self.name!r} has no profile {profile!r}; valid profiles: "
                f"{', '.join(self.profiles)}"
            )
        self.profile = profile
        self.config = apply_options(f"task {self.name!r}", self.profiles[profile], options)
        self.given_options = frozenset(options)  # set by the user: a method preset does not override them

    # -- declarations -------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def metrics(self) -> list[Metric]:
        """All metrics; the first one is the upper-level objective."""

    @property
    def primary(self) -> Metric:
        return self.metrics[0]

    @abc.abstractmethod
    def search_space(self) -> dict[str, BaseDistribution]:
        """Optuna distributions of the hyperparameters."""

    @abc.abstractmethod
    def default_grid(self) -> dict[str, list]:
        """Values per hyperparameter for grid search."""

    def search_space_for(self, variant: str) -> dict[str, BaseDistribution] | None:
        """The space searched by a method that asks for the search-space ``variant``
        (:attr:`Method.space <diffhpo.bench.contracts.method.Method.space>`): ``search_space()`` for
        ``"default"``; ``None`` when the task does not support the variant (the runner then
        skips the cell). Tasks whose baselines search other parameters override this (the
        reward tasks: ``"none"`` searches nothing, ``"weighted-sum"`` a weight ``w``); the
        task's :meth:`evaluate` then receives those parameters."""
        return self.search_space() if variant == "default" else None

    def default_grid_for(self, variant: str) -> dict[str, list] | None:
        """The grid of the search-space ``variant`` (see :meth:`search_space_for`)."""
        return self.default_grid() if variant == "default" else None

    def default_params(self) -> dict[str, Any]:
        """The task's default hyperparameters (the geometric centre of the space unless
        a task says otherwise); used as the baseline and as the bilevel start point."""
        from .space import centre

        return centre(self.search_space())

    @property
    def final_repeats(self) -> int:
        """How many times the final protocol re-evaluates a choice on independent
        lower-level seeds (the profile's ``final_repeats`` where declared, else 1); the
        reported final metrics are the means, with their spread."""
        return int(getattr(self.config, "final_repeats", 1))

    @property
    def budget(self) -> float:
        """Budget of one cell in cost units (same for every method)."""
        return float(self.config.budget)

    # -- evaluation ----------------------------------------------------------------------
    @abc.abstractmethod
    def evaluate(self, params: Mapping[str, Any], seed: int, *, final: bool = False) -> dict[str, float]:
        """One full lower-level solve under ``params``, then every metric.

        ``final=True`` is the common final protocol (same seeds and sample counts for every
        method). Costs :meth:`evaluation_cost` units (one by default).
        """

    def evaluation_cost(self, params: Mapping[str, Any]) -> float:
        """What one search-time :meth:`evaluate` under ``params`` costs in the task's cost
        unit (default 1: one lower-level solve). The runner charges it to the trial (a pruned
        trial: the fraction it ran times this). A task whose solve under some settings does a
        multiple of the unit's work says so here (the reward tasks: ``particles = K`` guided
        runs), so that every method of a cell keeps the same budget in one unit."""
        return 1.0

    @property
    def has_oracle(self) -> bool:
        return type(self).oracle is not Task.oracle

    def oracle(self, params: Mapping[str, Any], seed: int, context: OracleContext) -> OracleResult:
        """First-order oracle for the bilevel method (optional)."""
        raise NotImplementedError(f"task {self.name!r} has no first-order oracle")

    def check_ready(self) -> None:
        """Raise a :class:`DiffhpoError` naming what is missing (data, weights, driver,
        device) and where to put it, before any budget is spent. Default: nothing to check."""

    def known_optimum(self) -> float | None:
        """The exact optimal value of the primary metric under the final protocol, where the
        task can compute it (regret is then measured against it); None otherwise."""
        return None

    def describe_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @classmethod
    def write_plots(cls, cells: "pd.DataFrame", trials: "pd.DataFrame", folder: Path) -> list[Path]:
        """Task-specific pictures for the report (e.g. chosen schedules, sample grids).

        ``cells`` and ``trials`` are this task's rows of cells.csv and trials.csv; write PNGs
        into ``folder`` and return their paths. The default writes nothing.
        """
        return []

    @classmethod
    def diagnostics(cls, cells: "pd.DataFrame", trials: "pd.DataFrame", folder: Path) -> list:
        """The task's diagnostics for the report's per-method sections (the hook of
        :mod:`diffhpo.bench.diagnostics`): ``cells`` and ``trials`` are this task's rows of
        cells.csv and trials.csv (trial user attributes as ``attr_<name>``); return a list of
        :class:`diffhpo.bench.contracts.diagnostic.Diagnostic` (the method it is about, a title, text,
        tables, PNGs written into ``folder``). The default has none."""
        return []
