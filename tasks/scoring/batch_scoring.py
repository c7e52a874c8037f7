"""Batch scoring on Apache Spark: a signed registered model version applied to many images, written
as one Parquet row per image.

The listing (a folder of images, or a CSV or text file naming them) becomes a Spark DataFrame of
paths and optional claimed writers. The driver checks the version's signature and files
(`tasks.registration.model_store`); Spark copies the verified folder to its executors, and each Python worker
reads the model once, as data, and answers its partitions in batches (`mapInPandas`); an image
that cannot be read gets an error in its own row and never stops the others. In local mode
(`local[N]`) N workers score in parallel on this machine; with a cluster's master URL the paths
must be readable by every executor (a shared mount) and the output folder is written by the executors.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.data.datasets.base import is_image_file
from tasks.registration.model_store import VerifiedVersion, read_signature_model, verified_version
from tasks.registration.signing import KeyFiles
from tasks.serving.model_input import CLAIM_COLUMN, PATH_COLUMN
from tasks.workspace.errors import ConfigError, ListingError

LISTING_COMMENT = "#"
CSV_SUFFIX = ".csv"
ANSWER_COLUMN = "answer"
APP_NAME = "sigpipe-score"
# Spark's Python workers must run this interpreter (the one with the project's packages).
PYTHON_VARIABLES = ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")
PARTIAL_SUFFIX = ".partial"
LOCAL_MASTER_PREFIX = "local"
LOOPBACK = "127.0.0.1"
# The answer rows' Spark types (tasks.serving.answers.OUTPUT_COLUMNS, in order).
ANSWER_SCHEMA = (
    "input string, writer string, class_id long, confidence double, verification_score double, top_k string, "
    "claimed_writer string, claim_score double, claim_accepted boolean, error string"
)
WORKER_MODELS: dict[str, Any] = {}  # folder -> model, in each Spark Python worker


@dataclass(frozen=True)
class ScoringSummary:
    """What a batch run did: how many images, how many with an error, where the rows are."""

    images: int
    errors: int
    output: Path


def folder_listing(folder: Path) -> list[str]:
    """Every image file under `folder`, recursively, in a stable (sorted) order."""
    return sorted(str(path) for path in folder.rglob("*") if is_image_file(path))


def csv_listing(listing: Path) -> tuple[list[str], list[str]]:
    """Paths (relative ones resolved against the listing's folder) and claims of a CSV listing with
    a `path` column and an optional `claimed_writer` column."""
    import pandas as pd

    frame = pd.read_csv(listing, dtype=str, keep_default_na=False)
    if PATH_COLUMN not in frame.columns:
        raise ListingError(
            f"{listing}: no '{PATH_COLUMN}' column (found {list(frame.columns)}); a CSV listing has a "
            f"'{PATH_COLUMN}' column of image files and may have a '{CLAIM_COLUMN}' column"
        )
    claims = frame[CLAIM_COLUMN].tolist() if CLAIM_COLUMN in frame.columns else [""] * len(frame)
    return [resolved(listing, path) for path in frame[PATH_COLUMN].tolist()], claims


def text_listing(listing: Path) -> list[str]:
    """The paths of a text listing: one per line; blank lines and `#` comments are skipped."""
    lines = (line.strip() for line in listing.read_text(encoding="utf-8").splitlines())
    return [resolved(listing, line) for line in lines if line and not line.startswith(LISTING_COMMENT)]


def resolved(listing: Path, path: str) -> str:
    """`path` as written in `listing`, made absolute against the listing's folder when relative."""
    return str(Path(path) if Path(path).is_absolute() else listing.parent / path)


def read_listing(source: Path) -> Any:  # -> pandas.DataFrame
    """The images to score as a DataFrame of `path` and `claimed_writer` ("" for no claim).

    `source` is a folder (every image file in it), a `.csv` listing or a text listing (one path
    per line). Files that do not exist stay in the listing: they get an error row each.
    """
    import pandas as pd

    claims: list[str]
    if source.is_dir():
        paths, claims = folder_listing(source), []
    elif source.is_file():
        paths, claims = csv_listing(source) if source.suffix.lower() == CSV_SUFFIX else (text_listing(source), [])
    else:
        raise ListingError(f"{source}: no such folder or listing file; pass a folder of images or a listing file")
    if not paths:
        raise ListingError(
            f"{source}: no images to score (a folder needs image files: .png, .jpg, .tif, .bmp; "
            "a listing needs at least one path)"
        )
    return pd.DataFrame({PATH_COLUMN: paths, CLAIM_COLUMN: claims or [""] * len(paths)})


def spark_session(master: str, log_level: str) -> Any:  # -> pyspark.sql.SparkSession
    """A Spark session on `master` (`local[N]` here, a cluster's URL in real use) whose Python
    workers run this interpreter. Spark's UI (its address is printed) shows the job's progress."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as error:
        raise ConfigError(
            "batch scoring needs PySpark, which is not installed: `make venv` installs it (extra `spark`), "
            "or pip install -e '.[spark]'"
        ) from error

    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        raise ConfigError(
            "Spark needs Java 17 or later and none was found: install it (Debian: apt-get install "
            "openjdk-17-jre-headless) or set JAVA_HOME"
        )
    for variable in PYTHON_VARIABLES:
        os.environ.setdefault(variable, sys.executable)
    builder = SparkSession.builder.master(master).appName(APP_NAME)
    if master.startswith(LOCAL_MASTER_PREFIX):
        # Local mode: the driver (and its UI) listen on this machine's loopback only.
        builder = builder.config("spark.driver.host", LOOPBACK).config("spark.driver.bindAddress", LOOPBACK)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(log_level)
    return session


def worker_model(folder: str) -> Any:  # -> SignatureClassifier
    """The model in a verified version folder, read once per Spark Python worker (workers are reused)."""
    if folder not in WORKER_MODELS:
        WORKER_MODELS.clear()
        WORKER_MODELS[folder] = read_signature_model(Path(folder))
    return WORKER_MODELS[folder]


def answer_batches(signed: VerifiedVersion) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The function `mapInPandas` runs on each partition: the version's folder, as Spark copied it to
    this executor, checked again against the signed file list, then every batch of rows answered."""

    def answer(batches: Iterator[Any]) -> Iterator[Any]:
        from pyspark import SparkFiles

        from tasks.registration.signing import check_files
        from tasks.serving.answers import answers_frame
        from tasks.serving.model_input import items_from

        folder = SparkFiles.get(signed.folder.name)  # the driver's folder, as `addFile` copied it here
        check_files(signed.name, signed.version, Path(folder), signed.files)
        model = worker_model(folder)
        for batch in batches:
            yield answers_frame(model.answers(items_from(batch, accept_paths=True)))

    return answer


def scored_frame(spark: Any, signed: VerifiedVersion, listing: Any, partitions: int) -> Any:
    """The listing as a Spark DataFrame with one answer row per image (the model's output columns).

    The version's verified folder goes to every executor with Spark's own file distribution
    (`addFile`); each Python worker reads the model from it as data (no code of the artifact runs,
    unlike MLflow's `spark_udf`, which imports the artifact's model-from-code file).
    """
    spark.sparkContext.addFile(str(signed.folder), recursive=True)
    frame = spark.createDataFrame(listing).repartition(partitions)
    return frame.mapInPandas(answer_batches(signed), ANSWER_SCHEMA)


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked to (checked before Spark starts)."""
    if output.exists() and not overwrite:
        raise ConfigError(f"{output}: already exists; pass --overwrite to replace it, or another --output")


def write_rows(frame: Any, output: Path, overwrite: bool) -> None:
    """Write `frame` as Parquet at `output` (a folder of part files, as Spark writes it).

    The rows are written beside it first and moved into place only once every partition has been
    written, so a failed run leaves no partial output; an existing output is kept unless
    `overwrite` is set.
    """
    check_output(output, overwrite)
    partial = output.with_name(output.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        frame.write.mode("overwrite").parquet(str(partial))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    partial.rename(output)


def score_listing(
    spark: Any,
    model_uri: str,
    keys: KeyFiles,
    listing: Any,
    output: Path,
    partitions: int | None,
    overwrite: bool,
) -> ScoringSummary:
    """Score every image of `listing` (`read_listing`) with the signed version `model_uri` names, on
    `spark`; one Parquet row per image at `output`. `partitions` defaults to Spark's default
    parallelism (its cores). An unsigned or altered version raises UntrustedModelError before Spark
    scores anything."""
    with verified_version(model_uri, keys) as signed:
        frame = scored_frame(spark, signed, listing, partitions or spark.sparkContext.defaultParallelism)
        write_rows(frame, output, overwrite)
    errors = spark.read.parquet(str(output)).where("error != ''").count()
    return ScoringSummary(images=len(listing), errors=errors, output=output)
