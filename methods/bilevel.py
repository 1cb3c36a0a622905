"""The first-order bilevel method (Xiao et al., ICML 2025) as an Optuna sampler.

One trial is one outer iteration. The sampler proposes the current iterate ``x_k``; the
runner calls the task's first-order oracle there (method.md, "fully first-order"), which
records the hypergradient estimate in the trial's user attribute ``hypergrad``; the next
trial's iterate is

    x_{k+1} = Proj_box( x_k - step_k(g_k) )                                  (projected step)

in normalised coordinates (each parameter mapped to [0, 1] over its range, through log
for log-scale parameters). ``g_k`` is the hypergradient of the loss (the primary metric,
negated when it is maximised) in those coordinates. The step is

* ``rprop`` (default): per-coordinate sign steps whose size grows x1.2 while the sign of
  the gradient holds and halves when it flips (Riedmiller & Braun, 1993). Robust to the
  scale of the hypergradient, which spans decades across tasks and changes with gamma;
* ``adam``: Adam moments with step ``lr``;
* ``sgd``: plain ``lr * g``.

The penalty weight of the oracle grows as ``gamma_k = min(gamma0 * gamma_growth**k,
gamma_max)`` (method.md: "gamma grows over iterations").

When the objective reports no hypergradient (a black-box task), the sampler falls back to
the two-point zeroth-order estimator of method.md: iteration k evaluates the pairs
``x_k +/- delta * u_d`` for ``zo_directions`` Gaussian directions ``u_d`` (drawn from
``(seed, k, d)``) and uses ``g = mean_d [F(x+du_d) - F(x-du_d)] / (2 delta) u_d``.

State: nothing is kept in memory. Each trial stores its slot (iteration, direction,
sign) as a system attribute; every proposal replays the completed trials in order, so a
resumed run or a second worker continues the same trajectory (as Optuna's CmaEsSampler
does). Failed trials are not counted: their slot is proposed again.

Example::

    import optuna
    from diffhpo.methods.bilevel import BilevelSampler

    space = {"x": optuna.distributions.FloatDistribution(-5, 5)}

    def objective(trial):
        x = trial.suggest_float("x", -5, 5)
        trial.set_user_attr("hypergrad", {"x": 2 * (x - 1)})  # d/dx (x - 1)^2
        return (x - 1) ** 2

    study = optuna.create_study(sampler=BilevelSampler(space, seed=0))
    study.optimize(objective, n_trials=30)
    print(study.sampler.current_params(study))  # close to {"x": 1.0}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ..bench.options import option
from ..tasks.base import OracleContext
from . import space as sp
from .base import Method, MethodContext
from .zeroth_order import gaussian_directions, two_point_estimate

SLOT_KEY = "bilevel:slot"
GRAD_KEY = "hypergrad"


@dataclass
class _State:
    iteration: int
    u: np.ndarray  # current iterate in normalised coordinates
    mode: str  # "oracle" or "zo"


class BilevelSampler(BaseSampler):
    """Projected first-order steps driven by per-trial hypergradients (see module doc)."""

    def __init__(
        self,
        search_space: Mapping[str, BaseDistribution],
        *,
        start: Mapping[str, Any] | None = None,
        mode: str = "auto",
        optimizer: str = "rprop",
        step: float = 0.04,
        step_max: float = 0.15,
        step_min: float = 1e-5,
        lr: float = 0.05,
        gamma0: float = 10.0,
        gamma_growth: float = 1.5,
        gamma_max: float = 1e4,
        zo_directions: int = 2,
        zo_delta: float = 0.02,
        seed: int = 0,
    ) -> None:
        if mode not in ("auto", "oracle", "zo"):
            raise ValueError("mode must be 'auto', 'oracle' or 'zo'")
        if optimizer not in ("rprop", "adam", "sgd"):
            raise ValueError("optimizer must be 'rprop', 'adam' or 'sgd'")
        self._space = dict(search_space)
        self._names = list(self._space)
        self._box = sp.bounds(self._space)
        start = dict(start) if start is not None else sp.centre(self._space)
        self._u0 = np.array([self._normalise(n, start[n]) for n in self._names])
        self.mode = mode
        self.optimizer = optimizer
        self.step, self.step_max, self.step_min, self.lr = step, step_max, step_min, lr
        self.gamma0, self.gamma_growth, self.gamma_max = gamma0, gamma_growth, gamma_max
        self.zo_directions, self.zo_delta = zo_directions, zo_delta
        self.seed = seed
        self._fallback = RandomSampler(seed=seed)

    # -- coordinates ---------------------------------------------------------------------
    def _normalise(self, name: str, value: float) -> float:
        i = self._names.index(name)
        lo, hi = self._box[i]
        return (sp.to_internal(self._space[name], value) - lo) / (hi - lo)

    def _params(self, u: np.ndarray) -> dict[str, Any]:
        u = np.clip(u, 0.0, 1.0)
        lo, hi = self._box[:, 0], self._box[:, 1]
        internal = lo + u * (hi - lo)
        return {n: sp.from_internal(self._space[n], float(v)) for n, v in zip(self._names, internal)}

    def _grad_to_unit(self, params: Mapping[str, Any], grad: Mapping[str, float]) -> np.ndarray:
        """d/d(normalised coordinate) from d/d(natural parameter) (chain rule)."""
        out = np.empty(len(self._names))
        for i, n in enumerate(self._names):
            width = self._box[i, 1] - self._box[i, 0]
            scale = float(params[n]) if sp.is_log(self._space[n]) else 1.0
            out[i] = float(grad[n]) * width * scale
        return out

    def gamma(self, iteration: int) -> float:
        return float(min(self.gamma0 * self.gamma_growth**iteration, self.gamma_max))

    def _directions(self, iteration: int) -> np.ndarray:
        return gaussian_directions(self.seed, iteration, self.zo_directions, len(self._names))

    # -- replay --------------------------------------------------------------------------
    def _replay(self, study: Study) -> tuple[_State, dict[tuple[int, int], list[float]]]:
        """Rebuild the trajectory from the completed trials; return the state and the ZO
        values already collected for the current iteration."""
        sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
        done: dict[int, list[FrozenTrial]] = {}
        mode = self.mode
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            slot = t.system_attrs.get(SLOT_KEY)
            if slot is None:
                continue
            done.setdefault(int(slot[0]), []).append(t)
            if mode == "auto":
                mode = "oracle" if GRAD_KEY in t.user_attrs else "zo"
        if mode == "auto":
            mode = "oracle"
        u = self._u0.copy()
        k = 0
        opt = _Optimizer(self, len(u))
        while True:
            trials = done.get(k, [])
            if mode == "oracle":
                with_grad = [t for t in trials if GRAD_KEY in t.user_attrs]
                if not with_grad:
                    break
                t = min(with_grad, key=lambda t: t.number)
                g = sign * self._grad_to_unit(t.params, t.user_attrs[GRAD_KEY])
            else:
                values: dict[tuple[int, int], list[float]] = {}
                for t in sorted(trials, key=lambda t: t.number):
                    _, dd, s = t.system_attrs[SLOT_KEY]
                    values.setdefault((int(dd), int(s)), []).append(float(t.value))
                if any((d, s) not in values for d in range(self.zo_directions) for s in (1, -1)):
                    return _State(k, u, mode), values
                dirs = range(self.zo_directions)
                g = sign * two_point_estimate(
                    [values[(d, 1)][0] for d in dirs], [values[(d, -1)][0] for d in dirs],
                    self._directions(k), self.zo_delta,
                )
            u = np.clip(u - opt.step(g), 0.0, 1.0)
            k += 1
        return _State(k, u, mode), {}

    def current_params(self, study: Study) -> dict[str, Any]:
        """The current iterate: the method's output once the budget is spent."""
        return self._params(self._replay(study)[0].u)

    # -- Optuna sampler API ----------------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def _slot_params(self, state: _State, d: int, s: int) -> dict[str, Any]:
        if state.mode == "oracle":
            return self._params(state.u)
        return self._params(state.u + s * self.zo_delta * self._directions(state.iteration)[d])

    def _taken(self, study: Study, iteration: int, before: int | None = None) -> set[tuple[int, int]]:
        """Slots of ``iteration`` held by a RUNNING or COMPLETE trial (numbered before ``before``)."""
        out = set()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):
            slot = t.system_attrs.get(SLOT_KEY)
            if slot is not None and slot[0] == iteration and (before is None or t.number < before):
                out.add((int(slot[1]), int(slot[2])))
        return out

    def _pending(self, state: _State) -> list[tuple[int, int]]:
        if state.mode == "oracle":
            return [(0, 0)]
        return [(d, s) for d in range(self.zo_directions) for s in (1, -1)]

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        state, _ = self._replay(study)
        taken = self._taken(study, state.iteration)
        pending = self._pending(state)
        d, s = next((p for p in pending if p not in taken), pending[0])
        study._storage.set_trial_system_attr(trial._trial_id, SLOT_KEY, [state.iteration, d, s])
        return self._slot_params(state, d, s)

    # -- several workers: outer iterations are sequential ----------------------------------
    def ready(self, study: Study) -> bool:
        """Whether a worker has a piece of the current iteration to evaluate: in oracle mode
        the one iterate (nobody else evaluating it), in zeroth-order mode a free
        perturbation of the current pairs. Other workers wait."""
        state, _ = self._replay(study)
        taken = self._taken(study, state.iteration)
        return any(p not in taken for p in self._pending(state))

    def admit(self, study: Study, trial: optuna.Trial) -> bool:
        """Decline a trial whose slot an earlier trial already holds, or whose parameters
        (a retried copy) no longer match its slot's iterate."""
        slot = study._storage.get_trial_system_attrs(trial._trial_id).get(SLOT_KEY)
        if slot is None:
            return False
        k, d, s = (int(v) for v in slot)
        if (d, s) in self._taken(study, k, before=trial.number):
            return False
        state, _ = self._replay(study)
        if state.iteration != k:
            return False
        expected = self._slot_params(state, d, s)
        return all(np.isclose(float(trial.params[n]), float(v), rtol=1e-9, atol=1e-12) for n, v in expected.items())

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def oracle_context(self, study: Study, trial: optuna.Trial) -> OracleContext:
        """Iteration and penalty weight for the oracle call of ``trial``."""
        slot = study._storage.get_trial_system_attrs(trial._trial_id)[SLOT_KEY]
        k = int(slot[0])
        return OracleContext(iteration=k, gamma=self.gamma(k))


