"""pyproject.toml lists every package of the repository (a missing or extra entry breaks
`pip install` of a clean clone, which is what CI does)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"tests", "results", "benchmarks", "assets", "optunahub", ".venv", ".git", ".ci"}


def test_every_package_is_listed_and_every_listed_package_exists():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"diffhpo"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and (rel.parts[0] in SKIP or rel.parts[0].startswith(".") or "egg-info" in rel.parts[0]):
            continue
        found.add(".".join(("diffhpo", *rel.parts)))
    assert found == listed
