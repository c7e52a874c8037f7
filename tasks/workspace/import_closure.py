"""The project modules that importing a module can run, found statically with `ast`.

Used twice: every DVC stage lists its import closure as `deps` (tests/unit/test_dvc_deps.py), so editing
a module reruns the stages that run it; and `register` ships only the closure of the packaged model's
code file (`tasks.serving.pyfunc_model`) inside the model, not the whole project (`tasks.registration.packaging`).
Counted: module-level imports and imports inside functions (they run when the code runs), `from package import
submodule`, relative imports, and the `__init__.py` of every package on the way; not imports under
`if TYPE_CHECKING:`. Only modules of the project's own packages count.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

PROJECT_PACKAGES = ("flows", "tasks")


def module_file(root: Path, name: str, packages: tuple[str, ...] = PROJECT_PACKAGES) -> Path | None:
    """The file of module `name` under `root` (`a/b.py` or `a/b/__init__.py`); None outside `packages`."""
    parts = name.split(".")
    if not name or parts[0] not in packages:
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    """True for `TYPE_CHECKING` or `typing.TYPE_CHECKING`: imports under it never run."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions included), except under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return found


def imported_names(module: str, path: Path) -> set[str]:
    """Dotted names of the modules (or, for `from m import x`, the candidates `m` and `m.x`) `path` imports."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        if node.level:
            anchor = package.split(".") if package else []
            anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
            base = ".".join([*anchor, node.module] if node.module else anchor)
        else:
            base = node.module or ""
        names.add(base)
        # `from package import name`: name may be a submodule, which then runs too.
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def import_closure(root: Path, module: str, packages: tuple[str, ...] = PROJECT_PACKAGES) -> set[Path]:
    """Files under `root` of every project module that importing `module` can run (itself included)."""
    closure: set[Path] = set()
    queue = deque([module])
    seen: set[str] = set()
    while queue:
        name = queue.popleft()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        queue.extend(".".join(parts[:end]) for end in range(1, len(parts)))
        path = module_file(root, name, packages)
        if path is None or path in closure:
            continue
        closure.add(path)
        queue.extend(imported_names(name, path))
    return closure
