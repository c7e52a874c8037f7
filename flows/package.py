"""Stage `package`: the one model users load, built from the frozen base and the trained head's arrays.

It is the only stage besides `embed` that runs the frozen base: it builds the float32 classifier
(base, preprocessing, head), refuses a base whose weights digest differs from the one the embed
stage recorded, checks that it scores the first validation images as the evaluate stage did
(`tasks.registration.assemble.SCORE_TOLERANCE`), and writes `models/classifier.keras` (byte-reproducible: DVC
hashes it). `register` then logs that file without building or running any model, so a change that
reaches only calibration or registration (a threshold objective, a model name) costs seconds.
Run it with `python -m flows.package` (what `dvc repro package` does) or `sigpipe package`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from prefect import flow

from flows._stage import current_stage_run_name, run_entry_point, workspace_paths
from tasks.workspace.config import ModelParams, TrainParams, parse_group, read_params_file
from tasks.workspace.paths import ProjectPaths


@dataclass(frozen=True)
class PackageConfig:
    model: ModelParams
    seed: int  # train.seed: what reinitialises the base for `model.weights: none`, as the embed stage did


def package_task(paths: ProjectPaths, config: PackageConfig) -> float:
    """Build the packaged classifier, check it against the evaluate stage's scores and write it;
    returns the largest score difference found."""
    from tasks.data.manifest import read_manifest
    from tasks.evaluation.scores import load_scores
    from tasks.model.head import load_head
    from tasks.model.keras_files import save_model_file
    from tasks.model.verifier import load_verifier
    from tasks.registration.assemble import assemble_classifier, check_scores

    embedded = json.loads(paths.embed_metrics_file.read_text())
    classifier = assemble_classifier(
        paths.root,
        int(embedded["image_size"]),
        config.model.weights,
        config.seed,
        load_head(paths.head_file),
        config.model.dropout,
        str(embedded["base_weights_sha256"]),
    )
    difference = check_scores(
        classifier,
        load_verifier(paths.verifier_file),
        load_scores(paths.scores_file),
        read_manifest(paths.manifest_file),
        paths.root,
    )
    save_model_file(classifier, paths.classifier_file)
    print(
        f"wrote {paths.classifier_file.name}: it scores the checked validation images as evaluate did "
        f"(largest difference {difference:.1e})"
    )
    return difference


@flow(name="package", flow_run_name=current_stage_run_name, log_prints=True)
def package_flow(params_file: str) -> float:
    """Read `model.weights`, `model.dropout` and `train.seed`; build, check and write the classifier."""
    paths = workspace_paths(params_file)
    params = read_params_file(paths.params_file)
    config = PackageConfig(
        model=parse_group(params, "model", ModelParams, params_file),
        seed=parse_group(params, "train", TrainParams, params_file).seed,
    )
    return package_task(paths, config)


def main() -> None:
    """Entry point of `python -m flows.package`."""
    run_entry_point(package_flow)


if __name__ == "__main__":
    main()
