"""What a deployment run request may ask for: only the workspace's own params.yaml, overrides of the
allow-listed keys only (RUN_REQUEST_KEYS), no data source the operator has not allowed (judged on the
parameters the run writes, inside the workspace lock), a work pool whose template takes no command,
folder or environment, and a params.yaml that a refused or failed run leaves byte for byte as it was."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tasks.runtime.run_requests import (
    ALLOWED_LOCAL_ROOTS_VARIABLE,
    ALLOWED_URL_HOSTS_VARIABLE,
    RUN_REQUEST_KEYS,
    SourcePolicy,
    apply_overrides,
    check_run_overrides,
    check_run_params_file,
    overrides_applied,
)
from tasks.workspace.config import PARAM_GROUPS
from tasks.workspace.errors import ConfigError
from tests.conftest import PROJECT_ROOT

POOL_TEMPLATE_NAME = "flows/work_pool.json"  # as tasks/services/team_servers.py names it, from the project root
POOL_TEMPLATE = PROJECT_ROOT / POOL_TEMPLATE_NAME
LOCKED_JOB_VARIABLES = ("command", "env", "working_dir")
SHA256 = "0" * 64


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """The project's params.yaml (synthetic data) in a workspace folder of its own."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    return Path(shutil.copy2(PROJECT_ROOT / "params.yaml", workspace / "params.yaml"))


def refusal(overrides: dict[str, object], params_file: Path, policy: SourcePolicy | None = None) -> str:
    """The one-line refusal of `overrides` under `policy` (the default: nothing allowed)."""
    before = params_file.read_bytes()
    with pytest.raises(ConfigError) as refused:
        check_run_overrides(overrides, params_file, policy or SourcePolicy())
    assert params_file.read_bytes() == before
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_only_the_workspaces_own_params_file_is_accepted(params_file: Path, tmp_path: Path) -> None:
    root = params_file.parent
    assert check_run_params_file("params.yaml", root) == params_file.resolve()
    assert check_run_params_file(str(params_file), root) == params_file.resolve()
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    shutil.copy2(params_file, elsewhere / "params.yaml")
    for requested in (str(elsewhere / "params.yaml"), "../attacker/params.yaml", str(root / "data" / "params.yaml")):
        with pytest.raises(ConfigError, match=r"params_file .* refused: a deployment run uses its workspace's own"):
            check_run_params_file(requested, root)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"data.source": "local", "data.path": "/etc", "data.layout": "folder"}, "data.path"),
        ({"data.source": "local", "data.path": "../../outside"}, "data.path"),
        ({"data.source": "url", "data.url": "http://169.254.169.254/latest.zip", "data.sha256": SHA256}, "data.url"),
        ({"data.source": "gdrive", "data.gdrive_id": "abc"}, "data.source"),
        ({"data.source": "kaggle", "data.kaggle_handle": "owner/set"}, "data.source"),
        ({"data.source": "elsewhere"}, "data.source"),
    ],
)
def test_data_source_overrides_are_refused_by_default(
    params_file: Path, overrides: dict[str, object], key: str
) -> None:
    message = refusal(overrides, params_file)
    assert message.startswith(f"override {', '.join(overrides)} refused: {key}")
    if key != "data.source" or overrides["data.source"] in ("gdrive", "kaggle"):
        assert ALLOWED_LOCAL_ROOTS_VARIABLE in message or ALLOWED_URL_HOSTS_VARIABLE in message


def test_a_key_of_the_data_group_is_refused_when_the_source_it_leaves_is_not_allowed(params_file: Path) -> None:
    """The team's own local dataset, read with another layout: the source is checked, not just the keys set."""
    apply_overrides(params_file, {"data.source": "local", "data.path": "/srv/datasets/utsig"})
    assert "data.path: /srv/datasets/utsig" in refusal({"data.layout": "folder"}, params_file)


def test_overrides_that_leave_the_generated_dataset_or_read_nothing_are_accepted(params_file: Path) -> None:
    check_run_overrides({"data.layout": "utsig", "train.epochs": 2}, params_file, SourcePolicy())
    check_run_overrides({"model.weights": "imagenet", "prepare.image_size": 80}, params_file, SourcePolicy())


