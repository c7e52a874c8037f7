"""The whole-file parameter check: values that would only fail in a later stage are refused up front,
and the `check_params` stage runs before every other stage, in `dvc repro` and in the pipeline flow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.runtime.orchestration import PIPELINE_STAGES
from tasks.workspace.config import PARAM_GROUPS, check_params_file, validate_params
from tasks.workspace.errors import ConfigError
from tasks.workspace.params_data import INCEPTION_MIN_SIZE, PrepareParams
from tasks.workspace.params_model import RegisterParams
from tests.conftest import PROJECT_ROOT

CHECK_STAGE = "check_params"
CHECK_TIMEOUT_SECONDS = 60


def project_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def test_the_shipped_params_pass_the_whole_check() -> None:
    assert set(check_params_file(PROJECT_ROOT / "params.yaml")) == set(PARAM_GROUPS)


def test_every_group_of_params_yaml_has_a_model() -> None:
    assert set(project_params()) == set(PARAM_GROUPS)


def test_inception_min_size_is_keras_own_minimum() -> None:
    import keras

    with pytest.raises(ValueError, match=str(INCEPTION_MIN_SIZE)):
        keras.applications.InceptionV3(
            include_top=False, weights=None, input_shape=(INCEPTION_MIN_SIZE - 1, INCEPTION_MIN_SIZE - 1, 3)
        )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"image_size": INCEPTION_MIN_SIZE - 1}, "prepare.image_size"),  # train: InceptionV3 needs 75
        ({"image_size": 16}, "prepare.image_size"),
        ({"test_per_writer": 0}, "prepare.test_per_writer"),  # evaluate: nothing to evaluate on
        ({"val_fraction": 0}, "prepare.val_fraction"),  # train: no validation images
        ({"val_fraction": 0.02, "train_per_writer": 22}, "prepare.train_per_writer"),  # rounds to 0 val
        ({"train_per_writer": 1}, "prepare.train_per_writer"),  # one image cannot be train and val
        ({"calibration_fraction": 0}, "prepare.calibration_fraction"),  # calibrate: empty split
    ],
)
def test_prepare_values_that_a_later_stage_would_reject_are_refused(changes: dict, named: str) -> None:
    params = project_params()
    params["prepare"].update(changes)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        validate_params(params, "params.yaml")


def test_the_smallest_valid_prepare_values_pass() -> None:
    values = {**project_params()["prepare"], "image_size": INCEPTION_MIN_SIZE, "test_per_writer": 1}
    values.update(val_fraction=0.25, train_per_writer=2)  # 0.5 rounds up to one validation image
    assert PrepareParams.model_validate(values).image_size == INCEPTION_MIN_SIZE


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"pooled_layers": ["mixed11"]}, "InceptionV3 blocks among mixed0"),  # Keras has mixed0..mixed10
        ({"pooled_layers": ["mixed7", "mixed7"]}, "distinct"),
        ({"pooled_layers": []}, r"model\.pooled_layers"),
        ({"ink": "white"}, r"model\.ink"),
    ],
)
def test_an_embedding_the_base_cannot_give_is_refused_before_any_stage(changes: dict, named: str) -> None:
    params = project_params()
    params["model"].update(changes)
    with pytest.raises(ConfigError, match=named):
        validate_params(params, "params.yaml")


def test_every_poolable_block_is_a_layer_of_keras_inception_v3() -> None:
    import keras

    from tasks.workspace.params_model import INCEPTION_BLOCK_CHANNELS, INCEPTION_BLOCKS

    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3))
    assert {name: base.get_layer(name).output.shape[-1] for name in INCEPTION_BLOCKS} == INCEPTION_BLOCK_CHANNELS


def test_a_test_metric_for_promotion_is_refused_before_training() -> None:
    params = project_params()
    params["register"]["metric"] = "accuracy"
    with pytest.raises(ConfigError, match=r"register\.metric: .*not a selection metric"):
        validate_params(params, "params.yaml")
    assert RegisterParams.model_validate({**params["register"], "metric": "selection_eer_skilled"})


def test_every_problem_of_the_file_is_listed_at_once() -> None:
    params = project_params()
    del params["calibrate"]
    params["trian"] = {"epochs": 3}
    params["train"]["epochs"] = -5
    params["prepare"]["image_size"] = "big"
    with pytest.raises(ConfigError) as raised:
        validate_params(params, "params.yaml")
    message = str(raised.value)
    for fragment in (
        "calibrate: missing parameter group",
        "trian: unknown parameter group",
        "train.epochs",
        "prepare.image_size",
    ):
        assert fragment in message


def test_the_check_stage_comes_first_and_reads_every_group() -> None:
    stages = dvc_stages()
    check = stages[CHECK_STAGE]
    assert check["params"] == list(PARAM_GROUPS)
    marker = next(iter(check["outs"][0]))
    assert marker in stages["download"]["deps"]  # download, and so every later stage, is downstream
    assert PIPELINE_STAGES[0] == CHECK_STAGE and set(PIPELINE_STAGES) == set(stages)


def run_check(workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.check_params"],
        cwd=workspace,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_SECONDS,
    )


def test_the_check_entry_point_writes_a_fixed_marker_or_one_error(tmp_path: Path) -> None:
    params_file = Path(shutil.copy2(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml"))
    marker = tmp_path / "data" / "params_check.json"

    assert run_check(tmp_path).returncode == 0
    first = marker.read_bytes()
    assert json.loads(first) == {"params_valid": True}
    params_file.write_text(params_file.read_text().replace("epochs: 100", "epochs: 7"))
    assert run_check(tmp_path).returncode == 0
    assert marker.read_bytes() == first  # other values, same bytes: DVC reruns nothing downstream

    marker.unlink()
    params_file.write_text(params_file.read_text().replace("image_size: 150", "image_size: 40"))
    failed = run_check(tmp_path)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: ") and "prepare.image_size" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not marker.exists()


def test_a_missing_weights_file_is_refused_before_any_stage(tmp_path: Path) -> None:
    params_file = Path(shutil.copy2(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml"))
    params_file.write_text(params_file.read_text().replace("weights: none ", "weights: weights/base.h5 "))
    with pytest.raises(ConfigError, match=r"model\.weights: .*weights/base\.h5 does not exist"):
        check_params_file(params_file)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "base.h5").write_bytes(b"")
    assert check_params_file(params_file)["model"].weights == "weights/base.h5"
