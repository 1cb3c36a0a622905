"""The bilevel sampler's zeroth-order fallback beside random search and TPE, at equal
evaluation budgets, on black-box problems (no hypergradient).

Problems (regret = F(chosen) - min F; every method outputs what the suite's final protocol
would evaluate: random and TPE their best trial, bilevel its last iterate):

* ``quadratic-2d corner``: the ``quadratic`` task with ``n_groups=2`` (two log-scale ridge
  weights), its validation loss as the black box (``evaluate``; the oracle's hypergradient
  is not used: the sampler runs with ``mode="zo"``, as ``make_sampler`` does for a task
  without an oracle), 20 evaluations. Its optimum is a corner of the box;
* ``quadratic-2d interior``: the same with ``data_seed=3``, whose optimum is inside the box;
* ``quadratic-5d``: the task's ``quick`` profile (five weights), 30 evaluations;
* ``rosenbrock-2d``: ``(1 - x)^2 + 100 (y - x^2)^2`` on ``[-2, 2]^2``, 20 and 40 evaluations;
* ``noisy-quadratic-2d interior``: ``quadratic-2d interior`` plus Gaussian noise of 1% of
  the value at the start point on every evaluation, 20 and 40 evaluations; regret is of
  the noise-free value.

Methods: ``random`` and ``tpe`` as built by ``diffhpo.methods`` (``TrialSeeded``,
TPE multivariate with ``max(2, min(10, budget // 4))`` start-up trials), ``zo-central``
(the previous fallback, ``zo_scheme="central"``: method.md's two-point pairs, 2 Gaussian
directions, rprop steps) and ``zo-forward`` (the current default; see
``diffhpo.methods.bilevel``), plus, with ``--variants``, the forward scheme with other
values of its options (``zo_directions``, ``zo_step``, ``zo_step_max``, ``zo_central``).

    python benchmarks/bilevel_zo_fallback.py [--seeds 20] [--variants]

Prints one row per problem and method: median regret over seeds, its 25-75% range, and
the fraction of seeds on which the method beats random search.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
import optuna
from optuna.distributions import FloatDistribution

from diffhpo.methods import random as random_method
from diffhpo.methods import tpe as tpe_method
from diffhpo.bench.contracts.method import MethodContext
from diffhpo.methods.bilevel import BilevelSampler
from diffhpo.bench.contracts.space import centre
from diffhpo.tasks.quadratic import QuadraticTask

optuna.logging.set_verbosity(optuna.logging.ERROR)


class Problem:
    def __init__(self, name: str, space: dict, f: Callable[[dict], float], f_star: float,
                 budget: int, noise: float = 0.0) -> None:
        self.name, self.space, self.f, self.f_star, self.budget, self.noise = name, space, f, f_star, budget, noise


def quadratic(name: str, budget: int, noise_frac: float = 0.0, **options: Any) -> Problem:
    task = QuadraticTask("quick", **options)
    f = lambda p: task.evaluate(p, seed=0)["val_loss"]  # noqa: E731
    space = task.search_space()
    noise = noise_frac * f(centre(space))
    return Problem(name, space, f, task.known_optimum(), budget, noise)


def rosenbrock(budget: int) -> Problem:
    space = {"x": FloatDistribution(-2.0, 2.0), "y": FloatDistribution(-2.0, 2.0)}
    f = lambda p: (1 - p["x"]) ** 2 + 100 * (p["y"] - p["x"] ** 2) ** 2  # noqa: E731
    return Problem(f"rosenbrock-2d (budget {budget})", space, f, 0.0, budget)


def problems() -> list[Problem]:
    return [
        quadratic("quadratic-2d corner (budget 20)", 20, n_groups=2),
        quadratic("quadratic-2d interior (budget 20)", 20, n_groups=2, data_seed=3),
        quadratic("quadratic-5d (budget 30)", 30, n_groups=5),
        rosenbrock(20),
        rosenbrock(40),
        quadratic("noisy-quadratic-2d interior (budget 20)", 20, noise_frac=0.01, n_groups=2, data_seed=3),
        quadratic("noisy-quadratic-2d interior (budget 40)", 40, noise_frac=0.01, n_groups=2, data_seed=3),
    ]


def run(problem: Problem, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> float:
    sampler = make(seed)
    study = optuna.create_study(sampler=sampler)
    noise_rng = np.random.default_rng(10_000 + seed)

    def objective(trial: optuna.Trial) -> float:
        params = {}
        for n, d in problem.space.items():
            params[n] = trial.suggest_float(n, d.low, d.high, log=d.log)
        return problem.f(params) + problem.noise * noise_rng.standard_normal()

    study.optimize(objective, n_trials=problem.budget)
    chosen = sampler.current_params(study) if isinstance(sampler, BilevelSampler) else study.best_params
    return problem.f(chosen) - problem.f_star


def stock(module, problem: Problem) -> Callable[[int], optuna.samplers.BaseSampler]:
    def make(seed: int):
        ctx = MethodContext(task=None, search_space=problem.space, grid={}, seed=seed, budget=problem.budget)
        return module.make_sampler(ctx)

    return make


def bilevel(problem: Problem, **options: Any) -> Callable[[int], BilevelSampler]:
    return lambda seed: BilevelSampler(problem.space, start=centre(problem.space), mode="zo", seed=seed, **options)


def methods(problem: Problem, variants: bool) -> dict[str, Callable[[int], optuna.samplers.BaseSampler]]:
    out = {
        "random": stock(random_method, problem),
        "tpe": stock(tpe_method, problem),
        "zo-central (previous)": bilevel(problem, zo_scheme="central"),
        "zo-forward (default)": bilevel(problem),
    }
    if variants:
        dim = len(problem.space)
        for d in sorted({1, dim} - {2}):
            out[f"zo-forward zo_directions={d}"] = bilevel(problem, zo_directions=d)
        for h in (0.1, 0.3):
            out[f"zo-forward zo_step={h}"] = bilevel(problem, zo_step=h)
        out["zo-forward zo_step_max=0.25"] = bilevel(problem, zo_step_max=0.25)
        out["zo-forward zo_central=never"] = bilevel(problem, zo_central="never")
        out["zo-forward zo_central=always"] = bilevel(problem, zo_central="always")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--variants", action="store_true", help="also run variants of the forward scheme")
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"regret = F(chosen) - min F, over seeds 0..{args.seeds - 1}; "
          "'beats random': share of seeds with lower regret than random search (same seed)\n")
    print("| problem | method | median regret | 25%-75% | beats random |")
    print("| --- | --- | --- | --- | --- |")
    for problem in problems():
        results = {name: np.array([run(problem, make, s) for s in range(args.seeds)])
                   for name, make in methods(problem, args.variants).items()}
        ref = results["random"]
        for name, r in results.items():
            q25, q50, q75 = np.percentile(r, [25, 50, 75])
            beats = "" if name == "random" else f"{np.mean(r < ref):.0%}"
            print(f"| {problem.name} | {name} | {q50:.4g} | {q25:.3g} - {q75:.3g} | {beats} |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
