"""Answers of the packaged model's core on a tiny classifier: unknowns, errors per input, inputs."""

from __future__ import annotations

import base64
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from tasks.data.images import PreprocessSettings
from tasks.model.classifier import POOL_NAME, LogitScorer
from tasks.model.keras_head import HEAD_OUTPUT
from tasks.model.verifier import WriterVerifier
from tasks.serving.answers import UNKNOWN_WRITER, answers_frame
from tasks.serving.inference import SignatureClassifier
from tasks.serving.model_input import items_from

SETTINGS = PreprocessSettings(
    image_size=32,
    working_max_side=600,
    blur_radius=1.5,
    min_contrast=30,
    max_ink_fraction=0.6,
    min_side_pixels=8,
    margin_fraction=0.05,
)


def tiny_classifier() -> keras.Model:
    """Pixels -> mean grey level -> 3 classes; the output layer carries the classifier's name."""
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name=HEAD_OUTPUT)(pooled)
    model = keras.Model(inputs, outputs)
    model.get_layer(HEAD_OUTPUT).set_weights(
        [np.array([[0.001, 0.0, -0.001]] * 3, dtype=np.float32), np.array([0.0, 1.0, 0.0], dtype=np.float32)]
    )
    return model


def tiny_verifier() -> WriterVerifier:
    """Scores of writers a, b, c: the mean grey level / 255 (channel 0) times 1, 2 and -1."""
    kernel = np.zeros((3, 3))
    kernel[0] = [1.0 / 255, 2.0 / 255, -1.0 / 255]
    return WriterVerifier(np.zeros(3), np.ones(3), kernel, np.zeros(3))


def model(threshold: float) -> SignatureClassifier:
    calibration = {"classes": ["a", "b", "c"], "temperature": 1.0, "threshold": threshold, "unknown_class_id": 3}
    return SignatureClassifier(LogitScorer(tiny_classifier()), tiny_verifier(), calibration, SETTINGS, top_k=2)


def mean_grey(path: Path) -> float:
    """The mean grey level of the image the model sees (prepared as the prepare stage does)."""
    from tasks.data.images import preprocess_file

    return float(preprocess_file(path, SETTINGS, name=path.name).image.mean())


@pytest.fixture
def signature_file(tmp_path: Path) -> Path:
    image = Image.new("L", (120, 60), 250)
    ImageDraw.Draw(image).line([(10, 40), (40, 10), (70, 50), (110, 15)], fill=20, width=4)
    path = tmp_path / "signature.png"
    image.save(path)
    return path


def test_answers_carry_writer_confidence_verification_score_and_top_k(signature_file: Path) -> None:
    """The bias makes b the top writer; its verifier score is 2 * mean grey / 255 (computed by hand)."""
    answer = model(threshold=0.0).answers(items_from([str(signature_file)]))[0]
    grey = mean_grey(signature_file)
    assert answer.error == "" and (answer.writer, answer.class_id) == ("b", 1)
    assert answer.verification_score == pytest.approx(2 * grey / 255, rel=1e-5)
    # softmax of (0.001 g, 1, -0.001 g) * 3 channels: b's probability.
    logits = np.array([0.003 * grey, 1.0, -0.003 * grey])
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert answer.confidence == pytest.approx(expected[1], rel=1e-4)
    assert [writer for writer, _ in answer.top_k] == ["b", "a"]
    assert answer.top_k[1][1] == pytest.approx(expected[0], rel=1e-4)


def test_a_calibration_with_platt_parameters_prints_the_calibrated_claim_probability(signature_file: Path) -> None:
    """Issue 24: the confidence is the Platt probability of the top writer's claim score, and each top-k
    writer carries its own claim's probability, in identification order (above: an older calibration
    without the Platt keys keeps its softmax confidence)."""
    calibration = {
        "classes": ["a", "b", "c"],
        "temperature": 1.0,
        "threshold": 0.0,
        "unknown_class_id": 3,
        "confidence_slope": 4.0,
        "confidence_intercept": -1.0,
    }
    platt = SignatureClassifier(LogitScorer(tiny_classifier()), tiny_verifier(), calibration, SETTINGS, top_k=2)
    answer = platt.answers(items_from([str(signature_file)]))[0]
    grey = mean_grey(signature_file)
    claims = {"a": grey / 255, "b": 2 * grey / 255}  # the verifier's scores (tiny_verifier)
    probability = {writer: 1 / (1 + np.exp(-(4.0 * score - 1.0))) for writer, score in claims.items()}
    assert answer.writer == "b" and answer.confidence == pytest.approx(probability["b"], rel=1e-5)
    assert [writer for writer, _ in answer.top_k] == ["b", "a"]  # ranked by identification, as before
    assert [value for _, value in answer.top_k] == pytest.approx([probability["b"], probability["a"]], rel=1e-5)


