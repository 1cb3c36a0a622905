"""The Method interface and the method registry.

A method is one module that builds an Optuna sampler for a cell (task x seed); the
runner drives the study with it. Register a built-in method with one line in
``methods/__init__.py``; an external package adds an entry to the ``diffhpo.methods``
entry-point group whose value is a :class:`Method`::

    # my_package/my_method.py
    import optuna
    from diffhpo.bench.contracts.method import Method

    def make_sampler(ctx):
        return optuna.samplers.QMCSampler(seed=ctx.seed)

    METHOD = Method("quasi-random search (Sobol)", make_sampler)

    # pyproject.toml of my_package
    [project.entry-points."diffhpo.methods"]
    sobol = "my_package.my_method:METHOD"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import optuna
from optuna.distributions import BaseDistribution

from .registry import Registry

if TYPE_CHECKING:
    from .task import Task


@dataclass(frozen=True)
class MethodContext:
    """What a method's factory gets to build its sampler for one cell."""

    task: "Task"
    search_space: Mapping[str, BaseDistribution]
    grid: Mapping[str, list]
    seed: int
    budget: float
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """An HPO method.

    ``make_sampler(ctx)`` returns the Optuna sampler. ``uses_oracle`` asks the runner to
    call the task's first-order oracle instead of the black-box evaluation when the task
    has one (the sampler must then provide ``oracle_context(study, trial)``).
    ``choose(study)`` returns the hyperparameters the method outputs after its search
    (default: the best completed trial). ``options`` declares the keyword options the
    factory accepts through ``MethodContext.options`` (``--method-option NAME.KEY=VALUE``):
    a frozen dataclass whose fields are declared with :func:`diffhpo.bench.contracts.options.option`
    (type, range, meaning; checked before anything runs), or, for a plug-in, a tuple of
    names (values then arrive as numbers where they parse, else as text).
    ``max_trials(ctx)``, if given, ends the search early (grid search: the grid's size).
    ``space`` names the task's search-space variant the method searches
    (:meth:`Task.search_space_for <diffhpo.bench.contracts.task.Task.search_space_for>`): every
    stock method searches ``"default"``; a baseline with parameters of its own (the reward
    tasks' ``weighted-sum``, ``none``) names its variant, and a task without it is skipped.
    ``make_pruner(ctx)``, if given, returns the study's Optuna pruner (multi-fidelity
    methods: successive halving, Hyperband, median stopping); it acts on the intermediate
    values that tasks with a fidelity report (:attr:`Task.has_fidelity`), and the runner skips
    the method on tasks without one.
    ``diagnostics(cells, trials, folder)``, if given, returns the method's diagnostics for the
    report (a list of :class:`diffhpo.bench.contracts.diagnostic.Diagnostic`, from its rows of cells.csv
    and trials.csv; see that module): the report's section ``Diagnostics: <method>``.
    """

    description: str
    make_sampler: Callable[[MethodContext], optuna.samplers.BaseSampler]
    uses_oracle: bool = False
    choose: Callable[[optuna.Study], dict[str, Any]] | None = None
    options: Any = ()
    max_trials: Callable[[MethodContext], int] | None = None
    space: str = "default"
    make_pruner: Callable[[MethodContext], optuna.pruners.BasePruner] | None = None
    diagnostics: Callable[..., list] | None = None


#: The method registry; its built-ins are the package ``methods/`` (imported by name on first
#: lookup, so that the machinery and the contracts never import the methods they run).
METHODS: Registry[Method] = Registry("method", "diffhpo.methods", builtins=f"{__package__.split('.')[0]}.methods")


def register_method(name: str, method: Method) -> Method:
    return METHODS.register(name, method)


def startup_trials(ctx: MethodContext) -> int:
    """Random start-up trials of the model-based methods (TPE, BoTorch, and the pruning
    methods built on TPE): a quarter of the budget, between 2 and 10."""
    return max(2, min(10, int(ctx.budget) // 4))


def best_params(study: optuna.Study) -> dict[str, Any]:
    """Parameters of the best completed trial (the default choice of a method)."""
    return dict(study.best_trial.params)
