"""Optuna's sampler conformance suite (``optuna.testing.pytest_samplers``) on every custom
sampler in ``methods/``.

Each class runs the test cases that apply to its sampler. A test that cannot apply, by
the mathematics of the sampler (not for convenience), is skipped with its reason; the
reasons are in the ``SKIP`` tables below.

* ``BilevelSampler``, built without a search space (inferred from the study), in three
  configurations: oracle mode (a hypergradient is written for every trial by
  :class:`_OracleBilevel`, the gradient of the sum of the parameters, so the iterate moves
  and meets the bounds), zeroth-order ``forward`` and zeroth-order ``central``.
* ``TrialSeeded`` wrapping ``RandomSampler`` and ``TPESampler`` (multivariate).
* ``_GridSampler`` (grid search): a grid sampler proposes points of its grid only.
* ``DefaultSampler`` (the ``default`` baseline): proposes fixed parameters.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
    SingleOnlySamplerTestCase,
)

from diffhpo.methods import space as sp
from diffhpo.methods.bilevel import BilevelSampler
from diffhpo.methods.default import DefaultSampler
from diffhpo.methods.grid import _GridSampler
from diffhpo.methods.seeding import TrialSeeded


class _OracleBilevel(BilevelSampler):
    """Oracle mode for objectives that report no hypergradient: ``after_trial`` writes
    d(sum of the moved parameters)/d(parameter) = 1 (the objective of most conformance
    tests is such a sum), so the oracle trajectory steps every trial."""

    def after_trial(self, study, trial, state, values) -> None:
        if state == optuna.trial.TrialState.COMPLETE and "bilevel:slot" in trial.system_attrs:
            grad = {n: 1.0 for n, d in trial.distributions.items() if sp.is_movable(d)}
            study._storage.set_trial_user_attr(trial._trial_id, "hypergrad", grad)


class _SkipTable:
    """Skip the named test cases (every parametrisation) with the reason given, and the
    parametrisations :meth:`inapplicable` rules out."""

    SKIP: dict[str, str] = {}

    @pytest.fixture(autouse=True)
    def _skip(self, request):
        name = request.node.originalname
        reason = self.SKIP.get(name)
        callspec = getattr(request.node, "callspec", None)
        reason = reason or self.inapplicable(name, dict(callspec.params) if callspec else {})
        if reason:
            pytest.skip(reason)
        defect = self.known_defect(name, dict(callspec.params) if callspec else {})
        if defect:
            request.applymarker(pytest.mark.xfail(strict=True, reason=defect))

    def inapplicable(self, name: str, params: dict) -> str | None:
        return None

    def known_defect(self, name: str, params: dict) -> str | None:
        """A failure this suite found and that is not fixed yet (strict: it must fail)."""
        return None


# --- the bilevel sampler ------------------------------------------------------------------


class _BilevelCase(_SkipTable, BasicSamplerTestCase, RelativeSamplerTestCase, SingleOnlySamplerTestCase):
    pass


class TestBilevelOracle(_BilevelCase):
    @pytest.fixture
    def sampler(self):
        return lambda: _OracleBilevel(mode="oracle", seed=0)


class TestBilevelZerothOrderForward(_BilevelCase):
    @pytest.fixture
    def sampler(self):
        return lambda: BilevelSampler(mode="zo", zo_scheme="forward", seed=0)


class TestBilevelZerothOrderCentral(_BilevelCase):
    @pytest.fixture
    def sampler(self):
        return lambda: BilevelSampler(mode="zo", zo_scheme="central", seed=0)


# --- stock samplers wrapped by TrialSeeded ----------------------------------------------------

MULTI_OK = ("the wrapped sampler supports multi-objective studies (Optuna's own sampler does); "
            "MultiObjectiveSamplerTestCase runs instead")


NOT_RELATIVE = ("{} samples every parameter independently: infer_relative_search_space and "
                "sample_relative return {{}} by design, so there are no relative values to check")


class TestTrialSeededRandom(_SkipTable, BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: TrialSeeded(optuna.samplers.RandomSampler(seed=0), 0)

    SKIP = {
        "test_sample_relative_numerical": NOT_RELATIVE.format("RandomSampler"),
        "test_sample_relative_categorical": NOT_RELATIVE.format("RandomSampler"),
        "test_sample_relative_mixed": NOT_RELATIVE.format("RandomSampler"),
    }


class TestTrialSeededTPE(_SkipTable, BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: TrialSeeded(
            optuna.samplers.TPESampler(seed=0, n_startup_trials=1, multivariate=True), 0
        )


# --- samplers of a declared point set: grid search and the default baseline ---------------------

# A grid sampler proposes points of the grid it is given, and the default baseline one given
# point; each conformance case is a different problem, so each gets its own grid (point), in
# the distributions of that case (one value that lies in every parametrisation where there is
# one, e.g. x = 1 in all six of parametrize_suggest_method).
GRIDS = {
    "test_nan_objective_value": {"x": [0.1, 0.15, 0.2]},
    "test_partial_fixed_sampling": {"x": [-1.0, 1.0], "y": [-1, 0, 1], "z": [-1.0, 1.0]},
    "test_sample_single_distribution": {k: [1] for k in "abcdef"},
    "test_conditional_parameter_objective": {"x": [True, False], "y": [0.0, 1.0], "z": [0.0, 1.0]},
    "test_conditional_sample_independent": {"category": ["x", "y"], "x": ["a", "b"], "y": ["a", "b"]},
    "test_categorical": {"x": [1, 2, 3]},
}
DEFAULT_GRID = {"x": [1, 2], "y": [1, 2]}
POINT_DIST_KEYS = ("distribution", "x_distribution", "y_distribution")


def _grid(name: str) -> dict:
    return GRIDS.get(name, DEFAULT_GRID)


def _contains(dist, value) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except ValueError:  # a categorical value not among the choices
        return False


def _outside(grid: dict, params: dict) -> str | None:
    """Why the case's distributions exclude the grid (the given point), or None."""
    for key in POINT_DIST_KEYS:
        dist = params.get(key)
        name = key.split("_")[0] if key != "distribution" else "x"
        if dist is None or name not in grid:
            continue
        bad = [v for v in grid[name] if not _contains(dist, v)]
        if bad:
            return f"the declared values {name}={bad} lie outside this case's distribution {dist}"
    if "choices" in params and not set(grid["x"]) <= set(params["choices"]):
        return f"the declared values x={grid['x']} are not among this case's choices {params['choices']}"
    if params.get("second_low", 0) >= 20:
        return ("the range moves to [20, 30], disjoint from the first range [0, 10]: no fixed "
                "value lies in both")
    return None


