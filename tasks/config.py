"""Typed, validated parameters read from `params.yaml`.

Only flow entry points call `load_params`; the core functions in `tasks/` receive these objects
(or plain values taken from them). Each stage validates just the groups it reads, matching the
keys that its `dvc.yaml` stage declares, so a stage never depends on parameters it ignores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import ConfigError

DataSource = Literal["url", "gdrive", "kaggle", "local", "synthetic"]
DataLayout = Literal["utsig", "utsig_crop", "cedar", "folder"]
# Keras' InceptionV3 (the frozen base) refuses inputs smaller than 75 x 75 pixels.
INCEPTION_MIN_SIZE = 75
# val_fraction * train_per_writer at or above this rounds (halves up) to one validation signature.
MIN_VALIDATION_SHARE = 0.5
# register.metric must be one of evaluate's selection metrics (measured without the test split).
SELECTION_METRIC_PREFIX = "selection_"


class StrictModel(BaseModel):
    """Base for parameter groups: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(StrictModel):
    """Where the dataset comes from (`source`) and how its files are laid out (`layout`)."""

    source: DataSource
    layout: DataLayout
    url: str | None = None
    sha256: str | None = None
    path: str | None = None
    gdrive_id: str | None = None
    kaggle_handle: str | None = None

    @model_validator(mode="after")
    def _check_source_fields(self) -> DataParams:
        """Each source needs its own field; say which one and how to fill it."""
        if self.source == "url":
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError("data.url must be an http(s) address when data.source is 'url'")
            if not self.sha256 or len(self.sha256) != 64:
                raise ValueError(
                    "data.sha256 (64 hex digits) is required when data.source is 'url'; "
                    "compute it with `sha256sum <archive>`"
                )
        if self.sha256 is not None:
            try:
                int(self.sha256, 16)
            except ValueError as error:
                raise ValueError(f"data.sha256 is not hexadecimal: {self.sha256!r}") from error
        if self.source == "local" and not self.path:
            raise ValueError("data.path (an archive or a folder) is required when data.source is 'local'")
        if self.source == "gdrive" and not self.gdrive_id:
            raise ValueError("data.gdrive_id is required when data.source is 'gdrive'")
        if self.source == "kaggle" and not self.kaggle_handle:
            raise ValueError("data.kaggle_handle (owner/dataset) is required when data.source is 'kaggle'")
        return self


class DownloadParams(StrictModel):
    """How hard the HTTP download tries before it gives up, and the largest archive it extracts.

    The archive limits (checked from the headers before anything is written, and again on the
    bytes actually written) stop a zip bomb: `max_extracted_bytes` in all, `max_archive_members`
    entries, and `max_compression_ratio` uncompressed bytes per compressed byte (per member for
    zip, for the whole archive for tar; sizes under 1 MiB are exempt).
    """

    retries: int = Field(ge=0)
    backoff_seconds: float = Field(ge=0)
    timeout_seconds: float = Field(gt=0)
    chunk_bytes: int = Field(gt=0)
    max_extracted_bytes: int = Field(gt=0)
    max_archive_members: int = Field(gt=0)
    max_compression_ratio: float = Field(ge=1)


class SyntheticParams(StrictModel):
    """Size and seed of the generated UTSig-shaped dataset used by the demo and the tests."""

    seed: int
    writers: int = Field(ge=1)
    genuine_per_writer: int = Field(ge=1)
    skilled_per_writer: int = Field(ge=0)
    simple_per_writer: int = Field(ge=0)
    opposite_per_writer: int = Field(ge=0)
    width: int = Field(ge=32)
    height: int = Field(ge=32)


