"""Bayesian optimisation with a Gaussian process: optuna-integration's BoTorchSampler
(default BoTorch candidates: a GP with log expected improvement). The first
``n_startup`` trials are random (a quarter of the budget, between 2 and 10), as is usual.

The GP fit and the acquisition optimisation run on one torch thread: their matrices are
tiny, and on a busy 2-core machine two OpenMP threads made them 4 to 8 times slower
(measured: 51 s against 235 s for one quick `quadratic` cell while other work ran).
"""

import warnings
from typing import Any

import optuna
import torch

from ..bench.contracts.method import Method, MethodContext, best_params, startup_trials
from ..bench.toolkit.seeding import TrialSeeded


def _sampler_class():
    from optuna_integration import BoTorchSampler

    class OneThreadBoTorchSampler(BoTorchSampler):
        def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                values = super().sample_relative(study, trial, search_space)
                return {k: v.item() if hasattr(v, "item") else v for k, v in values.items()}  # Python numbers
            finally:
                torch.set_num_threads(threads)

    return OneThreadBoTorchSampler


def make_sampler(ctx: MethodContext) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorchSampler is marked experimental
        sampler = _sampler_class()(seed=ctx.seed, n_startup_trials=startup_trials(ctx))
    return TrialSeeded(sampler, ctx.seed)


METHOD = Method(
    "Bayesian optimisation, GP + expected improvement (optuna-integration BoTorchSampler)",
    make_sampler,
    choose=best_params,
)
