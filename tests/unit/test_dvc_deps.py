"""Every project module a DVC stage imports is one of the stage's `deps`, so editing it reruns the stage.

The import closure is found statically with `ast`, from the module that the stage's `cmd` runs
(`python -m flows.<stage>`): module-level imports and imports inside functions (they run when the
stage runs), `from package import submodule`, relative imports, and the `__init__.py` of every
package on the way. Only modules of the project's own packages count.
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tasks.workspace.import_closure import PROJECT_PACKAGES, import_closure, module_file

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def stage_module(cmd: str) -> str:
    """The module that a `python -m <module> ...` stage command runs."""
    words = shlex.split(cmd)
    if "-m" not in words or words.index("-m") + 1 >= len(words):
        raise AssertionError(f"stage command {cmd!r} is not `python -m <module>`")
    return words[words.index("-m") + 1]


def covered(path: str, deps: list[str]) -> bool:
    """True when `path` is one of `deps` or lies inside a folder that is one."""
    target = PurePosixPath(path)
    return any(target == PurePosixPath(dep) or PurePosixPath(dep) in target.parents for dep in deps)


def dep_paths(stage: dict) -> list[str]:
    """The stage's deps as plain paths (a dep may also be written as a one-key mapping)."""
    return [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])]


STAGES: dict[str, dict] = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_its_import_closure(name: str) -> None:
    stage = STAGES[name]
    module = stage_module(stage["cmd"])
    entry = module_file(PROJECT_ROOT, module)
    assert entry is not None, f"stage '{name}' runs {module!r}, which is not a module under flows/ or tasks/"
    closure = sorted(path.relative_to(PROJECT_ROOT).as_posix() for path in import_closure(PROJECT_ROOT, module))
    assert entry.relative_to(PROJECT_ROOT).as_posix() in closure
    missing = [path for path in closure if not covered(path, dep_paths(stage))]
    assert not missing, (
        f"stage '{name}' imports project modules that are not in its deps: {', '.join(missing)}. "
        f"Add them to the `deps:` of stage '{name}' in dvc.yaml, or `dvc repro` will not rerun it "
        "when they change."
    )


def write_module(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_import_closure_follows_every_kind_of_import(tmp_path: Path) -> None:
    write_module(tmp_path, "app/__init__.py")
    write_module(
        tmp_path,
        "app/main.py",
        "import os\n"
        "from app import sub\n"
        "from app.plain import thing\n"
        "from . import sibling\n"
        "import app.deep.leaf\n"
        "\n"
        "def run():\n"
        "    from app.lazy import helper\n"
        "    return helper\n",
    )
    write_module(tmp_path, "app/sub.py", "from .pkg import name\n")
    write_module(tmp_path, "app/plain.py", "thing = 1\n")
    write_module(tmp_path, "app/sibling.py")
    write_module(tmp_path, "app/deep/__init__.py")
    write_module(tmp_path, "app/deep/leaf.py", "from ..plain import thing\n")
    write_module(tmp_path, "app/lazy.py", "helper = 2\n")
    write_module(tmp_path, "app/pkg/__init__.py", "from app.pkg.inner import name\n")
    write_module(tmp_path, "app/pkg/inner.py", "name = 3\n")
    write_module(
        tmp_path,
        "app/unused.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import app.never\n",
    )
    write_module(tmp_path, "app/never.py")
    write_module(tmp_path, "other/__init__.py")

    closure = {path.relative_to(tmp_path).as_posix() for path in import_closure(tmp_path, "app.main", ("app",))}

    assert closure == {
        "app/__init__.py",
        "app/main.py",
        "app/sub.py",
        "app/plain.py",
        "app/sibling.py",
        "app/deep/__init__.py",
        "app/deep/leaf.py",
        "app/lazy.py",
        "app/pkg/__init__.py",
        "app/pkg/inner.py",
    }
    unused = {path.relative_to(tmp_path).as_posix() for path in import_closure(tmp_path, "app.unused", ("app",))}
    assert unused == {"app/__init__.py", "app/unused.py"}


def test_stage_closures_reach_past_the_flow_module() -> None:
    closure = {path.relative_to(PROJECT_ROOT).as_posix() for path in import_closure(PROJECT_ROOT, "flows.prepare")}
    assert {"flows/__init__.py", "flows/_stage.py", "tasks/data/prepare.py", "tasks/data/datasets/base.py"} <= closure


@pytest.mark.parametrize("name", sorted(STAGES))
def test_no_stage_depends_on_the_services(name: str) -> None:
    """The stages import the small process helpers (tasks/runtime/processes.py), never the services'
    code (tasks/services/): editing the servers' supervision must not make DVC rerun the pipeline."""
    closure = import_closure(PROJECT_ROOT, stage_module(STAGES[name]["cmd"]))
    assert not [path for path in closure if path.relative_to(PROJECT_ROOT).parts[:2] == ("tasks", "services")]


def test_covered_accepts_files_and_folders() -> None:
    assert covered("tasks/data/datasets/base.py", ["tasks/data/datasets"])
    assert covered("tasks/workspace/config.py", ["tasks/workspace/config.py"])
    assert not covered("tasks/workspace/config.py", ["tasks/config"])
    assert not covered("tasks/datasets_extra.py", ["tasks/data/datasets"])


# Code a stage uses without importing it: register ships this file inside the packaged model.
USED_WITHOUT_IMPORT = {"register": {"tasks/serving/pyfunc_model.py"}}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_exist_and_are_used(name: str) -> None:
    """A code dep that no longer exists breaks `dvc repro`; one the stage does not use reruns it for nothing."""
    stage = STAGES[name]
    closure = {
        path.relative_to(PROJECT_ROOT).as_posix() for path in import_closure(PROJECT_ROOT, stage_module(stage["cmd"]))
    }
    code_deps = [dep for dep in dep_paths(stage) if dep.split("/")[0] in PROJECT_PACKAGES]
    absent = [dep for dep in code_deps if not (PROJECT_ROOT / dep).exists()]
    assert not absent, f"stage '{name}' lists deps that do not exist: {', '.join(absent)}; remove them from dvc.yaml"
    unused = [
        dep
        for dep in code_deps
        if dep not in USED_WITHOUT_IMPORT.get(name, set()) and not any(covered(path, [dep]) for path in closure)
    ]
    assert not unused, f"stage '{name}' lists code it never imports: {', '.join(unused)}; remove them from dvc.yaml"


def test_register_reruns_when_the_code_it_ships_in_the_model_changes() -> None:
    """register ships the import closure of the model's code file inside every version (not imported by
    the stage itself): each of those files is one of its deps, so a change to the serving code makes a
    new version."""
    shipped = import_closure(PROJECT_ROOT, "tasks.serving.pyfunc_model")
    deps = dep_paths(STAGES["register"])
    missing = sorted(path.relative_to(PROJECT_ROOT).as_posix() for path in shipped)
    missing = [path for path in missing if not covered(path, deps)]
    assert not missing, f"register ships {', '.join(missing)} in the model but does not list them as deps"
