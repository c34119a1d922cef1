"""The folder stack as the README describes it: main_models knows nothing of RL, dynalay_env composes,
agents sit on top; no module imports another in a cycle; training code reaches the engine through
typed objects, not method names in strings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("main_models", "dynalay_env", "agents")
LAYER = {"main_models": 0, "dynalay_env": 1, "agents": 2, "benchmarks": 3}


def _modules() -> dict[str, Path]:
    mods = {}
    for top in (*PACKAGES, "benchmarks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports (absolute or relative), resolved to the longest known name."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def test_no_layer_imports_a_layer_above_it(graph):
    for module, deps in graph.items():
        for dep in deps:
            assert LAYER[dep.split(".")[0]] <= LAYER[module.split(".")[0]], f"{module} imports {dep}, a layer above it"


def test_no_import_cycles(graph):
    # a package imports its own submodules to re-export them; that edge is not a cycle of logic
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in edges.get(node, ()):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_training_and_benchmarks_reach_the_engine_through_typed_objects():
    for top in ("agents", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("env_method", "get_attr"):
                    pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} calls {node.func.attr}() by name")


def test_scripts_rely_on_the_installed_packages():
    for path in ROOT.glob("*/*.py"):
        if path.parts[-2] in (*PACKAGES, "benchmarks", "tests") and path.name != "test_architecture.py":
            assert "sys.path.insert" not in path.read_text(), path
