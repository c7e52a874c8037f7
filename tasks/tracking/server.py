"""The MLflow tracking server as a stage sees it: up when the stage starts (its health check),
or lost in the middle of the stage (one clear line instead of MLflow's stack trace).

Kept apart from `tasks.tracking.runs` (MLflow runs, metrics, models) because every stage entry point
imports it (`flows._stage`), including the stages that never log to MLflow: a small module keeps
their DVC dependencies small. Nothing here imports MLflow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.workspace.errors import ConfigError, TrackingServerLostError

TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
# A tracking server is asked once whether it is up before a stage logs anything to it: MLflow's own
# client would retry a dead server with backoff for minutes and then fail with a stack trace.
SERVER_SCHEMES = ("http://", "https://")
HEALTH_PATH = "/health"
HEALTH_TIMEOUT_SECONDS = 10
HEALTH_ATTEMPTS = 3
HEALTH_RETRY_SECONDS = 2.0
# MLflow's client retries a request to its server (connection refused, 5xx) this many times, with
# exponential backoff: about 4 minutes with MLflow's defaults, so a server restart goes unnoticed.
RETRIES_VARIABLE = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"


def check_tracking_server(uri: str) -> None:
    """For a tracking server (http or https URI), that it answers its health check, asked a few
    times over a few seconds (a server restarting); a store that is a database or a folder is not
    checked. Raises ConfigError naming the server and what to do."""
    import requests
    from tenacity import RetryError, Retrying, retry_if_result, stop_after_attempt, wait_fixed

    if not uri.startswith(SERVER_SCHEMES):
        return

    def why_not_healthy() -> str:
        """Empty when the server answers its health check, else why not."""
        try:
            response = requests.get(uri.rstrip("/") + HEALTH_PATH, timeout=HEALTH_TIMEOUT_SECONDS)
        except requests.RequestException as error:
            return type(error).__name__
        return "" if response.ok else f"HTTP {response.status_code}"

    polls = Retrying(
        retry=retry_if_result(bool), stop=stop_after_attempt(HEALTH_ATTEMPTS), wait=wait_fixed(HEALTH_RETRY_SECONDS)
    )
    try:
        polls(why_not_healthy)
        return
    except RetryError as error:
        reason = error.last_attempt.result()
    raise ConfigError(
        f"the MLflow tracking server {uri} ({TRACKING_URI_VARIABLE}) does not answer ({reason}): start it "
        f"(make team-up, or make up), or unset {TRACKING_URI_VARIABLE} to log to this workspace's own store"
    )


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then the exceptions it was raised from or during (`__cause__`, else `__context__`), each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def lost_server_reason(error: BaseException) -> str | None:
    """When `error` is MLflow's failure to reach its server (a `requests` error in the chain of
    exceptions it was raised from or during): that error's name; else None.

    Only an MlflowException counts (a dataset download's failure is not the tracking server's);
    if MLflow was never imported, the error cannot be one.
    """
    exceptions = sys.modules.get("mlflow.exceptions")
    if exceptions is None or not isinstance(error, exceptions.MlflowException):
        return None
    import requests

    return next(
        (type(link).__name__ for link in exception_chain(error) if isinstance(link, requests.RequestException)), None
    )


def response_was_cut(error: BaseException) -> bool:
    """Whether `error` is MLflow's failure of a request whose answer was cut off (the server died after
    the request reached it: a urllib3 ProtocolError, "Connection broken" or "Connection aborted", in its
    chain). MLflow's client does not resend such a POST (it may have been applied); a caller whose
    request is idempotent may. A refused connection (the server is away) is not a cut answer."""
    if lost_server_reason(error) is None:
        return False
    from urllib3.exceptions import ProtocolError

    return any(
        isinstance(link, ProtocolError) or any(isinstance(argument, ProtocolError) for argument in link.args)
        for link in exception_chain(error)
    )


@contextmanager
def tracking_server_loss_explained(stage: str) -> Iterator[None]:
    """Around a stage: an http(s) tracking server that stops answering mid-stage (after MLflow's own
    retries) becomes one TrackingServerLostError line saying what was left and what to do, instead
    of MLflow's stack trace. What is left is safe: the stage's run stays RUNNING until the next
    train or register run on this host marks it KILLED (`end_abandoned_runs`), and a model version
    whose registration was cut before its alias is deleted by the next register run on this host
    (`tasks.registration.registry.remove_abandoned_versions`).
    """
    uri = os.environ.get(TRACKING_URI_VARIABLE, "")
    try:
        yield
    except Exception as error:
        reason = lost_server_reason(error) if uri.startswith(SERVER_SCHEMES) else None
        if reason is None:
            raise
        retries = os.environ.get(RETRIES_VARIABLE, "MLflow's default number of")
        raise TrackingServerLostError(
            f"the MLflow tracking server {uri} stopped answering during the {stage} stage ({reason} after "
            f"{retries} retries, {RETRIES_VARIABLE}): the stage stopped, and DVC records nothing for it. "
            "The next train or register run on this machine marks its MLflow run KILLED and deletes a model "
            "version it left without an alias. Start the server again (make team-up) and rerun: dvc repro"
        ) from error
