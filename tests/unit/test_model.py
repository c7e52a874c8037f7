"""The classifier's structure: frozen base, preprocessing inside the model, the head, weights."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tasks.model.classifier import LogitScorer, build_base, build_classifier, build_embedder, weights_digest
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.model.keras_head import (
    HEAD_OUTPUT,
    HeadSpec,
    build_head,
    copy_head_weights,
    embedding_statistics,
)
from tasks.workspace.errors import WeightsError

SIZE = 75
EMBEDDING = EmbeddingSpec("bright", ("mixed2", "mixed5", "mixed7", "mixed10"))
FEATURES = 3872  # 288 + 768 + 768 + 2048 channels


@pytest.fixture(scope="module")
def base() -> keras.Model:
    return build_base(SIZE, "none", Path("."), seed=0)


def test_base_is_frozen_and_classifier_trains_only_the_head(base: keras.Model) -> None:
    assert not base.trainable
    assert all(not layer.trainable for layer in base.layers)
    classifier = build_classifier(base, SIZE, HeadSpec(7, 32, 0.1), EMBEDDING)
    assert classifier.output_shape == (None, 7)
    assert classifier.input_shape == (None, SIZE, SIZE, 3)
    trainable = {weight.path.split("/")[0] for weight in classifier.trainable_weights}
    assert trainable == {"head_dense", "head_output"}
    assert classifier.get_layer(HEAD_OUTPUT).dtype_policy.compute_dtype == "float32"


def test_preprocessing_is_inception_preprocess_input_of_the_scan_or_its_negative(base: keras.Model) -> None:
    """`ink: dark` is exactly Keras' preprocess_input; `bright` its negative (ink high, paper low)."""
    pixels = np.array([[0.0, 127.5, 255.0]], dtype=np.float32)
    expected = keras.applications.inception_v3.preprocess_input(pixels.copy())
    for ink, sign in (("dark", 1.0), ("bright", -1.0)):
        embedder = build_embedder(base, SIZE, EmbeddingSpec(ink, EMBEDDING.pooled_layers))
        rescale = embedder.get_layer("inception_preprocess")
        assert np.allclose(keras.ops.convert_to_numpy(rescale(pixels)), sign * expected)
        assert embedder.output_shape == (None, FEATURES)


