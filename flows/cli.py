"""`sigpipe`: the command line of signature-pipeline (one command per stage so far)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows._stage import run_stage
from flows.calibrate import calibrate_flow
from flows.download import download_flow
from flows.evaluate import evaluate_flow
from flows.prepare import prepare_flow
from flows.train import train_flow
from tasks.paths import PARAMS_FILE_NAME

app = typer.Typer(
    help="Signature pipeline: download, prepare, train, evaluate, calibrate (register: next).", no_args_is_help=True
)

ParamsOption = Annotated[
    Path,
    typer.Option("--params", "-p", help="Parameter file; its folder is the workspace.", exists=True, dir_okay=False),
]


@app.command()
def download(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Fetch the dataset named by `data.source` into data/raw/."""
    run_stage(download_flow, str(params.resolve()))


@app.command()
def prepare(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Preprocess data/raw/ into data/prepared/ (manifest, split, images, data report)."""
    run_stage(prepare_flow, str(params.resolve()))


@app.command()
def train(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Train the classifier on data/prepared/ (resumes an interrupted run), logged to MLflow."""
    run_stage(train_flow, str(params.resolve()))


@app.command()
def evaluate(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Score the test split: identification and verification metrics, plots."""
    run_stage(evaluate_flow, str(params.resolve()))


@app.command()
def calibrate(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Fit the temperature and the "unknown" threshold on calibration data; report them on test."""
    run_stage(calibrate_flow, str(params.resolve()))


if __name__ == "__main__":
    app()