def test_an_allowed_local_root_admits_folders_inside_it_only(params_file: Path, tmp_path: Path) -> None:
    allowed = tmp_path / "datasets"
    (allowed / "utsig").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (allowed / "link").symlink_to(tmp_path / "secret")
    policy = SourcePolicy.from_environment({ALLOWED_LOCAL_ROOTS_VARIABLE: f"/nowhere:{allowed}"})
    local = {"data.source": "local", "data.layout": "folder"}
    check_run_overrides({**local, "data.path": str(allowed / "utsig")}, params_file, policy)
    for path in (allowed / "link", allowed / ".." / "secret", tmp_path / "secret"):
        assert "data.path:" in refusal({**local, "data.path": str(path)}, params_file, policy)


def test_an_allowed_host_admits_addresses_on_it_only(params_file: Path) -> None:
    policy = SourcePolicy.from_environment({ALLOWED_URL_HOSTS_VARIABLE: "Data.Example.org, drive.google.com"})
    url = {"data.source": "url", "data.sha256": SHA256}
    check_run_overrides({**url, "data.url": "https://data.example.org/utsig.zip"}, params_file, policy)
    check_run_overrides({"data.source": "gdrive", "data.gdrive_id": "abc"}, params_file, policy)
    message = refusal({**url, "data.url": "http://user:token@127.0.0.1:8080/x.zip?key=secret"}, params_file, policy)
    assert "127.0.0.1" in message and "token" not in message and "secret" not in message
    assert "data.source" in refusal({"data.source": "kaggle", "data.kaggle_handle": "o/d"}, params_file, policy)


def test_a_weights_path_must_lie_in_an_allowed_root(params_file: Path, tmp_path: Path) -> None:
    message = refusal({"model.weights": "/etc/inception.h5"}, params_file)
    assert message.startswith("override model.weights refused:") and ALLOWED_LOCAL_ROOTS_VARIABLE in message
    (tmp_path / "weights").mkdir()
    policy = SourcePolicy.from_environment({ALLOWED_LOCAL_ROOTS_VARIABLE: str(tmp_path / "weights")})
    check_run_overrides({"model.weights": str(tmp_path / "weights" / "inception.h5")}, params_file, policy)


# Keys a deployment run may not set (issue 27, point 3): a threshold that lets forgeries through, the
# promotion rule, the model server's body limits, the registered name, the experiment (and so the
# artifact location), plus a download limit, the data split and the generated dataset.
OPERATOR_KEYS = {
    "calibrate.objective": "target_far",
    "calibrate.target_far": 0.99,
    "calibrate.reference_threshold": 0.01,
    "register.metric": "selection_eer_skilled",
    "register.max_image_bytes": 2**40,
    "register.max_image_pixels": 2**40,
    "register.model_name": "attacker-model",
    "tracking.experiment": "attacker-experiment",
    "download.max_extracted_bytes": 2**50,
    "prepare.test_per_writer": 1,
    "synthetic.writers": 2,
    "train.distribute": "mirrored",
}
# Allow-listed keys, each with a value check_params accepts.
RUN_REQUEST_EXAMPLES = {
    "train.epochs": 3,
    "train.seed": 1,
    "train.batch_size": 8,
    "augment.preset": "reference",
    "augment.rotation_degrees": 5.0,
    "model.head": "mlp",
    "model.dense_units": 64,
    "prepare.image_size": 96,
    "evaluate.partitions": 3,
}


def test_the_allow_list_names_known_keys_only() -> None:
    for entry in RUN_REQUEST_KEYS:
        group, _, key = entry.partition(".")
        assert group in PARAM_GROUPS and group not in ("data", "calibrate", "register", "tracking", "download")
        assert key == "*" or key in PARAM_GROUPS[group].model_fields, entry
    assert {entry.partition(".")[0] for entry in RUN_REQUEST_EXAMPLES} <= {
        entry.partition(".")[0] for entry in RUN_REQUEST_KEYS
    }


@pytest.mark.parametrize(("key", "value"), sorted(RUN_REQUEST_EXAMPLES.items()))
def test_an_allow_listed_key_is_set_by_a_deployment_run(params_file: Path, key: str, value: object) -> None:
    check_run_overrides({key: value}, params_file, SourcePolicy())
    assert apply_overrides(params_file, {key: value}, SourcePolicy()) == [f"{key}={value}"]
    group, _, name = key.partition(".")
    assert yaml.safe_load(params_file.read_text())[group][name] == value


