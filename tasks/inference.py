"""Inference: from image files or bytes to answers, and the MLflow pyfunc model that carries it.

The packaged model holds the trained classifier, the writer-dependent verifier, the `prepare`
stage's preprocessing settings (applied with the same code, `tasks.images`), the calibration
(temperature, threshold) and the writer-id mapping. An answer is the classifier's top writer when
the verifier accepts the claim that this writer signed (its score reaches the calibrated
threshold), else `unknown` with class id = number of writers (the reference's convention); the
confidence is the calibrated probability that the top writer signed (Platt scaling of the
verifier's score, `tasks.calibrate.fit_confidence`), and each top-k writer is listed with the same
probability of its own claim. A calibration written before the confidence was calibrated (no
`confidence_slope`) falls back to the temperature-scaled softmax it had then. Verifying a claim ("did W sign this?")
compares the verifier's score for W with the same threshold; an input row may carry such a claim
(`claimed_writer`, as a bank's cheque names its account holder), answered in the same pass. One
unreadable image gets an error in its own row; the others are still answered.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from tasks.datasets.base import normalise_writer_id
from tasks.errors import ModelInputError
from tasks.images import ImageReadError, NoInkError, PreprocessSettings, preprocess_file
from tasks.model_files import read_calibration, read_model_file, read_preprocess
from tasks.scores import claim_probability, softmax
from tasks.verifier import WriterVerifier, load_verifier

UNKNOWN_WRITER = "unknown"
OUTPUT_COLUMNS = (
    "input",
    "writer",
    "class_id",
    "confidence",
    "verification_score",
    "top_k",
    "claimed_writer",
    "claim_score",
    "claim_accepted",
    "error",
)
# No number for an input that could not be read, and no claim result for a row that claims nobody.
NULLABLE_COLUMNS = ("confidence", "verification_score", "claim_score", "claim_accepted")
PATH_COLUMN = "path"
IMAGE_COLUMN = "image"
CLAIM_COLUMN = "claimed_writer"  # optional input: the writer a row claims signed its image
ARTIFACT_CLASSIFIER = "classifier"
ARTIFACT_CALIBRATION = "calibration"
ARTIFACT_PREPROCESS = "preprocess"
ARTIFACT_VERIFIER = "verifier"
SCORING_BATCH_SIZE = 32
# The model_config key that lets the packaged model open files named in a `path` column. The
# registered model is logged with it off, so `mlflow models serve` never reads a file a client
# names; the local CLI and the Python API load the model with it on.
ACCEPT_PATHS = "accept_paths"
PATHS_REFUSED = (
    "file paths are not accepted by the model server (it never opens a file a client names): "
    f"send the file's bytes base64-encoded in the '{IMAGE_COLUMN}' column"
)
BASE64_CHARACTERS_PER_BYTE = 4 / 3  # base64 writes 4 characters for every 3 bytes
CONFIDENCE_SLOPE = "confidence_slope"  # calibration keys of the Platt scaling of claim scores
CONFIDENCE_INTERCEPT = "confidence_intercept"
# An unknown writer's error lists every id the model knows up to this many, else the closest ones.
MAX_LISTED_WRITERS = 20
CLOSEST_WRITERS = 5


@dataclass(frozen=True)
class InputItem:
    """One image to score: a display name and a path or encoded bytes (or why it has neither)."""

    name: str
    source: Path | bytes | None
    error: str = ""
    claim: str = ""  # the writer this input claims signed it, as the caller names it ("" for none)


@dataclass(frozen=True)
class Answer:
    """The model's answer for one image."""

    input: str
    writer: str
    class_id: int
    confidence: float
    verification_score: float
    top_k: list[tuple[str, float]]
    error: str = ""
    claimed_writer: str = ""  # the model's id of the claimed writer ("" when the input claims nobody)
    claim_score: float = float("nan")  # the verifier's score of that claim
    claim_accepted: bool | None = None  # whether the score reaches the calibrated threshold

    @classmethod
    def failed(cls, name: str, error: str) -> Answer:
        """The answer row of an input that could not be scored: its error, no numbers."""
        return cls(name, "", -1, float("nan"), float("nan"), [], error)

    def as_row(self) -> dict[str, object]:
        """A flat row: `top_k` as a JSON string so every column has a simple type."""
        return {
            "input": self.input,
            "writer": self.writer,
            "class_id": self.class_id,
            "confidence": self.confidence,
            "verification_score": self.verification_score,
            "top_k": json.dumps([[writer, round(probability, 6)] for writer, probability in self.top_k]),
            "claimed_writer": self.claimed_writer,
            "claim_score": self.claim_score,
            "claim_accepted": self.claim_accepted,
            "error": self.error,
        }


