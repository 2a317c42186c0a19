"""The package's layers hold: a module imports only from its own layer or below, nothing but `__main__` imports the
CLI, and no
two modules import each other, even through an import inside a function (README, Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sft_cli"

LAYERS = {
    # 1: the recipe, the run record, errors, the progress protocol
    "errors": 1, "folders": 1, "hub": 1, "recipe": 1, "recipe_sections": 1, "recipe_yaml": 1, "run_record": 1,
    "progress": 1, "trainer_fields": 1, "trackers": 1, "chunked_loss": 1,
    # 2: rows and rendering
    "sources": 2, "marking": 2, "data": 2, "rendered": 2, "templates": 2, "chat": 2, "tokens": 2,
    # 3: encoding, and loading what encodes
    "stats": 3, "encode": 3, "prepared": 3, "loading": 3, "mixing": 3,
    # 4: uses
    "preview": 4, "train": 4, "train_setup": 4, "callbacks": 4, "run_folder": 4, "batching": 4, "attention": 4,
    "trainer": 4, "plan": 4, "memory": 4, "launch": 4, "generate": 4, "evaluate": 4, "merge": 4, "starter": 4,
    "export": 4,
    "smoke": 4, "smoke_model": 4,
    # 5: the command line and its view
    "cli": 5, "cli_base": 5, "cli_runs": 5, "view": 5, "__main__": 5, "__init__": 5,
}  # fmt: skip


def imports_of(package: Path) -> dict[str, set[str]]:
    """Each module of a package folder and the package modules it imports, wherever the import statement is. A
    subpackage (export/) counts as one module."""
    name = package.name
    graph: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package).parts[0].removesuffix(".py")
        found = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"{name}."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == name:
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(f"{name}.")}
        found.discard(module)
    return graph


def violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Modules without a layer, imports of a higher layer or of the CLI, and import cycles."""
    problems = [f"{m}: no layer (add it to LAYERS)" for m in graph if m not in layers]
    for module, imported in graph.items():
        for other in sorted(imported):
            if (other == "cli" and module != "__main__") or layers.get(other, 0) > layers.get(module, 0):
                problems.append(f"{module} (layer {layers.get(module)}) imports {other} (layer {layers.get(other)})")
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
        ({"low": "", "high": "def f():\n    from pkg import cli\n", "cli": ""}, "high (layer 2) imports cli"),
        ({"low": "def f():\n    import pkg.other\n", "other": "from pkg.low import y\n"}, "cycle: low -> other -> low"),
        ({"low": "", "stray": ""}, "stray: no layer"),
    ],
)
def test_the_check_catches_upward_imports_cycles_and_unplaced_modules(tmp_path, files, expected):
    package = tmp_path / "pkg"
    package.mkdir()
    for name, text in files.items():
        (package / f"{name}.py").write_text(text)
    problems = violations(imports_of(package), {"low": 1, "other": 1, "high": 2, "cli": 3})
    assert any(p.startswith(expected) for p in problems), problems
