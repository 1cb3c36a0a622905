"""Old import paths of the modules that moved to the floors (issue 25), kept for one release.

``import diffhpo.bench.options`` (or any path below) still works and gives the very module
object of the new path (:mod:`diffhpo.bench.contracts.options`), so that state, registries and
``monkeypatch`` targets are shared, with one :class:`DeprecationWarning` naming the new path.
A package's submodules follow it (``diffhpo.bench.metrics.fidelity`` is
``diffhpo.bench.toolkit.metrics.fidelity``). The aliases are served by a meta path finder that
the root package installs; nothing inside the suite imports an old path (tests/test_floors.py).

Standard library only: it is imported by ``diffhpo/__init__.py``, before anything else.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module -> new module (a package's submodules follow it; the longest match wins)
MOVED = {
    "diffhpo.bench.errors": "diffhpo.bench.contracts.errors",
    "diffhpo.bench.registry": "diffhpo.bench.contracts.registry",
    "diffhpo.bench.options": "diffhpo.bench.contracts.options",
    "diffhpo.bench.seeds": "diffhpo.bench.contracts.seeds",
    "diffhpo.bench.fidelity": "diffhpo.bench.contracts.fidelity",
    "diffhpo.methods.space": "diffhpo.bench.contracts.space",
    "diffhpo.tasks.base": "diffhpo.bench.contracts.task",
    "diffhpo.methods.base": "diffhpo.bench.contracts.method",
    "diffhpo.bench.cache": "diffhpo.bench.toolkit.cache",
    "diffhpo.bench.data": "diffhpo.bench.toolkit.data",
    "diffhpo.bench.assets": "diffhpo.bench.toolkit.assets",
    "diffhpo.bench.atomic": "diffhpo.bench.toolkit.atomic",
    "diffhpo.bench.metrics": "diffhpo.bench.toolkit.metrics",
    "diffhpo.bench.metrics.commands": "diffhpo.bench.metrics_cli",
    "diffhpo.methods.seeding": "diffhpo.bench.toolkit.seeding",
    "diffhpo.methods.zeroth_order": "diffhpo.bench.toolkit.zeroth_order",
}


def new_path(name: str) -> str | None:
    """The new module of old module ``name``, or None where ``name`` did not move."""
    best = max((old for old in MOVED if name == old or name.startswith(old + ".")), key=len, default=None)
    return None if best is None else MOVED[best] + name[len(best):]


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # the default module; exec_module swaps it for the target
        return None

    def exec_module(self, module) -> None:
        warnings.warn(f"{module.__name__} moved to {self.target} (issue 25); the old path works for one release",
                      DeprecationWarning, stacklevel=2)
        # the import system returns sys.modules[name] after exec_module: the target itself
        sys.modules[module.__name__] = importlib.import_module(self.target)


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MOVED` (before the path finder, which no longer would)."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_path(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
