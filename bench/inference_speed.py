"""Inference speed of the packaged model (MLflow pyfunc) against the bare classifier, on CPU.

In one process: a classifier at `--size` px (`weights=None`: speed does not depend on the weight
values) is packaged exactly as the `register` stage does it, logged to a scratch MLflow store and
loaded back. Then, on the same preprocessed CEDAR images:
- bare: the classifier's forward on the images already decoded into one float tensor, three
  ways: `classifier.predict`, the model called in a `tf.function` batch by batch, and the same
  with its BatchNorms folded (`tasks.model.fused`, what the pyfunc runs); the fastest is the baseline;
- pyfunc: `model.predict` on the image files (decode, the prepare stage's preprocessing, forward,
  calibration, answers).
The three are timed in turn, round after round (after one untimed warm-up round), so a slow
moment of the machine hits all of them; each throughput is the median over the rounds. Then the
single-image latency through the pyfunc (p50, p95) and the model's load time.

Usage: python bench/inference_speed.py --cedar ../shared/datasets/cedar --size 299 --images 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LATENCY_REPEATS = 20
BATCH_SIZE = 32
TIMING_ROUNDS = 7
BENCH_EXPERIMENT = "inference-bench"


def interleaved_medians(calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median seconds of each call over TIMING_ROUNDS rounds that run every call once, in turn,
    after one untimed warm-up round (tracing, caches)."""
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(TIMING_ROUNDS + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_index:
                timings[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) for name, values in timings.items()}


def batched_forward(classifier: object, folded: bool) -> Callable[[np.ndarray], np.ndarray]:
    """The classifier called in one traced function (BatchNorms folded or not), BATCH_SIZE images at a time."""
    from tasks.model.fused import folded_inference_function, inference_function

    forward = folded_inference_function(classifier) if folded else inference_function(classifier)
    return lambda pixels: np.concatenate(
        [forward(pixels[start : start + BATCH_SIZE]).numpy() for start in range(0, len(pixels), BATCH_SIZE)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cedar", type=Path, default=PROJECT_ROOT.parent / "shared" / "datasets" / "cedar")
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "results" / "inference_speed.json")
    arguments = parser.parse_args()

    import mlflow
    import pandas as pd
    from peers import params_embedding  # this folder is on sys.path when a bench script runs
    from PIL import Image

    from tasks.data.manifest import read_manifest
    from tasks.data.prepare import prepare_dataset, settings_from_params
    from tasks.model.classifier import build_base, build_classifier
    from tasks.model.keras_head import HeadSpec
    from tasks.registration.packaging import log_packaged_model
    from tasks.workspace.files import write_json
    from tasks.workspace.params_data import PrepareParams
    from tasks.workspace.paths import ProjectPaths

    with tempfile.TemporaryDirectory() as scratch:
        paths = ProjectPaths.from_root(scratch)
        shutil.copytree(arguments.cedar, paths.raw_dir)
        shutil.copy2(PROJECT_ROOT / "params.yaml", paths.params_file)  # packaged with the model
        prepare = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["prepare"]
        params = PrepareParams.model_validate({**prepare, "image_size": arguments.size})
        prepare_dataset(paths, "cedar", params, show_progress=False)
        rows = [row for row in read_manifest(paths.manifest_file) if row["kind"] == "genuine"][: arguments.images]
        files = [str(paths.root / row["prepared_path"]) for row in rows]
        classes = sorted({row["writer"] for row in read_manifest(paths.manifest_file)})
        classifier = build_classifier(
            build_base(arguments.size, "none", paths.root, 0),
            arguments.size,
            HeadSpec(len(classes), 1024, 0.1),
            params_embedding(),
        )
        paths.models_dir.mkdir(parents=True)
        classifier.save(paths.classifier_file)
        write_json(
            paths.calibration_file,
            {"classes": classes, "temperature": 1.0, "threshold": 0.5, "unknown_class_id": len(classes)},
        )
        # The scratch workspace's own store, artifacts included (not the project's mlruns/, nor
        # whatever $MLFLOW_TRACKING_URI names).
        paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
        artifacts = (paths.root / "artifacts").as_uri()
        with mlflow.start_run(experiment_id=mlflow.create_experiment(BENCH_EXPERIMENT, artifact_location=artifacts)):
            uri = log_packaged_model(paths, settings_from_params(params), 5)
        started = time.perf_counter()
        model = mlflow.pyfunc.load_model(uri, model_config={"accept_paths": True})  # it reads files here
        load_seconds = time.perf_counter() - started

        pixels = np.stack([np.asarray(Image.open(file).convert("RGB"), dtype=np.float32) for file in files])
        frame = pd.DataFrame({"path": files})
        forward, folded_forward = batched_forward(classifier, folded=False), batched_forward(classifier, folded=True)
        seconds = interleaved_medians(
            {
                "keras_predict": lambda: classifier.predict(pixels, batch_size=BATCH_SIZE, verbose=0),
                "tf_function": lambda: forward(pixels),
                "folded": lambda: folded_forward(pixels),
                "pyfunc": lambda: model.predict(frame),
            }
        )
        latencies = []
        for index in range(LATENCY_REPEATS):
            started = time.perf_counter()
            model.predict(pd.DataFrame({"path": [files[index % len(files)]]}))
            latencies.append(time.perf_counter() - started)
    result = {
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
        "size": arguments.size,
        "images": len(files),
        "timing_rounds": TIMING_ROUNDS,
        "bare_keras_predict_images_per_second": len(files) / seconds["keras_predict"],
        "bare_tf_function_images_per_second": len(files) / seconds["tf_function"],
        "bare_folded_images_per_second": len(files) / seconds["folded"],
        "pyfunc_images_per_second": len(files) / seconds["pyfunc"],
        "pyfunc_overhead": seconds["pyfunc"] / min(seconds["keras_predict"], seconds["tf_function"], seconds["folded"])
        - 1.0,
        "latency_p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "latency_p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "load_seconds": load_seconds,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
