"""Every name the project imports from its own modules exists, including imports inside functions.

Flows and tasks import heavy modules inside the function that needs them, so a name removed or
renamed in `tasks` only fails when that stage runs (minutes into an integration test, or a
`dvc repro`). This resolves each `from flows.x / tasks.x import name` statically, at any depth.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("flows", "tasks")
# Benchmarks and tests import from the project too, and break the same way when a name moves.
SOURCE_FOLDERS = (*PROJECT_PACKAGES, "bench", "tests")
SOURCES = sorted(
    path.relative_to(PROJECT_ROOT) for folder in SOURCE_FOLDERS for path in (PROJECT_ROOT / folder).rglob("*.py")
)


def project_imports(source: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of every `from <project module> import name` in `source`, at any depth."""
    found = []
    for node in ast.walk(ast.parse((PROJECT_ROOT / source).read_text())):
        is_project = isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
        if is_project and node.module.split(".")[0] in PROJECT_PACKAGES:
            found.extend((node.module, alias.name, node.lineno) for alias in node.names)
    return found


def unresolved(source: Path) -> list[str]:
    missing = []
    for module_name, name, line in project_imports(source):
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{source}:{line}: {module_name} has no {name}")
    return missing


@pytest.mark.parametrize("source", SOURCES, ids=str)
def test_every_project_import_resolves(source: Path) -> None:
    assert unresolved(source) == []
