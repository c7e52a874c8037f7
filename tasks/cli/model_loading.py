"""Loading a registered model version for a `sigpipe` command: which version, from which tracking store,
checked and read as data; or one line saying why not (the command then exits 1)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from tasks.workspace.paths import ProjectPaths

ALIAS_URI = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)")


# MLflow's error codes for a registered model, or an alias of one, that does not exist (yet).
NOT_REGISTERED_YET = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def described_model(model_uri: str) -> str:
    """`model_uri`, plus the version it resolves to when it names an alias (`models:/name@alias`):
    the version to restore or replace when its files are damaged."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    match = ALIAS_URI.fullmatch(model_uri)
    if match is None:
        return model_uri
    try:
        version = MlflowClient().get_model_version_by_alias(match["name"], match["alias"]).version
    except MlflowException:
        return model_uri
    return f"{model_uri} (version {version})"


def resolve_model_uri(model_uri: str | None, params_file: Path) -> str:
    """`model_uri`, or the workspace's champion (`models:/<register.model_name>@champion`), with
    MLflow pointed at the workspace's store (or MLFLOW_TRACKING_URI's server); exits with one line
    when the parameter file cannot say which model."""
    import mlflow

    from tasks.tracking.runs import tracking_uri
    from tasks.workspace.config import load_group
    from tasks.workspace.errors import ConfigError
    from tasks.workspace.params_model import RegisterParams

    paths = ProjectPaths.from_root(params_file.resolve().parent)
    if model_uri is None:
        try:
            name = load_group(paths.params_file, "register", RegisterParams).model_name
        except ConfigError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=1) from error
        model_uri = f"models:/{name}@champion"
    mlflow.set_tracking_uri(tracking_uri(paths))
    return model_uri


def load_verified(model_uri: str | None, params_file: Path):  # -> tasks.registration.model_store.LoadedModel
    """Load a registered model version as data, once its signature and files are checked
    (`tasks.registration.model_store`), pointing MLflow at the workspace store; or exit with one line."""
    from mlflow.exceptions import MlflowException

    from flows._stage import quiet_environment
    from tasks.cli.quiet import import_tensorflow
    from tasks.registration.model_store import load_verified_model, workspace_keys
    from tasks.workspace.errors import ModelFileError

    quiet_environment()
    import_tensorflow()  # before Keras reads the model, which imports it
    model_uri = resolve_model_uri(model_uri, params_file)
    keys = workspace_keys(ProjectPaths.from_root(params_file.resolve().parent))
    try:
        return load_verified_model(model_uri, keys)
    except ModelFileError as error:
        typer.echo(f"error: {described_model(model_uri)}: {error}", err=True)
        raise typer.Exit(code=1) from error
    except (MlflowException, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        typer.echo(
            f"error: model {model_uri} cannot be loaded ({first_line}). Run the pipeline (dvc repro) to register "
            "one, or pass --model with an existing URI.",
            err=True,
        )
        raise typer.Exit(code=1) from error


def load_signature_model(model_uri: str | None, params_file: Path):  # -> SignatureClassifier
    """The model of `load_verified`."""
    return load_verified(model_uri, params_file).model


def wait_for_a_version(model_uri: str, poll_seconds: float, tracking_uri: str | None = None) -> None:
    """Block until the alias `model_uri` names a version, looking every `poll_seconds`: a model server
    started before any pipeline run registered one (`make up` in a fresh clone) serves the first
    champion without a restart. Only "no such model or alias yet" is waited for: any other registry
    error ends the command with that error, and Ctrl-C ends it without a traceback.

    The first Ctrl-C sets a flag that the loop reads (in the main thread) rather than raising
    KeyboardInterrupt wherever the interpreter happens to be: raised inside a library's finaliser or
    callback (MLflow's store, SQLAlchemy's pool) it is printed as "Exception ignored" and lost, and the
    wait went on. The registry call in flight finishes first (seconds at most); a second Ctrl-C does not wait."""
    import signal
    import threading

    interrupted = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # installed by C code, not Python: Python's own is what a second Ctrl-C should meet
        previous = signal.default_int_handler

    def on_interrupt(*_: object) -> None:
        """The first Ctrl-C: stop after the registry call in flight; a second one interrupts it (Python's own)."""
        interrupted.set()
        signal.signal(signal.SIGINT, previous)

    if in_main_thread:
        signal.signal(signal.SIGINT, on_interrupt)
    try:
        typer.echo(f"no model version is {model_uri} yet: waiting for one, looking every {poll_seconds:g} s")
        while not interrupted.is_set() and not alias_has_version(model_uri, tracking_uri):
            interrupted.wait(poll_seconds)
    except KeyboardInterrupt:  # a second Ctrl-C, or a wait outside the main thread: Python's own
        interrupted.set()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        typer.echo(f"stopped while waiting for {model_uri}")
        raise typer.Exit(code=0)


def alias_has_version(model_uri: str, tracking_uri: str | None = None) -> bool:
    """Whether the alias URI `model_uri` names a version now in the store `tracking_uri` (None: MLflow's
    current one); False while its model or alias does not exist yet; any other registry error is named
    and ends the command (exit code 1)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    match = ALIAS_URI.fullmatch(model_uri)
    if match is None:
        return True
    try:
        MlflowClient(tracking_uri).get_model_version_by_alias(match["name"], match["alias"])
    except MlflowException as error:
        if error.error_code in NOT_REGISTERED_YET:
            return False
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        typer.echo(f"error: {model_uri} cannot be read from the registry: {first_line}", err=True)
        raise typer.Exit(code=1) from error
    return True


def champion_problem(model_uri: str) -> str:
    """Why `model_uri` names no model version in the tracking store ("" when it does, or is no alias URI)."""
    if ALIAS_URI.fullmatch(model_uri) is None or described_model(model_uri) != model_uri:
        return ""
    return f"no model version is {model_uri}: run the pipeline (make demo, dvc repro) to register one, or pass --model"
