"""How the defaults of the head, the verifier and the augmentation were chosen: by validation and
calibration data only, with the test numbers reported beside them, never used to choose.

For each augmentation variant the frozen base embeds the clean training images and 4 augmented
views (the cached mode's data), then each head is fitted on them:
- `ridge`: the writer-dependent verifier used as the head, for several L2 penalties;
- `linear` and `mlp` (Dense(1024), the reference's head): Keras, Adam 1e-3, batch 16, early
  stopping on validation loss (patience 10, at most 100 epochs), best epoch kept.
Selection columns: validation accuracy (identification) and the skilled-forgery EER of the
verifier's scores on validation genuine claims against the *calibration* writers' skilled
forgeries (verification). Test columns are for the record.

Usage: python bench/head_selection.py --dataset cedar --size 150
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.cedar_pipeline import scratch_workspace  # noqa: E402
from bench.quality import DEFAULT_CEDAR, dataset_changes  # noqa: E402

VIEWS = 4
SEED = 42
AUGMENTATIONS: dict[str, dict[str, object] | None] = {
    "none (clean only)": None,
    "signature (default: 2 deg, 2%)": {"preset": "signature"},
    "mild (5 deg, 3-5%)": {
        "preset": "signature",
        "rotation_degrees": 5.0,
        "zoom": 0.05,
        "width_shift": 0.03,
        "height_shift": 0.03,
    },
    "reference (20 deg, flips)": {"preset": "reference"},
}
RIDGE_PENALTIES = (0.003, 0.01, 0.03, 0.1)
KERAS_HEADS = {"linear": 0, "mlp": 1024}
KERAS_EPOCHS, KERAS_PATIENCE, KERAS_BATCH, KERAS_RATE, DROPOUT = 100, 10, 16, 1e-3, 0.1


def prepared_workspace(scratch: Path, changes: dict[str, dict[str, object]]) -> Path:
    """Download and prepare the dataset in `scratch` with the project's stage flows."""
    from flows.download import download_flow
    from flows.prepare import prepare_flow

    params_file = str(scratch_workspace(scratch, changes))
    download_flow(params_file)
    prepare_flow(params_file)
    return scratch


def embeddings_of_every_image(root: Path, size: int, weights: str) -> dict[str, object]:
    """Embeddings of every prepared image (clean), and of augmented train views per variant."""
    import tensorflow as tf

    from tasks.config import AugmentParams
    from tasks.features import CACHED_VIEW_EPOCH_OFFSET, embed
    from tasks.fused import folded_inference_function
    from tasks.input_pipeline import augmented_images, prefetched, read_grey_image
    from tasks.manifest import read_manifest
    from tasks.model import build_base, build_embedder

    rows = read_manifest(root / "data" / "prepared" / "manifest.csv")
    images = np.stack([read_grey_image(root / row["prepared_path"]) for row in rows])
    embedder = build_embedder(build_base(size, weights, root, SEED), size)
    step = folded_inference_function(embedder)
    pixels = tf.data.Dataset.from_tensor_slices(images).map(
        lambda image: tf.image.grayscale_to_rgb(tf.cast(image, tf.float32))
    )
    clean = embed(step, prefetched(pixels.batch(32)), len(images), "clean", False)
    train_rows = np.array(
        [index for index, row in enumerate(rows) if row["kind"] == "genuine" and row["split"] == "train"]
    )
    order = tf.range(len(train_rows), dtype=tf.int64)
    views = {}
    for name, augment in AUGMENTATIONS.items():
        if augment is None:
            continue
        params = AugmentParams.model_validate(augment)
        views[name] = np.stack(
            [
                embed(
                    step,
                    prefetched(
                        augmented_images(
                            tf.constant(images[train_rows]),
                            params,
                            SEED,
                            tf.constant(CACHED_VIEW_EPOCH_OFFSET + view, tf.int64),
                            order,
                        ).batch(32)
                    ),
                    len(train_rows),
                    name,
                    False,
                )
                for view in range(VIEWS)
            ]
        )
    return {"rows": rows, "clean": clean, "train_rows": train_rows, "views": views}


def keras_head(samples, labels, validation, validation_labels, classes: int, units: int):
    """A Keras head like the pipeline's trained heads, early-stopped on validation loss; returns it and its epochs."""
    import keras

    from tasks.model import HeadSpec, build_head, embedding_statistics

    keras.utils.set_random_seed(SEED)
    spec = HeadSpec(classes, units, DROPOUT, SEED, *embedding_statistics(samples))
    head = build_head(spec)
    head.compile(keras.optimizers.Adam(KERAS_RATE), "sparse_categorical_crossentropy")
    stopper = keras.callbacks.EarlyStopping(patience=KERAS_PATIENCE, restore_best_weights=True)
    history = head.fit(
        samples,
        labels,
        validation_data=(validation, validation_labels),
        epochs=KERAS_EPOCHS,
        batch_size=KERAS_BATCH,
        callbacks=[stopper],
        verbose=0,
    )
    return head, len(history.history["loss"])


