"""Screenshots of the two UIs a user reads, taken with headless Chromium, for the README's tour.

Run after `make up` and one deployment run (the README's "From a fresh clone..." block):
- the Prefect UI's page of the newest `signature-pipeline` flow run (stage runs nested under it,
  the report and timing artifacts);
- the MLflow UI's runs table of the `tracking.experiment` experiment, in its classic ML view.

Chromium is Debian's (`apt-get install chromium`); `--virtual-time-budget` lets each single-page
app fetch and render its data before the picture is taken. Usage:
    make screenshots            # or: python docs/ui_screenshots.py --output docs/images
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from tasks.workspace.config import load_group
from tasks.workspace.params_model import TrackingParams

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = PROJECT_ROOT / "docs" / "images"
PIPELINE_FLOW = "signature-pipeline"
PREFECT_PICTURE = "prefect_pipeline_run.png"
MLFLOW_PICTURE = "mlflow_runs_table.png"
WINDOW = "1600,1000"
RENDER_BUDGET_MS = 20_000  # virtual time for the page's scripts and requests
CHROMIUM_TIMEOUT_SECONDS = 120
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    """The Chromium executable on PATH, or an error saying how to install it."""
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    raise SystemExit("error: no Chromium on PATH: install it (Debian: apt-get install chromium), then rerun")


def newest_pipeline_run(prefect_api: str) -> str:
    """The id of the newest `signature-pipeline` flow run on the Prefect server (Prefect's own client)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[PIPELINE_FLOW])), sort=FlowRunSort.START_TIME_DESC, limit=1
        )
    if not runs:
        raise SystemExit(f"error: no '{PIPELINE_FLOW}' flow run on {prefect_api}: run the deployment first")
    return str(runs[0].id)


def experiment_id(mlflow_url: str, name: str) -> str:
    """The id of MLflow experiment `name` on the tracking server (MLflow's own client)."""
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri=mlflow_url).get_experiment_by_name(name)
    if experiment is None:
        raise SystemExit(f"error: no MLflow experiment '{name}' on {mlflow_url}: run the pipeline first")
    return experiment.experiment_id


def screenshot(url: str, picture: Path) -> None:
    """Render `url` in headless Chromium and save what the window shows to `picture` (PNG)."""
    picture.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:  # a throwaway profile: no state from earlier visits
        subprocess.run(
            [
                browser(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW}",
                f"--virtual-time-budget={RENDER_BUDGET_MS}",
                f"--screenshot={picture}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=CHROMIUM_TIMEOUT_SECONDS,
        )
    print(f"{picture}: {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefect-url", default="http://127.0.0.1:4200")
    parser.add_argument("--mlflow-url", default="http://127.0.0.1:5000")
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args()

    run_id = newest_pipeline_run(f"{arguments.prefect_url}/api")
    screenshot(f"{arguments.prefect_url}/runs/flow-run/{run_id}", arguments.output / PREFECT_PICTURE)
    experiment = load_group(arguments.params, "tracking", TrackingParams).experiment
    identifier = experiment_id(arguments.mlflow_url, experiment)
    screenshot(
        f"{arguments.mlflow_url}/#/experiments/{identifier}/runs?workflowType=machine_learning",
        arguments.output / MLFLOW_PICTURE,
    )


if __name__ == "__main__":
    main()
