"""Is `tasks/model/fused.py` (BatchNorm folded, private Keras graph API) still worth keeping?

Issue 12 keeps it only if its gain on a user's path stays >= 10%. For each size, in one process,
the same frozen embedder (InceptionV3 + pooling, random weights: speed does not depend on them) is
run as the plain Keras inference function and as the folded one, alternating which goes first
in each round, on the two paths users take:
- one image, cold: build the traced function and answer one image (what `sigpipe predict`,
  `sigpipe verify` and a freshly loaded pyfunc pay before their first answer);
- a stream: embed `--images` images in batches of 32 through tf.data from scratch, tracing
  included (what the train stage's feature cache, evaluate and batch scoring pay).
The ratio plain / folded of the median times is the gain.

Usage: python bench/fused_gain.py --sizes 150 299 --rounds 3 --images 512
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from peers import params_embedding  # this folder is on sys.path when a bench script runs

from tasks.model.classifier import build_base, build_embedder
from tasks.model.fused import folded_inference_function, inference_function

BATCH = 32
SEED = 0


def one_image_cold(make: Callable[[], Callable[[tf.Tensor], tf.Tensor]], image: np.ndarray) -> float:
    """Seconds to build the traced function and embed one image."""
    started = time.perf_counter()
    make()(image[np.newaxis]).numpy()
    return time.perf_counter() - started


def stream(make: Callable[[], Callable[[tf.Tensor], tf.Tensor]], images: np.ndarray) -> float:
    """Seconds to build the traced function and embed every image in batches of BATCH."""
    started = time.perf_counter()
    step = make()
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(BATCH).prefetch(2)
    for batch in dataset:
        step(batch).numpy()
    return time.perf_counter() - started


def measure(size: int, rounds: int, count: int) -> dict[str, object]:
    """Median seconds of both paths for both functions at `size` px, and the gains."""
    embedder = build_embedder(build_base(size, "none", Path("."), SEED), size, params_embedding())
    images = np.random.default_rng(SEED).uniform(0, 255, (count, size, size, 3)).astype(np.float32)
    makers = {
        "keras": lambda: inference_function(embedder),
        "folded": lambda: folded_inference_function(embedder),
    }
    times: dict[str, dict[str, list[float]]] = {name: {"cold": [], "stream": []} for name in makers}
    for index in range(rounds):
        order = list(makers) if index % 2 == 0 else list(makers)[::-1]
        for name in order:
            times[name]["cold"].append(one_image_cold(makers[name], images[0]))
            times[name]["stream"].append(stream(makers[name], images))
    medians = {
        name: {path: statistics.median(values) for path, values in paths.items()} for name, paths in times.items()
    }
    return {
        "size": size,
        "images": count,
        "rounds": rounds,
        "seconds": medians,
        "gain_cold": medians["keras"]["cold"] / medians["folded"]["cold"],
        "gain_stream": medians["keras"]["stream"] / medians["folded"]["stream"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 299])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--output", type=Path, default=None)
    arguments = parser.parse_args()
    results = [measure(size, arguments.rounds, arguments.images) for size in arguments.sizes]
    machine = f"{platform.node()} ({platform.machine()}), TensorFlow {tf.__version__}"
    report = {"machine": machine, "results": results}
    print(json.dumps(report, indent=2))
    if arguments.output:
        arguments.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
