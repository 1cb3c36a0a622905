"""Declared options: every task and method setting states its type, range and meaning once,
next to its default, and one mechanism checks every value before any work starts.

A task's profile config (and a method's option set) is a frozen dataclass whose fields are
declared with :func:`option`::

    @dataclass(frozen=True)
    class QuadraticConfig:
        n_groups: int = option(5, "number of hyperparameters (groups)", ge=1, le=10)
        noise: float = option(1.0, "label noise std", ge=0)
        hypergradient: str = option("penalty", "oracle's estimate", choices=("penalty", "exact"))

        def rules(self):  # mutual constraints, each (holds, message)
            yield self.alpha_low < self.alpha_high, "alpha_low must be below alpha_high"

:func:`apply` turns ``--option KEY=VALUE`` strings into the field's type and checks the
result (and the profile's own defaults) with :func:`check`: types, finiteness of floats,
the declared bounds (elementwise for tuples), the choices and the rules. Every failure is a
:class:`~diffhpo.bench.contracts.errors.DiffhpoError` naming the option, the value and what is valid,
which the command line prints as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import DiffhpoError

SPEC = "diffhpo_option"


@dataclass(frozen=True)
class Spec:
    """What one option accepts. Bounds apply to numbers and, elementwise, to tuples of
    numbers; ``choices`` to strings (and elementwise to tuples of strings)."""

    doc: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    nonempty: bool = False  # tuples: at least one element

    def describe(self) -> str:
        parts = []
        if self.choices is not None:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        lo = f">= {_num(self.ge)}" if self.ge is not None else f"> {_num(self.gt)}" if self.gt is not None else ""
        hi = f"<= {_num(self.le)}" if self.le is not None else f"< {_num(self.lt)}" if self.lt is not None else ""
        if lo or hi:
            parts.append(" and ".join(p for p in (lo, hi) if p))
        return "; ".join(parts) or "any value"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not valid, or None."""
        items = value if isinstance(value, (tuple, list)) else (value,)
        if isinstance(value, (tuple, list)) and self.nonempty and not value:
            return "needs at least one value"
        for v in items:
            if isinstance(v, bool):
                continue
            if isinstance(v, (int, float)):
                if not math.isfinite(v):
                    return "must be a finite number"
                if self.ge is not None and not v >= self.ge:
                    return f"must be {self.describe()}"
                if self.gt is not None and not v > self.gt:
                    return f"must be {self.describe()}"
                if self.le is not None and not v <= self.le:
                    return f"must be {self.describe()}"
                if self.lt is not None and not v < self.lt:
                    return f"must be {self.describe()}"
            if self.choices is not None and v not in self.choices:
                return f"must be {self.describe()}"
        return None


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e10 else f"{v:g}"


def option(default: Any, doc: str = "", **bounds: Any) -> Any:
    """A dataclass field with a default and its :class:`Spec` (``doc``, ``ge``, ``gt``,
    ``le``, ``lt``, ``choices``, ``nonempty``)."""
    if "choices" in bounds and bounds["choices"] is not None:
        bounds["choices"] = tuple(bounds["choices"])
    return dataclasses.field(default=default, metadata={SPEC: Spec(doc, **bounds)})


def spec_of(field: dataclasses.Field) -> Spec | None:
    return field.metadata.get(SPEC)


def specs(config: Any) -> dict[str, Spec | None]:
    """Every field of a config (class or instance) with its declared spec (None: undeclared)."""
    return {f.name: spec_of(f) for f in dataclasses.fields(config)}


def check(owner: str, config: Any) -> Any:
    """Check every field of ``config`` against its spec, then the config's ``rules()``."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value) and spec_of(f) is None:
            raise DiffhpoError(f"{owner}: option {f.name}={value!r} must be a finite number")
        spec = spec_of(f)
        why = spec.problem(value) if spec is not None else None
        if why:
            raise DiffhpoError(f"{owner}: option {f.name}={_show(value)} {why}")
    rules = getattr(config, "rules", None)
    if rules is not None:
        for holds, message in rules():
            if not holds:
                raise DiffhpoError(f"{owner}: {message}")
    return config


def apply(owner: str, config: Any, options: Mapping[str, Any]) -> Any:
    """``config`` with fields overridden from ``options`` (strings are converted to the
    field's type), checked with :func:`check`.

    Two optional hooks of the config, both given the names of the options set explicitly:
    ``resolved(given)`` returns the config of the values that will be *used* (a preset's
    values for the settings not given), which is what :func:`check` and its rules see (and
    what is returned); ``inert(given)`` yields ``(key, why)`` for each given option that
    cannot act together with the other settings (``why`` names the combination), and such
    an option is refused rather than stored as if it had done something."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for key, raw in options.items():
        if key not in fields:
            raise DiffhpoError(f"{owner} has no option {key!r}; valid options: {', '.join(fields)}")
        changes[key] = coerce(owner, key, raw, getattr(config, key))
    config = dataclasses.replace(config, **changes) if changes else config
    given = frozenset(changes)
    if hasattr(config, "resolved"):
        config = config.resolved(given)
    check(owner, config)
    for key, why in config.inert(given) if hasattr(config, "inert") else ():
        raise DiffhpoError(f"{owner}: option {key}={_show(getattr(config, key))} has no effect {why}; leave it out")
    return config


def coerce(owner: str, key: str, raw: Any, current: Any) -> Any:
    """Convert a command-line string to the type of the option's current value."""
    if not isinstance(raw, str):
        return raw
    kind = type(current)
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is str:
            return raw
        if kind in (tuple, list):
            items = [x.strip() for x in raw.split(",")] if raw.strip() else []
            if any(not x for x in items):  # "0.5,,0.25" or "0.5,": refused, as --task and --method do
                raise DiffhpoError(f"{owner}: option {key}={raw!r} has an empty item; give a comma-separated "
                                   "list of values (an empty value for an empty list)")
            element = type(current[0]) if current else str
            return kind(coerce(owner, key, x, element()) if element in (int, float, bool) else x for x in items)
    except ValueError:
        raise DiffhpoError(f"{owner}: option {key}={raw!r} is not a valid {kind.__name__}") from None
    return raw


def describe(config: Any) -> list[tuple[str, Any, str, str]]:
    """(name, default, range, doc) per option, for ``--help`` texts and the README."""
    rows = []
    for f in dataclasses.fields(config):
        spec = spec_of(f) or Spec()
        rows.append((f.name, getattr(config, f.name) if not isinstance(config, type) else f.default,
                     spec.describe(), spec.doc))
    return rows


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "''"
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def undeclared(configs: Iterable[Any]) -> list[str]:
    """Names of fields without a spec in the given configs (a test keeps this empty)."""
    return [f"{type(c).__name__}.{n}" for c in configs for n, s in specs(c).items() if s is None]
