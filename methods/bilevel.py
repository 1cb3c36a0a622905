"""The first-order bilevel method (Xiao et al., ICML 2025) as an Optuna sampler.

One trial is one outer iteration. The sampler proposes the current iterate ``x_k``; the
runner calls the task's first-order oracle there (method.md, "fully first-order"), which
records the hypergradient estimate in the trial's user attribute ``hypergrad``; the next
trial's iterate is

    x_{k+1} = Proj_box( x_k - step_k(g_k) )                                  (projected step)

in normalised coordinates (each parameter mapped to [0, 1] over its range, through log
for log-scale parameters). ``g_k`` is the hypergradient of the loss (the objective,
negated when it is maximised) in those coordinates. The step is

* ``rprop`` (default): Rprop step sizes driven by the sign of a momentum of the gradient,
  Adam-normalised steps, shrinking at a sign flip by the factor under which the size is a
  martingale for a pure-noise gradient (:mod:`.step_rules`: the step does not collapse when
  a noisy hypergradient flips its sign at random, and still converges without noise).
  Robust to the scale of the hypergradient, which spans decades across tasks and changes
  with gamma;
* ``irprop``: iRprop- on the raw gradient (the default before issue 18; its step collapses
  under noise);
* ``adam``: Adam moments with step ``lr``; ``adamw``: AdamW in natural units with
  per-parameter learning rates ``natural_lr``, weight decay and optionally a one-cycle
  schedule (``lr_schedule``), the paper preset's rule;
* ``sgd``: plain ``lr * g``.

The penalty weight of the oracle grows as ``gamma_k = min(gamma0 * gamma_growth**k,
gamma_max)`` (method.md: "gamma grows over iterations"; ``gamma_rule="geometric"``, the
default). ``gamma_rule="drift"`` (issue 27; :func:`drift_gammas`) grows it by the same
factor only while the single loop's measured ``|y - z|`` (the trials' ``yz_distance``)
shrinks, and holds it otherwise: the premise of the penalty method (Kwon et al. 2023),
``y - z = O(1/gamma)``, says a larger gamma should bring y closer to z; where it does not,
growing gamma only inflates the penalty term. The rule is new. (The classic penalty-method
update, Nocedal & Wright 2006, Sec. 17.1, decides the other way round, growing the weight
while the constraint violation does *not* shrink enough; here a violation that grows with
gamma is the sign that growing gamma does not help.)

**Drift variants** of the single loop (issue 27, :mod:`diffhpo.tasks.single_loop`, all off by
default): ``prox_mu`` (a proximal term on y's objective), ``resync_every`` (periodic
``y <- z``), ``y_step_ratio`` (fewer inner steps on y); the sampler passes them to the
oracle through :class:`~diffhpo.bench.contracts.task.OracleContext` and ignores them otherwise.

**Presets.** ``preset="paper"`` (``--method-option bilevel.preset=paper``) reproduces the
reference code's schedule-tuning update rule and iteration structure within the budget
accounting: AdamW with the task's natural-unit learning rates under a one-cycle policy,
gamma held at 1, and (through the oracle context) the single loop's reference iteration
(:mod:`.bilevel_paper`, :data:`diffhpo.tasks.single_loop.PAPER_LOOP`). Settings given
explicitly win over the preset's. ``zo_term`` (``on``, ``off``, ``noise``) is an
ablation switch passed to the oracle: the single loop then drops its zeroth-order term
or replaces it by Gaussian noise of the same norm (``benchmarks/bilevel_ablation.py``);
``penalty_term`` is the same switch for its penalty term.

**Zeroth-order fallback.** When the objective reports no hypergradient (a black-box
task), the gradient is estimated from function values (method.md, "Zeroth-order
estimator"; :mod:`.zeroth_order`). Two schemes (option ``zo_scheme``):

* ``forward`` (default): iteration k evaluates one candidate ``c_k = Proj(x - h d)``,
  ``d = g / |g|`` the direction of the last gradient estimate, ``h`` the step length
  (``zo_step`` at first). If ``F(c_k) < F(x)`` the step is accepted (``x = c_k``, ``h``
  doubles up to ``zo_step_max``) and the gradient is estimated at the new ``x`` from one
  one-sided difference per direction along ``zo_directions`` orthonormal random
  directions (radius ``zo_delta``, at least one grid step of a stepped parameter),
  reusing ``F(x)`` (:func:`.zeroth_order.forward_estimate`). Otherwise the step is
  rejected: ``x`` stays, ``h`` halves and the direction is kept (a backtracking line
  search, one evaluation per try; a step that rounds to ``x`` itself is shortened without
  one). Once ``h < zo_delta`` the estimate is redone at ``x``: by default
  (``zo_central="on-failure"``) the one-sided points are mirrored through ``x``, which
  turns them into method.md's central differences (the curvature terms cancel), and after
  a central estimate new directions are drawn; the step restarts from the last accepted
  length. Iteration 0 evaluates the start point. An accepted step costs
  ``1 + zo_directions`` evaluations, a rejected one 1; the iterate is always the best
  centre evaluated so far.
* ``central``: method.md's two-point estimator as before: iteration k evaluates the pairs
  ``x_k +/- zo_delta * u_d`` for ``zo_directions`` Gaussian directions and takes the
  projected step of ``optimizer`` with ``g = mean_d [F(x+du_d) - F(x-du_d)] / (2 delta)
  u_d`` (``2 zo_directions`` evaluations per step, the centre never evaluated).

Why (``benchmarks/bilevel_zo_fallback.py``, 20 seeds, equal budgets): ``central`` makes
5 rprop steps of at most 0.15 in 20 evaluations and never looks at F(x); on ``quadratic``
with two weights it ended worse than random search on every seed. ``forward`` measures
every step it takes, keeps only improvements and grows the step while they last. The
central differences on failure are needed on curved valleys (Rosenbrock), where the
one-sided estimate is dominated by its O(delta) curvature bias (``zo_central="never"``
stays at the start point there). Halving beat quadratic-interpolation backtracking on
Rosenbrock and under noise (interpolation won on ``quadratic`` with five weights), and
``zo_step=0.2`` was the most even across the problems (0.1 wins on the noise-free 2-D
ones, loses under noise).

**Search space.** Given at construction (the runner does), or, with ``search_space=None``,
inferred from the study as Optuna's relative samplers do (the intersection of the
completed trials' distributions; the first trial is then sampled independently). The
sampler moves the numeric parameters of the space it is *handed* (a
``PartialFixedSampler`` hands it a subset): integer and float, linear or log, with or
without ``step``; values are clipped and rounded to each distribution's grid. Categorical
parameters, ranges of a single value, conditional parameters and parameters unknown to the
space are sampled independently (uniformly, seeded by the trial's slot; a single value is
returned as is). The trajectory belongs to the movable space: each trial records its
fingerprint, and another space (a fixed parameter, a changed range) starts its own
trajectory from the start point. Multi-objective studies are refused (``ValueError``).

State: nothing is kept in memory. Each trial stores its slot (iteration, direction,
sign) as a system attribute; every proposal replays the completed trials in order, so a
resumed run or a second worker continues the same trajectory (as Optuna's CmaEsSampler
does). Failed trials are not counted: their slot is proposed again.

Trials lacking a parameter of the space (a space given at construction, and an objective
with conditional parameters that suggests only some of them): each trial also stores the
point its slot proposed (``bilevel:point``), and the replay reads a parameter the trial
lacks at that proposed value, with a hypergradient of 0 for it (the objective did not
depend on it in that trial). A trial lacking a parameter and that record (written by an
older version) is left out of the replay, as a failed one: its slot is proposed again.
Either way a stored trial never stops the sampler.

A trial whose hypergradient is not finite (the oracle's networks diverged: found on
``gmm-schedule`` with the paper preset, seed 2, whose last iterate became NaN and failed the
final protocol) counts as its iteration but moves nothing: the iterate and the step rule's
state stay as they were, so the method never outputs a NaN point.

Example::

    import optuna
    from diffhpo.methods.bilevel import BilevelSampler

    def objective(trial):
        x = trial.suggest_float("x", -5, 5)
        trial.set_user_attr("hypergrad", {"x": 2 * (x - 1)})  # d/dx (x - 1)^2
        return (x - 1) ** 2

    space = {"x": optuna.distributions.FloatDistribution(-5, 5)}
    study = optuna.create_study(sampler=BilevelSampler(space, seed=0))
    study.optimize(objective, n_trials=30)
    print(study.sampler.current_params(study))  # close to {"x": 1.0}
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import intersection_search_space
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ..bench.contracts.options import option
from ..bench.contracts.task import ZO_TERMS, OracleContext
from ..bench.contracts import space as sp
from ..bench.contracts.method import Method, MethodContext
from . import bilevel_paper as paper
from ..bench.toolkit.seeding import derive_seed
from ..bench.toolkit.seeding import slot as config_slot
from .step_rules import RULES, StepRule
from ..bench.toolkit.zeroth_order import forward_estimate, gaussian_directions, orthonormal_directions, two_point_estimate

SLOT_KEY = "bilevel:slot"
POINT_KEY = "bilevel:point"  # the values the trial's slot proposed for the movable space
SPACE_KEY = "bilevel:space"
GRAD_KEY = "hypergrad"
MULTI_OBJECTIVE = "BilevelSampler supports single-objective studies only (it descends one objective)"
ZO_GROW, ZO_SHRINK = 2.0, 0.5  # forward scheme: step length factors on acceptance / rejection
GAMMA_RULES = ("geometric", "drift")
DRIFT_KEY = "yz_distance"  # the single loop's measured |y - z| (trial user attribute)


def drift_gammas(gamma0: float, growth: float, gamma_max: float, distances) -> list[float]:
    """``gamma_k`` for k = 0..len(distances) under ``gamma_rule="drift"`` (module doc).

    ``distances[k]`` is ``|y - z|`` measured at outer iteration k (None or NaN: not
    measured). ``gamma_0 = min(gamma0, gamma_max)``; ``gamma_{k+1} = min(growth gamma_k,
    gamma_max)`` when ``d_k < d_{k-1}`` and ``gamma_k`` otherwise (held). Where there is
    nothing to compare (k = 0, or either distance not measured: an oracle that reports
    none) it grows, as the geometric rule does, so the rule differs from it only where a
    measured drift did not shrink."""
    out = [float(min(gamma0, gamma_max))]
    for k, d in enumerate(distances):
        prev = distances[k - 1] if k > 0 else None
        known = all(v is not None and np.isfinite(float(v)) for v in (d, prev))
        grow = not known or float(d) < float(prev)
        out.append(float(min(out[-1] * growth, gamma_max)) if grow else out[-1])
    return out


@dataclass
class _State:
    iteration: int
    u: np.ndarray  # current iterate (the method's output) in normalised coordinates
    mode: str  # "oracle" or "zo"
    points: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # open slots of this iteration


class _Coords:
    """Normalised coordinates of one movable search space."""

    def __init__(self, space: Mapping[str, BaseDistribution], start: Mapping[str, Any]) -> None:
        self.space = dict(space)
        self.names = list(self.space)
        self.box = sp.bounds(self.space)
        self.tag = sp.fingerprint(self.space)
        centre = sp.centre(self.space)
        self.u0 = np.array([self.normalise(n, start.get(n, centre[n])) for n in self.names])

    def normalise(self, name: str, value: float) -> float:
        dist = self.space[name]
        lo, hi = self.box[self.names.index(name)]
        value = min(max(float(value), dist.low), dist.high)
        return (sp.to_internal(dist, value) - lo) / (hi - lo)

    def unit(self, params: Mapping[str, Any]) -> np.ndarray:
        return np.array([self.normalise(n, params[n]) for n in self.names])

    def snapped(self, u: np.ndarray) -> np.ndarray:
        """``u`` moved to the point it stands for (clipped, rounded to the steps)."""
        return self.unit(self.params(u))

    def resolution(self, u: np.ndarray) -> np.ndarray:
        """Normalised length of one grid step at ``u`` per coordinate (0 without a step)."""
        out = np.zeros(len(self.names))
        p = self.params(u)
        for i, n in enumerate(self.names):
            dist, width = self.space[n], self.box[i, 1] - self.box[i, 0]
            step = getattr(dist, "step", None)
            if step is None:
                continue
            if sp.is_log(dist):  # integer log scale: step 1 at the current value
                v = max(float(p[n]), dist.low)
                out[i] = (np.log(v + step) - np.log(v)) / width
            else:
                out[i] = step / width
        return out

    def params(self, u: np.ndarray) -> dict[str, Any]:
        u = np.clip(u, 0.0, 1.0)
        internal = self.box[:, 0] + u * (self.box[:, 1] - self.box[:, 0])
        return {n: sp.from_internal(self.space[n], float(v)) for n, v in zip(self.names, internal)}

    def unit_per_natural(self, params: Mapping[str, Any]) -> np.ndarray:
        """``du/dq`` per coordinate at ``params``: ``1/width``, through log for log-scale ones."""
        out = np.empty(len(self.names))
        for i, n in enumerate(self.names):
            width = self.box[i, 1] - self.box[i, 0]
            scale = float(params[n]) if sp.is_log(self.space[n]) else 1.0
            out[i] = 1.0 / (width * scale)
        return out

    def grad_to_unit(self, params: Mapping[str, Any], grad: Mapping[str, float]) -> np.ndarray:
        """d/d(normalised coordinate) from d/d(natural parameter) (chain rule)."""
        return np.array([float(grad[n]) for n in self.names]) / self.unit_per_natural(params)


class BilevelSampler(BaseSampler):
    """Projected first-order steps driven by per-trial hypergradients (see module doc)."""

    rebuilds_from_storage = True  # proposals replay the stored trials: the runner adds no per-slot seeding

    def __init__(
        self,
        search_space: Mapping[str, BaseDistribution] | None = None,
        *,
        start: Mapping[str, Any] | None = None,
        mode: str = "auto",
        preset: str = "default",
        optimizer: str | None = None,
        step: float = 0.04,
        step_max: float = 0.15,
        step_min: float = 1e-5,
        lr: float = 0.05,
        lr_schedule: str | None = None,
        weight_decay: float | None = None,
        natural_lr: Mapping[str, float] | None = None,
        budget: float | None = None,
        cycle_length: int = 0,
        gamma0: float | None = None,
        gamma_growth: float | None = None,
        gamma_max: float = 1e4,
        gamma_rule: str = "geometric",
        prox_mu: float = 0.0,
        resync_every: int = 0,
        y_step_ratio: float = 1.0,
        zo_term: str = "on",
        penalty_term: str = "on",
        zo_scheme: str = "forward",
        zo_directions: int = 2,
        zo_delta: float = 0.02,
        zo_step: float = 0.2,
        zo_step_max: float = 0.5,
        zo_central: str = "on-failure",
        seed: int = 0,
    ) -> None:
        if mode not in ("auto", "oracle", "zo"):
            raise ValueError("mode must be 'auto', 'oracle' or 'zo'")
        self.preset = preset
        optimizer = paper.resolved(preset, "optimizer", optimizer)
        if optimizer not in RULES:
            raise ValueError(f"optimizer must be one of {', '.join(map(repr, RULES))}")
        lr_schedule = paper.resolved(preset, "lr_schedule", lr_schedule)
        if lr_schedule not in ("constant", "one-cycle"):
            raise ValueError("lr_schedule must be 'constant' or 'one-cycle'")
        for name, switch in (("zo_term", zo_term), ("penalty_term", penalty_term)):
            if switch not in ZO_TERMS:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, ZO_TERMS))}")
        if zo_scheme not in ("forward", "central"):
            raise ValueError("zo_scheme must be 'forward' or 'central'")
        if gamma_rule not in GAMMA_RULES:
            raise ValueError(f"gamma_rule must be one of {', '.join(map(repr, GAMMA_RULES))}")
        if zo_central not in ("on-failure", "never", "always"):
            raise ValueError("zo_central must be 'on-failure', 'never' or 'always'")
        self._space = (
            {n: d for n, d in search_space.items() if sp.is_movable(d)} if search_space is not None else None
        )
        self._start = dict(start) if start is not None else {}
        self.mode = mode
        self.optimizer = optimizer
        self.step, self.step_max, self.step_min, self.lr = step, step_max, step_min, lr
        self.lr_schedule, self.weight_decay = lr_schedule, float(paper.resolved(preset, "weight_decay", weight_decay))
        self.natural_lr = dict(natural_lr or {})
        self.budget, self.cycle_length = budget, int(cycle_length)
        self.gamma0 = float(paper.resolved(preset, "gamma0", gamma0))
        self.gamma_growth = float(paper.resolved(preset, "gamma_growth", gamma_growth))
        self.gamma_max = gamma_max
        self.gamma_rule = gamma_rule
        self.prox_mu, self.resync_every, self.y_step_ratio = float(prox_mu), int(resync_every), float(y_step_ratio)
        self.zo_term, self.penalty_term = zo_term, penalty_term
        self.zo_scheme, self.zo_directions, self.zo_delta = zo_scheme, int(zo_directions), zo_delta
        self.zo_step, self.zo_step_max, self.zo_central = zo_step, zo_step_max, zo_central
        self.seed = seed

    # -- search space ----------------------------------------------------------------------
    @staticmethod
    def _single(study: Study) -> None:
        if study._is_multi_objective():
            raise ValueError(MULTI_OBJECTIVE)

    def _space_of(self, study: Study) -> dict[str, BaseDistribution]:
        """The movable space: the one given at construction, or the study's intersection."""
        if self._space is not None:
            return dict(self._space)
        trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)
        return {n: d for n, d in intersection_search_space(trials).items() if sp.is_movable(d)}

    def _coords(self, space: Mapping[str, BaseDistribution]) -> _Coords:
        return _Coords(space, self._start)

    def gamma(self, iteration: int) -> float:
        """The geometric rule's gamma of an iteration (the drift rule's: :meth:`gamma_at`)."""
        return float(min(self.gamma0 * self.gamma_growth**iteration, self.gamma_max))

    def gamma_at(self, study: Study, iteration: int) -> float:
        """gamma of outer ``iteration`` under ``gamma_rule``: the drift rule replays the
        ``yz_distance`` of the completed outer iterations before it (:func:`drift_gammas`),
        so a resumed run or a second worker gets the same gamma."""
        if self.gamma_rule == "geometric" or iteration == 0:
            return self.gamma(iteration)
        coords = self._coords(self._space_of(study))
        done = {tuple(int(v) for v in t.system_attrs[SLOT_KEY]): t for t in reversed(self._trials(study, coords))}
        distances = []
        for k in range(iteration):
            t = done.get((k, 0, 0))
            distances.append(t.user_attrs.get(DRIFT_KEY) if t is not None else None)
        return drift_gammas(self.gamma0, self.gamma_growth, self.gamma_max, distances)[iteration]

    def _directions(self, iteration: int, dim: int) -> np.ndarray:
        return gaussian_directions(self.seed, iteration, self.zo_directions, dim)

    # -- replay --------------------------------------------------------------------------
    def _trials(self, study: Study, coords: _Coords) -> list[FrozenTrial]:
        """Completed trials of this space's trajectory, in order."""
        legacy = self._space is not None and coords.tag == sp.fingerprint(self._space)
        out = []
        for t in study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True):
            if t.system_attrs.get(SLOT_KEY) is None:
                continue
            tag = t.system_attrs.get(SPACE_KEY)
            if tag == coords.tag or (tag is None and legacy):
                out.append(t)
        return sorted(out, key=lambda t: t.number)

    def _replay(self, study: Study, coords: _Coords) -> _State:
        """Rebuild the trajectory from the completed trials: the iteration, the iterate and
        the points of the slots still open in the current iteration."""
        sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
        trials = self._trials(study, coords)
        mode = self.mode
        if mode == "auto":
            mode = "zo" if trials and GRAD_KEY not in trials[0].user_attrs else "oracle"
        done: dict[tuple[int, int, int], FrozenTrial] = {}
        for t in trials:
            t = self._whole(t, coords)
            if t is not None:
                done.setdefault(tuple(int(v) for v in t.system_attrs[SLOT_KEY]), t)
        if mode == "oracle":
            return self._replay_oracle(coords, done, sign)
        if self.zo_scheme == "central":
            return self._replay_central(coords, done, sign)
        return self._replay_forward(coords, done, sign)

    @staticmethod
    def _whole(t: FrozenTrial, coords: _Coords) -> FrozenTrial | None:
        """``t`` with every parameter of ``coords``: the ones it lacks at its slot's proposed
        point, with hypergradient 0 (see the module doc); None when it lacks one and has no
        record of that point."""
        lacking = [n for n in coords.names if n not in t.params]
        if not lacking:
            return t
        point = t.system_attrs.get(POINT_KEY) or {}
        if any(n not in point for n in lacking):
            return None
        whole = copy.copy(t)
        whole.params = {**t.params, **{n: point[n] for n in lacking}}
        if GRAD_KEY in t.user_attrs:
            whole.user_attrs = {**t.user_attrs, GRAD_KEY: {**{n: 0.0 for n in lacking}, **t.user_attrs[GRAD_KEY]}}
        return whole

    def _rule(self, coords: _Coords, first: FrozenTrial | None) -> StepRule | None:
        """The step rule of this trajectory (None: its one-cycle length is not known yet)."""
        natural = np.array([n in self.natural_lr for n in coords.names])
        lr = np.array([float(self.natural_lr.get(n, self.lr)) for n in coords.names])
        total = None
        if self.optimizer == "adamw" and self.lr_schedule == "one-cycle":
            total = paper.cycle_length([first] if first is not None else [], self.budget, self.cycle_length)
            if total is None:
                return None
        return StepRule(self.optimizer, len(coords.names), step=self.step, step_max=self.step_max,
                        step_min=self.step_min, lr=lr, weight_decay=self.weight_decay, natural=natural, total=total)

    def _replay_oracle(self, coords: _Coords, done: dict, sign: float) -> _State:
        u, k = coords.u0.copy(), 0
        opt = self._rule(coords, done.get((0, 0, 0)))
        while True:
            t = done.get((k, 0, 0))
            if t is None or GRAD_KEY not in t.user_attrs:
                return _State(k, u, "oracle", {(0, 0): u})
            g = sign * coords.grad_to_unit(t.params, t.user_attrs[GRAD_KEY])
            if np.all(np.isfinite(g)):  # a non-finite estimate moves nothing (module doc)
                value = np.array([float(t.params[n]) for n in coords.names])
                u = np.clip(u - opt.step(g, coords.unit_per_natural(t.params), value), 0.0, 1.0)
            k += 1

    def _replay_central(self, coords: _Coords, done: dict, sign: float) -> _State:
        u, k = coords.u0.copy(), 0
        opt = self._rule(coords, next(iter(done.values()), None))
        while True:
            dirs = self._directions(k, len(u))
            slots = [(d, s) for d in range(self.zo_directions) for s in (1, -1)]
            missing = [p for p in slots if (k, *p) not in done]
            if missing:
                points = {(d, s): u + s * self.zo_delta * dirs[d] for d, s in missing}
                return _State(k, u, "zo", points)
            value = lambda d, s: sign * float(done[(k, d, s)].value)  # noqa: E731
            r = range(self.zo_directions)
            g = two_point_estimate([value(d, 1) for d in r], [value(d, -1) for d in r], dirs, self.zo_delta)
            u = np.clip(u - opt.step(g), 0.0, 1.0)
            k += 1

    def _replay_forward(self, coords: _Coords, done: dict, sign: float) -> _State:
        dim = len(coords.names)
        n_dirs = min(self.zo_directions, dim)
        policy = self.zo_central
        x = coords.u0.copy()  # the iterate: the last accepted point, as evaluated (rounded to steps)
        fx = np.inf
        g = np.zeros(dim)
        h = h_ok = self.zo_step  # step length; length of the last accepted step
        last: tuple[int, np.ndarray, bool] | None = None  # (iteration, directions, one-sided) of the last estimate

        def restart() -> tuple[str, float]:
            """Backtracking failed: a new estimate at x (central differences by mirroring the
            last one-sided points, else new directions), from the last accepted length."""
            mirror = policy == "on-failure" and last is not None and last[2]
            return ("mirror" if mirror else "new"), max(h_ok, 2 * self.zo_delta)

        k = 0
        while True:
            estimate = None
            cand = x if k == 0 else None
            if k > 0:  # the step, shortened while it rounds to x itself (it would be wasted)
                while h >= self.zo_delta:
                    c = np.clip(x - h * g / np.linalg.norm(g), 0.0, 1.0)
                    if not np.allclose(coords.snapped(c), x, rtol=0, atol=1e-12):
                        cand = c
                        break
                    h *= ZO_SHRINK
                if cand is None:
                    estimate, h = restart()
            if cand is not None:
                t = done.get((k, 0, 0))
                if t is None:
                    return _State(k, x, "zo", {(0, 0): cand})
                f = sign * float(t.value)
                if k == 0 or f < fx:
                    if k > 0:
                        h_ok, h = h, min(h * ZO_GROW, self.zo_step_max)
                    x, fx = coords.unit(t.params), f
                    estimate = "new"
                else:
                    h *= ZO_SHRINK
                    if h < self.zo_delta:
                        estimate, h = restart()
            if estimate == "new":
                dirs = orthonormal_directions(self.seed, k, n_dirs, dim)
                radius = np.maximum(self.zo_delta, coords.resolution(x))  # at least one grid step
                points = {}
                for d in range(n_dirs):
                    p = x + radius * dirs[d]
                    if np.any((p < 0) | (p > 1)):  # step inwards at the boundary
                        p = x - radius * dirs[d]
                    points[(d, 1)] = np.clip(p, 0.0, 1.0)
                    if policy == "always":
                        points[(d, -1)] = np.clip(2 * x - p, 0.0, 1.0)
                rows = [(k, d, s) for d, s in points]
                last = (k, dirs, policy != "always")
            elif estimate == "mirror":  # the last one-sided estimate's points, mirrored through x
                k0, dirs, _ = last
                points = {(d, -1): np.clip(2 * x - coords.unit(done[(k0, d, 1)].params), 0.0, 1.0)
                          for d in range(len(dirs))}
                rows = [(k0, d, 1) for d in range(len(dirs))] + [(k, d, s) for d, s in points]
                last = (k, dirs, False)
            if estimate is not None:
                missing = {p: v for p, v in points.items() if (k, *p) not in done}
                if missing:
                    return _State(k, x, "zo", missing)
                V = np.stack([coords.unit(done[r].params) - x for r in rows])
                fp = [sign * float(done[r].value) for r in rows]
                g = forward_estimate(V, fp, fx)
            if not np.linalg.norm(g) > 0:  # flat (or not finite): probe along a new direction
                g = orthonormal_directions(self.seed, k + 1, 1, dim)[0]
            k += 1

    def current_params(self, study: Study) -> dict[str, Any]:
        """The current iterate: the method's output once the budget is spent."""
        coords = self._coords(self._space_of(study))
        return coords.params(self._replay(study, coords).u)

    # -- Optuna sampler API ----------------------------------------------------------------
    def reseed_rng(self) -> None:  # nothing random is kept in memory
        pass

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        self._single(study)
        return self._space_of(study)

    def _taken(self, study: Study, iteration: int, tag: str, before: int | None = None) -> set[tuple[int, int]]:
        """Slots of ``iteration`` held by a RUNNING or COMPLETE trial (numbered before ``before``)."""
        out = set()
        legacy = self._space is not None and tag == sp.fingerprint(self._space)
        for t in study._get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE), use_cache=False):
            slot = t.system_attrs.get(SLOT_KEY)
            if slot is None or t.system_attrs.get(SPACE_KEY, tag if legacy else None) != tag:
                continue
            if slot[0] == iteration and (before is None or t.number < before):
                out.add((int(slot[1]), int(slot[2])))
        return out

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._single(study)
        movable = {n: d for n, d in search_space.items() if sp.is_movable(d)}
        moved: dict[str, Any] = {}
        if movable:
            coords = self._coords(movable)
            state = self._replay(study, coords)
            taken = self._taken(study, state.iteration, coords.tag)
            open_slots = list(state.points)
            d, s = next((p for p in open_slots if p not in taken), open_slots[0])
            study._storage.set_trial_system_attr(trial._trial_id, SLOT_KEY, [state.iteration, d, s])
            study._storage.set_trial_system_attr(trial._trial_id, SPACE_KEY, coords.tag)
            moved = coords.params(state.points[(d, s)])
            study._storage.set_trial_system_attr(trial._trial_id, POINT_KEY, moved)  # see _whole
        return {
            n: moved[n] if n in moved else self.sample_independent(study, trial, n, dist)
            for n, dist in search_space.items()
        }

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """Parameters the sampler cannot move: uniform (log-uniform) draws seeded by the trial's
        slot and the name, the single value of a one-value range."""
        self._single(study)
        if sp.is_numeric(param_distribution) and param_distribution.low == param_distribution.high:
            return sp.snap(param_distribution, param_distribution.low)
        # seeded by the slot, which is the trial number without retries (bench/toolkit/seeding.py): a
        # retry of a trial cut off before this draw draws the same value
        rng_seed = derive_seed(self.seed, config_slot(study, trial), zlib.crc32(param_name.encode()))
        return RandomSampler(seed=rng_seed).sample_independent(study, trial, param_name, param_distribution)

    # -- several workers: outer iterations are sequential ----------------------------------
    def ready(self, study: Study) -> bool:
        """Whether a worker has a piece of the current iteration to evaluate: in oracle mode
        the one iterate (nobody else evaluating it), in zeroth-order mode a free point of
        the current iteration. Other workers wait."""
        coords = self._coords(self._space_of(study))
        state = self._replay(study, coords)
        taken = self._taken(study, state.iteration, coords.tag)
        return any(p not in taken for p in state.points)

    def admit(self, study: Study, trial: optuna.Trial) -> bool:
        """Decline a trial whose slot an earlier trial already holds, or whose parameters
        (a retried copy) no longer match its slot's point."""
        attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        slot = attrs.get(SLOT_KEY)
        if slot is None:
            return False
        k, d, s = (int(v) for v in slot)
        coords = self._coords(self._space_of(study))
        if attrs.get(SPACE_KEY, coords.tag) != coords.tag:
            return False
        if (d, s) in self._taken(study, k, coords.tag, before=trial.number):
            return False
        state = self._replay(study, coords)
        if state.iteration != k or (d, s) not in state.points:
            return False
        expected = coords.params(state.points[(d, s)])
        return all(np.isclose(float(trial.params[n]), float(v), rtol=1e-9, atol=1e-12) for n, v in expected.items())

    def oracle_context(self, study: Study, trial: optuna.Trial) -> OracleContext:
        """Iteration and penalty weight for the oracle call of ``trial`` (iteration 0 for a
        trial sampled independently: the first trial of a study whose space is inferred)."""
        slot = study._storage.get_trial_system_attrs(trial._trial_id).get(SLOT_KEY, [0])
        k = int(slot[0])
        return OracleContext(iteration=k, gamma=self.gamma_at(study, k), preset=self.preset, zo_term=self.zo_term,
                             penalty_term=self.penalty_term, prox_mu=self.prox_mu, resync_every=self.resync_every,
                             y_step_ratio=self.y_step_ratio)


