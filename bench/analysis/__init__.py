"""Comparisons of methods on top of the stored trials (``diffhpo report``).

* :mod:`.regret`: best-so-far values at fractions of the budget, regret against the best
  value of each task, normalised by the task's default hyperparameters; curves.
* :mod:`.ranks`: average ranks per task at budget fractions, and across tasks with a
  Friedman test and Nemenyi post-hoc p-values (critical-difference diagram).
* :mod:`.pairs`: per pair of methods and task, wins/ties/losses over seeds, a paired
  Wilcoxon signed-rank test and a bootstrap confidence interval of the median difference.

Every function takes the ``trials`` and ``cells`` frames of
:func:`diffhpo.bench.report.collect` (or frames derived from them) and returns frames.
"""
