"""Parameter groups of the model stages (`model`, `augment`, `train`, `tracking`, `evaluate`, `calibrate`,
`register`), of `sigpipe enrol` / `remove` (`enrol`), and the file that `model.weights` names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tasks.workspace.params_data import StrictModel

# register.metric must be one of evaluate's selection metrics (measured without the test split).
SELECTION_METRIC_PREFIX = "selection_"
WEIGHTS_KEYWORDS = ("imagenet", "none")  # model.weights values that name no file
# InceptionV3's blocks whose outputs may be pooled into the embedding (Keras' layer names), with their
# output channels (a test checks them against Keras).
INCEPTION_BLOCK_CHANNELS = {
    "mixed0": 256,
    "mixed1": 288,
    "mixed2": 288,
    "mixed3": 768,
    "mixed4": 768,
    "mixed5": 768,
    "mixed6": 768,
    "mixed7": 768,
    "mixed8": 1280,
    "mixed9": 2048,
    "mixed10": 2048,
}
INCEPTION_BLOCKS = tuple(INCEPTION_BLOCK_CHANNELS)
Ink = Literal["bright", "dark"]  # model.ink: the scan's negative fed to the base, or the scan as it is


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
    is the L2 penalty of each writer's ridge classifier (`tasks.model.verifier`); `verifier_whitening`
    (0: off) whitens the embeddings by the within-writer covariance first, its value the ridge
    added to that covariance relative to its mean eigenvalue.

    The embedding (`tasks.model.embedding_spec.EmbeddingSpec`) is the global average of each block in
    `pooled_layers`, concatenated; `ink: bright` feeds the base the negative of the scan (ink high,
    paper low), `dark` the scan as it is. Both were chosen by bench/head_selection.py's rule.
    """

    weights: str
    ink: Ink
    pooled_layers: list[str] = Field(min_length=1)
    head: Literal["ridge", "linear", "mlp"]
    dense_units: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    standardize_features: bool
    verifier_regularization: float = Field(gt=0)
    verifier_whitening: float = Field(default=0.0, ge=0)

    @field_validator("pooled_layers")
    @classmethod
    def _check_pooled_layers(cls, layers: list[str]) -> list[str]:
        """InceptionV3 block names, each once."""
        unknown = [layer for layer in layers if layer not in INCEPTION_BLOCKS]
        if unknown or len(set(layers)) != len(layers):
            raise ValueError(
                f"model.pooled_layers must list distinct InceptionV3 blocks among {', '.join(INCEPTION_BLOCKS)}; "
                f"got {layers}"
            )
        return layers

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


class EnrolParams(StrictModel):
    """What `sigpipe enrol` asks of a new writer's references, and when its version may become champion.

    A reference is refused when its shorter side is below `min_reference_side` pixels, or when the
    share of its pixels that are ink (Otsu's dark class, as `prepare` finds it) lies outside
    [`min_ink_fraction`, `max_ink_fraction`]: signatures on paper are a few percent to about 20%
    ink, a photo, a filled form or a page of noise 40% or more (docs/enrolment.md). The new version
    becomes champion only when the writers already enrolled lose at most `tolerance` of
    identification accuracy and gain at most `tolerance` of FRR on their validation genuine images.
    """

    min_references: int = Field(ge=1)
    tolerance: float = Field(ge=0, le=1)
    min_reference_side: int = Field(ge=1)
    min_ink_fraction: float = Field(ge=0, lt=1)
    max_ink_fraction: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _check_ink_range(self) -> EnrolParams:
        """An empty ink range would refuse every reference."""
        if self.min_ink_fraction >= self.max_ink_fraction:
            raise ValueError(
                f"enrol.min_ink_fraction {self.min_ink_fraction} must be below enrol.max_ink_fraction "
                f"{self.max_ink_fraction}"
            )
        return self
