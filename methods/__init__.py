"""HPO methods: one module per method, one registration line each.

External packages register more through the ``diffhpo.methods`` entry-point group (see
:mod:`diffhpo.bench.contracts.method`).
"""

from . import bilevel, botorch, default, grid, hyperband, median, none, random, sha, tpe, weighted_sum
from ..bench.contracts.method import METHODS, Method, MethodContext, register_method

register_method("grid", grid.METHOD)
register_method("random", random.METHOD)
register_method("tpe", tpe.METHOD)
register_method("botorch", botorch.METHOD)
register_method("bilevel", bilevel.METHOD)
register_method("none", none.METHOD)
register_method("weighted-sum", weighted_sum.METHOD)
register_method("default", default.METHOD)
register_method("sha", sha.METHOD)
register_method("hyperband", hyperband.METHOD)
register_method("median", median.METHOD)

__all__ = ["METHODS", "Method", "MethodContext", "register_method"]
