"""Typed, validated parameters read from `params.yaml`.

Only flow entry points call `load_params`; the core functions in `tasks/` receive these objects
(or plain values taken from them). Each stage validates just the groups it reads, matching the
keys that its `dvc.yaml` stage declares, so a stage never depends on parameters it ignores. The
groups are defined in `tasks.workspace.params_data` (data stages) and `tasks.workspace.params_model` (model stages);
this module reads `params.yaml` and validates them, one group or all at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from pydantic import BaseModel, ValidationError

from tasks.workspace.errors import ConfigError
from tasks.workspace.params_data import (
    DataParams,
    DownloadParams,
    LayoutParams,
    PrepareParams,
    StrictModel,
    SyntheticParams,
)
from tasks.workspace.params_model import (
    AugmentParams,
    CalibrateParams,
    EnrolParams,
    EvaluateParams,
    ModelParams,
    RegisterParams,
    TrackingParams,
    TrainParams,
    weights_file,
)

GroupModel = TypeVar("GroupModel", bound=BaseModel)


def read_params_file(params_file: Path) -> dict[str, Any]:
    """Read `params.yaml` into a dict, with an error that names the file and the fix."""
    if not params_file.is_file():
        raise ConfigError(
            f"{params_file}: parameter file not found. Run from the project root, or copy "
            "params.yaml from the repository."
        )
    try:
        content = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{params_file}: not valid YAML ({error})") from error
    if not isinstance(content, dict):
        raise ConfigError(f"{params_file}: expected a mapping of parameter groups at the top level")
    return content


def parse_group(params: dict[str, Any], group: str, model: type[GroupModel], source: str) -> GroupModel:
    """Validate one parameter group; errors list each bad key as `group.key: reason`."""
    if group not in params or params[group] is None:
        raise ConfigError(f"{source}: missing parameter group '{group}'. Add it (see README, Parameters).")
    try:
        return model.model_validate(params[group])
    except ValidationError as error:
        raise ConfigError(f"{source}: invalid parameters\n" + "\n".join(validation_problems(error, group))) from error


def validation_problems(error: ValidationError, group: str) -> list[str]:
    """Each problem of a failed group validation as an indented `group.key: reason` line."""
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in (group, *item["loc"]))
        reason = "missing: add it" if item["type"] == "missing" else item["msg"]
        problems.append(f"  {location}: {reason}")
    return problems


def load_group(params_file: Path, group: str, model: type[GroupModel]) -> GroupModel:
    """Read `params_file` and validate the parameter group `group` with `model`."""
    return parse_group(read_params_file(params_file), group, model, str(params_file))


def parse_layout(params: dict[str, Any], source: str) -> str:
    """Validate and return `data.layout`, ignoring the download-only keys of the `data` group."""
    return parse_group(params, "data", LayoutParams, source).layout


# Every parameter group of params.yaml and its model: what `validate_params` checks as a whole.
PARAM_GROUPS: dict[str, type[StrictModel]] = {
    "data": DataParams,
    "download": DownloadParams,
    "synthetic": SyntheticParams,
    "prepare": PrepareParams,
    "model": ModelParams,
    "augment": AugmentParams,
    "train": TrainParams,
    "tracking": TrackingParams,
    "evaluate": EvaluateParams,
    "calibrate": CalibrateParams,
    "register": RegisterParams,
    "enrol": EnrolParams,
}


def validate_params(params: dict[str, Any], source: str) -> dict[str, StrictModel]:
    """Validate every group of `PARAM_GROUPS` at once, listing all problems in one error.

    DVC deletes a stage's outputs before the stage's command reads its parameters, so a bad value
    would cost the last good outputs; the `check_params` stage and the pipeline flow's overrides
    call this first, before anything is removed or written. Unknown groups are refused like keys.
    """
    problems = [
        f"  {group}: unknown parameter group (known: {', '.join(PARAM_GROUPS)})"
        for group in params
        if group not in PARAM_GROUPS
    ]
    validated: dict[str, StrictModel] = {}
    for group, model in PARAM_GROUPS.items():
        if params.get(group) is None:
            problems.append(f"  {group}: missing parameter group: add it (see README, Parameters)")
            continue
        try:
            validated[group] = model.model_validate(params[group])
        except ValidationError as error:
            problems.extend(validation_problems(error, group))
    if problems:
        raise ConfigError(f"{source}: invalid parameters\n" + "\n".join(problems))
    return validated


def check_params(values: Any, source: str, root: Path) -> dict[str, StrictModel]:
    """Validate all of a parameter document (`validate_params`) read from `source` in workspace
    `root`, and check that a weights file named by `model.weights` exists (train would otherwise
    fail on it after prepare reran)."""
    groups = validate_params(values, source)
    model = cast(ModelParams, groups["model"])
    path = weights_file(model.weights, root)
    if path is not None and not path.is_file():
        raise ConfigError(
            f"{source}: model.weights: {path} does not exist. Put the InceptionV3 weights file there, "
            "or set model.weights to imagenet (downloaded once) or none (untrained base)."
        )
    return groups


def check_params_file(params_file: Path) -> dict[str, StrictModel]:
    """Read `params_file` and check all of it (`check_params`) before any stage runs."""
    return check_params(read_params_file(params_file), str(params_file), params_file.resolve().parent)