def measure(scores: np.ndarray, identification: np.ndarray, labels: np.ndarray, masks: dict[str, np.ndarray]) -> dict:
    """Selection (validation, calibration) and test numbers of one head."""
    from tasks.metrics import equal_error_rate
    from tasks.scores import claimed_scores, random_forgery_scores

    def claims(mask: np.ndarray) -> np.ndarray:
        return claimed_scores(scores[mask], labels[mask])

    test_genuine = masks["test"]
    return {
        "val_accuracy": float(np.mean(np.argmax(identification[masks["val"]], axis=1) == labels[masks["val"]])),
        "calibration_skilled_eer": equal_error_rate(claims(masks["val"]), claims(masks["calibration_skilled"])).eer,
        "test_accuracy": float(np.mean(np.argmax(identification[test_genuine], axis=1) == labels[test_genuine])),
        "test_skilled_eer": equal_error_rate(claims(test_genuine), claims(masks["test_skilled"])).eer,
        "test_random_eer": equal_error_rate(
            claims(test_genuine), random_forgery_scores(scores[test_genuine], labels[test_genuine])
        ).eer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("cedar", "demo"), default="cedar")
    parser.add_argument("--cedar", type=Path, default=DEFAULT_CEDAR)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--weights", default="none")
    arguments = parser.parse_args()
    output = PROJECT_ROOT / "bench" / "results" / f"head_selection_{arguments.dataset}_{arguments.size}.json"

    from flows._stage import quiet_environment

    quiet_environment()
    from tasks.verifier import fit_writer_verifier

    with tempfile.TemporaryDirectory() as scratch:
        root = prepared_workspace(
            Path(scratch), dataset_changes(arguments.dataset, arguments.cedar, arguments.size, arguments.weights)
        )
        data = embeddings_of_every_image(root, arguments.size, arguments.weights)
    rows, clean = data["rows"], data["clean"]
    writers = sorted({row["writer"] for row in rows if row["kind"] == "genuine" and row["split"] == "train"})
    index = {writer: position for position, writer in enumerate(writers)}
    labels = np.array([index.get(row["writer"], -1) for row in rows])
    kinds, splits = np.array([row["kind"] for row in rows]), np.array([row["split"] for row in rows])
    known = labels >= 0
    masks = {
        "val": known & (kinds == "genuine") & (splits == "val"),
        "test": known & (kinds == "genuine") & (splits == "test"),
        "calibration_skilled": known & (kinds == "skilled") & (splits == "calibration"),
        "test_skilled": known & (kinds == "skilled") & (splits == "test"),
    }
    train_rows = data["train_rows"]
    results = []
    for augmentation in AUGMENTATIONS:
        views = [clean[train_rows]] + (list(data["views"][augmentation]) if augmentation in data["views"] else [])
        samples, sample_labels = np.concatenate(views), np.tile(labels[train_rows], len(views))
        for penalty in RIDGE_PENALTIES:
            started = time.perf_counter()
            verifier = fit_writer_verifier(samples, sample_labels, len(writers), penalty)
            scores = verifier.scores(clean)
            row = {"augmentation": augmentation, "head": f"ridge, penalty {penalty}", "epochs": "-"}
            row.update(measure(scores, scores, labels, masks), seconds=round(time.perf_counter() - started, 1))
            results.append(row)
            print(json.dumps(row), flush=True)
        for name, units in KERAS_HEADS.items():
            started = time.perf_counter()
            head, epochs = keras_head(
                samples, sample_labels, clean[masks["val"]], labels[masks["val"]], len(writers), units
            )
            probabilities = head.predict(clean, verbose=0, batch_size=512)
            row = {"augmentation": augmentation, "head": f"{name} (Keras)", "epochs": epochs}
            # Verification columns: the softmax probability of the claimed writer, this head's own score.
            row.update(
                measure(probabilities, probabilities, labels, masks), seconds=round(time.perf_counter() - started, 1)
            )
            results.append(row)
            print(json.dumps(row), flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    columns = (
        "augmentation",
        "head",
        "epochs",
        "val accuracy",
        "calibration skilled EER",
        "test accuracy",
        "test skilled EER",
        "test random EER",
    )
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['augmentation']} | {row['head']} | {row['epochs']} | {row['val_accuracy']:.3f} | "
            f"{row['calibration_skilled_eer']:.3f} | {row['test_accuracy']:.3f} | {row['test_skilled_eer']:.3f} | "
            f"{row['test_random_eer']:.4f} |"
        )


if __name__ == "__main__":
    main()
