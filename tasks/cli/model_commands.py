"""The `sigpipe` commands that use a registered model: predict, verify, score (Spark) and serve.

Each imports what it needs when it runs (MLflow and TensorFlow for predict and verify), so the
inputs are checked, and a mistake reported, before any of them loads. `tasks.cli.app` adds them to
the `sigpipe` app after the stage commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tasks.cli.model_loading import (
    champion_problem,
    described_model,
    load_signature_model,
    load_verified,
    resolve_model_uri,
    wait_for_a_version,
)
from tasks.scoring.champion_follower import DEFAULT_FOLLOW_SECONDS
from tasks.workspace.paths import PARAMS_FILE_NAME, ProjectPaths

if TYPE_CHECKING:
    from tasks.serving.answers import Answer
    from tasks.serving.model_input import InputItem as Item

DEFAULT_SERVE_PORT = 5001  # `sigpipe serve` and `make up`'s model server (MLflow's UI has 5000)
# tasks.scoring.model_server's defaults, kept here so that --help imports no server code (a test checks they agree).
DEFAULT_MAX_ACTIVE = 2
DEFAULT_BODY_SECONDS = 60.0
LOOPBACK = "127.0.0.1"
SCORER_URL_VARIABLE = "SIGPIPE_SCORER_URL"  # what `predict --server` reads when the option is left out

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model URI; default models:/<register.model_name>@champion."),
]


def echo_answers(answers: list[Answer], as_json: bool) -> None:
    """Print answers as JSON lines, or as table rows on stdout with errors on stderr."""
    import json

    from tasks.workspace.files import json_ready

    for answer in answers:
        row = answer.as_row()
        if as_json:
            typer.echo(json.dumps(json_ready({**row, "top_k": json.loads(str(row["top_k"]))})))
        elif answer.error:
            typer.echo(f"error: {answer.error}", err=True)
        else:
            top = ", ".join(f"{writer} {probability:.2f}" for writer, probability in answer.top_k)
            typer.echo(f"{answer.input}\t{answer.writer}\t{answer.confidence:.3f}\t[{top}]")


ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar=SCORER_URL_VARIABLE,
        help="URL of a running model server (sigpipe serve; make up starts one on "
        f"http://{LOOPBACK}:{DEFAULT_SERVE_PORT}): answers in about a second, no model loaded here.",
    ),
]


def answers_of(items: list[Item], model: str | None, server: str | None, params: Path) -> list[Answer]:
    """The answers for `items`: from the model server at `server`, or from the model loaded here."""
    if server is None:
        return load_signature_model(model, params).answers(items)
    from tasks.scoring.remote_scoring import served_answers
    from tasks.workspace.errors import ScorerError

    try:
        return served_answers(server, items)
    except ScorerError as error:
        typer.echo(
            f"error: {error}; or leave out --server (and unset {SCORER_URL_VARIABLE}) to load the model here", err=True
        )
        raise typer.Exit(code=1) from error


def predict(
    images: Annotated[list[Path], typer.Argument(help="Signature image files.")],
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
    params: Annotated[Path, typer.Option("--params", "-p", help="Workspace parameter file.")] = Path(PARAMS_FILE_NAME),
    server: ServerOption = None,
) -> None:
    """Who signed each image: writer (or unknown), calibrated confidence, top writers. Exit 1 if any image failed.

    Files that cannot be opened are reported first, before the model loads; the others are answered,
    by the model loaded in this process or, with --server, by a running model server."""
    from tasks.serving.answers import Answer
    from tasks.serving.model_input import input_problem, items_from

    if model is not None and server is not None:
        typer.echo(
            "error: --model and --server exclude each other: the server answers with the model it serves", err=True
        )
        raise typer.Exit(code=1)
    items = items_from([str(image) for image in images])
    problems = [input_problem(item) for item in items]
    unusable = [Answer.failed(item.name, problem) for item, problem in zip(items, problems, strict=True) if problem]
    echo_answers(unusable, as_json)  # at once: the model is loaded only for the files that can be opened
    usable = [item for item, problem in zip(items, problems, strict=True) if not problem]
    answers = answers_of(usable, model, server, params) if usable else []
    echo_answers(answers, as_json)
    if unusable or any(answer.error for answer in answers):
        raise typer.Exit(code=1)


def verify(
    image: Annotated[Path, typer.Argument(help="Signature image file.")],
    writer: Annotated[str, typer.Option("--writer", "-w", help="The claimed writer id.")],
    model: ModelOption = None,
    params: Annotated[Path, typer.Option("--params", "-p", help="Workspace parameter file.")] = Path(PARAMS_FILE_NAME),
) -> None:
    """Is IMAGE really WRITER's signature? Accept or reject, with the score and the threshold used.

    WRITER is the model's id or the dataset's own name for it (`1` for `001`); an image that cannot
    be opened is reported before the model loads."""
    from tasks.serving.answers import match_writer
    from tasks.serving.model_input import input_problem, items_from
    from tasks.workspace.errors import ModelInputError

    item = items_from(str(image))[0]
    if problem := input_problem(item):
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(code=1)
    signature_model = load_signature_model(model, params)
    try:
        writer = match_writer(writer, signature_model.classes)
    except ModelInputError as unknown:
        typer.echo(f"error: {unknown}", err=True)
        raise typer.Exit(code=1) from unknown
    score, accepted, error = signature_model.claim_score(item, writer)
    if error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1)
    verdict = "accept" if accepted else "reject"
    typer.echo(f"{verdict}\t{image}\twriter {writer}\tscore {score:.3f}\tthreshold {signature_model.threshold:.3f}")
    if not accepted:
        raise typer.Exit(code=2)


def score(
    source: Annotated[
        Path,
        typer.Argument(
            help="A folder of images, or a listing: a .csv with 'path' (and 'claimed_writer') columns, "
            "or a text file of paths."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Parquet folder to write, one row per image.")],
    model: ModelOption = None,
    master: Annotated[
        str, typer.Option("--master", help="Spark master: local[N] here, a cluster's URL (spark://host:7077).")
    ] = "local[*]",
    partitions: Annotated[
        int | None, typer.Option("--partitions", min=1, help="Spark partitions (default: Spark's default parallelism).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    params: Annotated[Path, typer.Option("--params", "-p", help="Workspace parameter file.")] = Path(PARAMS_FILE_NAME),
) -> None:
    """Score many images on Apache Spark with a signed model version: writer or unknown, confidence, the
    verdict on a claimed writer, error, as Parquet. An image that cannot be read gets its own error row."""
    import time

    from mlflow.exceptions import MlflowException

    from flows._stage import quiet_environment
    from tasks.cli.quiet import jvm_output_silenced, spark_log_level
    from tasks.registration.model_store import workspace_keys
    from tasks.scoring.batch_scoring import check_output, read_listing, score_listing, spark_session
    from tasks.workspace.errors import ConfigError, ModelFileError

    quiet_environment()
    started = time.perf_counter()
    try:
        listing = read_listing(source)  # a wrong source or output is reported before Spark starts
        check_output(output, overwrite)
        model_uri = resolve_model_uri(model, params)
        with jvm_output_silenced():
            spark = spark_session(master, spark_log_level())
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(f"scoring {len(listing)} images on Spark {master}; progress: {spark.sparkContext.uiWebUrl}")
    try:
        keys = workspace_keys(ProjectPaths.from_root(params.resolve().parent))
        summary = score_listing(spark, model_uri, keys, listing, output, partitions, overwrite)
    except ModelFileError as error:
        typer.echo(f"error: {described_model(model_uri)}: {error}", err=True)
        raise typer.Exit(code=1) from error
    except MlflowException as error:
        typer.echo(f"error: model {model_uri} cannot be loaded ({str(error).splitlines()[0]})", err=True)
        raise typer.Exit(code=1) from error
    finally:
        spark.stop()
    seconds = time.perf_counter() - started
    typer.echo(
        f"scored {summary.images} images with {model_uri} in {seconds:.1f} s "
        f"({summary.images / seconds:.1f} images/s), {summary.errors} with an error: {summary.output}"
    )


def serve(
    model: ModelOption = None,
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = DEFAULT_SERVE_PORT,
    host: Annotated[str, typer.Option("--host", help="Address to bind (a LAN one only behind a firewall).")] = LOOPBACK,
    max_active: Annotated[
        int,
        typer.Option("--max-active", min=1, help="Requests answered at once; one more gets 503 (bounded memory)."),
    ] = DEFAULT_MAX_ACTIVE,
    body_seconds: Annotated[
        float,
        typer.Option("--body-seconds", min=0.1, help="Time a request's body may take to arrive; later: 408."),
    ] = DEFAULT_BODY_SECONDS,
    follow_seconds: Annotated[
        float,
        typer.Option(
            "--follow-seconds",
            min=0,
            help="Seconds between looks at the alias served (models:/<name>@<alias>): a version it moves to is "
            "verified and served without a restart, or refused and logged; an alias that names no version yet "
            "is waited for; 0: never (and no alias: an error). An explicit version (models:/<name>/<n>) never moves.",
        ),
    ] = DEFAULT_FOLLOW_SECONDS,
    params: Annotated[Path, typer.Option("--params", "-p", help="Workspace parameter file.")] = Path(PARAMS_FILE_NAME),
) -> None:
    """Serve the champion (or --model) over HTTP, for `sigpipe predict --server` and any HTTP client
    (POST /invocations with base64 images). Only a version the register stage signed is served, read as
    data (no code of the artifact runs); requests are limited in size and number. The champion is followed:
    when it moves, the new version is checked and swapped in, and each answer names its version. Stops on
    Ctrl-C or SIGTERM."""
    from tasks.registration.model_store import workspace_keys
    from tasks.scoring.champion_follower import champion_follower
    from tasks.scoring.model_server import serve as serve_model
    from tasks.scoring.model_slot import ModelSlot
    from tasks.tracking.runs import tracking_uri
    from tasks.tracking.server import check_tracking_server
    from tasks.workspace.errors import ConfigError

    model_uri = resolve_model_uri(model, params)
    uri = tracking_uri(ProjectPaths.from_root(params.resolve().parent))
    try:
        check_tracking_server(uri)  # a dead server is named at once, not after MLflow's minutes of retries
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    if problem := champion_problem(model_uri):
        if follow_seconds <= 0:
            typer.echo(f"error: {problem}", err=True)
            raise typer.Exit(code=1)
        wait_for_a_version(model_uri, follow_seconds, uri)  # the alias is followed: its first version will come
    slot = ModelSlot(load_verified(model_uri, params))
    keys = workspace_keys(ProjectPaths.from_root(params.resolve().parent))
    follower = champion_follower(slot, model_uri, keys, uri, follow_seconds)
    following = f", following it every {follow_seconds:g} s" if follower else ""
    typer.echo(
        f"serving {slot.current.name} version {slot.current.version} ({model_uri}{following}) on "
        f"http://{host}:{port} (sigpipe predict --server http://{host}:{port} IMAGE)"
    )
    serve_model(slot, host, port, max_active, body_seconds, follower)
