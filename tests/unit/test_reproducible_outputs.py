"""Outputs DVC records in dvc.lock come out byte for byte the same when the same content is written
again (a fresh clone's `make demo` leaves `git status` clean), and overrides write params.yaml back
as it was, `null` included."""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import yaml

from tasks.evaluation.scores import ScoreTable, load_scores, save_scores
from tasks.model.head import head_weights, load_head, save_head
from tasks.model.keras_files import numbered_shared_objects, save_model_file
from tasks.model.verifier import WriterVerifier, load_verifier, save_verifier
from tasks.runtime.run_requests import apply_overrides
from tasks.training.embedding_files import EmbeddedRows, load_embedded_rows, save_embedded_rows
from tasks.workspace.files import ZIP_EPOCH, undate_zip
from tests.conftest import PROJECT_ROOT

# Zip entries are dated to 2 seconds, Keras' metadata to 1: writes further apart than this differ.
CLOCK_TICK_SECONDS = 2.1
STOCK = "stock.keras"


def small_model() -> keras.Model:
    """A two-layer model with fixed weights (the same model every call). Its layers share an
    initializer, which Keras' config.json names by memory address (as InceptionV3's layers do)."""
    shared = keras.initializers.Constant(0.1)
    inputs = keras.Input((4,), name="features")  # fixed names: Keras numbers unnamed layers per process
    hidden = keras.layers.Dense(5, name="hidden", kernel_initializer=shared)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="out", kernel_initializer=shared)(hidden)
    model = keras.Model(inputs, outputs, name="small")
    model.set_weights(
        [np.full(weight.shape, 0.1 * index, dtype=np.float32) for index, weight in enumerate(model.weights)]
    )
    return model


def write_every_kind(folder: Path) -> dict[str, Path]:
    """Write the classifier, the verifier, the head, the scores and the embeddings into `folder`, and the
    same model with Keras' own `save` (`stock.keras`)."""
    folder.mkdir()
    arrays = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    model = small_model()
    save_model_file(model, folder / "classifier.keras")
    save_verifier(WriterVerifier(*(arrays[0] + offset for offset in range(4))), folder / "verifier.npz")
    table = ScoreTable(
        logits=np.ones((2, 3), np.float32),
        verification=np.zeros((2, 3)),
        embeddings=np.ones((2, 4), np.float32),
        claimed=np.array([0, 1]),
        kinds=np.array(["genuine", "skilled"]),
        splits=np.array(["test", "test"]),
        paths=np.array(["a.png", "b.png"]),
    )
    save_scores(table, folder / "scores.npz")
    save_embedded_rows(
        EmbeddedRows(arrays.astype(np.float32), ("a.png", "b.png", "c.png"), ("1", "2", "3")), folder / "train.npz"
    )
    save_head(head_weights(arrays[0], arrays[0, 0], arrays[1, 0], arrays[1, 1]), folder / "head.npz")
    model.save(folder / STOCK)
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}


def test_model_head_verifier_scores_and_embeddings_are_the_same_bytes_when_written_again(tmp_path: Path) -> None:
    first = write_every_kind(tmp_path / "first")
    time.sleep(CLOCK_TICK_SECONDS)
    second = write_every_kind(tmp_path / "second")
    reproducible = ["classifier.keras", "head.npz", "scores.npz", "train.npz", "verifier.npz"]
    assert sorted(first) == sorted(second) == sorted([*reproducible, STOCK])  # no temporary file left
    for name in reproducible:
        assert first[name].read_bytes() == second[name].read_bytes(), name
    # Why: Keras dates its archive and its metadata (this fails if it stops doing so). NumPy 2.4's
    # .npz entries are undated already (the verifier, scores and features above).
    assert first[STOCK].read_bytes() != second[STOCK].read_bytes()
    with zipfile.ZipFile(first[STOCK]) as archive:
        assert b'"shared_object_id": ' in archive.read("config.json")
    undate_zip(first[STOCK])
    with zipfile.ZipFile(first[STOCK]) as archive:
        assert {entry.date_time for entry in archive.infolist()} == {ZIP_EPOCH}
    # What was written reads back as it was.
    probe = np.ones((1, 4), np.float32)
    reloaded = keras.models.load_model(first["classifier.keras"])
    np.testing.assert_array_equal(reloaded.predict(probe, verbose=0), small_model().predict(probe, verbose=0))
    assert load_verifier(first["verifier.npz"]).kernel.shape == (3, 4)
    assert load_scores(first["scores.npz"]).paths.tolist() == ["a.png", "b.png"]
    embedded = load_embedded_rows(first["train.npz"])
    assert embedded.views.shape == (2, 3, 4) and embedded.paths == ("a.png", "b.png", "c.png")
    assert load_head(first["head.npz"]).class_count == 4


def project_params_copy(tmp_path: Path) -> Path:
    return Path(shutil.copy2(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml"))


def test_an_override_to_the_current_value_leaves_params_yaml_byte_for_byte(tmp_path: Path) -> None:
    params_file = project_params_copy(tmp_path)
    before = params_file.read_bytes()
    assert b": null" in before  # the project's file has null values: they must stay `null`
    epochs = yaml.safe_load(before)["train"]["epochs"]
    apply_overrides(params_file, {"train.epochs": epochs})
    assert params_file.read_bytes() == before


def test_an_override_keeps_null_values_and_writes_none_as_null(tmp_path: Path) -> None:
    params_file = project_params_copy(tmp_path)
    before = params_file.read_text().splitlines()
    nulls = [line for line in before if ": null" in line]
    apply_overrides(params_file, {"train.epochs": 7})
    after = params_file.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert len(changed) == 1 and changed[0][1].lstrip().startswith("epochs: 7")
    assert [line for line in after if ": null" in line] == nulls
    apply_overrides(params_file, {"data.url": None})  # None is written `null`, as the file has it
    assert params_file.read_text().splitlines() == after


def test_the_keras_save_date_is_the_zip_epoch(tmp_path: Path) -> None:
    save_model_file(small_model(), tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata == {"keras_version": keras.__version__, "date_saved": "1980-01-01@00:00:00"}


def test_shared_objects_are_numbered_in_order_of_appearance() -> None:
    config = b'[{"shared_object_id": 140449511548688}, {"shared_object_id": 7}, {"shared_object_id": 140449511548688}]'
    numbered = b'[{"shared_object_id": 1}, {"shared_object_id": 2}, {"shared_object_id": 1}]'
    assert numbered_shared_objects(config) == numbered
