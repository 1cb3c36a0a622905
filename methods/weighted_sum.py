"""Baseline ``weighted-sum`` (the paper's weighted-sum method, method.md Application 1):
guide with the combined reward ``r2 + w * r1`` at a fixed KL strength lambda, and search
the weight ``w`` instead of lambda.

The task defines the space (search-space variant ``"weighted-sum"``: ``w`` on a log
scale) and the fixed lambda (the reward tasks' ``ws_lambda`` option); the search is grid
search over the task's ``w`` grid in a seeded order, the same protocol as ``grid`` over
lambda, on the same budget. Tasks without that variant skip this method.
"""

from ..bench.contracts.method import Method, best_params
from .grid import grid_size, make_sampler  # the same protocol as grid search, over the w grid

METHOD = Method(
    "weighted sum: guidance with r2 + w * r1 at a fixed lambda, grid search over w (reward tasks)",
    make_sampler,
    choose=best_params,
    max_trials=grid_size,
    space="weighted-sum",
)
