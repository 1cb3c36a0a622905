"""Random search, TPE and the bilevel sampler (with the task's first-order oracle) on the
``quadratic`` problem, against its known optimum."""

import os

import optuna
import optunahub

optuna.logging.set_verbosity(optuna.logging.WARNING)

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
problem_module = optunahub.load_local_module(package="benchmarks/diffhpo_quadratic", registry_root=root)
sampler_module = optunahub.load_local_module(package="samplers/diffhpo_bilevel", registry_root=root)

problem = problem_module.Problem(profile="quick")
print("optimum:", problem.known_optimum)
for name, sampler in [
    ("random", optuna.samplers.RandomSampler(seed=0)),
    ("tpe", optuna.samplers.TPESampler(seed=0)),
]:
    study = optuna.create_study(directions=problem.directions, sampler=sampler)
    study.optimize(problem, n_trials=30)
    print(f"{name}: best value {study.best_value:.5f}")

oracle_problem = problem_module.Problem(profile="quick", oracle=True)
study = optuna.create_study(directions=problem.directions, sampler=sampler_module.BilevelSampler(problem.search_space, seed=0))
study.optimize(oracle_problem, n_trials=15)
print("bilevel (oracle): value at its last iterate", problem.evaluate(study.sampler.current_params(study)))
