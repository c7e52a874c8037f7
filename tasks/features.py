"""The frozen base's embeddings of the training images, computed once and cached on disk.

The base is frozen, so its embedding of each training image as it is (the clean view, view 0), of
`augmented_views` augmented copies, and of the plain validation images are computed once and kept
under `data/features/`, keyed by everything they depend on: the images, the augmentation, the
number of views, the seed, the base's weights, the precision it ran in, the code that computes
them and the TensorFlow and Keras versions. Anything else reuses them; any change recomputes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tasks.checkpoints import UNREADABLE_NPZ_ERRORS, save_arrays
from tasks.config import AugmentParams
from tasks.fused import folded_inference_function
from tasks.input_pipeline import TrainingData, augmented_images, plain_batches, prefetched
from tasks.model import FEATURE_DIM

CACHED_VIEW_EPOCH_OFFSET = 1_000_000
FEATURES_SUFFIX = ".npz"
FEATURES_META_SUFFIX = ".json"
# Bumped when what the cache holds changes meaning (2: view 0 of train_views is the clean image;
# 3: no test embeddings, code and library versions in the key).
FEATURES_FORMAT = 3
REUSED_EMBED_SECONDS = 0.0  # embeddings read from the cache took no embedding time in this run
# The modules whose code decides what an embedding is: image decoding and input, augmentation,
# the base model and its folded inference function, and this one.
EMBEDDING_MODULES = ("input_pipeline.py", "augment.py", "model.py", "fused.py", "features.py")
CODE_FOLDER = Path(__file__).parent


def embed(
    step: Callable[[tf.Tensor], tf.Tensor], batches: tf.data.Dataset, count: int, description: str, show_progress: bool
) -> np.ndarray:
    """Run the frozen base over `batches` of images, with a progress bar; returns (count, 2048)."""
    outputs = []
    with tqdm(total=count, desc=description, unit="img", disable=not show_progress) as progress:
        for batch in batches:
            outputs.append(step(batch).numpy().astype(np.float32))
            progress.update(int(batch.shape[0]))
    return np.concatenate(outputs) if outputs else np.zeros((0, FEATURE_DIM), dtype=np.float32)


@dataclass(frozen=True)
class FeatureCache:
    """Embeddings of the frozen base: training views (view 0 the clean images, then the augmented
    copies) and the plain validation images."""

    train_views: np.ndarray
    val: np.ndarray
    embed_seconds: float
    images_embedded: int


def code_digest(files: Iterable[Path]) -> str:
    """SHA-256 over the names and contents of `files`: a change to any of them is a new digest."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def embedding_code_digest() -> str:
    """The digest of `EMBEDDING_MODULES`, the code that computes the cached embeddings."""
    return code_digest(CODE_FOLDER / name for name in EMBEDDING_MODULES)


def library_versions() -> dict[str, str]:
    """The versions of the libraries that compute embeddings (kernels change between releases)."""
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}


def features_key(
    data: TrainingData,
    augment: AugmentParams,
    views: int,
    seed: int,
    base_digest: str,
    compute_dtype: str,
    code: str,
    versions: Mapping[str, str],
) -> str:
    """What the cached embeddings depend on: the images, augmentation, views, seed, base weights,
    the precision the base ran in (bfloat16 embeddings are not float32 ones), the code that
    computes them (`embedding_code_digest`), the library versions and the cache format."""
    content = {
        "format": FEATURES_FORMAT,
        "train": data.train.hashes,
        "val": data.val.hashes,
        "image_size": data.image_size,
        "augment": augment.model_dump(),
        "views": views,
        "seed": seed,
        "base_weights": base_digest,
        "compute_dtype": compute_dtype,
        "code": code,
        "versions": dict(versions),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def read_feature_cache(cache_dir: Path, key: str) -> FeatureCache | None:
    """The cached embeddings for `key`, or None when there are none (or they are unreadable)."""
    arrays_file, meta_file = cache_dir / f"{key}{FEATURES_SUFFIX}", cache_dir / f"{key}{FEATURES_META_SUFFIX}"
    if not (arrays_file.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        with np.load(arrays_file) as arrays:
            return FeatureCache(arrays["train_views"], arrays["val"], REUSED_EMBED_SECONDS, meta["images"])
    except UNREADABLE_NPZ_ERRORS:
        return None


def write_feature_cache(cache_dir: Path, key: str, cache: FeatureCache) -> None:
    """Store embeddings under `key` (written to a temporary name, then renamed) and drop older keys."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.iterdir():
        if stale.is_file() and not stale.name.startswith(key):
            stale.unlink()
    arrays = {"train_views": cache.train_views, "val": cache.val}
    save_arrays(arrays, cache_dir / f"{key}{FEATURES_SUFFIX}")
    # No wall time here: the folder is a DVC output, whose hash must not change with the machine's load.
    meta = {"key": key, "images": cache.images_embedded}
    (cache_dir / f"{key}{FEATURES_META_SUFFIX}").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def compute_features(
    embedder: keras.Model,
    data: TrainingData,
    augment: AugmentParams,
    views: int,
    seed: int,
    batch_size: int,
    show_progress: bool,
) -> FeatureCache:
    """Embed every training image as it is and in `views` augmented copies, and the plain val images."""
    started = time.perf_counter()
    step = folded_inference_function(embedder)
    images = tf.constant(data.train.images)
    natural_order = tf.range(len(data.train), dtype=tf.int64)
    clean = plain_batches(data.train, None, batch_size)
    train_views = [embed(step, clean, len(data.train), "embed train images", show_progress)]
    for view in range(views):
        epoch = tf.constant(CACHED_VIEW_EPOCH_OFFSET + view, tf.int64)
        batches = prefetched(augmented_images(images, augment, seed, epoch, natural_order).batch(batch_size))
        train_views.append(embed(step, batches, len(data.train), f"embed train view {view + 1}/{views}", show_progress))
    val = embed(step, plain_batches(data.val, None, batch_size), len(data.val), "embed val", show_progress)
    count = (1 + views) * len(data.train) + len(data.val)
    return FeatureCache(np.stack(train_views), val, time.perf_counter() - started, count)
