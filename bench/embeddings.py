"""Embed a dataset once for the quality and selection benches: every prepared image (clean) and the
augmented views of its genuine training images for each augmentation variant, in one .npz.

The benches then compare heads, penalties, augmentations, peers and writer partitions on these
arrays in seconds, all on the *same* embeddings. The frozen base, the seed, the augmentation code
and the view numbering are the train stage's own (`tasks.training.embed`), so the clean embeddings and the
default variant's views are what the pipeline's train and evaluate stages compute.

The prepared images' manifest (writer, kind, sample) is stored beside the arrays; the benches redo
the split from it, so the file does not depend on `prepare.unenrolled_writers` or the calibration
writers. Views are embedded for the genuine images a split with no unenrolled writer puts in `train`
(a superset of the training images of any split with some).

The embedding (`--ink`, `--pooled-layers`) is params.yaml's `model.ink` / `model.pooled_layers` unless
given; `--augmentations` embeds the views of only some variants (the embedding candidates of
bench/head_selection.py need `signature`'s alone).

Usage: python bench/embeddings.py --dataset cedar --size 150 --output /tmp/embeddings_cedar_150.npz
       python bench/embeddings.py --ink dark --pooled-layers mixed10 --augmentations signature --output ...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.cedar_pipeline import scratch_workspace  # noqa: E402
from bench.peers import params_embedding  # noqa: E402

DEFAULT_CEDAR = PROJECT_ROOT.parent / "shared" / "datasets" / "cedar"
DEFAULT_VIEWS = 4
SEED = 42  # train.seed's default: the base's initialisation (weights none) and the views' augmentation
EMBED_BATCH = 32
# Augmentation variants embedded for selection: name -> augment parameters (None: clean images only).
AUGMENTATIONS: dict[str, dict[str, object] | None] = {
    "none": None,
    "signature": {"preset": "signature"},
    "mild": {"preset": "signature", "rotation_degrees": 5.0, "zoom": 0.05, "width_shift": 0.03, "height_shift": 0.03},
    "reference": {"preset": "reference"},
}
MANIFEST_FIELDS = ("writer", "kind", "sample", "split", "path")


def dataset_changes(dataset: str, cedar: Path, size: int, weights: str) -> dict[str, dict[str, object]]:
    """The parameters a bench sets: where the data is, the image size, the base's weights; no unenrolled
    writer, so every genuine training image is embedded."""
    changes: dict[str, dict[str, object]] = {
        "prepare": {"image_size": size, "unenrolled_writers": 0.0},
        "model": {"weights": weights},
    }
    if dataset == "cedar":
        changes["data"] = {"source": "local", "layout": "cedar", "path": str(cedar.resolve())}
    return changes


def prepared_workspace(scratch: Path, changes: dict[str, dict[str, object]]) -> Path:
    """Download and prepare the dataset in `scratch` with the project's stage flows."""
    from flows.download import download_flow
    from flows.prepare import prepare_flow

    params_file = str(scratch_workspace(scratch, changes))
    download_flow(params_file)
    prepare_flow(params_file)
    return scratch


def embed_workspace(
    root: Path, size: int, weights: str, views: int, embedding, augmentations: Sequence[str]
) -> dict[str, np.ndarray]:
    """Clean embeddings (`embedding`: an EmbeddingSpec) of every prepared image and `views` augmented views
    of the training genuine images per variant of `augmentations` (names of `AUGMENTATIONS`), as the train
    stage computes them."""
    import tensorflow as tf

    from tasks.data.manifest import read_manifest
    from tasks.model.classifier import build_base, build_embedder
    from tasks.model.fused import folded_inference_function
    from tasks.training.embed import CACHED_VIEW_EPOCH_OFFSET, embed
    from tasks.training.input_pipeline import augmented_images, image_keys, prefetched, read_grey_image
    from tasks.workspace.params_model import AugmentParams

    rows = read_manifest(root / "data" / "prepared" / "manifest.csv")
    images = np.stack([read_grey_image(root / row["prepared_path"]) for row in rows])
    step = folded_inference_function(build_embedder(build_base(size, weights, root, SEED), size, embedding))
    pixels = tf.data.Dataset.from_tensor_slices(images).map(
        lambda image: tf.image.grayscale_to_rgb(tf.cast(image, tf.float32))
    )
    arrays: dict[str, np.ndarray] = {
        "clean": embed(step, prefetched(pixels.batch(EMBED_BATCH)), len(images), "clean", True)
    }
    train_rows = np.array([i for i, row in enumerate(rows) if row["kind"] == "genuine" and row["split"] == "train"])
    order = tf.range(len(train_rows), dtype=tf.int64)
    keys = tf.constant(image_keys([rows[index]["prepared_sha256"] for index in train_rows]))
    for name in augmentations:
        augment = AUGMENTATIONS[name]
        if augment is None:
            continue
        params = AugmentParams.model_validate(augment)
        arrays[f"views_{name}"] = np.stack(
            [
                embed(
                    step,
                    prefetched(
                        augmented_images(
                            tf.constant(images[train_rows]),
                            keys,
                            params,
                            SEED,
                            tf.constant(CACHED_VIEW_EPOCH_OFFSET + view, tf.int64),
                            order,
                        ).batch(EMBED_BATCH)
                    ),
                    len(train_rows),
                    f"{name} view {view + 1}",
                    True,
                )
                for view in range(views)
            ]
        )
    arrays["train_rows"] = train_rows
    for field in MANIFEST_FIELDS:
        arrays[field] = np.array([row[field] for row in rows])
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("cedar", "demo"), default="cedar")
    parser.add_argument("--cedar", type=Path, default=DEFAULT_CEDAR)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--views", type=int, default=DEFAULT_VIEWS)
    parser.add_argument("--ink", choices=("bright", "dark"), default=None, help="default: params.yaml's")
    parser.add_argument("--pooled-layers", nargs="+", default=None, help="default: params.yaml's")
    parser.add_argument("--augmentations", nargs="+", choices=tuple(AUGMENTATIONS), default=tuple(AUGMENTATIONS))
    parser.add_argument("--output", type=Path, required=True)
    arguments = parser.parse_args()
    defaults = params_embedding()
    embedding = type(defaults)(arguments.ink or defaults.ink, tuple(arguments.pooled_layers or defaults.pooled_layers))

    from flows._stage import quiet_environment

    quiet_environment()
    started = time.perf_counter()
    changes = dataset_changes(arguments.dataset, arguments.cedar, arguments.size, arguments.weights)
    with tempfile.TemporaryDirectory() as scratch:
        root = prepared_workspace(Path(scratch), changes)
        arrays = embed_workspace(
            root, arguments.size, arguments.weights, arguments.views, embedding, arguments.augmentations
        )
        prepare_params = json.loads((root / "metrics" / "prepare.json").read_text())
    arrays["meta"] = np.array(
        json.dumps(
            {
                "dataset": arguments.dataset,
                "size": arguments.size,
                "weights": arguments.weights,
                "views": arguments.views,
                "seed": SEED,
                "augmentations": list(arguments.augmentations),
                "embedding": embedding.as_dict(),
                "prepare": prepare_params,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(arguments.output, **arrays)
    print(f"wrote {arguments.output} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