def too_large(name: str, size: int, max_bytes: int) -> str:
    """The error of an encoded image above the model's byte limit."""
    return (
        f"{name}: {size} bytes is above the model's limit of {max_bytes} bytes per image "
        "(register.max_image_bytes); send a smaller scan"
    )


def decode_base64(text: str, name: str, max_bytes: int | None = None) -> InputItem:
    """An InputItem from base64 text (HTTP clients send images this way); text that would decode
    to more than `max_bytes` is refused without decoding it."""
    size = math.floor(len(text) / BASE64_CHARACTERS_PER_BYTE)
    if max_bytes is not None and size > max_bytes:
        return InputItem(name, None, too_large(name, size, max_bytes))
    try:
        return InputItem(name, base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError) as error:
        return InputItem(name, None, f"{name}: not valid base64 ({error})")


def bytes_item(data: bytes, name: str, max_bytes: int | None) -> InputItem:
    """An InputItem of encoded image bytes, or an error when they exceed `max_bytes`."""
    if max_bytes is not None and len(data) > max_bytes:
        return InputItem(name, None, too_large(name, len(data), max_bytes))
    return InputItem(name, data)


def path_item(value: object, name: str, accept_paths: bool) -> InputItem:
    """An InputItem of a file path, or (paths not accepted) an error that is the same whether or
    not the file exists: the file is never looked at."""
    if not accept_paths:
        return InputItem(name, None, f"{name}: {PATHS_REFUSED}")
    return InputItem(str(value), Path(str(value)))


def is_missing(value: object) -> bool:
    """An empty cell: None or NaN (what pandas puts in a column a row leaves out)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def frame_items(frame: Any, accept_paths: bool, max_bytes: int | None) -> list[InputItem]:
    """One InputItem per row of a DataFrame: its `image` cell (base64 text or bytes) when set, else
    its `path` cell, with the row's `claimed_writer` when that column is there. Raises
    ModelInputError, naming the columns read, when the frame has neither image nor path."""
    items = frame_images(frame, accept_paths, max_bytes)
    if CLAIM_COLUMN not in frame.columns:
        return items
    claims = ["" if is_missing(claim) else str(claim).strip() for claim in frame[CLAIM_COLUMN].tolist()]
    return [replace(item, claim=claim) for item, claim in zip(items, claims, strict=True)]


def frame_images(frame: Any, accept_paths: bool, max_bytes: int | None) -> list[InputItem]:
    """The image of each row of a DataFrame (`frame_items` without the claims)."""
    if IMAGE_COLUMN not in frame.columns and PATH_COLUMN not in frame.columns:
        expected = f"an '{IMAGE_COLUMN}' column (base64 of each image file's bytes)"
        if accept_paths:
            expected += f" or a '{PATH_COLUMN}' column (image files)"
        raise ModelInputError(
            f"the input has the columns {[str(column) for column in frame.columns]}; the model reads {expected}"
        )
    empty = [None] * len(frame)
    images = frame[IMAGE_COLUMN].tolist() if IMAGE_COLUMN in frame.columns else empty
    paths = frame[PATH_COLUMN].tolist() if PATH_COLUMN in frame.columns else empty
    items = []
    for index, (image, path) in enumerate(zip(images, paths, strict=True)):
        if isinstance(image, bytes):
            items.append(bytes_item(image, f"{IMAGE_COLUMN}[{index}]", max_bytes))
        elif not is_missing(image):
            items.append(decode_base64(str(image), f"{IMAGE_COLUMN}[{index}]", max_bytes))
        elif not is_missing(path):
            items.append(path_item(path, f"{PATH_COLUMN}[{index}]", accept_paths))
        else:
            items.append(
                InputItem(f"row[{index}]", None, f"row {index}: no image (its '{IMAGE_COLUMN}' cell is empty)")
            )
    return items


def items_from(model_input: Any, accept_paths: bool = True, max_bytes: int | None = None) -> list[InputItem]:
    """Normalise what callers pass: a DataFrame with an `image` (base64) or a `path` column, a list
    of paths or of encoded image bytes, or one path.

    `accept_paths` False (the served model) turns every path into an error row without touching
    the file; `max_bytes` caps each encoded image (None: no cap).
    """
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return frame_items(model_input, accept_paths, max_bytes)
    if isinstance(model_input, str | Path):
        return [path_item(model_input, f"{PATH_COLUMN}[0]", accept_paths)]
    return [
        bytes_item(value, f"{IMAGE_COLUMN}[{index}]", max_bytes)
        if isinstance(value, bytes)
        else path_item(value, f"{PATH_COLUMN}[{index}]", accept_paths)
        for index, value in enumerate(model_input)
    ]


def unknown_writer_message(writer: str, classes: Sequence[str], matches: Sequence[str] = ()) -> str:
    """Why `writer` names none of `classes`, with the ids to use instead: the ambiguous `matches`,
    every id when there are few, else the closest ones (difflib), so the fix is on the same line."""
    if matches:
        return f"writer {writer!r} matches several of the model's writers ({', '.join(matches)}): pass one of them"
    if len(classes) <= MAX_LISTED_WRITERS:
        return (
            f"writer {writer!r} is not one the model knows; its {len(classes)} writers are "
            f"{', '.join(classes)}: pass one of them"
        )
    closest = difflib.get_close_matches(normalise_writer_id(writer), classes, n=CLOSEST_WRITERS, cutoff=0.0)
    return (
        f"writer {writer!r} is not one the model knows ({len(classes)} writers); the closest of its ids are "
        f"{', '.join(closest)}: pass one of the model's ids"
    )


def match_writer(writer: str, classes: Sequence[str]) -> str:
    """The model's id of `writer` as the user names it: the id itself, or the one id that the
    dataset adapters' normalisation makes equal (`1`, `01` and `001` are one writer, as the raw
    folder `Genuine/1` becomes the model's `001`). Raises ModelInputError naming the valid ids."""
    if writer in classes:
        return writer
    normalised = normalise_writer_id(writer)
    matches = [name for name in classes if normalise_writer_id(name) == normalised]
    if len(matches) == 1:
        return matches[0]
    raise ModelInputError(unknown_writer_message(writer, classes, matches))


