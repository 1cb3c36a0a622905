"""Benchmark tasks: one module (or package) per task, one registration line each.

External packages register more through the ``diffhpo.tasks`` entry-point group, whose
values are :class:`~diffhpo.bench.contracts.task.Task` subclasses.
"""

from ..bench.contracts.registry import TASKS
from ..bench.contracts.task import Metric, OracleContext, OracleResult, Task
from .quadratic import QuadraticTask
from .mnist_schedule import MnistScheduleTask
from .reward import RewardMnistTask, RewardSdTask
from .gmm import GmmRewardTask, GmmScheduleTask
from .surrogate import builtin_surrogates

def register_task(cls: type[Task]) -> type[Task]:
    TASKS.register(cls.name, cls)
    return cls


register_task(QuadraticTask)
register_task(RewardMnistTask)
register_task(RewardSdTask)
register_task(MnistScheduleTask)
register_task(GmmRewardTask)
register_task(GmmScheduleTask)
for _cls in builtin_surrogates({c.name: c for c in (MnistScheduleTask, RewardMnistTask, GmmScheduleTask)}):
    register_task(_cls)

__all__ = ["TASKS", "Metric", "OracleContext", "OracleResult", "Task", "register_task"]
