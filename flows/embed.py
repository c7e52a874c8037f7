"""Stage `embed`: every prepared image through the frozen InceptionV3 once, into `data/embeddings/`.

Run it with `python -m flows.embed` (what `dvc repro embed` does) or `sigpipe embed`. It is the one
stage that runs the base (besides `register`, which packages it): train, evaluate and calibrate work
on its files, without TensorFlow. DVC reruns it when the prepared images, the base's weights, the
augmentation, the number of views, the seed, the embedding code or the library versions
(`constraints.txt`) change, and only then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flows._stage import pipeline_stage, run_entry_point, workspace_paths
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.workspace.config import parse_group, read_params_file
from tasks.workspace.files import write_json
from tasks.workspace.params_model import AugmentParams, ModelParams, TrainParams
from tasks.workspace.paths import ProjectPaths


@dataclass(frozen=True)
class EmbedConfig:
    """What decides an embedding: the base's weights, the augmentation and its views and seed."""

    weights: str
    embedding: EmbeddingSpec
    augment: AugmentParams
    views: int
    seed: int
    batch_size: int


def embed_task(paths: ProjectPaths, config: EmbedConfig) -> dict[str, object]:
    """Embed every split's images (training views included) and write one file per split."""
    import shutil

    from tasks.data.manifest import read_manifest
    from tasks.model.classifier import frozen_base, weights_digest
    from tasks.training.embed import embed_manifest, feature_embedder
    from tasks.training.embedding_files import embedding_file, prepared_image_size, save_embedded_rows

    rows = read_manifest(paths.manifest_file)
    image_size = prepared_image_size(rows, paths.root)
    started = time.perf_counter()
    base = frozen_base(image_size, config.weights, paths.root, config.seed)
    embedder = feature_embedder(base, image_size, config.embedding)
    built_seconds = time.perf_counter() - started
    run = embed_manifest(embedder, rows, paths.root, config.augment, config.views, config.seed, config.batch_size)
    shutil.rmtree(paths.embeddings_dir, ignore_errors=True)
    for split, embedded in run.splits.items():
        save_embedded_rows(embedded, embedding_file(paths.embeddings_dir, split))
    metrics: dict[str, object] = {
        "image_size": image_size,
        "views": 1 + config.views,
        "images": {split: len(embedded) for split, embedded in run.splits.items()},
        "embeddings": run.images_embedded,
        "base_weights_sha256": weights_digest(base),
        "embedding": config.embedding.as_dict(),
    }
    write_json(paths.embed_metrics_file, metrics)
    rate = run.images_embedded / run.seconds if run.seconds else 0.0
    # Wall times differ per run: kept out of DVC's outputs, read by the train stage's MLflow run.
    write_json(
        paths.embed_run_file,
        {
            "embed_seconds": round(run.seconds, 3),
            "embed_images_per_second": round(rate, 3),
            "base_build_seconds": round(built_seconds, 3),
        },
    )
    print(
        f"embedded {run.images_embedded} images ({1 + config.views} views of {len(run.splits['train'])} training "
        f"images, one of the others) at {image_size} px in {run.seconds:.1f} s ({rate:.1f} images/s)"
    )
    return metrics


@pipeline_stage("embed")
def embed_flow(params_file: str) -> dict[str, object]:
    """Read `model.weights`, `augment` and the embedding keys of `train`, and embed the prepared images."""
    paths = workspace_paths(params_file)
    params = read_params_file(paths.params_file)
    model = parse_group(params, "model", ModelParams, params_file)
    train = parse_group(params, "train", TrainParams, params_file)
    config = EmbedConfig(
        weights=model.weights,
        embedding=EmbeddingSpec.of(model),
        augment=parse_group(params, "augment", AugmentParams, params_file),
        views=train.augmented_views,
        seed=train.seed,
        batch_size=train.embed_batch_size,
    )
    return embed_task(paths, config)


def main() -> None:
    """Entry point of `python -m flows.embed`."""
    run_entry_point(embed_flow)


if __name__ == "__main__":
    main()
