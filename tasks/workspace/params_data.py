"""Parameter groups of the data stages (`data`, `download`, `synthetic`, `prepare`) and the strict base of every group.

Each group is a frozen pydantic model that refuses unknown keys; `tasks.workspace.config` reads and validates
them from `params.yaml`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DataSource = Literal["url", "gdrive", "kaggle", "local", "synthetic"]
DataLayout = Literal["utsig", "utsig_crop", "cedar", "folder"]
# Keras' InceptionV3 (the frozen base) refuses inputs smaller than 75 x 75 pixels.
INCEPTION_MIN_SIZE = 75
# val_fraction * train_per_writer at or above this rounds (halves up) to one validation signature.
MIN_VALIDATION_SHARE = 0.5


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


class LayoutParams(BaseModel):
    """Just `data.layout`: what the `prepare` stage reads of the `data` group."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    layout: DataLayout