NO_GRID_POINT = ("GridSampler assigns a trial its grid point in before_trial; this case calls "
                 "sample_independent on trials created directly in storage, which have none, and a "
                 "grid sampler has no distribution to draw from besides its grid")


class TestGridSampler(_SkipTable, BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self, request):
        grid = _grid(request.node.originalname)
        return lambda: TrialSeeded(_GridSampler(grid, seed=0), 0)

    SKIP = {
        "test_float": NO_GRID_POINT,
        "test_int": NO_GRID_POINT,
        "test_categorical": NO_GRID_POINT,
        "test_conditional_sample_independent": NO_GRID_POINT,
        "test_multi_objective_sample_independent": NO_GRID_POINT,
        "test_sample_relative_numerical": NOT_RELATIVE.format("GridSampler"),
        "test_sample_relative_categorical": NOT_RELATIVE.format("GridSampler"),
        "test_sample_relative_mixed": NOT_RELATIVE.format("GridSampler"),
    }

    def inapplicable(self, name, params):
        return _outside(_grid(name), params)


class TestDefaultSampler(_SkipTable, BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase):
    """The ``default`` baseline: one fixed point (the first value of each grid above)."""

    @pytest.fixture
    def sampler(self, request):
        point = {k: v[0] for k, v in _grid(request.node.originalname).items()}
        return lambda: DefaultSampler(point)

    SKIP = {
        "test_sample_relative_numerical": NOT_RELATIVE.format("DefaultSampler"),
        "test_sample_relative_categorical": NOT_RELATIVE.format("DefaultSampler"),
        "test_sample_relative_mixed": NOT_RELATIVE.format("DefaultSampler"),
    }

    def inapplicable(self, name, params):
        return _outside({k: v[:1] for k, v in _grid(name).items()}, params)

    def known_defect(self, name, params):
        dist = params.get("distribution")
        if name == "test_float" and getattr(dist, "step", None) is not None:
            return ("DefaultSampler.sample_independent returns the declared value unconverted: int 1 "
                    "for a FloatDistribution (Optuna returns float); methods/default.py should return "
                    "dist.to_external_repr(dist.to_internal_repr(value))")
        return None
