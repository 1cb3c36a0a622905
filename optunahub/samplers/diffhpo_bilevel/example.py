"""Run from this folder's parent registry root (``optunahub/`` of the diffhpo repository)
or load the package from OptunaHub. Two uses: with a hypergradient (oracle mode) and as a
black-box optimiser (zeroth-order fallback)."""

import os

import optuna
import optunahub

optuna.logging.set_verbosity(optuna.logging.WARNING)

here = os.path.dirname(os.path.abspath(__file__))
module = optunahub.load_local_module(package="samplers/diffhpo_bilevel", registry_root=os.path.dirname(os.path.dirname(here)))


def with_gradient(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 5)
    y = trial.suggest_float("y", 1e-3, 1e3, log=True)
    # d/dx and d/dy of the objective, in the parameters' natural scale
    trial.set_user_attr("hypergrad", {"x": 2 * (x - 1), "y": 2 * (y - 3)})
    return (x - 1) ** 2 + (y - 3) ** 2


study = optuna.create_study(sampler=module.BilevelSampler(seed=0))
study.optimize(with_gradient, n_trials=40)
print("oracle mode, last iterate:", study.sampler.current_params(study))


def black_box(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2, 2)
    y = trial.suggest_float("y", -2, 2)
    return (1 - x) ** 2 + 10 * (y - x**2) ** 2


study = optuna.create_study(sampler=module.BilevelSampler(seed=0))
study.optimize(black_box, n_trials=40)
print("zeroth-order mode, last iterate:", study.sampler.current_params(study), "best value:", study.best_value)
