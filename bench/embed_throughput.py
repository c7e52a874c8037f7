"""Steady-state embedding throughput of the cached mode against the base's raw forward pass.

For each size, in one process: the frozen base's forward on random tensors, run by Keras (the
base as the issue defines it) and as our folded graph (`tasks.model.fused`, BatchNorm folded into the
convolutions: the ceiling of our own pipeline), and our embedding of CEDAR's training images
through the real input pipeline (decode-free uint8 tensors, stateless augmentation in a parallel
tf.data map, prefetch) with the folded function the train stage uses; all after one warm-up
batch, so tracing is excluded.

Usage: python bench/embed_throughput.py --cedar ../shared/datasets/cedar --sizes 150 299
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf
import yaml
from peers import params_embedding  # this folder is on sys.path when a bench script runs

from tasks.data.manifest import read_manifest
from tasks.data.prepare import prepare_dataset
from tasks.model.classifier import build_base, build_embedder
from tasks.model.fused import folded_inference_function, inference_function
from tasks.training.embed import CACHED_VIEW_EPOCH_OFFSET, embed
from tasks.training.input_pipeline import augmented_images, image_keys, load_training_data, prefetched
from tasks.workspace.params_data import PrepareParams
from tasks.workspace.params_model import AugmentParams
from tasks.workspace.paths import ProjectPaths

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BATCH = 32
RAW_BATCHES = 8


def raw_forward(step: Callable[[tf.Tensor], tf.Tensor], size: int) -> float:
    """Images/s of `step` on one random batch, repeated, after a warm-up call."""
    random_batch = tf.random.uniform((BATCH, size, size, 3), 0, 255, seed=1)
    step(random_batch).numpy()
    started = time.perf_counter()
    for _ in range(RAW_BATCHES):
        step(random_batch).numpy()
    return BATCH * RAW_BATCHES / (time.perf_counter() - started)


def measure(cedar: Path, size: int, scratch: Path) -> dict[str, float]:
    """Raw forward and pipeline embedding images/s at `size` px."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    paths = ProjectPaths.from_root(scratch / f"cedar-{size}")
    shutil.copytree(cedar, paths.raw_dir)
    prepare = PrepareParams.model_validate({**params["prepare"], "image_size": size, "train_per_writer": 19})
    prepare_dataset(paths, "cedar", prepare, show_progress=False)
    data = load_training_data(read_manifest(paths.manifest_file), paths.root)
    embedder = build_embedder(build_base(size, "none", paths.root, 0), size, params_embedding())
    keras_raw = raw_forward(inference_function(embedder), size)
    step = folded_inference_function(embedder)
    folded_raw = raw_forward(step, size)
    augment = AugmentParams.model_validate(params["augment"])
    order = tf.range(len(data.train), dtype=tf.int64)
    epoch = tf.constant(CACHED_VIEW_EPOCH_OFFSET, tf.int64)
    keys = tf.constant(image_keys(data.train.hashes))
    batches = augmented_images(tf.constant(data.train.images), keys, augment, 42, epoch, order).batch(BATCH)
    embed(step, batches.take(1), BATCH, "warm-up", False)
    started = time.perf_counter()
    embed(step, prefetched(batches), len(data.train), "embed", False)
    pipeline = len(data.train) / (time.perf_counter() - started)
    return {
        "size": size,
        "raw_forward_images_per_second": keras_raw,
        "folded_raw_forward_images_per_second": folded_raw,
        "embedding_images_per_second": pipeline,
        "fraction_of_raw": pipeline / keras_raw,
        "fraction_of_folded_raw": pipeline / folded_raw,
        "images": len(data.train),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cedar", type=Path, default=PROJECT_ROOT.parent / "shared" / "datasets" / "cedar")
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 299])
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "results" / "embed_throughput.json")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        results = [measure(arguments.cedar, size, Path(scratch)) for size in arguments.sizes]
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
