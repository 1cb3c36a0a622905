"""OptunaHub package ``benchmarks/diffhpo_quadratic``: diffhpo's ``quadratic`` task (group
ridge regression, a bilevel problem with a closed-form optimum) as a benchmark problem."""

from diffhpo.hub import problem_class

Problem = problem_class(
    "quadratic",
    "Group ridge regression: choose one ridge weight per feature group (log scale) to minimise "
    "the validation loss of the exactly solved lower-level ridge fit. "
    "Problem(profile='quick', seed=0, oracle=False, **options); options as in `diffhpo list --options quadratic`.",
)

__all__ = ["Problem"]
