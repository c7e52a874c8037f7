"""One precision (issue 24): whatever policy training runs in, the embeddings the verifier, threshold
and confidence are fitted on are float32, as the registered model serves them."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tasks.model.classifier import build_base, build_embedder
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.model.keras_files import float32_copy
from tasks.training.embed import feature_embedder
from tests.unit.test_serving_precision import policies  # evaluate's float32_copy is tested there

SIZE = 75  # InceptionV3's smallest input: a cheap base
EMBEDDING = EmbeddingSpec("bright", ("mixed2", "mixed5", "mixed7", "mixed10"))
MIXED = "mixed_bfloat16"  # the CPU's mixed policy (float16 on GPUs): both are reduced precision


@pytest.fixture()
def mixed_base(tmp_path: Path):
    """A frozen base (weights none) and its plain embedder, built under the mixed policy."""
    keras.mixed_precision.set_global_policy(MIXED)
    try:
        base = build_base(SIZE, "none", tmp_path, seed=3)
        yield base, build_embedder(base, SIZE, EMBEDDING)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_features_are_embedded_in_float32_under_mixed_precision(mixed_base) -> None:
    base, mixed = mixed_base
    assert MIXED in policies(mixed)  # the policy did apply to what trains
    embedder = feature_embedder(base, SIZE, EMBEDDING)
    assert policies(embedder) == {"float32"}
    pixels = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    features = np.asarray(embedder(pixels, training=False))
    served = np.asarray(float32_copy(mixed)(pixels, training=False))  # what registration serves
    reduced = np.asarray(mixed(pixels, training=False), dtype=np.float32)
    np.testing.assert_array_equal(features, served)
    assert not np.array_equal(features, reduced)  # the precision matters: a mixed embedding differs
