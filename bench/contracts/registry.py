"""Plug-in registries (the idea of torch-fidelity's ``register_feature_extractor``).

A registry maps a name to an object (a task class, a method spec, a reward). Built-in
entries register with one line in their package's ``__init__``; external packages add
entries to a Python entry-point group (``diffhpo.methods``, ``diffhpo.tasks``, ...)
whose value is the object itself, e.g. in the external package's ``pyproject.toml``::

    [project.entry-points."diffhpo.methods"]
    my-method = "my_package.my_method:METHOD"

Entry points are loaded lazily, the first time a name is looked up or listed, after the
registry's built-in module (``builtins``, imported by name so that the machinery in
``bench/`` never imports the tasks it runs). A plug-in that fails to load is skipped with
one warning line naming its distribution; every other name keeps working.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from typing import Generic, Iterator, TypeVar

from .errors import DiffhpoError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map, extended by an entry-point group."""

    def __init__(self, kind: str, group: str, builtins: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self.builtins = builtins
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False
        self.broken: list[str] = []  # one line per plug-in that failed to load

    def register(self, name: str, obj: T, *, replace: bool = False) -> T:
        if not name or name != name.strip() or "," in name:
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._items and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def load_entry_points(self, *, force: bool = False) -> None:
        """Register every entry of the group that is not registered yet."""
        if self._entry_points_loaded and not force:
            return
        self._entry_points_loaded = True
        if self.builtins is not None:
            importlib.import_module(self.builtins)
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                obj = ep.load()
                self.register(ep.name, obj)
            except Exception as exc:  # a broken plug-in must not break the suite
                dist = getattr(getattr(ep, "dist", None), "name", None) or "an unknown distribution"
                line = (f"warning: {self.kind} plug-in {ep.name!r} ({ep.value}) of distribution {dist!r} "
                        f"failed to load and is skipped: {type(exc).__name__}: {str(exc).strip()[:200]}")
                self.broken.append(line)
                print(line, file=sys.stderr)

    def names(self) -> list[str]:
        self.load_entry_points()
        return list(self._items)

    def get(self, name: str) -> T:
        self.load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            raise DiffhpoError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self._items)}"
            ) from None

    def items(self) -> Iterator[tuple[str, T]]:
        self.load_entry_points()
        return iter(list(self._items.items()))

    def __contains__(self, name: str) -> bool:
        self.load_entry_points()
        return name in self._items


#: The task registry; its built-ins are the package ``tasks/`` (imported by name on first lookup).
TASKS: Registry = Registry("task", "diffhpo.tasks", builtins=f"{__package__.split('.')[0]}.tasks")
