"""Training speed and accuracy on CEDAR: the published reference recipe against our two modes.

For each image size, with the same split, epochs and seed and `weights=None`, each variant in its
own fresh Python process (so none inherits another's TensorFlow state or warm caches):
1. reference: legacy `ImageDataGenerator` (its settings, 1/255 rescale) reading the raw files,
   frozen InceptionV3 re-run on every augmented batch, every epoch;
2. ours, `online`; 3. ours, `cached` (embedding time included in its wall time).
Also the raw forward throughput of the frozen base on random tensors, and our embedding
throughput as a fraction of it. Results are printed as a markdown table and written as JSON.

With `--rounds N` every variant runs N times, each round starting with the next variant; the
table gives median wall times, their range, and the range of the rounds' own speed-ups.

Usage: python bench/train_speed.py --cedar ../shared/datasets/cedar --sizes 150 299 --epochs 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from embed_throughput import raw_forward  # this folder is on sys.path when a bench script runs
from peers import params_embedding  # this folder is on sys.path when a bench script runs
from sklearn.metrics import accuracy_score, f1_score

from tasks.data.manifest import read_manifest
from tasks.data.prepare import prepare_dataset
from tasks.model.classifier import build_base, build_embedder
from tasks.model.fused import inference_function
from tasks.training.embed import embed_manifest, feature_embedder
from tasks.training.embedding_files import (
    embedding_file,
    load_split_embeddings,
    prepared_image_size,
    save_embedded_rows,
)
from tasks.training.train import load_embedded_training, train_classifier, training_fingerprint
from tasks.workspace.params_data import PrepareParams
from tasks.workspace.params_model import AugmentParams, ModelParams, TrainParams
from tasks.workspace.paths import ProjectPaths

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_BATCH = 16
REFERENCE_AUGMENTATION = dict(
    rotation_range=20,
    zoom_range=0.05,
    width_shift_range=0.05,
    height_shift_range=0.05,
    shear_range=0.05,
    horizontal_flip=True,
    fill_mode="nearest",
)


def prepared_workspace(cedar: Path, root: Path, size: int) -> ProjectPaths:
    """CEDAR copied under `root` and prepared at `size` px: 5 test, 19 train (15 + 4 val) genuine per writer."""
    import yaml

    paths = ProjectPaths.from_root(root)
    if not paths.raw_dir.exists():
        shutil.copytree(cedar, paths.raw_dir)
    values = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["prepare"]
    values.update(image_size=size, test_per_writer=5, train_per_writer=19, val_fraction=0.2)
    prepare_dataset(paths, "cedar", PrepareParams.model_validate(values), show_progress=False)
    return paths


def raw_forward_throughput(size: int) -> float:
    """Images/s of the frozen base (with pooling) run by Keras on random tensors, after a warm-up batch."""
    keras.utils.set_random_seed(0)
    return raw_forward(
        inference_function(build_embedder(build_base(size, "none", PROJECT_ROOT), size, params_embedding())), size
    )


def reference_recipe(paths: ProjectPaths, size: int, epochs: int, seed: int) -> dict[str, float]:
    """The published recipe: ImageDataGenerator on raw files, 1/255, base re-run every epoch."""
    import pandas as pd

    generator_class = tf.keras.preprocessing.image.ImageDataGenerator
    keras.utils.set_random_seed(seed)
    rows = [row for row in read_manifest(paths.manifest_file) if row["kind"] == "genuine"]
    classes = sorted({row["writer"] for row in rows})
    frames = {
        split: pd.DataFrame(
            {
                "filename": [str(paths.root / r["path"]) for r in rows if r["split"] == split],
                "class": [r["writer"] for r in rows if r["split"] == split],
            }
        )
        for split in ("train", "val", "test")
    }
    common = dict(
        x_col="filename",
        y_col="class",
        target_size=(size, size),
        color_mode="rgb",
        class_mode="categorical",
        classes=classes,
        batch_size=REFERENCE_BATCH,
        seed=seed,
    )
    augmenting = generator_class(rescale=1.0 / 255, **REFERENCE_AUGMENTATION)
    plain = generator_class(rescale=1.0 / 255)
    train_flow = augmenting.flow_from_dataframe(frames["train"], shuffle=True, **common)
    val_flow = plain.flow_from_dataframe(frames["val"], shuffle=False, **common)
    test_flow = plain.flow_from_dataframe(frames["test"], shuffle=False, **common)
    started = time.perf_counter()  # like ours: model building, training and the test predictions
    base = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(size, size, 3))
    for layer in base.layers:
        layer.trainable = False
    hidden = keras.layers.GlobalAveragePooling2D()(base.output)
    hidden = keras.layers.Dropout(0.1)(keras.layers.Dense(1024, activation="relu")(hidden))
    model = keras.Model(base.input, keras.layers.Dense(len(classes), activation="softmax")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_flow, epochs=epochs, validation_data=val_flow, verbose=2)
    predictions = np.argmax(model.predict(test_flow, verbose=0), axis=1)
    wall = time.perf_counter() - started
    truth = test_flow.classes
    return {
        "wall_seconds": wall,
        "train_images_per_second": len(frames["train"]) * epochs / wall,
        "test_accuracy": accuracy_score(truth, predictions),
        "f1_weighted": f1_score(truth, predictions, average="weighted"),
    }


def ours(paths: ProjectPaths, mode: str, epochs: int, seed: int, views: int, mixed: bool) -> dict[str, float]:
    """Our embed and train stages in `mode`, from no embeddings; wall time covers model building, embedding,
    training and the test predictions (as the reference's does). `mixed`: `train.mixed_precision: on`
    (bfloat16 on a CPU), as the train stage applies it."""
    import yaml

    from tasks.training.device import apply_policy, choose_policy

    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    model = ModelParams.model_validate({**params["model"], "weights": "none"})
    augment = AugmentParams.model_validate(params["augment"])
    train = TrainParams.model_validate(
        {
            **params["train"],
            "mode": mode,
            "epochs": epochs,
            "seed": seed,
            "augmented_views": views,
            "patience": epochs,
            "mixed_precision": "on" if mixed else "off",
            "distribute": "none",
        }
    )
    apply_policy(choose_policy(0, train.mixed_precision, train.distribute))
    shutil.rmtree(paths.embeddings_dir, ignore_errors=True)
    started = time.perf_counter()  # decoding the images included, as in the reference's flows
    rows = read_manifest(paths.manifest_file)
    # The embed stage, then the train stage: one pass of the base over every image (and the views).
    size = prepared_image_size(rows, paths.root)
    embedder = feature_embedder(build_base(size, model.weights, paths.root, train.seed), size, params_embedding())
    embedded = embed_manifest(
        embedder,
        rows,
        paths.root,
        augment,
        train.augmented_views,
        train.seed,
        train.embed_batch_size,
        show_progress=False,
    )
    for split, split_rows in embedded.splits.items():
        save_embedded_rows(split_rows, embedding_file(paths.embeddings_dir, split))
    data = load_embedded_training(paths, rows)
    result = train_classifier(
        paths,
        data,
        model,
        train,
        augment,
        training_fingerprint(model, train, augment, mode),
        "cpu",
        show_progress=False,
    )
    # Test predictions inside the timed section, as the reference's flows make them.
    index = {writer: position for position, writer in enumerate(result.classes)}
    test_rows = [row for row in rows if row["split"] == "test" and row["kind"] == "genuine" and row["writer"] in index]
    test = load_split_embeddings(paths.embeddings_dir, "test", test_rows)
    labels = np.array([index[row["writer"]] for row in test_rows])
    predictions = np.argmax(result.head.logits(test.clean), axis=1)
    wall = time.perf_counter() - started
    return {
        "wall_seconds": wall,
        "train_images_per_second": len(data.train_rows) * epochs / wall,
        "test_accuracy": accuracy_score(labels, predictions),
        "f1_weighted": f1_score(labels, predictions, average="weighted"),
        "embed_images_per_second": embedded.images_embedded / embedded.seconds if embedded.seconds else 0.0,
    }


def machine_description() -> str:
    """Host, processor and core count, to name the machine in bench/README.md."""
    import os

    return f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores), TensorFlow {tf.__version__}"


RESULT_PREFIX = "RESULT "
BFLOAT16_SUFFIX = "bf16"


def run_variant(workspace: Path, variant: str, size: int, epochs: int, seed: int, views: int) -> dict[str, float]:
    """One variant in a fresh Python process (this script with --child), so no variant inherits
    another's TensorFlow state, memory or warm caches; returns what the child measured."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--workspace", str(workspace)]
    command += ["--sizes", str(size), "--epochs", str(epochs), "--seed", str(seed), "--views", str(views)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True, cwd=PROJECT_ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(
            f"{variant} at {size} px printed no result:\n{completed.stdout[-2000:]}{completed.stderr[-2000:]}"
        )
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def child(arguments: argparse.Namespace) -> None:
    """Measure one variant on an already prepared workspace and print its result line."""
    paths = ProjectPaths.from_root(arguments.workspace)
    size, views = arguments.sizes[0], arguments.views[0]
    if arguments.child == "reference":
        measured = reference_recipe(paths, size, arguments.epochs, arguments.seed)
    else:
        mode, _, precision = arguments.child.partition("-")
        measured = ours(paths, mode, arguments.epochs, arguments.seed, views, mixed=precision == BFLOAT16_SUFFIX)
    print(RESULT_PREFIX + json.dumps(measured), flush=True)


def summarise(measured_runs: dict[str, list[dict[str, float]]], size: int, forward: float) -> list[dict[str, object]]:
    """Per variant: the median wall time over the rounds, its range, and the speed-ups against the
    reference (of the medians, and the lowest and highest of the rounds' own ratios)."""
    reference_walls = [run["wall_seconds"] for run in measured_runs["reference"]]
    summaries = []
    for name, runs in measured_runs.items():
        walls = [run["wall_seconds"] for run in runs]
        median_run = sorted(runs, key=lambda run: run["wall_seconds"])[(len(runs) - 1) // 2]
        ratios = [reference / wall for reference, wall in zip(reference_walls, walls, strict=True)]
        summary: dict[str, object] = {
            **median_run,
            "size": size,
            "variant": name,
            "rounds": len(runs),
            "wall_seconds": float(np.median(walls)),
            "wall_seconds_all": walls,
            "raw_forward_images_per_second": forward,
            "speedup_vs_reference": float(np.median(reference_walls) / np.median(walls)),
            "speedup_range": [min(ratios), max(ratios)],
        }
        if median_run.get("embed_images_per_second"):
            summary["embed_fraction_of_raw_forward"] = median_run["embed_images_per_second"] / forward
        summaries.append(summary)
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cedar", type=Path, default=PROJECT_ROOT.parent / "shared" / "datasets" / "cedar")
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 299])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every variant this many times; report medians")
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "results" / "train_speed.json")
    parser.add_argument(
        "--bfloat16", action="store_true", help="also run cached mode with train.mixed_precision: on (bfloat16 on CPU)"
    )
    parser.add_argument(
        "--child", choices=["reference", "online", "cached", f"cached-{BFLOAT16_SUFFIX}"], help=argparse.SUPPRESS
    )
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments)
        return
    results: dict[str, object] = {
        "machine": machine_description(),
        "epochs": arguments.epochs,
        "protocol": "each variant in its own fresh process, one after the other, on the same prepared data",
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for size in arguments.sizes:
            workspace = Path(scratch) / f"cedar-{size}"
            prepared_workspace(arguments.cedar, workspace, size)
            forward = raw_forward_throughput(size)
            variants = [("reference", "reference", 1), ("online", "online", 1)]
            variants += [(f"cached, {views} view(s)", "cached", views) for views in arguments.views]
            if arguments.bfloat16:
                variants += [
                    (f"cached, {views} view(s), bfloat16", f"cached-{BFLOAT16_SUFFIX}", views)
                    for views in arguments.views
                ]
            measured_runs: dict[str, list[dict[str, float]]] = {name: [] for name, _variant, _views in variants}
            for round_index in range(arguments.rounds):
                # Each round starts one variant later, so no variant always runs first or last.
                shift = round_index % len(variants)
                for name, variant, views in variants[shift:] + variants[:shift]:
                    measured = run_variant(workspace, variant, size, arguments.epochs, arguments.seed, views)
                    measured_runs[name].append(measured)
                    print(f"round {round_index + 1}", name, json.dumps(measured), flush=True)
            results["runs"] += summarise(measured_runs, size, forward)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: dict[str, object]) -> None:
    """The results as the markdown table of bench/README.md."""
    print(
        "| size | variant | wall s, median (range) | train img/s | speed-up vs reference (range of rounds) "
        "| test acc | weighted F1 "
        "| embed img/s (% of raw forward) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in results["runs"]:
        embed = (
            f"{run['embed_images_per_second']:.1f} ({run['embed_fraction_of_raw_forward']:.0%})"
            if run.get("embed_fraction_of_raw_forward")
            else "-"
        )
        walls, ratios = run["wall_seconds_all"], run["speedup_range"]
        print(
            f"| {run['size']} | {run['variant']} | {run['wall_seconds']:.1f} ({min(walls):.1f}-{max(walls):.1f}) "
            f"| {run['train_images_per_second']:.1f} | {run['speedup_vs_reference']:.2f}x "
            f"({ratios[0]:.2f}-{ratios[1]:.2f}) | {run['test_accuracy']:.3f} | {run['f1_weighted']:.3f} | {embed} |"
        )
    forwards = {run["size"]: run["raw_forward_images_per_second"] for run in results["runs"]}
    print(
        "\nRaw forward of the frozen base (random tensors, batch 32): "
        + ", ".join(f"{size} px: {value:.1f} img/s" for size, value in forwards.items())
    )


if __name__ == "__main__":
    main()
