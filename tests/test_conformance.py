"""Optuna's sampler conformance suite (``optuna.testing.pytest_samplers``) on every custom
sampler in ``methods/``.

Each class runs the test cases that apply to its sampler. A test that cannot apply, by
the mathematics of the sampler (not for convenience), is skipped with its reason; the
reasons are in the ``SKIP`` tables below.

* ``BilevelSampler``, built without a search space (inferred from the study), in three
  configurations: oracle mode (a hypergradient is written for every trial by
  :class:`_OracleBilevel`, the gradient of the sum of the parameters, so the iterate moves
  and meets the bounds), zeroth-order ``forward`` and zeroth-order ``central``.
* ``BilevelSampler`` given a search space, in oracle, zeroth-order ``forward`` and ``central``
  modes, on ``test_conditional_parameter_objective`` over that case's numeric space (each
  trial lacks one of its parameters; the rule is in ``methods/bilevel.py``).
* ``TrialSeeded`` wrapping ``RandomSampler`` and ``TPESampler`` (multivariate).
* ``_GridSampler`` (grid search): a grid sampler proposes points of its grid only.
* ``DefaultSampler`` (the ``default`` baseline): proposes fixed parameters.
* ``methods/botorch.py``'s BoTorch sampler (in ``TrialSeeded``): 126 cases, about 700 GP fits,
  under 2 minutes on an idle 2-core machine (the whole file: 797 passed, 173 skipped in 171 s,
  2026-11-30). ``DIFFHPO_CONFORMANCE_BOTORCH=0`` skips them.
"""

from __future__ import annotations

import os

import numpy as np
import optuna
import pytest
from diffhpo.bench.contracts import space as sp
from diffhpo.methods.bilevel import BilevelSampler
from diffhpo.methods.default import DefaultSampler
from diffhpo.methods.grid import _GridSampler
from diffhpo.bench.toolkit.seeding import TrialSeeded
from optuna.distributions import FloatDistribution
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
    SingleOnlySamplerTestCase,
)


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

# --- what the suite does not check directly -----------------------------------------------------


def test_bilevel_unknown_categorical_and_conditional_parameters_fall_back_to_independent_sampling():
    """Built with a space of {x}: x follows the trajectory; a categorical, a parameter unknown
    when it was built and a conditional one are drawn independently (seeded by trial number)."""
    space = {"x": FloatDistribution(-5, 5)}

    def objective(trial):
        x = trial.suggest_float("x", -5, 5)
        c = trial.suggest_categorical("c", ["a", "b", "c"])
        w = trial.suggest_float("w", 0, 1)
        if c == "a":
            trial.suggest_int("only_a", 0, 3)
        trial.set_user_attr("hypergrad", {"x": 2 * (x - 1)})
        return (x - 1) ** 2 + w

    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=BilevelSampler(space, seed=3))
        study.optimize(objective, n_trials=30)
        runs.append(study)
    study = runs[0]
    assert all(t.system_attrs["bilevel:slot"][0] == i for i, t in enumerate(study.trials))
    assert study.sampler.current_params(study)["x"] == pytest.approx(1.0, abs=0.05)
    assert {t.params["c"] for t in study.trials} == {"a", "b", "c"}
    assert len({round(t.params["w"], 9) for t in study.trials}) == 30  # not moved: independent draws
    assert [t.params for t in runs[0].trials] == [t.params for t in runs[1].trials]  # seeded


def test_bilevel_partial_fixed_sampling_moves_only_the_handed_subset():
    def objective(trial):
        x = trial.suggest_float("x", -1, 1)
        y = trial.suggest_int("y", -1, 1)
        trial.set_user_attr("hypergrad", {"x": 2 * (x - 0.5), "y": 1.0})
        return (x - 0.5) ** 2 + y

    study = optuna.create_study(sampler=BilevelSampler(seed=0))
    study.optimize(objective, n_trials=3)
    study.sampler = optuna.samplers.PartialFixedSampler({"y": 1}, study.sampler)
    study.optimize(objective, n_trials=25)
    fixed = study.trials[3:]
    assert all(t.params["y"] == 1 for t in fixed)
    tags = {t.system_attrs["bilevel:space"] for t in fixed}
    assert len(tags) == 1 and tags != {study.trials[2].system_attrs["bilevel:space"]}  # its own trajectory
    assert [t.system_attrs["bilevel:slot"][0] for t in fixed] == list(range(len(fixed)))
    assert fixed[0].params["x"] == 0.0  # it starts at the centre of x's range
    assert fixed[-1].params["x"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("mode", ["oracle", "zo"])
def test_bilevel_steps_integers_and_single_values(mode):
    """Values are members of their distributions (steps, integers, a single value) and the
    search still converges on the grid."""

    def objective(trial):
        a = trial.suggest_float("a", -3, 3, step=0.25)
        n = trial.suggest_int("n", 0, 20, step=2)
        m = trial.suggest_int("m", 1, 1000, log=True)
        one = trial.suggest_float("one", 2.0, 2.0)
        assert one == 2.0
        trial.set_user_attr("hypergrad", {"a": 2 * (a - 1.25), "n": 2 * (n - 8), "m": 2 * np.log(m / 30) / m})
        return (a - 1.25) ** 2 + (n - 8) ** 2 / 10 + np.log(m / 30) ** 2

    study = optuna.create_study(sampler=BilevelSampler(seed=1, mode=mode))
    study.optimize(objective, n_trials=80)
    for t in study.trials:
        assert (t.params["a"] + 3) / 0.25 == pytest.approx(round((t.params["a"] + 3) / 0.25))
        assert isinstance(t.params["n"], int) and t.params["n"] % 2 == 0 and isinstance(t.params["m"], int)
    p = study.sampler.current_params(study)
    assert set(p) == {"a", "n", "m"}  # the single value is not a coordinate
    assert abs(p["a"] - 1.25) <= 0.25 and abs(p["n"] - 8) <= 2 and 15 <= p["m"] <= 60


def test_bilevel_refuses_a_multi_objective_study_with_one_clear_error():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=BilevelSampler(seed=0))
    with pytest.raises(ValueError, match="single-objective studies only"):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), 0.0), n_trials=1)


