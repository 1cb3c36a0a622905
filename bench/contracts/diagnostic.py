"""The diagnostics hook's contract: what ``Task.diagnostics`` and ``Method(diagnostics=...)``
return (:class:`Diagnostic`), and how a hook reads a trial row's user attributes
(:func:`attrs`). The report's machinery that calls the hooks is :mod:`diffhpo.bench.diagnostics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Diagnostic:
    """One block of the diagnostics section of ``method`` (its title names the task)."""

    method: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


def attrs(row: pd.Series) -> dict:
    """A trial row's user attributes (the ``attr_`` columns), without the prefix."""
    import pandas as pd

    return {k[5:]: v for k, v in row.items() if k.startswith("attr_") and pd.notna(v)}
