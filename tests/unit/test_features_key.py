"""The cached embeddings' key changes with every input they depend on, and only with those."""

from __future__ import annotations

import numpy as np
import yaml

from tasks.config import AugmentParams
from tasks.train import SplitImages, TrainingData, features_key
from tests.conftest import PROJECT_ROOT

AUGMENT = AugmentParams.model_validate(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["augment"])


def data(train_hashes: tuple[str, ...] = ("a", "b")) -> TrainingData:
    def split(hashes: tuple[str, ...]) -> SplitImages:
        return SplitImages(np.zeros((len(hashes), 75, 75, 1), np.uint8), np.zeros(len(hashes), np.int32), hashes)

    return TrainingData(("w1", "w2"), split(train_hashes), split(("c",)), split(("d",)), 75)


def test_key_depends_on_images_augmentation_views_seed_weights_and_precision() -> None:
    reference = features_key(data(), AUGMENT, 4, 42, "base", "float32")
    assert features_key(data(), AUGMENT, 4, 42, "base", "float32") == reference
    variants = [
        features_key(data(("a", "x")), AUGMENT, 4, 42, "base", "float32"),
        features_key(data(), AUGMENT.model_copy(update={"zoom": 0.1}), 4, 42, "base", "float32"),
        features_key(data(), AUGMENT.model_copy(update={"horizontal_flip": True}), 4, 42, "base", "float32"),
        features_key(data(), AUGMENT, 3, 42, "base", "float32"),
        features_key(data(), AUGMENT, 4, 43, "base", "float32"),
        features_key(data(), AUGMENT, 4, 42, "other base weights", "float32"),
        features_key(data(), AUGMENT, 4, 42, "base", "bfloat16"),
        features_key(data(), AugmentParams(preset="reference"), 4, 42, "base", "float32"),
    ]
    assert reference not in variants
    assert len(set(variants)) == len(variants)
