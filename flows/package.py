"""Stage `package`: the one model users load, built from the frozen base and the trained head's arrays.

It is the only stage besides `embed` that runs the frozen base: it builds the float32 classifier
(base, preprocessing, head), refuses a base whose weights digest differs from the one the embed
stage recorded, checks that it scores the first validation images as the evaluate stage did
(`tasks.registration.assemble.SCORE_TOLERANCE`) and that the serving code answers one of them from its
raw file as evaluate scored it, writes `models/classifier.keras` (byte-reproducible: DVC hashes it) and
records what it wrote in `metrics/package.json`. `register` then logs that file, refusing any other,
without building or running a model, so a change that reaches only calibration or registration (a
threshold objective, a model name) costs seconds.
Run it with `python -m flows.package` (what `dvc repro package` does) or `sigpipe package`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flows._stage import pipeline_stage, run_entry_point, workspace_paths
from tasks.workspace.config import ModelParams, PrepareParams, TrainParams, parse_group, read_params_file
from tasks.workspace.paths import ProjectPaths


@dataclass(frozen=True)
class PackageConfig:
    """The parameters package reads: the base (`model.weights`), the head's dropout, the preprocessing
    the serving code applies to a raw image, and `train.seed`."""

    model: ModelParams
    prepare: PrepareParams
    seed: int  # train.seed: what reinitialises the base for `model.weights: none`, as the embed stage did


def package_task(paths: ProjectPaths, config: PackageConfig) -> dict[str, object]:
    """Build the packaged classifier, check it against the evaluate stage's scores (embeddings and, for
    one image, the serving code on its raw file), write it, and record what was written; returns the record."""
    from tasks.data.manifest import read_manifest
    from tasks.data.prepare import settings_from_params
    from tasks.evaluation.scores import load_scores
    from tasks.model.classifier import LogitScorer
    from tasks.model.embedding_spec import EmbeddingSpec
    from tasks.model.head import load_head
    from tasks.model.keras_files import save_model_file
    from tasks.model.verifier import load_verifier
    from tasks.registration.assemble import (
        CHECKED_IMAGES,
        SCORE_TOLERANCE,
        assemble_classifier,
        check_scores,
        check_serving_path,
    )
    from tasks.workspace.files import sha256_file, write_json

    embedded = json.loads(paths.embed_metrics_file.read_text())
    classes = json.loads(paths.labels_file.read_text())["classes"]
    classifier = assemble_classifier(
        paths.root,
        int(embedded["image_size"]),
        config.model.weights,
        config.seed,
        load_head(paths.head_file),
        config.model.dropout,
        embedded,
        EmbeddingSpec.of(config.model),
    )
    verifier, table = load_verifier(paths.verifier_file), load_scores(paths.scores_file)
    scorer = LogitScorer(classifier)  # one traced graph for both checks
    difference = check_scores(scorer, verifier, table, read_manifest(paths.manifest_file), paths.root)
    check_serving_path(scorer, verifier, table, paths.root, classes, settings_from_params(config.prepare))
    save_model_file(classifier, paths.classifier_file)
    record: dict[str, object] = {
        "classifier_sha256": sha256_file(paths.classifier_file),
        "classes": len(classes),
        "image_size": int(embedded["image_size"]),
        "base_weights_sha256": str(embedded["base_weights_sha256"]),
        "embedding": embedded["embedding"],
        "checked_images": CHECKED_IMAGES,
        "score_tolerance": SCORE_TOLERANCE,
    }
    write_json(paths.package_record_file, record)
    print(
        f"wrote {paths.classifier_file.name}: it scores the checked validation images as evaluate did "
        f"(largest difference {difference:.1e}), and the serving code answers a raw image as evaluate scored it"
    )
    return record


@pipeline_stage("package")
def package_flow(params_file: str) -> dict[str, object]:
    """Read `model.weights`, `model.dropout`, `prepare` and `train.seed`; build, check and write the classifier."""
    paths = workspace_paths(params_file)
    params = read_params_file(paths.params_file)
    config = PackageConfig(
        model=parse_group(params, "model", ModelParams, params_file),
        prepare=parse_group(params, "prepare", PrepareParams, params_file),
        seed=parse_group(params, "train", TrainParams, params_file).seed,
    )
    return package_task(paths, config)


def main() -> None:
    """Entry point of `python -m flows.package`."""
    run_entry_point(package_flow)


if __name__ == "__main__":
    main()