def chunked(values: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` values (the last may be shorter), consumed lazily."""
    chunk: list[Any] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def file_problem(path: Path) -> str:
    """Why the image file `path` cannot be opened ("" when it can): checked before anything is
    loaded, so a mistyped name is reported at once, and again by each input's preprocessing."""
    try:
        with path.open("rb"):
            return ""
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "a folder, not an image file"
    except PermissionError:
        return "cannot be read (permission denied)"
    except OSError as error:
        return f"cannot be read ({error.strerror or type(error).__name__})"


def input_problem(item: InputItem) -> str:
    """The one-line error of an input that is unusable before any decoding ("" when none): its
    own error, or why its file cannot be opened."""
    if item.error:
        return item.error
    if isinstance(item.source, Path) and (problem := file_problem(item.source)):
        return f"{item.name}: {problem}"
    return ""


def preprocess_item(item: InputItem, settings: PreprocessSettings) -> tuple[np.ndarray | None, str]:
    """The preprocessed image of one input, or None and a one-line error naming the input."""
    if problem := input_problem(item):
        return None, problem
    try:
        # an item without a source always carries an error (`input_problem` returned it above)
        return preprocess_file(cast(Path | bytes, item.source), settings, name=item.name).image, ""
    except (ImageReadError, NoInkError) as error:
        return None, str(error)


class SignatureClassifier:
    """The classifier with its verifier, calibration and preprocessing: images in, calibrated answers out."""

    def __init__(
        self,
        classifier: Any,
        verifier: WriterVerifier,
        calibration: dict[str, Any],
        settings: PreprocessSettings,
        top_k: int,
    ) -> None:
        from tasks.model import LogitScorer

        self.scorer = LogitScorer(classifier)
        self.verifier = verifier
        self.classes: list[str] = list(calibration["classes"])
        self.temperature = float(calibration["temperature"])
        self.confidence_slope = calibration.get(CONFIDENCE_SLOPE)
        self.confidence_intercept = calibration.get(CONFIDENCE_INTERCEPT, 0.0)
        self.threshold = float(calibration["threshold"])
        self.unknown_class_id = int(calibration["unknown_class_id"])
        self.settings = settings
        self.top_k = min(top_k, len(self.classes))

    @classmethod
    def from_files(
        cls, classifier_file: Path, verifier_file: Path, calibration_file: Path, preprocess_file_: Path
    ) -> SignatureClassifier:
        """Load the four artifacts a packaged model carries; a missing or unreadable one raises
        ModelFileError naming it."""
        import keras

        classifier = read_model_file(classifier_file, "a Keras model", keras.models.load_model)
        return cls.with_classifier(classifier, verifier_file, calibration_file, preprocess_file_)

    @classmethod
    def with_classifier(
        cls, classifier: Any, verifier_file: Path, calibration_file: Path, preprocess_file_: Path
    ) -> SignatureClassifier:
        """`from_files` for a Keras classifier already in memory (registration has just loaded it)."""
        settings, top_k = read_model_file(preprocess_file_, "the preprocessing settings", read_preprocess)
        return cls(
            classifier,
            read_model_file(verifier_file, "the verifier", load_verifier),
            read_model_file(calibration_file, "the calibration", read_calibration),
            settings,
            top_k,
        )

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated class probabilities and verifier claim scores, (n, writers) each, of
        preprocessed grey images (n, size, size)."""
        outputs = self.scorer.of_grey(images)
        return softmax(outputs.logits, self.temperature), self.verifier.scores(outputs.embeddings)

    def answers(self, items: Sequence[InputItem]) -> list[Answer]:
        """Answer every input; unusable inputs get an error row and do not stop the others.

        Decoding and preprocessing run in threads (Pillow and NumPy release the GIL) and stream
        into the forward pass one batch at a time, so the next batch is being prepared while the
        classifier scores the current one.
        """
        answers: list[Answer] = []
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            prepared = pool.map(lambda item: preprocess_item(item, self.settings), items)
            for chunk in chunked(zip(items, prepared, strict=True), SCORING_BATCH_SIZE):
                answers.extend(self.answer_chunk(chunk))
        return answers

    def answer_chunk(self, chunk: Sequence[tuple[InputItem, tuple[np.ndarray | None, str]]]) -> list[Answer]:
        """Answers for one batch of preprocessed inputs (None images carry their error)."""
        usable = [image for _item, (image, _error) in chunk if image is not None]
        probabilities, claims = self.scores(np.stack(usable)) if usable else (np.zeros((0, 0)), np.zeros((0, 0)))
        rows = iter(zip(probabilities, claims, strict=True))
        return [
            self.answer(item, *next(rows)) if image is not None else Answer.failed(item.name, error)
            for item, (image, error) in chunk
        ]

    def confidences(self, probabilities: np.ndarray, claims: np.ndarray) -> np.ndarray:
        """The calibrated probability of each writer's claim for one image (the softmax probabilities
        for a calibration without the Platt parameters)."""
        if self.confidence_slope is None:
            return probabilities
        return claim_probability(claims, float(self.confidence_slope), float(self.confidence_intercept))

    def answer(self, item: InputItem, probabilities: np.ndarray, claims: np.ndarray) -> Answer:
        """The answer for one image: the top writer if the verifier accepts that it signed, else
        unknown; and the verdict on the writer the input claims, if it claims one."""
        ranked = np.argsort(-probabilities, kind="stable")[: self.top_k]
        best = int(ranked[0])
        accepted = bool(claims[best] >= self.threshold)
        confidence = self.confidences(probabilities, claims)
        answer = Answer(
            input=item.name,
            writer=self.classes[best] if accepted else UNKNOWN_WRITER,
            class_id=best if accepted else self.unknown_class_id,
            confidence=float(confidence[best]),
            verification_score=float(claims[best]),
            top_k=[(self.classes[position], float(confidence[position])) for position in ranked],
        )
        return self.with_claim(answer, item.claim, claims) if item.claim else answer

    def with_claim(self, answer: Answer, claim: str, claims: np.ndarray) -> Answer:
        """`answer` with the verdict on `claim` (a writer as the caller names it, `match_writer`) from
        the image's verifier scores `claims`; a writer the model does not know leaves the claim
        unanswered and says why in `error` (the identification stands)."""
        try:
            writer = match_writer(claim, self.classes)
        except ModelInputError as unknown:
            return replace(answer, error=str(unknown))
        score = float(claims[self.classes.index(writer)])
        return replace(answer, claimed_writer=writer, claim_score=score, claim_accepted=score >= self.threshold)

    def claim_score(self, item: InputItem, writer: str) -> tuple[float, bool, str]:
        """Verification: the verifier's score of the claim that `writer` signed, whether it reaches the
        calibrated threshold, and an error (empty when the image could be scored). `writer` may be
        named as the dataset names it (`match_writer`: `1` for `001`)."""
        try:
            writer = match_writer(writer, self.classes)
        except ModelInputError as unknown:
            return float("nan"), False, str(unknown)
        image, error = preprocess_item(item, self.settings)
        if image is None:
            return float("nan"), False, error
        score = float(self.scores(image[np.newaxis])[1][0, self.classes.index(writer)])
        return score, score >= self.threshold, ""


def answers_frame(answers: Sequence[Answer]):  # -> pandas.DataFrame
    """Answers as the pyfunc's output DataFrame. The number columns of error rows hold None, not
    NaN, so the JSON the scoring server writes has `null` there (strict JSON has no NaN)."""
    import pandas as pd

    frame = pd.DataFrame([answer.as_row() for answer in answers], columns=list(OUTPUT_COLUMNS))
    for column in NULLABLE_COLUMNS:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame
