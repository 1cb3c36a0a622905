"""The floors of the package (issue 25), read from the source with the standard library's ``ast``:
every module is parsed, every import resolved (function-level imports included; imports under
``if TYPE_CHECKING:`` are left out, as they never run), and

* each floor imports only floors below it or its own: 1 contracts, 2 toolkits, 3 plug-ins
  (``methods/`` and ``tasks/``, which never import each other), 4 machinery, 5 the CLI;
* no module takes part in an import circle;
* no module imports an old path of a moved module (``diffhpo/_moved.py``), and the old paths
  still give the new modules, with a DeprecationWarning.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = {"tests", "benchmarks", "optunahub", "results", "assets", ".venv", ".git", ".ci", "build"}
FLOOR_NAMES = {1: "contracts", 2: "toolkits", 3: "plug-ins", 4: "machinery", 5: "CLI"}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in OUTSIDE or any(p.endswith(".egg-info") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(["diffhpo", *parts])] = (path, is_pkg)
    return out


MODULES = _modules()


def floor(module: str) -> int:
    if module in ("diffhpo", "diffhpo._moved", "diffhpo.bench") or module.startswith("diffhpo.bench.contracts"):
        return 1
    if module.startswith("diffhpo.bench.toolkit"):
        return 2
    if module.startswith(("diffhpo.methods", "diffhpo.tasks")):
        return 3
    if module.startswith("diffhpo.bench"):
        return 4
    return 5  # cli, hub, __main__


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports() -> dict[str, dict[str, int]]:
    """module -> {imported module: line}; unresolvable diffhpo imports raise (an old path does)."""
    graph: dict[str, dict[str, int]] = {}
    unresolved = []
    for module, (path, is_pkg) in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        package = module if is_pkg else module.rpartition(".")[0]
        edges = graph.setdefault(module, {})
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    frm = ".".join(base + ([node.module] if node.module else []))
                else:
                    frm = node.module or ""
                if not frm.startswith("diffhpo"):
                    continue
                names = [f"{frm}.{a.name}" if f"{frm}.{a.name}" in MODULES else frm for a in node.names]
            for name in names:
                if not name.startswith("diffhpo"):
                    continue
                if name not in MODULES:
                    unresolved.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
                    continue
                if name != module:
                    edges.setdefault(name, node.lineno)
    assert not unresolved, "imports of modules that do not exist (an old, moved path?):\n" + "\n".join(unresolved)
    return graph


def test_every_module_is_parsed():
    assert len(MODULES) > 80
    assert {"diffhpo.bench.contracts.task", "diffhpo.bench.contracts.method", "diffhpo.bench.toolkit.seeding",
            "diffhpo.bench.runner", "diffhpo.cli"} <= set(MODULES)


def test_each_floor_imports_only_floors_below_it():
    bad = []
    for module, edges in imports().items():
        f = floor(module)
        for target, line in edges.items():
            g = floor(target)
            where = f"{MODULES[module][0].relative_to(ROOT)}:{line}"
            if g > f:
                bad.append(f"{where}: {module} (floor {f}, {FLOOR_NAMES[f]}) imports {target} "
                           f"(floor {g}, {FLOOR_NAMES[g]})")
            elif f == g == 3 and module.split(".")[1] != target.split(".")[1]:
                bad.append(f"{where}: {module} imports {target}: methods and tasks never import each other")
    assert not bad, "\n".join(bad)


def test_the_root_package_and_bench_import_nothing_heavy():
    # every floor-1 module runs diffhpo/__init__.py and bench/__init__.py first: they stay light
    g = imports()
    assert set(g["diffhpo"]) <= {"diffhpo._moved"}
    assert g["diffhpo.bench"] == {} and g["diffhpo._moved"] == {}


def _circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, {}):
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_takes_part_in_an_import_circle():
    assert _circles(imports()) == []


def test_the_circle_check_finds_a_circle():
    assert _circles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


OLD_PATHS = ["diffhpo.bench.options", "diffhpo.tasks.base", "diffhpo.methods.base", "diffhpo.methods.seeding",
             "diffhpo.bench.metrics.feature_net", "diffhpo.bench.metrics.commands", "diffhpo.bench.cache"]


@pytest.mark.parametrize("old", OLD_PATHS)
def test_an_old_import_path_gives_the_new_module_with_a_deprecation_warning(old):
    code = f"""
import importlib, json, sys, warnings
from diffhpo._moved import new_path
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    mod = importlib.import_module({old!r})
new = new_path({old!r})
print(json.dumps({{"same": mod is sys.modules[new] and sys.modules[{old!r}] is mod, "name": mod.__name__,
                   "warnings": [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]}}))
"""
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    got = json.loads(ran.stdout.strip().splitlines()[-1])
    from diffhpo._moved import new_path

    assert got["same"] and got["name"] == new_path(old)
    assert any(w.startswith(f"{old} moved to {new_path(old)}") for w in got["warnings"]), got["warnings"]


def test_an_old_from_import_of_a_plug_in_author_still_works():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    from diffhpo.methods.base import Method\nexcept DeprecationWarning as w:\n    print('warned', w)\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "warned diffhpo.methods.base moved to diffhpo.bench.contracts.method" in ran.stdout, ran.stderr
    from diffhpo.bench.contracts import Method
    from diffhpo.methods.base import Method as Old  # noqa: the old path, on purpose

    assert Old is Method
