"""Random search, TPE and the bilevel sampler (with the task's first-order oracle) on the
``gmm-reward`` problem, against its exact optimum."""

import os

import optuna
import optunahub

optuna.logging.set_verbosity(optuna.logging.WARNING)

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
problem_module = optunahub.load_local_module(package="benchmarks/diffhpo_gmm_reward", registry_root=root)
sampler_module = optunahub.load_local_module(package="samplers/diffhpo_bilevel", registry_root=root)

problem = problem_module.Problem(profile="smoke")
print("optimum E(lambda*):", problem.known_optimum, "at lambda* =", problem.task.lambda_star())
for name, sampler in [
    ("random", optuna.samplers.RandomSampler(seed=0)),
    ("tpe", optuna.samplers.TPESampler(seed=0)),
]:
    study = optuna.create_study(directions=problem.directions, sampler=sampler)
    study.optimize(problem, n_trials=12)
    print(f"{name}: best value {study.best_value:.4f} at lambda = {study.best_params['lam']:.3g}")

oracle_problem = problem_module.Problem(profile="smoke", oracle=True)
sampler = sampler_module.BilevelSampler(problem.search_space, seed=0)
study = optuna.create_study(directions=problem.directions, sampler=sampler)
study.optimize(oracle_problem, n_trials=8)
lam = study.sampler.current_params(study)
print("bilevel (oracle): lambda", lam, "value at its last iterate", problem.evaluate(lam))