class PrepareParams(StrictModel):
    """Preprocessing and split rules of the `prepare` stage.

    Bounds that only later stages would hit are checked here, before `prepare` reruns: the image
    side InceptionV3 needs (train), a test split (evaluate), validation images (train's early
    stopping, calibrate's temperature) and a calibration split (calibrate's threshold).
    """

    image_size: int = Field(ge=INCEPTION_MIN_SIZE)
    test_per_writer: int = Field(ge=1)
    train_per_writer: int = Field(ge=2)
    val_fraction: float = Field(gt=0, lt=1)
    calibration_fraction: float = Field(gt=0, le=1)
    unenrolled_writers: float = Field(ge=0, lt=1)
    seed: int
    working_max_side: int = Field(ge=64)
    blur_radius: float = Field(ge=0)
    min_contrast: int = Field(ge=1, le=255)
    max_ink_fraction: float = Field(gt=0, le=1)
    min_side_pixels: int = Field(ge=1)
    margin_fraction: float = Field(ge=0, lt=1)
    workers: int = Field(ge=0)

    @model_validator(mode="after")
    def _check_validation_quota(self) -> PrepareParams:
        """At least one validation signature per writer: `val_fraction * train_per_writer` rounds to 1 or more
        (the split rounds halves up), or train fails with "no validation images" after prepare reran."""
        if self.val_fraction * self.train_per_writer < MIN_VALIDATION_SHARE:
            raise ValueError(
                f"prepare.val_fraction {self.val_fraction} of prepare.train_per_writer {self.train_per_writer} "
                "leaves no validation signature per writer (early stopping and calibration need them): raise "
                f"either so that their product is at least {MIN_VALIDATION_SHARE}"
            )
        return self


WEIGHTS_KEYWORDS = ("imagenet", "none")  # model.weights values that name no file


def weights_file(weights: str, root: Path) -> Path | None:
    """The file that `model.weights` names (relative paths from the workspace `root`); None for a keyword."""
    if weights in WEIGHTS_KEYWORDS:
        return None
    path = Path(weights).expanduser()
    return path if path.is_absolute() else root / path


class ModelParams(StrictModel):
    """The classifier: frozen InceptionV3 base, a small trained head, and the writer-dependent verifier.

    `head: ridge` uses the verifier's writer-dependent ridge classifiers as the head (solved
    exactly, no epochs; its logits are the verifier's scores); `head: linear` is softmax
    regression on the (standardised) embedding trained with Adam; `head: mlp` puts a
    Dense(`dense_units`, relu) layer before it (the reference recipe). `verifier_regularization`
    is the L2 penalty of each writer's ridge classifier (`tasks.verifier`); `verifier_whitening`
    (0: off) whitens the embeddings by the within-writer covariance first, its value the ridge
    added to that covariance relative to its mean eigenvalue.
    """

    weights: str
    head: Literal["ridge", "linear", "mlp"]
    dense_units: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    standardize_features: bool
    verifier_regularization: float = Field(gt=0)
    verifier_whitening: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _check_weights(self) -> ModelParams:
        """`imagenet`, `none`, or a path ending in .h5 / .keras / .weights.h5."""
        if self.weights not in WEIGHTS_KEYWORDS and not self.weights.endswith((".h5", ".keras")):
            raise ValueError(
                f"model.weights must be 'imagenet', 'none' or a path to a .h5 weights file, not {self.weights!r}"
            )
        return self


AUGMENT_PRESETS: dict[str, dict[str, object]] = {
    # Mild jitter of a scan: a signature is written a little rotated, shifted and scaled, never
    # mirrored. Sizes chosen on CEDAR's validation and calibration data (bench/README.md, quality).
    "signature": {
        "rotation_degrees": 2.0,
        "zoom": 0.02,
        "width_shift": 0.02,
        "height_shift": 0.02,
        "shear_degrees": 0.0,
        "horizontal_flip": False,
        "fill_mode": "constant",
    },
    # The seed project's Keras ImageDataGenerator settings, to reproduce and compare with it.
    "reference": {
        "rotation_degrees": 20.0,
        "zoom": 0.05,
        "width_shift": 0.05,
        "height_shift": 0.05,
        "shear_degrees": 0.05,
        "horizontal_flip": True,
        "fill_mode": "nearest",
    },
}