def test_the_embedding_is_each_pooled_block_averaged_in_order(base: keras.Model) -> None:
    """The embedding concatenates the global average of each listed block, in the listed order; one
    block alone is that block's average."""
    images = np.random.default_rng(3).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    scaled = 1.0 - images / 127.5
    blocks = keras.Model(base.input, [base.get_layer(name).output for name in ("mixed5", "mixed2")])
    expected = np.concatenate(
        [keras.ops.convert_to_numpy(output).mean(axis=(1, 2)) for output in blocks(scaled, training=False)], axis=1
    )
    pair = build_embedder(base, SIZE, EmbeddingSpec("bright", ("mixed5", "mixed2")))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pair(images)), expected, rtol=1e-4, atol=1e-5)
    single = build_embedder(base, SIZE, EmbeddingSpec("bright", ("mixed5",)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(single(images)), expected[:, :768], rtol=1e-4, atol=1e-5)


def test_frozen_base_runs_in_inference_mode(base: keras.Model) -> None:
    """BatchNorm in inference mode: the same input gives the same embedding with training=True."""
    embedder = build_embedder(base, SIZE, EMBEDDING)
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    inference = keras.ops.convert_to_numpy(embedder(images, training=False))
    training = keras.ops.convert_to_numpy(embedder(images, training=True))
    assert np.allclose(inference, training)


def test_head_standardises_and_transfers_to_the_classifier(base: keras.Model) -> None:
    embeddings = np.random.default_rng(1).normal(3.0, 0.001, (10, FEATURES)).astype(np.float32)
    mean, variance = embedding_statistics(embeddings)
    spec = HeadSpec(3, 16, 0.0, feature_mean=mean, feature_variance=variance)
    head = build_head(spec, FEATURES)
    standardised = keras.ops.convert_to_numpy(head.get_layer("head_standardise")(embeddings))
    assert abs(standardised.mean()) < 1e-3 and standardised.std() == pytest.approx(1.0, abs=0.05)
    classifier = build_classifier(base, SIZE, spec, EMBEDDING)
    copy_head_weights(head, classifier)
    for name in ("head_dense", "head_output"):
        for source, target in zip(
            head.get_layer(name).get_weights(), classifier.get_layer(name).get_weights(), strict=True
        ):
            assert np.array_equal(source, target)


def test_too_small_images_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 75"):
        build_base(64, "none", Path("."))


def test_missing_weights_file_names_it_and_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        build_base(SIZE, "weights/inception.h5", tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "weights/inception.h5") in message
    assert "~/.keras/models/" in message and "model.weights: none" in message


def test_failed_imagenet_download_says_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from keras.src.applications import inception_v3

    def refuse(*_args: object, **_kwargs: object) -> str:
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(inception_v3.file_utils, "get_file", refuse)
    with pytest.raises(WeightsError) as caught:
        build_base(SIZE, "imagenet", Path("."))
    message = str(caught.value)
    assert "no network" in message
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in message and "~/.keras/models/" in message


def test_local_weights_file_is_loaded(base: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / "inception_notop.weights.h5"
    base.save_weights(path)
    loaded = build_base(SIZE, str(path), tmp_path, seed=99)
    assert weights_digest(loaded) == weights_digest(base)


def test_random_base_depends_on_its_seed_only(base: keras.Model) -> None:
    """Other code drawing from Python's global random (Prefect's threads do) changes nothing."""
    import random

    random.seed(12345)
    random.random()
    assert weights_digest(build_base(SIZE, "none", Path("."), seed=0)) == weights_digest(base)
    assert weights_digest(build_base(SIZE, "none", Path("."), seed=1)) != weights_digest(base)


def test_logit_scorer_matches_the_classifier_in_any_batching(base: keras.Model) -> None:
    """The scorer's logits give the saved model's softmax, whether it is fed RGB floats, grey bytes
    (replicated to three channels inside the graph), a batch size that does not divide the input,
    or a dataset of batches (evaluate's path)."""
    classifier = build_classifier(base, SIZE, HeadSpec(5, 16, 0.1), EMBEDDING)
    grey = np.random.default_rng(3).integers(0, 256, size=(7, SIZE, SIZE), dtype=np.uint8)
    rgb = np.repeat(grey[..., np.newaxis].astype(np.float32), 3, axis=-1)
    scorer = LogitScorer(classifier)
    logits = scorer(rgb, batch_size=3)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    expected = classifier.predict(rgb, verbose=0)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scorer.of_grey(grey, batch_size=4).logits, logits, rtol=1e-5, atol=1e-5)
    batches = tf.data.Dataset.from_tensor_slices(rgb).batch(2)  # how evaluate feeds it
    outputs = scorer.outputs(batches)
    np.testing.assert_allclose(outputs.logits, logits, rtol=1e-5, atol=1e-5)
    # The embeddings are the base's pooled output, what the cached mode and the verifier use.
    expected_embeddings = build_embedder(base, SIZE, EMBEDDING).predict(rgb, verbose=0)
    np.testing.assert_allclose(outputs.embeddings, expected_embeddings, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scorer.of_grey(grey).embeddings, expected_embeddings, rtol=1e-4, atol=1e-5)
    assert scorer(rgb[:0]).shape == (0, 5)
    assert scorer(batches.take(0)).shape == (0, 5)
    assert scorer.outputs(batches.take(0)).embeddings.shape == (0, FEATURES)
    with pytest.raises(TypeError, match="uint8"):
        scorer.of_grey(grey.astype(np.float32))


def test_ridge_classifier_logits_are_the_verifiers_scores(base: keras.Model) -> None:
    """The ridge head holds the verifier: the packaged classifier's logits equal the verifier's scores of
    the base's embeddings, and the head's NumPy logits (what evaluate computes) equal both."""
    from tasks.model.classifier import classifier_with_head
    from tasks.model.head import head_from_verifier
    from tasks.model.verifier import WriterVerifier

    rng = np.random.default_rng(4)
    verifier = WriterVerifier(
        mean=rng.normal(0, 0.01, FEATURES),
        scale=rng.uniform(0.5, 2.0, FEATURES),
        kernel=rng.normal(0, 0.1, (FEATURES, 4)),
        bias=rng.normal(0, 1, 4),
    )
    head = head_from_verifier(verifier)
    classifier = classifier_with_head(base, SIZE, head, dropout=0.1, seed=0, embedding=EMBEDDING)
    pixels = rng.uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    outputs = LogitScorer(classifier).outputs(pixels)
    np.testing.assert_allclose(outputs.logits, verifier.scores(outputs.embeddings), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head.logits(outputs.embeddings), outputs.logits, rtol=1e-4, atol=1e-4)
    probabilities = classifier.predict(pixels, verbose=0)
    np.testing.assert_array_equal(np.argmax(probabilities, axis=1), np.argmax(outputs.logits, axis=1))


def test_a_trained_head_round_trips_through_its_arrays(base: keras.Model) -> None:
    """A Keras head (standardisation, hidden layer, output) read as arrays and folded back into a
    classifier gives the same logits, in Keras and in NumPy: what train writes, evaluate applies and
    register packages."""
    from tasks.model.classifier import classifier_with_head
    from tasks.model.keras_head import head_weights_of

    rng = np.random.default_rng(5)
    spec = HeadSpec(
        3,
        7,
        0.2,
        1,
        rng.normal(0, 1, FEATURES).astype(np.float32),
        rng.uniform(0.5, 2, FEATURES).astype(np.float32),
    )
    trained = build_classifier(base, SIZE, spec, EMBEDDING)
    head = head_weights_of(trained)
    assert head.hidden_units == 7 and head.class_count == 3 and head.standardises
    rebuilt = classifier_with_head(base, SIZE, head, dropout=0.2, seed=1, embedding=EMBEDDING)
    pixels = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    original, again = LogitScorer(trained).outputs(pixels), LogitScorer(rebuilt).outputs(pixels)
    np.testing.assert_allclose(again.logits, original.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.logits(original.embeddings), original.logits, rtol=1e-4, atol=1e-4)
    linear = head_weights_of(build_classifier(base, SIZE, HeadSpec(3, 0, 0.0), EMBEDDING))
    assert linear.hidden_units == 0 and not linear.standardises
    np.testing.assert_allclose(
        linear.logits(original.embeddings), original.embeddings @ linear.output_kernel + linear.output_bias, rtol=1e-5
    )


def test_a_kept_base_packages_the_same_file_as_a_fresh_one(tmp_path: Path) -> None:
    """The pipeline flow's package stage reuses the base its embed stage built (`frozen_base`): the
    classifier it writes is byte for byte the one a fresh base gives (`dvc repro package`, a fresh
    process), though Keras built other models in between and the session was cleared."""
    from tasks.model.classifier import KEPT_BASES, frozen_base
    from tasks.model.head import head_weights
    from tasks.model.keras_files import save_model_file
    from tasks.registration.assemble import classifier_on_base

    rng = np.random.default_rng(6)
    head = head_weights(rng.normal(0, 0.1, (FEATURES, 3)), rng.normal(0, 1, 3))

    def packaged(name: str) -> keras.Model:
        base = frozen_base(SIZE, "none", tmp_path, seed=0)
        save_model_file(classifier_on_base(base, SIZE, head, 0.1, 0, EMBEDDING), tmp_path / name)
        return base

    KEPT_BASES.clear()
    fresh = packaged("fresh.keras")
    build_embedder(fresh, SIZE, EMBEDDING)  # what the embed stage builds on it
    assert packaged("kept.keras") is fresh
    assert (tmp_path / "kept.keras").read_bytes() == (tmp_path / "fresh.keras").read_bytes()
    assert frozen_base(SIZE, "none", tmp_path, seed=1) is not fresh  # another request, another base
    KEPT_BASES.clear()


def test_a_weights_file_replaced_under_its_name_is_another_base(tmp_path: Path) -> None:
    """A kept base is given again only for the same weights file: one replaced under the same name (what
    the package stage must refuse against the embed stage's digest) is built again."""
    from tasks.model.classifier import weights_identity

    weights = tmp_path / "base.weights.h5"
    weights.write_bytes(b"first")
    first = weights_identity(str(weights), tmp_path)
    assert weights_identity(str(weights), tmp_path) == first
    replacement = tmp_path / "replacement.h5"
    replacement.write_bytes(b"other")
    replacement.replace(weights)
    assert weights_identity(str(weights), tmp_path) != first
    assert weights_identity("none", tmp_path) == ("none",)
