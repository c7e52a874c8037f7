"""A Keras model as a file: saved byte for byte the same whenever the model is, and copied to float32 for serving."""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras

from tasks.workspace.files import ZIP_EPOCH, undate_zip

MIXED_POLICY_PREFIX = "mixed_"
FLOAT32 = "float32"
# A .keras file is a zip whose metadata.json records when it was saved; `save_model_file` puts the
# zip epoch there instead, so that the same model saved twice is the same file (DVC hashes it).
KERAS_METADATA_ENTRY = "metadata.json"
KERAS_SAVE_DATE_KEY = "date_saved"
KERAS_SAVE_DATE = "{:04d}-{:02d}-{:02d}@{:02d}:{:02d}:{:02d}".format(*ZIP_EPOCH)  # Keras' own date format
# config.json names an object shared by several layers (an initializer...) by its Python `id()`, a
# memory address that differs on every run; `save_model_file` numbers them 1, 2... in order of appearance.
KERAS_CONFIG_ENTRY = "config.json"
KERAS_SHARED_OBJECT_ID = re.compile(rb'"shared_object_id": (\d+)')


def float32_policies(config: object) -> object:
    """A model config with every mixed-precision dtype policy (mixed_float16, mixed_bfloat16)
    replaced by float32; everything else, including explicit float32 outputs, as it was."""
    if isinstance(config, list):
        return [float32_policies(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and str(config.get("config", {}).get("name", "")).startswith(
        MIXED_POLICY_PREFIX
    ):
        return {**config, "config": {**config["config"], "name": FLOAT32}}
    return {key: float32_policies(value) for key, value in config.items()}


def float32_copy(model: keras.Model) -> keras.Model:
    """`model` computing in float32 throughout, with the same weights: what serving gets.

    A GPU run with mixed precision saves float16 layer policies, which a CPU-only server would run
    as emulated float16 convolutions (slow, and not the numbers that were calibrated in float32
    on evaluation's scores either way); the variables themselves are float32 in both.
    """
    config = model.get_config()
    float32_config = float32_policies(config)
    if float32_config == config:
        return model
    # Layers whose config names no policy (inputs, nested models' own) take the global one: float32
    # while the copy is built, even when a mixed-precision training set it.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(FLOAT32)
    try:
        copy = model.__class__.from_config(float32_config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def save_model_file(model: keras.Model, path: Path) -> None:
    """`model.save(path)` (a .keras file), byte for byte the same whenever the model is.

    Keras dates the archive's entries and its metadata.json (both get the zip epoch) and names
    shared objects by memory address in config.json (numbered instead), so the train stage's output
    hash in dvc.lock depends on the model alone.
    """
    model.save(path)
    undate_zip(path, {KERAS_METADATA_ENTRY: undated_keras_metadata, KERAS_CONFIG_ENTRY: numbered_shared_objects})


def numbered_shared_objects(content: bytes) -> bytes:
    """A .keras config.json with each distinct `shared_object_id` replaced by its rank of first appearance
    (the same object keeps one number, so loading links the same layers to it)."""
    numbers: dict[bytes, int] = {}
    return KERAS_SHARED_OBJECT_ID.sub(
        lambda match: b'"shared_object_id": %d' % numbers.setdefault(match[1], len(numbers) + 1), content
    )


def undated_keras_metadata(content: bytes) -> bytes:
    """A .keras metadata.json with its save date set to `KERAS_SAVE_DATE` (Keras only writes it)."""
    metadata = json.loads(content)
    if KERAS_SAVE_DATE_KEY in metadata:
        metadata[KERAS_SAVE_DATE_KEY] = KERAS_SAVE_DATE
    return json.dumps(metadata).encode()
