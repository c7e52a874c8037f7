"""Batch scoring throughput: `sigpipe score`'s Spark path against the single-process model, on the
same images and the same registered model, in one script.

The model is the demo's size (InceptionV3 at `--size` px, 8 writers, `weights=None`: throughput does
not depend on the weight values), packaged and registered as the `register` stage does
(bench/cli_latency.py's workspace). The images are CEDAR's genuine scans (`--images` of them, real
sizes and real decoding work) or, where CEDAR is absent, generated scans.

Measured, each end to end as a user pays it:
- single process: the signed model loaded as the CLI loads it, then one pass over every path;
- Spark `local[N]` for each `--workers` N: session start, `mapInPandas` (each Python worker reads the
  model once), scoring, the Parquet write (`tasks.scoring.batch_scoring.score_listing`, what `sigpipe score`
  runs); then the same job again on the warm session, where the workers already hold the model.
Reported: wall seconds and images/s of each, and each Spark run's ratio to the single process.

Usage: python bench/batch_scoring.py --images 240 --workers 1 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.cli_latency import BENCH_MODEL, registered_workspace  # noqa: E402
from tasks.registration.model_store import workspace_keys  # noqa: E402
from tasks.registration.signing import KeyFiles  # noqa: E402
from tasks.workspace.paths import ProjectPaths  # noqa: E402

DEFAULT_CEDAR = PROJECT_ROOT.parent / "shared" / "datasets" / "cedar" / "full_org"
GENERATED_SIZE = (480, 240)


def scan_images(count: int, cedar: Path, folder: Path) -> tuple[list[str], str]:
    """`count` image paths: CEDAR's genuine scans when present, else generated ones in `folder`."""
    if cedar.is_dir():
        scans = sorted(str(path) for path in cedar.glob("*.png"))[:count]
        if len(scans) == count:
            return scans, f"CEDAR genuine scans ({cedar})"
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        image = Image.new("L", GENERATED_SIZE, 250)
        points = [tuple(int(value) for value in point) for point in rng.uniform((20, 20), (460, 220), (8, 2))]
        ImageDraw.Draw(image).line(points, fill=20, width=4)
        paths.append(str(folder / f"scan_{index:04d}.png"))
        image.save(paths[-1])
    return paths, "generated scans"


def single_process(model_uri: str, keys: KeyFiles, paths: list[str]) -> dict[str, float]:
    """Load the signed model as the CLI does and answer every path in this process; seconds of each and images/s."""
    from tasks.registration.model_store import load_verified_model
    from tasks.serving.model_input import items_from

    started = time.perf_counter()
    model = load_verified_model(model_uri, keys).model
    loaded = time.perf_counter()
    answers = model.answers(items_from(paths))
    finished = time.perf_counter()
    assert all(not answer.error for answer in answers), {answer.error for answer in answers}
    return {
        "load_s": round(loaded - started, 2),
        "score_s": round(finished - loaded, 2),
        "total_s": round(finished - started, 2),
        "images_per_s": round(len(paths) / (finished - started), 2),
    }


def spark_runs(model_uri: str, keys: KeyFiles, paths: list[str], workers: int, scratch: Path) -> dict[str, float]:
    """`score_listing` on a fresh `local[workers]` session (cold: session, model loads, scoring,
    Parquet), then again on the same session (warm); seconds and images/s of each."""
    import pandas as pd

    from tasks.scoring.batch_scoring import score_listing, spark_session

    listing = pd.DataFrame({"path": paths, "claimed_writer": [""] * len(paths)})
    started = time.perf_counter()
    spark = spark_session(f"local[{workers}]", "ERROR")
    try:
        cold = score_listing(spark, model_uri, keys, listing, scratch / f"cold_{workers}.parquet", workers, False)
        cold_s = time.perf_counter() - started
        warm_started = time.perf_counter()
        warm = score_listing(spark, model_uri, keys, listing, scratch / f"warm_{workers}.parquet", workers, False)
        warm_s = time.perf_counter() - warm_started
    finally:
        spark.stop()
    assert cold.errors == warm.errors == 0
    return {
        "cold_total_s": round(cold_s, 2),
        "cold_images_per_s": round(len(paths) / cold_s, 2),
        "warm_total_s": round(warm_s, 2),
        "warm_images_per_s": round(len(paths) / warm_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--workers", type=int, action="append", default=[])
    parser.add_argument("--cedar", type=Path, default=DEFAULT_CEDAR)
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "results" / "batch_scoring.json")
    arguments = parser.parse_args()
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        params_file = registered_workspace(scratch, arguments.size)
        mlflow.set_tracking_uri(f"sqlite:///{scratch / 'mlruns' / 'mlflow.db'}")
        model_uri = f"models:/{BENCH_MODEL}@champion"
        paths, source = scan_images(arguments.images, arguments.cedar, scratch / "scans")
        keys = workspace_keys(ProjectPaths.from_root(scratch))
        baseline = single_process(model_uri, keys, paths)
        spark = {}
        for workers in arguments.workers or [1, os.cpu_count() or 1]:
            run = spark_runs(model_uri, keys, paths, workers, scratch)
            run["cold_ratio_to_single_process"] = round(run["cold_images_per_s"] / baseline["images_per_s"], 2)
            run["warm_ratio_to_single_process"] = round(run["warm_images_per_s"] / baseline["images_per_s"], 2)
            spark[f"local[{workers}]"] = run
        shutil.rmtree(params_file.parent / "mlruns", ignore_errors=True)
    report = {
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
        "images": arguments.images,
        "source": source,
        "size": arguments.size,
        "single_process_pyfunc": baseline,
        "spark": spark,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
