"""Every third-party package that flows/ and tasks/ import is declared in pyproject.toml.

A package that is only there because another one pulls it in (pandas through MLflow, scipy through
scikit-learn) disappears the day that one stops needing it; the project then breaks on a fresh
install. The imports are read with `ast` (module-level and inside functions alike) and mapped to
their distribution by the installed metadata.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("flows", "tasks")
PROJECT_PACKAGES = {"flows", "tasks"}
REQUIREMENT_NAME = re.compile(r"^[A-Za-z0-9._-]+")


def normalised(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_packages() -> set[str]:
    """Top-level names imported anywhere in flows/ and tasks/."""
    names = set()
    for folder in SOURCE_FOLDERS:
        for path in (PROJECT_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - PROJECT_PACKAGES - set(sys.stdlib_module_names) - {"__future__"}


def declared_distributions() -> set[str]:
    """Every distribution pyproject.toml names, in its dependencies or any extra."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    return {normalised(REQUIREMENT_NAME.match(requirement).group(0)) for requirement in requirements}


def test_every_imported_package_is_declared() -> None:
    distributions = packages_distributions()
    declared = declared_distributions()
    undeclared = {}
    for package in sorted(imported_packages()):
        providers = {normalised(name) for name in distributions.get(package, [])}
        # tensorflow is declared as tensorflow-cpu (extra cpu) or tensorflow (extra cuda): either provides it.
        if not providers & declared and normalised(package) not in declared:
            undeclared[package] = sorted(providers) or ["(not installed)"]
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_check_sees_what_it_should() -> None:
    """The import reader finds the packages the code is known to use (a reader that found nothing would pass)."""
    assert {"numpy", "prefect", "mlflow", "keras", "cryptography", "uvicorn"} <= imported_packages()
    assert "tasks" not in imported_packages() and "json" not in imported_packages()


def test_dvc_reads_its_yaml_files_with_libyaml() -> None:
    """ruamel.yaml.clib is declared for DVC's reads of dvc.yaml and dvc.lock (every status, commit and
    repro, issue 25); ruamel.yaml 0.19 falls back to its pure-Python parser, silently, without it."""
    from dvc.utils.serialize import parse_yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None, "ruamel.yaml.clib is not installed: reinstall with constraints.txt"
    assert YAML(typ="safe").Parser is CParser
    assert parse_yaml("stages: {a: {cmd: x}}", "dvc.yaml") == {"stages": {"a": {"cmd": "x"}}}
