"""Baseline ``none``: no hyperparameter search and no guidance.

For the reward tasks (method.md, Application 1) this is the pre-trained model sampled
without reward guidance (the limit lambda -> infinity): the task's search-space variant
``"none"`` is empty, so the one trial (and the final protocol) evaluates the task with no
parameters. Tasks without that variant skip this method.
"""

import optuna

from ..bench.contracts.method import Method, MethodContext, best_params


def make_sampler(ctx: MethodContext) -> optuna.samplers.BaseSampler:
    # The space is empty: the sampler never proposes a value; any seeded sampler will do.
    return optuna.samplers.RandomSampler(seed=ctx.seed)


METHOD = Method(
    "no search: the pre-trained model without guidance (reward tasks)",
    make_sampler,
    choose=best_params,
    max_trials=lambda ctx: 1,
    space="none",
)
