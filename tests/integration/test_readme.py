"""Every command and snippet of the README and of the topic files in docs/, executed as written in a
workspace like the one a user has after `make demo`: the session's trained workspace (generated data,
a registered champion), a git and DVC repository whose `dvc.lock` records the outputs, and `.venv`
with this environment.

Each block is one test (id: its file outside README.md, its heading and place under it), run in its
own copy of that workspace, so blocks may run alone or on different xdist workers. Tags above the
blocks (see tests/support/readme.py) mark blocks that start servers (or take long), or name the test
that runs exactly those commands instead. Nothing in a block is substituted: the blocks use real
paths of the demo data."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tasks.workspace.paths import ProjectPaths
from tests.conftest import PROJECT_ROOT, subprocess_environment
from tests.support.readme import Block, missing_references, project_blocks

BLOCKS = project_blocks(PROJECT_ROOT)  # README.md's, then docs/*.md's
# What a clone holds besides the pipeline files the trained workspace already has.
CHECKOUT_FILES = ("Makefile", "pyproject.toml", "constraints.txt", "prefect.yaml", ".gitignore", ".dvcignore")
INSTALLED_MARKER = ".installed"  # the Makefile's record of a finished install
GIT_IDENTITY = ("-c", "user.name=readme-test", "-c", "user.email=readme-test@localhost")
SETUP_TIMEOUT_SECONDS = 300
BLOCK_TIMEOUT_SECONDS = 900
SERVER_STARTUP_SECONDS = 180
SERVER_POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 10
PORT_PATTERN = re.compile(r"--port\s+(\d+)|127\.0\.0\.1:(\d+)")
# Bash stops at the first command whose status is not one the block's tag allows (0 by default),
# naming the command: `set -e` alone would accept `verify`'s documented exit 2 nowhere.
BASH_PRELUDE = """set -o pipefail -o errtrace
trap 'status=$?; case " $READMETEST_EXIT_CODES " in *" $status "*) ;; \
*) echo "readme-test: exit $status from: $BASH_COMMAND" >&2; exit $status;; esac' ERR
"""


def executed_blocks(*, covered: bool) -> list[object]:
    """pytest params of the executed blocks run here (covered=False) or by other tests (covered=True)."""
    params = []
    for block in BLOCKS:
        if not block.executed or bool(block.tags.covered_by) != covered:
            continue
        # Every block runs real commands end to end (stage processes, servers): slow, as `make
        # test-fast` leaves them out; `make test` and CI run them all.
        marks = [pytest.mark.slow]
        if block_ports(block):  # the documents' fixed ports: blocks that use them run one after another
            marks.append(pytest.mark.xdist_group("readme-ports"))
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


def block_ports(block: Block) -> set[int]:
    """The 127.0.0.1 ports a block names (servers it starts or talks to)."""
    return {int(port) for match in PORT_PATTERN.findall(block.code) for port in match if port}


def git(arguments: list[str], root: Path) -> None:
    subprocess.run(["git", *GIT_IDENTITY, *arguments], cwd=root, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def readme_environment(prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The shell a README reader has: the venv's bin on PATH, the workspace's own MLflow store."""
    environment = subprocess_environment(prefect_api_url)  # without MLFLOW_TRACKING_URI
    # A Prefect server that a block starts (`make up`) keeps its database here, not in the user's ~/.prefect.
    environment["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    return environment


def link_environment(venv: Path) -> None:
    """`.venv` as `make venv` leaves it, made of links to this environment's files: `.venv/bin/...` and
    `source .venv/bin/activate` work, and its own `.installed` marker tells `make` that nothing is to
    install (make never writes into this environment)."""
    venv.mkdir()
    for entry in Path(sys.prefix).iterdir():
        if entry.name != INSTALLED_MARKER:
            (venv / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    (venv / INSTALLED_MARKER).touch()


def add_checkout_files(root: Path) -> None:
    """What a clone holds besides the pipeline's files, as `make venv` leaves it: the checkout files
    (older than `.venv`, so `make` never reinstalls anything) and `.venv` linked to this environment."""
    for name in CHECKOUT_FILES:
        shutil.copy2(PROJECT_ROOT / name, root / name)
        os.utime(root / name, (0, 0))
    link_environment(root / ".venv")


@pytest.fixture(scope="module")
def readme_template(
    trained: ProjectPaths, tmp_path_factory: pytest.TempPathFactory, readme_environment: dict[str, str]
) -> Path:
    """A copy of the trained workspace turned into what `make demo` leaves in a clone."""
    from flows.check_params import check_params

    root = tmp_path_factory.mktemp("readme") / "signature-pipeline"
    shutil.copytree(trained.root, root, symlinks=True)
    add_checkout_files(root)
    check_params(root / "params.yaml")  # the first stage's marker, which the trained fixture does not write
    git(["init", "-q"], root)
    (root / ".git" / "info" / "exclude").write_text(".venv\n")
    subprocess.run(["dvc", "init", "-q"], cwd=root, env=readme_environment, check=True, timeout=SETUP_TIMEOUT_SECONDS)
    # Records the trained outputs in dvc.lock, as `dvc repro` would have: every stage is up to date.
    committed = subprocess.run(
        ["dvc", "commit", "--force", "-q"],
        cwd=root,
        env=readme_environment,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT_SECONDS,
    )
    assert committed.returncode == 0, committed.stdout + committed.stderr
    git(["add", "-A"], root)
    git(["commit", "-q", "-m", "workspace"], root)
    return root


@pytest.fixture
def readme_workspace(readme_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template for each block: blocks change the workspace (a stage rerun, an
    experiment), and none depends on another having run (any one can run alone, on any xdist worker)."""
    root = tmp_path / readme_template.name
    shutil.copytree(readme_template, root, symlinks=True)
    return root


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """End the block's shell and everything it started (servers sent to the background): TERM, then KILL."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            process.poll()
            time.sleep(0.2)


def wait_for_server(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll `url` until it answers 200; fail with the block's output if the block exits first or never answers."""
    deadline = time.monotonic() + SERVER_STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the block exited ({process.returncode}) before {url} answered:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(SERVER_POLL_SECONDS)
    pytest.fail(f"{url} did not answer within {SERVER_STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


def run_block(block: Block, root: Path, environment: dict[str, str], log: Path) -> int | None:
    """Run one block in `root` with its output in `log`; returns its exit status (None for a server block,
    stopped once its URL answered). Whatever the block left running is stopped."""
    if block.language == "python":
        command = [sys.executable, "-c", block.script()]
    else:
        command = ["bash", "-c", BASH_PRELUDE + block.script()]
    environment = {**environment, "READMETEST_EXIT_CODES": " ".join(map(str, block.tags.exit_codes))}
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=root, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            if block.tags.server_url is not None:
                wait_for_server(block.tags.server_url, process, log)
                return None
            return process.wait(timeout=BLOCK_TIMEOUT_SECONDS)
        finally:
            stop_group(process)


@pytest.mark.parametrize("block", executed_blocks(covered=False))
def test_readme_block_runs(
    block: Block, readme_workspace: Path, readme_environment: dict[str, str], tmp_path: Path
) -> None:
    busy = sorted(port for port in block_ports(block) if port_in_use(port))
    if busy:
        pytest.skip(f"{block.where} starts a server on port {busy}, which something here already uses")
    log = tmp_path / "block.log"
    status = run_block(block, readme_workspace, readme_environment, log)
    assert status is None or status in block.tags.exit_codes, (
        f"{block.where} ({block.language}) exited {status}:\n{block.code}\n--- output ---\n"
        f"{log.read_text(errors='replace')[-4000:]}"
    )


@pytest.mark.parametrize("block", executed_blocks(covered=True))
def test_readme_block_is_run_by_the_test_it_names(block: Block) -> None:
    missing = missing_references(block.tags.covered_by, PROJECT_ROOT)
    assert not missing, f"{block.where}: `covered-by` names what does not exist: {', '.join(missing)}"
