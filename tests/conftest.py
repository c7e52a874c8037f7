"""Shared fixtures: small generated datasets, workspaces, and one Prefect test harness per session."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tasks.workspace.params_data import PrepareParams, SyntheticParams
from tasks.workspace.paths import ProjectPaths

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_FILES = ("params.yaml", "dvc.yaml", "prefect.toml", "constraints.txt", "data/enrolments/README.md")
WORKSPACE_FOLDERS = ("flows", "tasks")
CEDAR_DIR = PROJECT_ROOT.parent / "shared" / "datasets" / "cedar"
HARNESS_STARTUP_SECONDS = 120
DVC_NO_ANALYTICS_VARIABLE = "DVC_NO_ANALYTICS"
TRAINED_MARKER = "built.json"  # written once the shared trained workspace is complete: its artifact folders
# The `trained` workspace: 3 writers, 75 px, registered under the project's default model name (what
# the README's commands load).
TRAINED_MODEL_NAME = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["register"]["model_name"]
TRAINED_PARAMS: dict[str, dict[str, object]] = {
    "synthetic": {
        "writers": 3,
        "genuine_per_writer": 10,
        "skilled_per_writer": 2,
        "simple_per_writer": 0,
        "opposite_per_writer": 2,
        "width": 120,
        "height": 80,
    },
    "prepare": {"image_size": 75, "workers": 1},
    "model": {"dense_units": 32},
    "train": {"epochs": 3, "augmented_views": 1, "patience": 5},
    "calibrate": {"target_far": 0.2},  # 6 calibration unknowns can resolve a FAR of 0.2, not 0.05
    "register": {"model_name": TRAINED_MODEL_NAME, "top_k": 2},
}


def synthetic_params(**overrides: object) -> SyntheticParams:
    """A tiny UTSig-shaped dataset: 4 writers, a dozen images each, 96x64 pixels."""
    values: dict[str, object] = dict(
        seed=11,
        writers=4,
        genuine_per_writer=8,
        skilled_per_writer=2,
        simple_per_writer=1,
        opposite_per_writer=2,
        width=96,
        height=64,
    )
    values.update(overrides)
    return SyntheticParams.model_validate(values)


def prepare_params(**overrides: object) -> PrepareParams:
    """The project's `prepare` defaults with the smallest image size InceptionV3 takes and one worker process."""
    values = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["prepare"]
    values.update(image_size=75, workers=1)
    values.update(overrides)
    return PrepareParams.model_validate(values)


