"""Floor 1, the contracts: what methods, tasks and the runner share, below all three.

A plug-in author needs only this floor (README, "Adding a method" and "Adding a task"):

* a task: :class:`Task` and its types :class:`Metric`, :class:`OracleContext`,
  :class:`OracleResult`, :class:`DefaultMatrix` (:mod:`.task`); its settings declared with :func:`option`
  (:mod:`.options`); its errors :class:`DiffhpoError` (:mod:`.errors`); the fidelity
  constants (:mod:`.fidelity`) and the final protocol's seeds (:mod:`.seeds`);
* a method: :class:`Method` and :class:`MethodContext` (:mod:`.method`);
* both: the registries :data:`TASKS` and :data:`METHODS` (:mod:`.registry`, entry-point
  groups ``diffhpo.tasks`` and ``diffhpo.methods``), the search-space helpers (:mod:`.space`)
  and the diagnostics hook's :class:`Diagnostic` (:mod:`.diagnostic`).

Nothing here imports a floor above: toolkits (:mod:`diffhpo.bench.toolkit`), plug-ins
(``methods/``, ``tasks/``), machinery (the rest of ``bench/``), the CLI. The floors are checked
by tests/test_floors.py.
"""

from .diagnostic import Diagnostic
from .errors import DiffhpoError
from .method import METHODS, Method, MethodContext, register_method
from .options import option
from .registry import TASKS, Registry
from .task import DefaultMatrix, Metric, OracleContext, OracleResult, Task

__all__ = ["DefaultMatrix", "Diagnostic", "DiffhpoError", "METHODS", "Method", "MethodContext", "Metric", "OracleContext",
           "OracleResult", "Registry", "TASKS", "Task", "option", "register_method"]
