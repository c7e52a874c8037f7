"""Run requests to a real Prefect server on 127.0.0.1 get only what is safe (issue 27, point 3).

The work pool and the deployment are made by `tasks.services.team_servers.deploy_pipeline`, the function `make up`
and `make team-up` use (`prefect work-pool create` with the pool's template, then `prefect deploy --all`
from the project's prefect.yaml). A request that replaces
the command, the working folder or the environment is refused by the server; a run that names
another params_file, overrides a key outside the allow-list (tasks.runtime.run_requests.RUN_REQUEST_KEYS), or
points the data at a folder or address the operator has not allowed, fails with one line before any
stage runs; and no refused or failed run changes params.yaml.
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from tasks.workspace.errors import StageFailedError
from tests.conftest import PROJECT_ROOT, edit_params, make_workspace, subprocess_environment
from tests.support.model_server import free_port

pytestmark = pytest.mark.xdist_group("run-requests")  # one pool and deployment, built once

POOL = "signature-pool"
DEPLOYMENT = "signature-pipeline/local"
DEPLOYMENT_FILES = ("prefect.yaml",)  # the pool's template, flows/work_pool.json, comes with flows/
COMMAND_TIMEOUT_SECONDS = 180
RUN_TIMEOUT_SECONDS = 180
POLL_SECONDS = 0.5
# Prefect's server answers 503 while its SQLite database is locked by another writer (busy CI, two
# workers); Prefect's own client sends such a request again, so the raw requests below do too.
UNAVAILABLE = 503
UNAVAILABLE_ATTEMPTS = 5
WORKER_STOP_SECONDS = 60
TINY_DATA = {
    "synthetic": {"writers": 2, "genuine_per_writer": 8, "width": 64, "height": 48},
    "download": {"retries": 0},
}
# The operator's settings (tasks.runtime.run_requests): unset here, so the operator allows no data source.
OPERATOR_VARIABLES = ("SIGPIPE_ALLOWED_LOCAL_ROOTS", "SIGPIPE_ALLOWED_URL_HOSTS")


@dataclass(frozen=True)
class Deployed:
    """A workspace whose pipeline is deployed on the pool `make up` creates, on the session's server."""

    workspace: Path
    deployment_id: UUID
    api_url: str
    environment: dict[str, str]


def run(command: list[str], cwd: Path, environment: dict[str, str]) -> str:
    """Run a command, failing the test with its output when it fails."""
    result = subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> Deployed:
    """A tiny DVC workspace with the project's prefect.yaml, its pool and deployment made as `make up`
    makes them (`deploy_pipeline`, which sets SIGPIPE_ROOT to the workspace)."""
    from tasks.services.team_servers import deploy_pipeline

    workspace = make_workspace(tmp_path_factory.mktemp("run-requests") / "workspace")
    for name in DEPLOYMENT_FILES:
        shutil.copy2(PROJECT_ROOT / name, workspace / name)
    edit_params(workspace / "params.yaml", TINY_DATA)
    environment = subprocess_environment(prefect_api_url)
    for name in OPERATOR_VARIABLES:
        environment.pop(name, None)
    run(["dvc", "init", "--no-scm", "-q"], workspace, environment)
    deploy_pipeline(workspace, environment, workspace.parent / "deploy.log", keep_pool=False, pool=POOL)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(DEPLOYMENT).id
    return Deployed(workspace, deployment_id, prefect_api_url, environment)