@dataclass(frozen=True)
class BilevelOptions:
    """``--method-option bilevel.KEY=VALUE``: the sampler's settings, with their ranges
    (defaults as in :class:`BilevelSampler`)."""

    preset: str = option("default", "default, or paper: the reference code's update rule and iteration structure "
                         "(AdamW, per-parameter natural-unit rates, one-cycle, gamma 1, 10 inner steps, one "
                         "direction, delta 0.01; methods/bilevel_paper.py); options given explicitly win",
                         choices=tuple(paper.PRESETS))
    optimizer: str = option("rprop", "step rule (the preset's unless given)", choices=RULES)
    step: float = option(0.04, "rprop: initial step in normalised coordinates", gt=0, le=1)
    step_max: float = option(0.15, "rprop: largest step", gt=0, le=1)
    step_min: float = option(1e-5, "rprop: smallest step", gt=0, le=1)
    lr: float = option(0.05, "adam / sgd: learning rate (adamw: for parameters without a natural-unit rate)",
                       gt=0, le=1e6)
    lr_schedule: str = option("constant", "adamw: constant or one-cycle (the preset's unless given)",
                              choices=("constant", "one-cycle"))
    weight_decay: float = option(0.01, "adamw: decoupled weight decay (natural units)", ge=0, le=1)
    cycle_length: int = option(0, "one-cycle: steps of the cycle (0: the outer iterations the budget allows)",
                               ge=0, le=10**7)
    gamma0: float = option(10.0, "penalty weight at iteration 0 (the preset's unless given)", gt=0, le=1e12)
    gamma_growth: float = option(1.5, "penalty weight factor per iteration (the preset's unless given)", ge=1,
                                 le=100)
    gamma_max: float = option(1e4, "largest penalty weight", gt=0, le=1e12)
    gamma_rule: str = option("geometric", "geometric (gamma0 * gamma_growth**k), or drift: grow only while the "
                             "single loop's measured |y - z| shrinks, else hold (issue 27; new)",
                             choices=GAMMA_RULES)
    prox_mu: float = option(0.0, "single loop: weight mu of the proximal term (mu/2)|y - z|^2 on y's objective "
                            "(0: none; issue 27)", ge=0, le=1e6)
    resync_every: int = option(0, "single loop: re-sync y <- z every K outer iterations (0: never; issue 27)",
                               ge=0, le=10**6)
    y_step_ratio: float = option(1.0, "single loop: fraction of the inner steps that y takes (1: all, as z; "
                                 "issue 27)", gt=0, le=1)
    zo_term: str = option("on", "ablation switch of the single-loop oracles: their zeroth-order term on, off (zero) "
                          "or noise (Gaussian of the same norm)", choices=ZO_TERMS)
    penalty_term: str = option("on", "ablation switch of the single-loop oracles: their penalty term on, off (zero) "
                               "or noise (Gaussian of the same norm)", choices=ZO_TERMS)
    zo_scheme: str = option("forward", "zeroth-order fallback: forward (one-sided differences sharing the centre "
                            "value, accepted or rejected steps) or central (method.md's two-point pairs)",
                            choices=("forward", "central"))
    zo_directions: int = option(2, "zeroth-order fallback: directions per gradient estimate (forward: orthonormal, "
                                "at most the dimension)", ge=1, le=1000)
    zo_delta: float = option(0.02, "zeroth-order fallback: difference radius in normalised coordinates", gt=0, le=0.5)
    zo_step: float = option(0.2, "forward scheme: first step length in normalised coordinates", gt=0, le=1)
    zo_step_max: float = option(0.5, "forward scheme: largest step length", gt=0, le=2)
    zo_central: str = option("on-failure", "forward scheme: central differences (mirrored points) once "
                             "backtracking fails, never, or always", choices=("on-failure", "never", "always"))

    def resolved(self, given: frozenset[str]) -> "BilevelOptions":
        """The settings the sampler will use: the preset's where not given (as
        :func:`.bilevel_paper.resolved` does), so that the rules check those values."""
        # an unknown preset resolves to nothing: check() then names it with the valid ones
        preset = {k: v for k, v in paper.PRESETS.get(self.preset, {}).items() if k not in given}
        return replace(self, **preset) if preset else self

    def inert(self, given: frozenset[str]):
        """Given options that cannot act with the (resolved) step rule or zeroth-order scheme:
        ``step``/``step_max``/``step_min`` drive rprop and irprop only; ``lr`` adam, adamw and
        sgd; ``weight_decay`` and ``lr_schedule`` adamw only (:class:`.step_rules.StepRule`);
        ``cycle_length`` adamw under one-cycle (:meth:`BilevelSampler._rule`); ``zo_step``,
        ``zo_step_max`` and ``zo_central`` the forward zeroth-order scheme only; ``gamma_rule`` a
gamma that grows (``gamma_growth > 1``). An option set
        to the value it has anyway is refused too (it still does nothing in that combination).
        Which task a cell has (oracle or zeroth-order) is not known here and is not judged."""
        acts = {
            "step": ("rprop", "irprop"), "step_max": ("rprop", "irprop"), "step_min": ("rprop", "irprop"),
            "lr": ("adam", "adamw", "sgd"), "weight_decay": ("adamw",), "lr_schedule": ("adamw",),
        }
        for key in sorted(given):
            if key in acts and self.optimizer not in acts[key]:
                yield key, (f"with optimizer {self.optimizer} (it acts with optimizer "
                            f"{' or '.join(acts[key])} only)")
            elif key == "cycle_length" and not (self.optimizer == "adamw" and self.lr_schedule == "one-cycle"):
                yield key, (f"with optimizer {self.optimizer} and lr_schedule {self.lr_schedule} "
                            "(it acts with optimizer adamw and lr_schedule one-cycle only)")
            elif key in ("zo_step", "zo_step_max", "zo_central") and self.zo_scheme != "forward":
                yield key, f"with zo_scheme {self.zo_scheme} (it acts with zo_scheme forward only)"
            elif key == "gamma_rule" and self.gamma_growth == 1:
                yield key, "with gamma_growth 1 (gamma never grows, so no rule decides when)"

    def inert_on(self, task: Any, given: frozenset[str]):
        """Given options that cannot act on ``task`` (the runner refuses one that acts on no
        task of the matrix): the penalty weight and the ablation switches need an oracle (the
        switches one that runs the single loop, ``task.ablation_switches``); the zeroth-order
        settings need a task without one; and in zeroth-order mode the forward scheme takes
        its own steps, so the step rule's settings act only under ``zo_scheme=central``."""
        rule = ("optimizer", "step", "step_max", "step_min", "lr", "lr_schedule", "weight_decay", "cycle_length")
        zo = ("zo_scheme", "zo_directions", "zo_delta", "zo_step", "zo_step_max", "zo_central")
        for key in sorted(given):
            if task.has_oracle and key in zo:
                yield key, "it has a first-order oracle, so the zeroth-order fallback never runs"
            elif not task.has_oracle and key in ("gamma0", "gamma_growth", "gamma_max", "zo_term", "penalty_term"):
                yield key, "it has no first-order oracle (zeroth-order mode), which this setting drives"
            elif key in ("zo_term", "penalty_term") and not getattr(task, "ablation_switches", False):
                yield key, "its oracle runs no single loop, whose term this switch changes"
            elif not task.has_oracle and self.zo_scheme == "forward" and key in rule:
                yield key, "zeroth-order mode with zo_scheme forward takes its own steps, not the step rule's"

    def rules(self):
        yield self.step_min <= self.step <= self.step_max, "need step_min <= step <= step_max"
        yield self.gamma0 <= self.gamma_max, "gamma0 must not exceed gamma_max"
        yield self.zo_step <= self.zo_step_max, "need zo_step <= zo_step_max"


def make_sampler(ctx: MethodContext) -> BilevelSampler:
    mode = "oracle" if ctx.task.has_oracle else "zo"
    natural_lr = getattr(ctx.task, "reference_learning_rates", None)
    return BilevelSampler(
        ctx.search_space, start=ctx.task.default_params(), mode=mode, seed=ctx.seed, budget=ctx.budget,
        natural_lr=natural_lr, **dict(ctx.options)
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
