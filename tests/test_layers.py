"""The package's layers hold: a module imports only from its own layer or below, nothing outside `cli/` but
`__main__` imports the CLI, and no two modules import each other, even through an import inside a function
(docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sft_cli"

# Each top-level module or package of sft_cli and its layer; `runs.record` (what a run folder holds) sits in the base
# layer although its package is a use of the layers below.
LAYERS = {
    "errors": 1, "progress": 1, "folders": 1, "hub": 1, "device": 1, "recipe": 1, "runs.record": 1,
    "data": 2,
    "encoding": 3,
    "runs": 4, "training": 4, "export": 4, "smoke": 4,
    "cli": 5, "__main__": 5, "__init__": 5,
}  # fmt: skip


def unit_of(module: str) -> str:
    """The layer unit a dotted module name (relative to the package) belongs to."""
    return module if module in LAYERS else module.split(".")[0]


def imports_of(package: Path) -> dict[str, set[str]]:
    """Each module of a package folder (dotted, relative to it) and the package modules it imports, wherever the
    import statement is (inside functions too)."""
    name = package.name
    graph: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
        found = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"{name}."):
                imported = node.module.removeprefix(f"{name}.")
                found.add(imported)
            elif isinstance(node, ast.ImportFrom) and node.module == name:
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix(f"{name}.") for a in node.names if a.name.startswith(f"{name}.")}
        found.discard(module)
    return graph


def violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Modules without a layer, imports of a higher layer or of the CLI, and import cycles between modules."""
    problems = [f"{m}: no layer (add it to LAYERS)" for m in graph if unit_of(m) not in layers]
    for module, imported in graph.items():
        mine = layers.get(unit_of(module), 0)
        for other in sorted(imported):
            theirs = layers.get(unit_of(other), 0)
            if (unit_of(other) == "cli" and unit_of(module) not in ("cli", "__main__")) or theirs > mine:
                problems.append(f"{module} (layer {mine}) imports {other} (layer {theirs})")
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module], path = "open", path + [module]
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                problems.append("cycle: " + " -> ".join(path[path.index(other) :] + [other]))
            elif other not in state and other in graph:
                visit(other, path)
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return problems


def test_the_package_keeps_its_layers_and_has_no_cycles():
    assert violations(imports_of(PACKAGE), LAYERS) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"low": "from pkg.high import x\n", "high": ""}, "low (layer 1) imports high (layer 2)"),
        (
            {"low": "", "high/__init__": "", "high/deep": "", "up": "from pkg.high.deep import x\n"},
            "up (layer 1) imports high.deep (layer 2)",
        ),
        ({"low": "", "high": "def f():\n    from pkg import cli\n", "cli": ""}, "high (layer 2) imports cli"),
        ({"low": "def f():\n    import pkg.other\n", "other": "from pkg.low import y\n"}, "cycle: low -> other -> low"),
        ({"low": "", "stray": ""}, "stray: no layer"),
    ],
)
def test_the_check_catches_upward_imports_cycles_and_unplaced_modules(tmp_path, files, expected):
    package = tmp_path / "pkg"
    package.mkdir()
    for name, text in files.items():
        (package / f"{name}.py").parent.mkdir(exist_ok=True)
        (package / f"{name}.py").write_text(text)
    problems = violations(imports_of(package), {"low": 1, "other": 1, "up": 1, "high": 2, "cli": 3})
    assert any(p.startswith(expected) for p in problems), problems
