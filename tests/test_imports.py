"""The layers import one way, with no cycles: a static check of every import in the repository.

Layers, bottom up: util (shared infrastructure) -> models (classifiers and sparsified layers) ->
detectors -> pipeline -> scripts (ood_eval.py, precompute.py, sweep.py, select_svhn_data.py,
scripts/, benchmarks/). Every import statement counts, function-level ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("util", "models", "detectors", "pipeline")
SCRIPT_DIRS = ("scripts", "benchmarks")
HELPERS = {"common", "bootstrap"}  # benchmarks/common.py (shared setup), bootstrap.py (the .venv re-run)


def module_files() -> dict[str, Path]:
    """First-party module name -> file (packages by dotted name, scripts by file stem)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted(REPO.glob("*.py")):
        out[path.stem] = path
    for folder in SCRIPT_DIRS:
        for path in sorted((REPO / folder).glob("*.py")):
            out[path.stem] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """First-party modules that ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod
            targets = [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


def layer(module: str) -> str:
    top = module.split(".")[0]
    return top if top in PACKAGES else ("helper" if module in HELPERS else "script")


ALLOWED = {
    "util": lambda m: m.startswith("util"),
    "models": lambda m: m.startswith("models") or m in ("util.errors", "util.io", "util.inputs"),
    "detectors": lambda m: layer(m) in ("util", "models", "detectors"),
    "pipeline": lambda m: layer(m) in ("util", "models", "detectors", "pipeline"),
    "helper": lambda m: layer(m) in PACKAGES,
    "script": lambda m: layer(m) in (*PACKAGES, "helper"),
}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Forbidden edges and import cycles of a module graph."""
    bad = [f"{a} imports {b}" for a, deps in graph.items() for b in sorted(deps) if not ALLOWED[layer(a)](b)]
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                bad.append("cycle: " + " -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return bad


def repository_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def test_every_import_goes_down_the_layers_and_none_forms_a_cycle():
    graph = repository_graph()
    assert {"ood_eval", "pipeline.evaluate", "detectors.registry", "util.features"} <= set(graph)
    assert "detectors.base" in graph["detectors.line"]  # relative imports are resolved
    assert violations(graph) == []


def test_the_checker_reports_a_forbidden_edge_a_script_import_and_a_cycle():
    graph = {
        "util.io": {"models.route"},
        "models.route": {"util.data"},
        "sweep": {"ood_eval"},
        "ood_eval": set(),
        "util.a": {"util.b"},
        "util.b": {"util.a"},
    }
    found = violations(graph)
    assert "util.io imports models.route" in found
    assert "models.route imports util.data" in found
    assert "sweep imports ood_eval" in found
    assert "cycle: util.a -> util.b -> util.a" in found
