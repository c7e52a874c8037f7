"""`sigpipe score`: the signed registered model on a local Apache Spark, one Parquet row per image,
checked against the same model loaded in this process."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from tasks.data.manifest import read_manifest
from tasks.registration.model_store import load_verified_model, workspace_keys
from tasks.serving.answers import answers_frame
from tasks.serving.model_input import items_from
from tasks.workspace.paths import ProjectPaths
from tests.conftest import TRAINED_MODEL_NAME as MODEL_NAME
from tests.integration.test_pipeline_flows import run_cli

pytestmark = [pytest.mark.xdist_group("trained"), pytest.mark.slow]

SCORED_IMAGES = 6
SPARK_MASTER = "local[2]"
PARTITIONS = 3  # more partitions than workers: a worker answers several, reusing its loaded model
NUMBER_TOLERANCE = 1e-4  # batches of other sizes sum float32 kernels in another order


def test_spark_scores_every_image_as_the_model_does_in_process(trained: ProjectPaths, tmp_path) -> None:
    rows = [row for row in read_manifest(trained.manifest_file) if row["split"] == "test" and row["kind"] == "genuine"]
    images = [str(trained.root / row["path"]) for row in rows[:SCORED_IMAGES]]
    writers = [row["writer"] for row in rows[:SCORED_IMAGES]]
    classes = json.loads(trained.labels_file.read_text())["classes"]
    other = next(writer for writer in classes if writer != writers[1])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    listing = pd.DataFrame(
        {
            # Relative paths are read from the listing's folder: the corrupt file is named that way.
            "path": [*images, "corrupt.png", str(tmp_path / "missing.png")],
            "claimed_writer": [writers[0], other, "", "no-such-writer", "", "", "", writers[0]],
        }
    )
    listing_file = tmp_path / "listing.csv"
    listing.to_csv(listing_file, index=False)
    output = tmp_path / "scores.parquet"

    arguments = ["--output", str(output), "--master", SPARK_MASTER, "--partitions", str(PARTITIONS)]
    result = run_cli(["score", str(listing_file), *arguments], trained.root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # quiet: no JVM, Spark, TensorFlow or MLflow lines
    # Errors: the corrupt and the missing file, and the claim of a writer the model does not know.
    assert f"scored {len(listing)} images" in result.stdout and "3 with an error" in result.stdout
    scored = pd.read_parquet(output).set_index("input")
    assert len(scored) == len(listing) and not (tmp_path / "scores.parquet.partial").exists()

    mlflow.set_tracking_uri(trained.mlflow_tracking_uri)
    model = load_verified_model(f"models:/{MODEL_NAME}@champion", workspace_keys(trained)).model
    in_process = answers_frame(
        model.answers(items_from(listing.assign(path=[*images, str(corrupt), str(tmp_path / "missing.png")])))
    )
    for name, expected in zip(listing["path"], in_process.itertuples(), strict=True):
        row = scored.loc[str(tmp_path / name) if name == "corrupt.png" else name]
        assert row["writer"] == expected.writer and row["class_id"] == expected.class_id
        assert bool(row["error"]) == bool(expected.error)
        assert row["claimed_writer"] == expected.claimed_writer
        if not expected.error:
            assert row["confidence"] == pytest.approx(expected.confidence, abs=NUMBER_TOLERANCE)
            assert row["verification_score"] == pytest.approx(expected.verification_score, abs=NUMBER_TOLERANCE)
    # The claims: the first image as its own writer, the second as another; an unknown writer is named.
    assert scored.loc[images[0], "claimed_writer"] == writers[0] and pd.notna(scored.loc[images[0], "claim_score"])
    assert scored.loc[images[1], "claimed_writer"] == other
    assert "no-such-writer" in scored.loc[images[3], "error"] and scored.loc[images[3], "writer"] != ""
    assert scored.loc[str(tmp_path / "missing.png"), "error"].endswith("missing.png: no such file")
    assert "corrupt.png" in scored.loc[str(corrupt), "error"]

    # An existing output is kept: a second run refuses before Spark starts, naming the fix.
    again = run_cli(["score", str(listing_file), "--output", str(output)], trained.root)
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert len(pd.read_parquet(output)) == len(listing)