def test_the_answer_is_unknown_exactly_when_the_verifier_rejects_the_top_writer(signature_file: Path) -> None:
    score = 2 * mean_grey(signature_file) / 255
    accepted = model(threshold=score * 0.999).answers(items_from([str(signature_file)]))[0]
    rejected = model(threshold=score * 1.001).answers(items_from([str(signature_file)]))[0]
    assert (accepted.writer, accepted.class_id) == ("b", 1)
    assert (rejected.writer, rejected.class_id) == (UNKNOWN_WRITER, 3)
    assert rejected.confidence == pytest.approx(accepted.confidence)


def test_one_bad_input_does_not_lose_the_others(signature_file: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.png"
    Image.new("L", (80, 40), 255).save(blank)
    names = [str(signature_file), str(tmp_path / "absent.png"), str(empty), str(blank), str(signature_file)]
    answers = model(threshold=0.0).answers(items_from(names))
    assert [answer.error == "" for answer in answers] == [True, False, False, False, True]
    assert answers[1].error.endswith("absent.png: no such file")
    assert "empty.png" in answers[2].error and "cannot be read" in answers[2].error
    assert "blank.png" in answers[3].error and "no ink" in answers[3].error
    assert answers[0].confidence == answers[4].confidence
    frame = answers_frame(answers)
    assert frame["class_id"].tolist()[1] == -1 and len(frame) == 5


def test_inputs_as_frames_bytes_and_base64(signature_file: Path) -> None:
    data = signature_file.read_bytes()
    encoded = base64.b64encode(data).decode()
    by_path = model(0.0).answers(items_from(pd.DataFrame({"path": [str(signature_file)]})))[0]
    by_base64 = model(0.0).answers(items_from(pd.DataFrame({"image": [encoded, "%%%"]})))
    by_bytes = model(0.0).answers(items_from([data]))[0]
    assert by_base64[0].confidence == pytest.approx(by_path.confidence) == pytest.approx(by_bytes.confidence)
    assert by_base64[0].input == "image[0]" and "not valid base64" in by_base64[1].error


def test_verification_claim_uses_the_claimed_writers_verifier_score(signature_file: Path) -> None:
    grey = mean_grey(signature_file)
    classifier = model(threshold=1.0 * grey / 255 + 0.01)
    item = items_from(str(signature_file))[0]
    assert classifier.claim_score(item, "b") == (pytest.approx(2 * grey / 255, rel=1e-5), True, "")
    assert classifier.claim_score(item, "a") == (pytest.approx(grey / 255, rel=1e-5), False, "")
    assert classifier.claim_score(item, "c")[1] is False
    assert "not one the model knows" in classifier.claim_score(item, "z")[2]


def test_a_row_claiming_a_writer_gets_that_claims_score_and_verdict(signature_file: Path) -> None:
    """The `claimed_writer` column is answered in the same pass as the identification, with the
    verifier's score for the claimed writer (not the top one) and the calibrated threshold."""
    grey = mean_grey(signature_file)
    classifier = model(threshold=1.0 * grey / 255 + 0.01)
    frame = pd.DataFrame({"path": [str(signature_file)] * 4, "claimed_writer": ["b", "a", "", "z"]})
    claimed_b, claimed_a, no_claim, unknown = classifier.answers(items_from(frame))
    assert claimed_b.writer == claimed_a.writer == no_claim.writer == "b"  # the identification is the same
    assert (claimed_b.claimed_writer, claimed_b.claim_accepted) == ("b", True)
    assert claimed_b.claim_score == pytest.approx(2 * grey / 255, rel=1e-5)
    assert (claimed_a.claimed_writer, claimed_a.claim_accepted) == ("a", False)
    assert claimed_a.claim_score == pytest.approx(grey / 255, rel=1e-5)
    assert (no_claim.claimed_writer, no_claim.claim_accepted, no_claim.error) == ("", None, "")
    assert unknown.claim_accepted is None and "not one the model knows" in unknown.error
    rows = answers_frame([claimed_b, no_claim])
    assert rows["claim_accepted"].tolist() == [True, None] and rows["claim_score"].tolist()[1] is None


def test_a_claim_names_the_writer_as_the_dataset_does(signature_file: Path) -> None:
    calibration = {"classes": ["001", "002", "003"], "temperature": 1.0, "threshold": 0.0, "unknown_class_id": 3}
    classifier = SignatureClassifier(LogitScorer(tiny_classifier()), tiny_verifier(), calibration, SETTINGS, top_k=2)
    answer = classifier.answers(items_from(pd.DataFrame({"path": [str(signature_file)], "claimed_writer": [2]})))[0]
    assert (answer.claimed_writer, answer.claim_accepted) == ("002", True)
