"""Stage `prepare`: manifest, split and preprocessed images from `data/raw/`.

Run it with `python -m flows.prepare` (what `dvc repro prepare` does) or `sigpipe prepare`.
"""

from __future__ import annotations

import shutil

from flows._stage import pipeline_stage, run_entry_point, workspace_paths
from tasks.data.prepare import PrepareSummary, prepare_dataset, prepare_metrics
from tasks.workspace.config import parse_group, parse_layout, read_params_file
from tasks.workspace.files import write_json
from tasks.workspace.params_data import PrepareParams
from tasks.workspace.paths import ProjectPaths


def prepare_task(paths: ProjectPaths, layout: str, params: PrepareParams) -> PrepareSummary:
    """Preprocess every image once, split per writer, write manifest and data report."""
    summary, _listing, skipped = prepare_dataset(paths, layout, params)
    for item in skipped[:10]:
        print(f"skipped {item.path}: {item.reason}")
    if len(skipped) > 10:
        print(f"... {len(skipped) - 10} more skipped files, see {paths.skipped_file}")
    return summary


@pipeline_stage("prepare")
def prepare_flow(params_file: str) -> dict[str, object]:
    """Read `data.layout` and the `prepare` parameters, rebuild `data/prepared/`, write metrics."""
    paths = workspace_paths(params_file)
    params = read_params_file(paths.params_file)
    layout = parse_layout(params, params_file)
    prepare = parse_group(params, "prepare", PrepareParams, params_file)
    shutil.rmtree(paths.prepared_dir, ignore_errors=True)
    paths.prepared_dir.mkdir(parents=True)
    summary = prepare_task(paths, layout, prepare)
    metrics = prepare_metrics(summary)
    write_json(paths.prepare_metrics_file, metrics)
    print(
        f"manifest: {summary.manifest_rows} images of {summary.writers} writers, "
        f"{summary.skipped} skipped; report in {paths.data_report_file}"
    )
    return metrics


def main() -> None:
    """Entry point of `python -m flows.prepare`."""
    run_entry_point(prepare_flow)


if __name__ == "__main__":
    main()
