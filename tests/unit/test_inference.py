"""Answers of the packaged model's core on a tiny classifier: unknowns, errors per input, inputs."""

from __future__ import annotations

import base64
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from tasks.images import PreprocessSettings
from tasks.inference import UNKNOWN_WRITER, SignatureClassifier, answers_frame, items_from
from tasks.model import HEAD_OUTPUT

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
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name=HEAD_OUTPUT)(pooled)
    model = keras.Model(inputs, outputs)
    model.get_layer(HEAD_OUTPUT).set_weights(
        [np.array([[0.001, 0.0, -0.001]] * 3, dtype=np.float32), np.array([0.0, 1.0, 0.0], dtype=np.float32)]
    )
    return model


def model(threshold: float) -> SignatureClassifier:
    calibration = {"classes": ["a", "b", "c"], "temperature": 1.0, "threshold": threshold, "unknown_class_id": 3}
    return SignatureClassifier(tiny_classifier(), calibration, SETTINGS, top_k=2)


@pytest.fixture
def signature_file(tmp_path: Path) -> Path:
    image = Image.new("L", (120, 60), 250)
    ImageDraw.Draw(image).line([(10, 40), (40, 10), (70, 50), (110, 15)], fill=20, width=4)
    path = tmp_path / "signature.png"
    image.save(path)
    return path


def test_answers_carry_writer_confidence_and_top_k(signature_file: Path) -> None:
    answer = model(threshold=0.0).answers(items_from([str(signature_file)]))[0]
    assert answer.error == "" and answer.writer in {"a", "b", "c"}
    assert answer.class_id == ["a", "b", "c"].index(answer.writer)
    assert len(answer.top_k) == 2 and answer.top_k[0] == (answer.writer, pytest.approx(answer.confidence))
    assert answer.top_k[0][1] >= answer.top_k[1][1]


def test_below_the_threshold_the_answer_is_unknown_with_class_id_n(signature_file: Path) -> None:
    answer = model(threshold=0.999).answers(items_from([str(signature_file)]))[0]
    assert (answer.writer, answer.class_id) == (UNKNOWN_WRITER, 3)
    assert 0 < answer.confidence < 0.999


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


def test_verification_claim(signature_file: Path) -> None:
    classifier = model(threshold=0.3)
    score, accepted, error = classifier.claim_score(items_from(str(signature_file))[0], "b")
    assert error == "" and 0 < score < 1 and accepted == (score >= 0.3)
    assert "not one the model knows" in classifier.claim_score(items_from(str(signature_file))[0], "z")[2]
