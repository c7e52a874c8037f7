"""`sigpipe`: the command line of signature-pipeline (one command per stage, and predict / verify).

Each command imports what it needs when it runs (Prefect for the stages, MLflow and TensorFlow for
predict and verify), so the inputs are checked, and a mistake reported, before any of them loads.
Unless `--verbose` is given, the libraries' own warnings and logs are kept off the terminal
(`tasks.cli.quiet`): they are set up before the first of them is imported. The commands that use a
registered model (predict, verify, score, serve) are `tasks.cli.model_commands`; enrol and remove, which
change who the model knows without retraining, are `tasks.cli.enrolment_commands`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tasks.cli.enrolment_commands import enrol, remove
from tasks.cli.model_commands import predict, score, serve, verify
from tasks.cli.quiet import quiet_libraries
from tasks.runtime.exit import no_collection_at_exit
from tasks.workspace.paths import PARAMS_FILE_NAME

app = typer.Typer(
    help="Signature pipeline: the pipeline stages (download ... register); predict and verify.",
    no_args_is_help=True,
)


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Also show the libraries' warnings and logs (TensorFlow, MLflow, Keras)."),
    ] = False,
) -> None:
    """Signature pipeline: the pipeline stages (download ... register); predict and verify."""
    if not verbose:
        quiet_libraries()


ParamsOption = Annotated[
    Path,
    typer.Option("--params", "-p", help="Parameter file; its folder is the workspace.", exists=True, dir_okay=False),
]


@app.command()
def download(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Fetch the dataset named by `data.source` into data/raw/."""
    from flows._stage import run_stage
    from flows.download import download_flow

    run_stage(download_flow, str(params.resolve()))


@app.command()
def prepare(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Preprocess data/raw/ into data/prepared/ (manifest, split, images, data report)."""
    from flows._stage import run_stage
    from flows.prepare import prepare_flow

    run_stage(prepare_flow, str(params.resolve()))


@app.command()
def embed(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Run every prepared image through the frozen base once, into data/embeddings/."""
    from flows._stage import run_stage
    from flows.embed import embed_flow

    run_stage(embed_flow, str(params.resolve()))


@app.command()
def train(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Fit the verifier and the head on data/embeddings/ (a Keras head resumes an interrupted run), logged to MLflow."""
    from flows._stage import run_stage
    from flows.train import train_flow

    run_stage(train_flow, str(params.resolve()))


@app.command()
def evaluate(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Score the test split: identification and verification metrics, plots."""
    from flows._stage import run_stage
    from flows.evaluate import evaluate_flow

    run_stage(evaluate_flow, str(params.resolve()))


@app.command()
def calibrate(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Fit the confidence and the "unknown" threshold on validation and calibration data; report on test."""
    from flows._stage import run_stage
    from flows.calibrate import calibrate_flow

    run_stage(calibrate_flow, str(params.resolve()))


@app.command()
def package(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Build the classifier users load (frozen base + trained head), check it against evaluate's scores."""
    from flows._stage import run_stage
    from flows.package import package_flow

    run_stage(package_flow, str(params.resolve()))


@app.command()
def register(params: ParamsOption = Path(PARAMS_FILE_NAME)) -> None:
    """Log, sign and register the packaged model (champion only if it beats the current one)."""
    from flows._stage import run_stage
    from flows.register import register_flow

    run_stage(register_flow, str(params.resolve()))


# After the stage commands, so that `sigpipe --help` lists them in this order.
for command in (predict, verify, score, serve, enrol, remove):
    app.command()(command)


def run() -> None:
    """The `sigpipe` command: the app, then an exit without the collector's last passes
    (`tasks.runtime.exit`; tests call `app` itself)."""
    with no_collection_at_exit():
        app()


if __name__ == "__main__":
    run()