@pytest.mark.parametrize(("key", "value"), sorted(OPERATOR_KEYS.items()))
def test_a_key_outside_the_allow_list_is_refused_from_a_deployment_run(
    params_file: Path, key: str, value: object
) -> None:
    """Refused alone or beside allowed keys, early and inside the lock, with one line naming it."""
    message = refusal({"train.epochs": 2, key: value}, params_file)
    assert message.startswith(f"override {key} refused: a deployment run may not change it;")
    assert "the operator changes it in params.yaml (committed) instead" in message
    before = params_file.read_bytes()
    with (
        pytest.raises(ConfigError, match=f"^override {key} refused"),
        overrides_applied(params_file, {key: value}, SourcePolicy()),
    ):
        raise AssertionError("no stage may run")
    assert params_file.read_bytes() == before


def test_a_local_run_sets_any_parameter(params_file: Path) -> None:
    """`python -m flows.pipeline` and a flow called from Python: no policy, no allow-list."""
    local = dict(OPERATOR_KEYS)
    local["data.source"], local["data.path"], local["data.layout"] = "local", "/srv/datasets/utsig", "folder"
    with overrides_applied(params_file, local) as applied:
        assert len(applied) == len(local)
    params = yaml.safe_load(params_file.read_text())
    assert params["register"]["max_image_bytes"] == 2**40 and params["data"]["path"] == "/srv/datasets/utsig"


