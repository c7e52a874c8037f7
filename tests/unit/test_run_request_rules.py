"""What a deployment run request may ask for: only the workspace's own params.yaml, no data source the
operator has not allowed, a work pool whose template takes no command, folder or environment, and a
params.yaml that a refused or failed run leaves byte for byte as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError
from tasks.orchestration import (
    ALLOWED_LOCAL_ROOTS_VARIABLE,
    ALLOWED_URL_HOSTS_VARIABLE,
    SourcePolicy,
    apply_overrides,
    check_run_params_file,
    check_source_overrides,
    overrides_applied,
)
from tests.conftest import PROJECT_ROOT

POOL_TEMPLATE_NAME = "flows/work_pool.json"  # as the Makefile and flows/team.py name it, from the project root
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
        check_source_overrides(overrides, params_file, policy or SourcePolicy())
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
    check_source_overrides({"data.layout": "utsig", "train.epochs": 2}, params_file, SourcePolicy())
    check_source_overrides({"model.weights": "imagenet", "prepare.image_size": 80}, params_file, SourcePolicy())


def test_an_allowed_local_root_admits_folders_inside_it_only(params_file: Path, tmp_path: Path) -> None:
    allowed = tmp_path / "datasets"
    (allowed / "utsig").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (allowed / "link").symlink_to(tmp_path / "secret")
    policy = SourcePolicy.from_environment({ALLOWED_LOCAL_ROOTS_VARIABLE: f"/nowhere:{allowed}"})
    local = {"data.source": "local", "data.layout": "folder"}
    check_source_overrides({**local, "data.path": str(allowed / "utsig")}, params_file, policy)
    for path in (allowed / "link", allowed / ".." / "secret", tmp_path / "secret"):
        assert "data.path:" in refusal({**local, "data.path": str(path)}, params_file, policy)


def test_an_allowed_host_admits_addresses_on_it_only(params_file: Path) -> None:
    policy = SourcePolicy.from_environment({ALLOWED_URL_HOSTS_VARIABLE: "Data.Example.org, drive.google.com"})
    url = {"data.source": "url", "data.sha256": SHA256}
    check_source_overrides({**url, "data.url": "https://data.example.org/utsig.zip"}, params_file, policy)
    check_source_overrides({"data.source": "gdrive", "data.gdrive_id": "abc"}, params_file, policy)
    message = refusal({**url, "data.url": "http://user:token@127.0.0.1:8080/x.zip?key=secret"}, params_file, policy)
    assert "127.0.0.1" in message and "token" not in message and "secret" not in message
    assert "data.source" in refusal({"data.source": "kaggle", "data.kaggle_handle": "o/d"}, params_file, policy)


def test_a_weights_path_must_lie_in_an_allowed_root(params_file: Path, tmp_path: Path) -> None:
    message = refusal({"model.weights": "/etc/inception.h5"}, params_file)
    assert message.startswith("override model.weights refused:") and ALLOWED_LOCAL_ROOTS_VARIABLE in message
    (tmp_path / "weights").mkdir()
    policy = SourcePolicy.from_environment({ALLOWED_LOCAL_ROOTS_VARIABLE: str(tmp_path / "weights")})
    check_source_overrides({"model.weights": str(tmp_path / "weights" / "inception.h5")}, params_file, policy)


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
    makefile_lines = [
        line for line in (PROJECT_ROOT / "Makefile").read_text().splitlines() if "work-pool create" in line
    ]
    assert len(makefile_lines) == 1 and f"--base-job-template {POOL_TEMPLATE_NAME} " in makefile_lines[0]
    team = (PROJECT_ROOT / "flows" / "team.py").read_text()
    assert team.count('"--base-job-template",') == 1 and f'"{POOL_TEMPLATE_NAME}",' in team