def flow_runs_of(deployment_id: UUID) -> list[object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def post_to_api(url: str, body: dict[str, object]) -> httpx.Response:
    """POST `body` to the Prefect API as any client can, sent again (as Prefect's client does) while the
    server answers 503 for a locked database; every other answer is returned as it is."""
    from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_fixed

    retrying = Retrying(
        retry=retry_if_result(lambda response: response.status_code == UNAVAILABLE),
        stop=stop_after_attempt(UNAVAILABLE_ATTEMPTS),
        wait=wait_fixed(POLL_SECONDS),
        retry_error_callback=lambda state: state.outcome.result(),
    )
    return retrying(httpx.post, url, json=body)


def test_a_run_request_cannot_change_the_command_folder_or_environment(deployed: Deployed, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    injections = [
        {"command": f"touch {marker}"},
        {"working_dir": str(attacker)},
        {"env": {"BASH_ENV": str(attacker / "rc"), "LD_PRELOAD": str(attacker / "x.so"), "PYTHONPATH": str(attacker)}},
        {"command": f"touch {marker}", "working_dir": str(attacker), "env": {"PYTHONPATH": str(attacker)}},
    ]
    url = f"{deployed.api_url}/deployments/{deployed.deployment_id}"
    for job_variables in injections:
        response = post_to_api(f"{url}/create_flow_run", {"job_variables": job_variables})
        assert response.status_code == 422, (job_variables, response.status_code, response.text[:500])
    assert flow_runs_of(deployed.deployment_id) == []
    assert not marker.exists()
    accepted = post_to_api(f"{url}/create_flow_run", {"job_variables": {"name": "ok"}})
    assert accepted.status_code == 201  # what the template does take
    httpx.delete(f"{deployed.api_url}/flow_runs/{accepted.json()['id']}").raise_for_status()  # not for a worker


def test_variables_that_reach_the_worker_anyway_change_nothing(deployed: Deployed, tmp_path: Path) -> None:
    """Stored before the template, or in the deployment itself (Prefect 3.9 checks a deployment's job
    variables when it is created, not when it is edited: that is for the server's credentials to stop),
    such variables are dropped by the process worker: the command is Prefect's engine, the folder its
    own, no environment added."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.workers.process import ProcessJobConfiguration

    values = {"command": f"touch {tmp_path / 'MARKER'}", "env": {"LD_PRELOAD": "x.so"}, "working_dir": str(tmp_path)}

    async def configuration() -> ProcessJobConfiguration:
        async with get_client() as client:
            pool = await client.read_work_pool(POOL)
            return await ProcessJobConfiguration.from_template_and_values(pool.base_job_template, values, client=client)

    built = anyio.run(configuration)
    assert built.command is None and built.working_dir is None and built.env == {}


def test_a_failed_run_leaves_params_yaml_as_it_was(tmp_path: Path, prefect_api_url: str) -> None:
    """Overrides are written, then the run fails before its first stage (no DVC repository here, which the
    error names with the folder): the file comes back."""
    from flows.pipeline import pipeline_flow

    workspace = make_workspace(tmp_path / "workspace")
    params_file = workspace / "params.yaml"
    before = params_file.read_bytes()
    with pytest.raises(StageFailedError, match=r"DVC cannot work in .*workspace: you are not inside of a DVC"):
        pipeline_flow(str(params_file), overrides={"train.epochs": 3})
    assert params_file.read_bytes() == before


@pytest.fixture
def address_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 that records each path asked for (an internal address for SSRF)."""
    asked: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()


def attacker_workspace(folder: Path, marker: Path, environment: dict[str, str]) -> Path:
    """A folder an attacker filled (as through MLflow's artifact store): a DVC repository whose stages
    all write `marker`, with a params.yaml; returns that params.yaml."""
    folder.mkdir()
    shutil.copy2(PROJECT_ROOT / "params.yaml", folder / "params.yaml")
    stages = "\n".join(f"  {stage}:\n    cmd: touch {marker}" for stage in ("check_params", "download"))
    (folder / "dvc.yaml").write_text(f"stages:\n{stages}\n")
    run(["dvc", "init", "--no-scm", "-q"], folder, environment)
    return folder / "params.yaml"


def wait_for_final_state(flow_run_id: UUID) -> object:
    """The flow run once it has finished, failing the test after RUN_TIMEOUT_SECONDS."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            time.sleep(POLL_SECONDS)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {RUN_TIMEOUT_SECONDS} s")


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if Prefect's graceful shutdown outlasts WORKER_STOP_SECONDS (it can, on two
    busy cores); how the worker stops is not what these tests check."""
    worker.terminate()
    try:
        worker.wait(timeout=WORKER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


@pytest.mark.slow  # end-to-end: four deployment runs, each a flow-run process started by a real worker
def test_runs_naming_another_params_file_an_operator_key_or_a_data_source_are_refused_before_any_stage(
    deployed: Deployed, tmp_path: Path, address_server: tuple[str, list[str]]
) -> None:
    from prefect.client.orchestration import get_client

    address, asked = address_server
    marker = tmp_path / "MARKER"
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.png").write_bytes(b"not for the dataset")
    requests = {
        "params_file": {"params_file": str(attacker_workspace(tmp_path / "attacker", marker, deployed.environment))},
        "data.path": {"overrides": {"data.source": "local", "data.path": str(secret), "data.layout": "folder"}},
        "data.url": {"overrides": {"data.source": "url", "data.url": f"{address}/data.zip", "data.sha256": "0" * 64}},
        # the model server's body limit: the operator's, in params.yaml; refused even beside an allowed key
        "register.max_image_bytes": {"overrides": {"train.epochs": 1, "register.max_image_bytes": 2**40}},
    }
    params_before = (deployed.workspace / "params.yaml").read_bytes()
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
        cwd=tmp_path,
        env={**deployed.environment, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    states = {}
    try:
        with get_client(sync_client=True) as client:
            for refused_key, parameters in requests.items():  # one at a time: the deployment's limit is 1
                flow_run = client.create_flow_run_from_deployment(deployed.deployment_id, parameters=parameters)
                states[refused_key] = wait_for_final_state(flow_run.id).state
    finally:
        stop_worker(worker)
    assert not marker.exists()  # the attacker's stage never ran
    assert asked == []  # the internal address was never fetched
    assert (deployed.workspace / "params.yaml").read_bytes() == params_before
    assert not (deployed.workspace / "data" / "raw").exists() and not (deployed.workspace / "dvc.lock").exists()
    for refused_key, state in states.items():
        message = state.message or ""
        assert state.is_failed() and refused_key in message and " refused: " in message, (refused_key, state)