def make_workspace(root: Path) -> Path:
    """Copy the project's pipeline files (code, params, dvc.yaml) into a fresh folder `root`."""
    root.mkdir(parents=True)
    for name in WORKSPACE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, root / name)
    for name in WORKSPACE_FOLDERS:
        shutil.copytree(PROJECT_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def pytest_configure() -> None:
    """No DVC usage analytics from the tests' `dvc` commands (DVC_NO_ANALYTICS, which every subprocess
    inherits). The tests make their workspaces with `dvc init`, whose config sends them (a clone of the
    project has its committed .dvc/config, which turns them off): each command would fork a daemon
    (about 0.9 CPU-s here) that, offline, leaves its report file in the temporary folder, about 45 per run."""
    os.environ.setdefault(DVC_NO_ANALYTICS_VARIABLE, "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the tests as pytest-xdist should hand them out (`make test` passes `--no-loadscope-reorder`,
    so xdist keeps this order): the units (an `xdist_group`, or one test) that hold end-to-end (`slow`)
    tests first, larger groups before smaller ones as xdist's own reorder does, then the others, those
    of modules with end-to-end tests first, each unit's tests in their order; but first of all the first
    unit that builds the shared trained workspace, and right after it the first slow unit that does not
    need that workspace.

    Each worker takes the next unit (an `xdist_group`, or one test) when it runs low: the minutes-long
    end-to-end chains start at once, the many short tests fill the workers around them, and while one
    worker builds the trained workspace the other works instead of waiting on its lock."""
    has_slow = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in has_slow)  # stable: the order within a module is kept
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(scheduling_unit(item), []).append(item)
    # As xdist's own reorder would: the largest groups first (they run longest), within slow and then the rest.
    order = sorted(units, key=lambda unit: (not is_slow(units[unit]), -len(units[unit])))
    builder = next((unit for unit in order if needs_trained(units[unit])), None)
    other = next((unit for unit in order if is_slow(units[unit]) and not needs_trained(units[unit])), None)
    first = [unit for unit in (builder, other) if unit is not None]
    order = first + [unit for unit in order if unit not in first]
    items[:] = [item for unit in order for item in units[unit]]


def scheduling_unit(item: pytest.Item) -> str:
    """What pytest-xdist's `loadgroup` hands to one worker at once: the item's `xdist_group`, else the item."""
    group = item.get_closest_marker("xdist_group")
    return f"group:{group.args[0]}" if group is not None and group.args else item.nodeid


def needs_trained(unit: list[pytest.Item]) -> bool:
    """Whether a test of the unit uses the shared trained workspace (directly or through other fixtures)."""
    return any("trained_original" in getattr(item, "fixturenames", ()) for item in unit)


def is_slow(unit: list[pytest.Item]) -> bool:
    """Whether a test of the unit is an end-to-end (`slow`) one."""
    return any(item.get_closest_marker("slow") for item in unit)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A copy of the project's pipeline files (code, params, dvc.yaml) in a fresh folder."""
    return make_workspace(tmp_path / "workspace")


def edit_params(params_file: Path, changes: dict[str, dict[str, object]]) -> None:
    """Update groups of `params_file` in place, e.g. {"prepare": {"image_size": 32}}."""
    params = yaml.safe_load(params_file.read_text())
    for group, values in changes.items():
        params.setdefault(group, {}).update(values)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """One temporary Prefect API for the whole session; yields its URL for subprocesses too.

    Flow runs in this process send no heartbeats, as against the pipeline's own temporary server
    (tasks/runtime/prefect_api.py): nothing watches them here, and each flow run would wait up to a
    second for its heartbeat thread when it ends. Stage subprocesses keep Prefect's default, as a user's do."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_SECONDS),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield str(PREFECT_API_URL.value())


def subprocess_environment(prefect_api_url: str) -> dict[str, str]:
    """Environment for stage subprocesses: the session's Prefect API, the venv first on PATH."""
    environment = dict(os.environ)
    environment["PREFECT_API_URL"] = prefect_api_url
    environment["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["DO_NOT_TRACK"] = "true"
    # An `mlflow server` a test starts runs without MLflow 3's GenAI job runner (eight processes), as the
    # Makefile (tasks/services/local_services.py) and make team-up (tasks/services/team_servers.py) start theirs.
    environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # mlflow.set_tracking_uri in this process exports MLFLOW_TRACKING_URI (some earlier test's store);
    # a stage run in a workspace uses that workspace's own store, as it does for a user.
    environment.pop("MLFLOW_TRACKING_URI", None)
    return environment


@pytest.fixture
def subprocess_env(prefect_api_url: str) -> dict[str, str]:
    """Environment for stage subprocesses: the session's Prefect API, the venv first on PATH."""
    return subprocess_environment(prefect_api_url)


def forget_exported_tracking_uri() -> None:
    """Drop MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri exports in this process (some earlier
    test's store): stages run in-process then log to their workspace's own store, as in a user's process."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def workspace_tracking_store() -> None:
    """Each test starts without an exported tracking URI."""
    forget_exported_tracking_uri()


def build_trained_workspace(workspace: Path) -> None:
    """Run every stage (download ... package, register) in this process on a new copy of the pipeline files
    at `workspace`, with TRAINED_PARAMS."""
    from flows.calibrate import calibrate_flow
    from flows.download import download_flow
    from flows.embed import embed_flow
    from flows.evaluate import evaluate_flow
    from flows.package import package_flow
    from flows.prepare import prepare_flow
    from flows.register import register_flow
    from flows.train import train_flow

    make_workspace(workspace)
    edit_params(workspace / "params.yaml", TRAINED_PARAMS)
    params_file = str(workspace / "params.yaml")
    forget_exported_tracking_uri()  # set up before any test's autouse fixture: the stages run in this process
    stages = (download_flow, prepare_flow, embed_flow, train_flow, evaluate_flow, calibrate_flow, package_flow)
    for stage in (*stages, register_flow):
        stage(params_file)


@pytest.fixture(scope="session")
def trained_original(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str, worker_id: str) -> Path:
    """The trained workspace, built once per test run: under pytest-xdist the first worker that needs it
    builds it in the run's shared temporary folder while the others wait on a lock, then all use it
    (the xdist how-to's pattern for session fixtures that must run once). Nobody changes it: tests get
    copies (`trained`)."""
    if worker_id == "master":  # no xdist: this process is the whole run
        workspace = tmp_path_factory.mktemp("pipeline") / "workspace"
        build_and_mark(workspace)
        return workspace
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "trained"
    workspace = shared / "workspace"
    with FileLock(str(shared) + ".lock"):
        if not (shared / TRAINED_MARKER).exists():
            shutil.rmtree(shared, ignore_errors=True)  # a build that failed part way on another worker
            build_and_mark(workspace)
    return workspace


def build_and_mark(workspace: Path) -> None:
    """Build the trained workspace, then record beside it that it is complete and which artifact
    folders it holds (`later_artifacts` leaves the others out of copies)."""
    build_trained_workspace(workspace)
    (workspace.parent / TRAINED_MARKER).write_text(json.dumps(artifact_folders(workspace)))


def artifact_folders(workspace: Path) -> list[str]:
    """The MLflow run and model folders of the workspace's store, relative to the workspace."""
    artifacts = ProjectPaths.from_root(workspace).mlruns_dir / "artifacts"
    folders = [*artifacts.iterdir(), *(artifacts / "models").iterdir()]
    return sorted(folder.relative_to(workspace).as_posix() for folder in folders if folder.is_dir())


def later_artifacts(original: Path) -> Callable[[str, list[str]], set[str]]:
    """A copytree `ignore` that leaves out the artifact folders of runs logged after `original` was built:
    copies log to the original's store folders (their MLflow store names them), possibly while another
    worker copies it."""
    built = set(json.loads((original.parent / TRAINED_MARKER).read_text()))
    store = ProjectPaths.from_root(original).mlruns_dir / "artifacts"

    def ignored(folder: str, names: list[str]) -> set[str]:
        if Path(folder) not in (store, store / "models"):
            return set()
        relative = Path(folder).relative_to(original)
        return {name for name in names if (relative / name).as_posix() not in built}  # `models` is listed too

    return ignored


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, trained_original: Path) -> ProjectPaths:
    """A workspace on which download, prepare, train, evaluate, calibrate and register have run: this
    worker's copy of `trained_original` (modules that use it share the xdist group `trained`, so most
    tests see one copy). Tests that change it say so and restore what they change; tests that run
    commands on it work on a copy. The copy's MLflow store names the original's artifact folders,
    which only ever gain new runs."""
    workspace = tmp_path_factory.mktemp("trained") / "workspace"
    shutil.copytree(trained_original, workspace, symlinks=True, ignore=later_artifacts(trained_original))
    return ProjectPaths.from_root(workspace)


@pytest.fixture
def cedar_dir() -> Path:
    """The shared CEDAR copy; the test is skipped where it is absent (a fresh clone has none)."""
    if not (CEDAR_DIR / "full_org").is_dir():
        pytest.skip(f"CEDAR not found at {CEDAR_DIR}")
    return CEDAR_DIR