class _Optimizer:
    """The step rule, replayed from the gradient sequence (no stored state)."""

    def __init__(self, sampler: BilevelSampler, dim: int) -> None:
        self.s = sampler
        self.k = 0
        self.size = np.full(dim, sampler.step)
        self.prev = np.zeros(dim)
        self.m = np.zeros(dim)
        self.v = np.zeros(dim)

    def step(self, g: np.ndarray) -> np.ndarray:
        s = self.s
        self.k += 1
        if s.optimizer == "sgd":
            return s.lr * g
        if s.optimizer == "adam":
            b1, b2 = 0.9, 0.999
            self.m = b1 * self.m + (1 - b1) * g
            self.v = b2 * self.v + (1 - b2) * g * g
            mh, vh = self.m / (1 - b1**self.k), self.v / (1 - b2**self.k)
            return s.lr * mh / (np.sqrt(vh) + 1e-12)
        # rprop (iRprop-): grow on agreement, shrink and skip on a sign flip
        agree = g * self.prev
        self.size = np.where(agree > 0, np.minimum(self.size * 1.2, s.step_max), self.size)
        self.size = np.where(agree < 0, np.maximum(self.size * 0.5, s.step_min), self.size)
        g = np.where(agree < 0, 0.0, g)
        self.prev = g
        return np.sign(g) * self.size