def test_checked_run_request_restricts_deployment_runs_only(params_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.pipeline as pipeline

    monkeypatch.chdir(params_file.parent)
    overrides = {"calibrate.target_far": 0.99}
    assert pipeline.checked_run_request("params.yaml", overrides) == ("params.yaml", None)  # not a deployment run
    monkeypatch.setattr(pipeline, "deployment", SimpleNamespace(id="a-deployment"))
    for variable in (ALLOWED_LOCAL_ROOTS_VARIABLE, ALLOWED_URL_HOSTS_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigError, match=r"^override calibrate\.target_far refused: "):
        pipeline.checked_run_request("params.yaml", overrides)
    assert pipeline.checked_run_request("params.yaml", {"train.epochs": 2}) == (
        str(params_file.resolve()),
        SourcePolicy(),
    )


def switch_to_local(params_file: Path, path: str = "/srv/datasets/utsig") -> None:
    """What a concurrent local run (not restricted) leaves in params.yaml: the team's own local dataset."""
    apply_overrides(params_file, {"data.source": "local", "data.path": path, "data.layout": "folder"})


def test_a_data_path_is_judged_on_the_source_the_written_file_has(params_file: Path, tmp_path: Path) -> None:
    """Requested while the file says `synthetic`, run after a local run switched it to `local`: the
    document the run would write reads that path, so the run is refused and the file stays as it is."""
    allowed = tmp_path / "datasets"
    allowed.mkdir()
    policy = SourcePolicy(local_roots=(allowed.resolve(),), url_hosts=frozenset({"data.example.org"}))
    request = {"data.path": "/root/x"}
    switch_to_local(params_file)
    before = params_file.read_bytes()
    with (
        pytest.raises(ConfigError, match=r"^override data\.path refused: data\.path: /root/x "),
        overrides_applied(params_file, request, policy),
    ):
        raise AssertionError("no stage may run")
    assert params_file.read_bytes() == before
    # A path in an allowed root, requested under `synthetic`, then the file switched to an address on a
    # host that is not allowed: the source the written file has is judged, not the key the run set.
    params_file.write_bytes(before.replace(b"source: local", b"source: synthetic"))
    check_run_overrides({"data.path": str(allowed)}, params_file, policy)
    apply_overrides(params_file, {"data.source": "url", "data.url": "http://10.0.0.1/x.zip", "data.sha256": SHA256})
    before = params_file.read_bytes()
    with pytest.raises(ConfigError, match=r"^override data\.path refused: data\.url: url source host 10\.0\.0\.1 "):
        apply_overrides(params_file, {"data.path": str(allowed)}, policy)
    assert params_file.read_bytes() == before


def test_a_data_location_a_run_names_is_judged_even_where_the_source_leaves_it_unread(params_file: Path) -> None:
    """Left in params.yaml by a run that succeeds, it would be read once someone switches the source."""
    assert refusal({"data.path": "/root/x"}, params_file).startswith("override data.path refused: data.path: /root/x")
    message = refusal({"data.url": "http://user:token@10.0.0.1/x.zip?sig=secret"}, params_file)
    assert message.startswith("override data.url refused: data.url:") and "10.0.0.1" in message
    assert "token" not in message and "secret" not in message
    check_run_overrides({"data.path": None, "data.url": None}, params_file, SourcePolicy())  # cleared: reads nothing


def test_the_pipeline_flow_judges_the_overrides_inside_the_workspace_lock(
    params_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early check passes (the file says `synthetic`); the local run that held the lock switched the
    source to a folder the operator does not allow: the run is refused before any stage, and the file
    is what that local run left."""
    import flows.pipeline as pipeline

    monkeypatch.chdir(params_file.parent)
    monkeypatch.setattr(pipeline, "deployment", SimpleNamespace(id="a-deployment"))
    for variable in (ALLOWED_LOCAL_ROOTS_VARIABLE, ALLOWED_URL_HOSTS_VARIABLE):
        monkeypatch.delenv(variable, raising=False)

    @contextmanager
    def lock_after_a_local_run(*_: object, **__: object) -> Iterator[None]:
        switch_to_local(params_file)
        yield

    def no_stage(*_: object, **__: object) -> None:
        raise AssertionError("no stage may run")

    monkeypatch.setattr(pipeline, "workspace_lock", lock_after_a_local_run)
    monkeypatch.setattr(pipeline, "bring_all_up_to_date", no_stage)
    overrides = {"data.layout": "utsig", "train.epochs": 2}
    check_run_overrides(overrides, params_file, SourcePolicy())  # as the run was requested
    with pytest.raises(ConfigError, match=r"^override data\.layout refused: data\.path: /srv/datasets/utsig "):
        pipeline.pipeline_flow.fn("params.yaml", overrides)
    assert yaml.safe_load(params_file.read_text())["data"]["layout"] == "folder"  # the local run's, not the request's


def test_the_operator_settings_come_from_the_environment_and_no_override_reaches_them(params_file: Path) -> None:
    assert SourcePolicy.from_environment({}) == SourcePolicy()
    with pytest.raises(ConfigError, match=ALLOWED_LOCAL_ROOTS_VARIABLE):
        SourcePolicy.from_environment({ALLOWED_LOCAL_ROOTS_VARIABLE: "relative/folder"})
    before = params_file.read_bytes()
    for key in ("orchestration.allowed_local_roots", "data.allowed_local_roots", "SIGPIPE_ALLOWED_LOCAL_ROOTS"):
        with pytest.raises(ConfigError, match="no such parameter"):
            apply_overrides(params_file, {key: ["/"]})
    assert params_file.read_bytes() == before


def test_a_failed_run_writes_the_parameter_file_back_byte_for_byte(params_file: Path) -> None:
    original = params_file.read_bytes().replace(b"\n", b"\r\n")  # line ends a rewrite would not keep
    params_file.write_bytes(original)
    with pytest.raises(RuntimeError), overrides_applied(params_file, {"train.epochs": 3}) as applied:
        assert applied == ["train.epochs=3"]
        assert yaml.safe_load(params_file.read_text())["train"]["epochs"] == 3
        raise RuntimeError("a stage failed")
    assert params_file.read_bytes() == original
    with overrides_applied(params_file, {"train.epochs": 3}):
        pass
    assert yaml.safe_load(params_file.read_text())["train"]["epochs"] == 3  # a run that succeeds keeps them


def test_the_work_pool_template_takes_no_command_folder_or_environment() -> None:
    template = json.loads(POOL_TEMPLATE.read_text())
    variables = template["variables"]
    assert variables["additionalProperties"] is False  # the server refuses any other job variable
    for name in LOCKED_JOB_VARIABLES:
        assert name not in template["job_configuration"] and name not in variables["properties"]
    placeholders = {value.strip("{} ") for value in template["job_configuration"].values()}
    assert placeholders == set(variables["properties"])


def test_make_up_and_team_up_create_the_pool_with_that_template() -> None:
    """Both create it through tasks.services.team_servers.deploy_pipeline, the project's one `work-pool create`."""
    from tasks.services import team_servers

    assert team_servers.WORK_POOL_TEMPLATE == POOL_TEMPLATE_NAME
    sources = [PROJECT_ROOT / "Makefile", *sorted((PROJECT_ROOT / "flows").glob("*.py"))]
    sources += sorted((PROJECT_ROOT / "tasks").rglob("*.py"))
    creating = [path.name for path in sources if '"work-pool", "create"' in path.read_text()]
    assert creating == ["team_servers.py"] and "work-pool create" not in (PROJECT_ROOT / "Makefile").read_text()
    assert (
        '"--base-job-template", WORK_POOL_TEMPLATE'
        in (PROJECT_ROOT / "tasks" / "services" / "team_servers.py").read_text()
    )
    for module in ("local_services.py", "team_servers.py"):  # make up's and make team-up's deployments
        assert "deploy_pipeline(" in (PROJECT_ROOT / "tasks" / "services" / module).read_text()