class AugmentParams(StrictModel):
    """Augmentation of training images: a named preset, and any of its values overridden by key.

    `preset: signature` (the default) is mild geometric jitter with no flips; `preset: reference`
    is the seed project's Keras ImageDataGenerator recipe (horizontal flips, +-20 degrees). A key
    given next to the preset replaces the preset's value. `rotation_degrees` and `shear_degrees`
    are angles, as in ImageDataGenerator (whose `shear_range` is in degrees); `zoom` and the
    shifts are fractions of the image size.
    """

    preset: Literal["signature", "reference"] = "signature"
    rotation_degrees: float = Field(ge=0, le=180)
    zoom: float = Field(ge=0, lt=1)
    width_shift: float = Field(ge=0, lt=1)
    height_shift: float = Field(ge=0, lt=1)
    shear_degrees: float = Field(ge=0, lt=90)
    horizontal_flip: bool
    fill_mode: Literal["nearest", "reflect", "wrap", "constant"]

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, values: Any) -> Any:
        """Take every key not given from the named preset (unknown presets are left to field validation)."""
        if not isinstance(values, dict):
            return values
        preset = AUGMENT_PRESETS.get(values.get("preset", "signature"), {})
        return {**preset, **values}


class TrainParams(StrictModel):
    """How the head is trained: mode, schedule, hardware use."""

    mode: Literal["cached", "online"]
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    patience: int = Field(ge=1)
    seed: int
    augmented_views: int = Field(ge=0)
    embed_batch_size: int = Field(ge=1)
    mixed_precision: Literal["auto", "on", "off"]
    jit_compile: bool
    distribute: Literal["auto", "none", "mirrored"]


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


class LayoutParams(BaseModel):
    """Just `data.layout`: what the `prepare` stage reads of the `data` group."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    layout: DataLayout


def parse_layout(params: dict[str, Any], source: str) -> str:
    """Validate and return `data.layout`, ignoring the download-only keys of the `data` group."""
    return parse_group(params, "data", LayoutParams, source).layout


class TrackingParams(StrictModel):
    """Where runs are logged: the MLflow experiment (the store comes from paths or MLFLOW_TRACKING_URI)."""

    experiment: str = Field(min_length=1)


class EvaluateParams(StrictModel):
    """How the held-out images' scores are summarised."""

    top_k: int = Field(ge=1)
    partitions: int = Field(ge=2)
    partition_seed: int


class CalibrateParams(StrictModel):
    """How the "unknown" threshold is fitted, and the reference's fixed threshold reported beside it."""

    objective: Literal["target_far", "eer"]
    target_far: float = Field(gt=0, lt=1)
    reference_threshold: float = Field(gt=0, lt=1)


class RegisterParams(StrictModel):
    """Where the packaged model is registered and how a new version is judged."""

    model_name: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    top_k: int = Field(ge=1)
    # Limits of the packaged model on each input image (README, Registry and inference): pixels
    # declared by the header, checked before decoding, and bytes of the encoded file. The default
    # 25 Mpx holds a whole A4/Letter page at 500 dpi (24 Mpx), far more than a signature (UTSig's
    # 600-dpi scans are a few Mpx, CEDAR's under 0.2), and is 3.6x below Pillow's 89 Mpx bomb
    # warning: a 25 Mpx RGBA image decodes to 100 MB, where a 9400x9400 one cost 1.5 GB a request.
    max_image_pixels: int = Field(ge=1)
    max_image_bytes: int = Field(ge=1)

    @field_validator("metric")
    @classmethod
    def _check_selection_metric(cls, metric: str) -> str:
        """A `selection_*` key of metrics/evaluate_details.json, checked before train, evaluate and calibrate."""
        if not metric.startswith(SELECTION_METRIC_PREFIX):
            raise ValueError(
                f"'{metric}' is not a selection metric: versions are compared on validation and calibration "
                f"data, never on test. Use a '{SELECTION_METRIC_PREFIX}*' key of metrics/evaluate_details.json "
                f"(e.g. {SELECTION_METRIC_PREFIX}accuracy or {SELECTION_METRIC_PREFIX}eer_skilled)"
            )
        return metric


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
