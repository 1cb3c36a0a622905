"""diffhpo: an Optuna-integrated benchmarking suite for hyperparameter optimisation of
diffusion models.

The repository root is the package: ``bench/`` (runner, storage, measurement, metrics,
reports), ``methods/`` (one module per HPO method), ``tasks/`` (one module per task) and
``cli.py`` (the ``diffhpo`` command).
"""

__version__ = "0.1.0"

from diffhpo._moved import install as _install_moved  # absolute: pytest imports this file on its own too

_install_moved()  # the old import paths of the modules that moved in issue 25 (diffhpo/_moved.py)
