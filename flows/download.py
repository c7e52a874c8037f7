"""Stage `download`: bring the dataset named in `params.yaml` into `data/raw/`.

Run it with `python -m flows.download` (what `dvc repro download` does) or `sigpipe download`.
"""

from __future__ import annotations

from dataclasses import asdict

from flows._stage import pipeline_stage, run_entry_point, workspace_paths
from tasks.data.download import DownloadSummary, fetch_dataset
from tasks.workspace.config import parse_group, read_params_file
from tasks.workspace.files import write_json
from tasks.workspace.params_data import DataParams, DownloadParams, SyntheticParams
from tasks.workspace.paths import ProjectPaths

SKIPPED_SHOWN = 10  # skipped entries printed; all of them are in metrics/download.json


def fetch_dataset_task(
    data: DataParams, download: DownloadParams, synthetic: SyntheticParams, paths: ProjectPaths
) -> DownloadSummary:
    """Fetch the dataset into `data/raw/` (retries and resume happen inside, per HTTP request)."""
    return fetch_dataset(data, download, synthetic, paths)


@pipeline_stage("download")
def download_flow(params_file: str) -> dict[str, object]:
    """Read the `data`, `download` and `synthetic` parameters, fetch, and record what came in."""
    paths = workspace_paths(params_file)
    params = read_params_file(paths.params_file)
    data = parse_group(params, "data", DataParams, params_file)
    download = parse_group(params, "download", DownloadParams, params_file)
    synthetic = parse_group(params, "synthetic", SyntheticParams, params_file)
    summary = fetch_dataset_task(data, download, synthetic, paths)
    metrics = {**asdict(summary), "skipped_files": len(summary.skipped), "layout": data.layout}
    write_json(paths.download_metrics_file, metrics)
    for item in summary.skipped[:SKIPPED_SHOWN]:
        print(f"skipped {item.path}: {item.reason}")
    if len(summary.skipped) > SKIPPED_SHOWN:
        print(f"... {len(summary.skipped) - SKIPPED_SHOWN} more skipped, see {paths.download_metrics_file}")
    print(
        f"data/raw holds {summary.files} files ({summary.bytes / 1e6:.1f} MB) from {summary.source}; "
        f"{len(summary.skipped)} skipped"
    )
    return metrics


def main() -> None:
    """Entry point of `python -m flows.download`."""
    run_entry_point(download_flow)


if __name__ == "__main__":
    main()