@pytest.mark.parametrize("mode", ["oracle", "zo"])
def test_bilevel_with_inferred_space_resumes_from_storage(tmp_path, mode):
    """Without a search space too, a fresh sampler on the stored trials continues the same
    trajectory as one uninterrupted run."""

    def objective(trial):
        x = trial.suggest_float("x", -5, 5)
        y = trial.suggest_float("y", 1e-2, 1e2, log=True)
        trial.set_user_attr("hypergrad", {"x": 2 * (x - 1), "y": 2 * np.log(y) / y})
        return (x - 1) ** 2 + np.log(y) ** 2

    ref = optuna.create_study(sampler=BilevelSampler(seed=0, mode=mode))
    ref.optimize(objective, n_trials=16)
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    first = optuna.create_study(storage=url, study_name="s", sampler=BilevelSampler(seed=0, mode=mode))
    first.optimize(objective, n_trials=7)
    again = optuna.load_study(storage=url, study_name="s", sampler=BilevelSampler(seed=0, mode=mode))
    again.optimize(objective, n_trials=9)
    assert [t.params for t in again.trials] == [t.params for t in ref.trials]


# --- BoTorch (optuna-integration's BoTorchSampler on one torch thread) ---------------------------

RUN_BOTORCH = os.environ.get("DIFFHPO_CONFORMANCE_BOTORCH", "1") != "0"


@pytest.mark.slow
@pytest.mark.skipif(not RUN_BOTORCH, reason="DIFFHPO_CONFORMANCE_BOTORCH=0: the BoTorch cases (about 700 GP fits) are switched off")
class TestTrialSeededBoTorch(_SkipTable, BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase):
    """``methods/botorch.py``'s sampler, with one start-up trial so that relative sampling is
    the GP's from the second trial on."""

    @pytest.fixture
    def sampler(self):
        import warnings

        from diffhpo.methods.botorch import _sampler_class

        def make():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return TrialSeeded(_sampler_class()(seed=0, n_startup_trials=1), 0)

        return make


# --- the bilevel sampler given a search space, and trials lacking some of its parameters --------

# The numeric part of the space of Optuna's test_conditional_parameter_objective: each trial
# suggests x, then y or z, never both (issue 24, part 2).
CONDITIONAL_SPACE = {"y": FloatDistribution(0, 1), "z": FloatDistribution(0, 1)}
GIVEN_SPACE_SAMPLERS = {
    "oracle": lambda: _OracleBilevel(CONDITIONAL_SPACE, mode="oracle", seed=0),
    "zo-forward": lambda: BilevelSampler(CONDITIONAL_SPACE, mode="zo", zo_scheme="forward", seed=0),
    "zo-central": lambda: BilevelSampler(CONDITIONAL_SPACE, mode="zo", zo_scheme="central", seed=0),
}


@pytest.mark.parametrize("mode", list(GIVEN_SPACE_SAMPLERS))
def test_bilevel_given_space_conformance_conditional_parameter_objective(mode):
    BasicSamplerTestCase().test_conditional_parameter_objective(GIVEN_SPACE_SAMPLERS[mode])


@pytest.mark.parametrize("mode", list(GIVEN_SPACE_SAMPLERS))
def test_bilevel_given_space_replays_trials_lacking_a_parameter_at_their_proposed_point(mode):
    """The rule of methods/bilevel.py: a trial lacking a parameter of the given space is replayed
    at its slot's proposed value for it, so the trajectory moves on (it is not stuck on one slot)."""
    def objective(trial):
        x = trial.suggest_categorical("x", [True, False])
        name = "y" if x else "z"
        return (trial.suggest_float(name, 0, 1) - 0.8) ** 2

    study = optuna.create_study(sampler=GIVEN_SPACE_SAMPLERS[mode]())
    study.optimize(objective, n_trials=12)
    sampler = study.sampler
    coords = sampler._coords(CONDITIONAL_SPACE)
    state = sampler._replay(study, coords)
    assert state.iteration >= 2  # every completed trial lacks y or z, and still counts
    assert all(set(t.system_attrs["bilevel:point"]) == {"y", "z"} for t in study.trials)
    # a trial without the record of its point (an older storage) is left out, not a crash
    old = study.trials[0]
    study.add_trial(optuna.create_trial(params=old.params, distributions=old.distributions, value=old.value,
                                        system_attrs={k: v for k, v in old.system_attrs.items() if k != "bilevel:point"}))
    assert sampler._whole(study.trials[-1], coords) is None
    assert sampler._replay(study, coords).iteration == state.iteration  # the duplicate slot is not counted
    sampler.current_params(study)
