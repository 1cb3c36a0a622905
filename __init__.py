"""diffhpo: an Optuna-integrated benchmarking suite for hyperparameter optimisation of
diffusion models.

The repository root is the package: ``bench/`` (runner, storage, measurement, metrics,
reports), ``methods/`` (one module per HPO method), ``tasks/`` (one module per task) and
``cli.py`` (the ``diffhpo`` command).
"""

__version__ = "0.1.0"
