"""Parameter validation: missing files, groups and keys, and per-source requirements, each named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.workspace.config import load_group, parse_group, parse_layout
from tasks.workspace.errors import ConfigError
from tasks.workspace.params_data import DataParams, PrepareParams
from tests.conftest import PROJECT_ROOT


def project_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def test_the_shipped_params_are_valid() -> None:
    params = project_params()
    assert parse_group(params, "data", DataParams, "params.yaml").source == "synthetic"
    assert parse_group(params, "prepare", PrepareParams, "params.yaml").test_per_writer == 5
    assert parse_layout(params, "params.yaml") == "utsig"


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: parameter file not found"):
        load_group(tmp_path / "nowhere.yaml", "prepare", PrepareParams)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("prepare: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_group(path, "prepare", PrepareParams)


def test_missing_group_and_missing_key_are_named() -> None:
    params = project_params()
    with pytest.raises(ConfigError, match="missing parameter group 'prepare'"):
        parse_group({"data": params["data"]}, "prepare", PrepareParams, "params.yaml")
    del params["prepare"]["image_size"]
    with pytest.raises(ConfigError, match=r"prepare\.image_size: missing"):
        parse_group(params, "prepare", PrepareParams, "params.yaml")


def test_unknown_key_and_bad_value_are_named() -> None:
    params = project_params()
    params["prepare"]["imagesize"] = 10
    params["prepare"]["val_fraction"] = 1.5
    with pytest.raises(ConfigError) as caught:
        parse_group(params, "prepare", PrepareParams, "params.yaml")
    assert "prepare.imagesize" in str(caught.value)
    assert "prepare.val_fraction" in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"source": "url", "url": "https://example.org/a.zip"}, "sha256"),
        ({"source": "url", "url": "ftp://example.org/a.zip", "sha256": "0" * 64}, "http"),
        ({"source": "url", "url": "https://example.org/a.zip", "sha256": "z" * 64}, "hexadecimal"),
        ({"source": "local"}, "data.path"),
        ({"source": "gdrive"}, "gdrive_id"),
        ({"source": "kaggle"}, "kaggle_handle"),
        ({"source": "ftp"}, "data.source"),
    ],
)
def test_each_source_requires_its_fields(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_group({"data": {"layout": "utsig", **fields}}, "data", DataParams, "params.yaml")


def test_augmentation_presets_fill_what_is_not_given_and_keys_override_them() -> None:
    from tasks.workspace.params_model import AUGMENT_PRESETS, AugmentParams

    shipped = parse_group(project_params(), "augment", AugmentParams, "params.yaml")
    assert shipped.preset == "signature" and shipped.horizontal_flip is False
    assert shipped.model_dump(exclude={"preset"}) == AUGMENT_PRESETS["signature"]
    reference = AugmentParams.model_validate({"preset": "reference"})
    assert reference.horizontal_flip is True and reference.rotation_degrees == 20.0
    overridden = AugmentParams.model_validate({"preset": "reference", "horizontal_flip": False})
    assert overridden.horizontal_flip is False and overridden.rotation_degrees == 20.0
    with pytest.raises(ConfigError, match=r"augment\.preset"):
        parse_group({"augment": {"preset": "mirror"}}, "augment", AugmentParams, "params.yaml")


def test_model_head_and_verifier_regularization_are_validated() -> None:
    from tasks.workspace.params_model import ModelParams

    params = project_params()
    assert parse_group(params, "model", ModelParams, "params.yaml").head == "ridge"
    params["model"].update(head="deep", verifier_regularization=0)
    with pytest.raises(ConfigError) as caught:
        parse_group(params, "model", ModelParams, "params.yaml")
    assert "model.head" in str(caught.value) and "model.verifier_regularization" in str(caught.value)