@dataclass(frozen=True)
class BilevelOptions:
    """``--method-option bilevel.KEY=VALUE``: the sampler's settings, with their ranges
    (defaults as in :class:`BilevelSampler`)."""

    optimizer: str = option("rprop", "step rule", choices=("rprop", "adam", "sgd"))
    step: float = option(0.04, "rprop: initial step in normalised coordinates", gt=0, le=1)
    step_max: float = option(0.15, "rprop: largest step", gt=0, le=1)
    step_min: float = option(1e-5, "rprop: smallest step", gt=0, le=1)
    lr: float = option(0.05, "adam / sgd: learning rate", gt=0, le=1e6)
    gamma0: float = option(10.0, "penalty weight at iteration 0", gt=0, le=1e12)
    gamma_growth: float = option(1.5, "penalty weight factor per iteration", ge=1, le=100)
    gamma_max: float = option(1e4, "largest penalty weight", gt=0, le=1e12)
    zo_directions: int = option(2, "zeroth-order fallback: Gaussian directions per iteration", ge=1, le=1000)
    zo_delta: float = option(0.02, "zeroth-order fallback: radius in normalised coordinates", gt=0, le=0.5)

    def rules(self):
        yield self.step_min <= self.step <= self.step_max, "need step_min <= step <= step_max"
        yield self.gamma0 <= self.gamma_max, "gamma0 must not exceed gamma_max"


def make_sampler(ctx: MethodContext) -> BilevelSampler:
    mode = "oracle" if ctx.task.has_oracle else "zo"
    return BilevelSampler(
        ctx.search_space, start=ctx.task.default_params(), mode=mode, seed=ctx.seed, **dict(ctx.options)
    )


def choose(study: Study) -> dict[str, Any]:
    """The bilevel method outputs its last iterate, not its best trial."""
    sampler = study.sampler
    return sampler.current_params(study)


METHOD = Method(
    "first-order generative bilevel method (Xiao et al. 2025): projected hypergradient steps, "
    "zeroth-order fallback",
    make_sampler,
    uses_oracle=True,
    choose=choose,
    options=BilevelOptions,
)
