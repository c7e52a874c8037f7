"""Inference: the classifier with its verifier, calibration and preprocessing, from inputs to answers.

The packaged model holds the trained classifier, the writer-dependent verifier, the `prepare`
stage's preprocessing settings (applied with the same code, `tasks.data.images`), the calibration
(temperature, threshold) and the writer-id mapping. An answer is the classifier's top writer when
the verifier accepts the claim that this writer signed (its score reaches the calibrated
threshold), else `unknown` with class id = number of writers (the reference's convention); the
confidence is the calibrated probability that the top writer signed (Platt scaling of the
verifier's score, `tasks.evaluation.calibrate.fit_confidence`), and each top-k writer is listed with the same
probability of its own claim. A calibration written before the confidence was calibrated (no
`confidence_slope`) falls back to the temperature-scaled softmax it had then. Verifying a claim ("did W sign this?")
compares the verifier's score for W with the same threshold; an input row may carry such a claim
(`claimed_writer`, as a bank's cheque names its account holder), answered in the same pass. One
unreadable image gets an error in its own row; the others are still answered. The inputs are read by
`tasks.serving.model_input`; the answers and their table are `tasks.serving.answers`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from tasks.data.images import ImageReadError, NoInkError, PreprocessSettings, preprocess_file
from tasks.evaluation.scores import claim_probability, softmax
from tasks.model.verifier import WriterVerifier, load_verifier
from tasks.serving.answers import UNKNOWN_WRITER, Answer, match_writer
from tasks.serving.model_files import read_calibration, read_model_file, read_preprocess
from tasks.serving.model_input import InputItem, input_problem
from tasks.workspace.errors import ModelInputError

if TYPE_CHECKING:
    from tasks.model.classifier import LogitScorer

ARTIFACT_CLASSIFIER = "classifier"
ARTIFACT_CALIBRATION = "calibration"
ARTIFACT_PREPROCESS = "preprocess"
ARTIFACT_VERIFIER = "verifier"
SCORING_BATCH_SIZE = 32
# The model_config key that lets the packaged model open files named in a `path` column. The
# registered model is logged with it off, so `mlflow models serve` never reads a file a client
# names; the local CLI and the Python API load the model with it on.
ACCEPT_PATHS = "accept_paths"
CONFIDENCE_SLOPE = "confidence_slope"  # calibration keys of the Platt scaling of claim scores
CONFIDENCE_INTERCEPT = "confidence_intercept"


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
    """The classifier with its verifier, calibration and preprocessing: images in, calibrated answers out.

    Built on the classifier's `LogitScorer` (`with_classifier` makes one), so a caller that has one already
    (the package stage checks the same classifier twice) reuses its traced graph instead of tracing another."""

    def __init__(
        self,
        scorer: LogitScorer,
        verifier: WriterVerifier,
        calibration: dict[str, Any],
        settings: PreprocessSettings,
        top_k: int,
    ) -> None:
        self.scorer = scorer
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
        """`from_files` for a Keras classifier already in memory (the package stage has just built it)."""
        from tasks.model.classifier import LogitScorer

        settings, top_k = read_model_file(preprocess_file_, "the preprocessing settings", read_preprocess)
        return cls(
            LogitScorer(classifier),
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
