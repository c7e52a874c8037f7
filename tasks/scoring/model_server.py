"""The model server of `sigpipe serve` and `make up`: a signed model version, served with limits.

It replaces `mlflow models serve`, which imports the code shipped inside the artifact and accepts any
body. This one serves a version loaded as data (`tasks.registration.model_store.load_verified_model`: signature and
files checked, nothing of the artifact executed) and protects itself:

- body size: a request may carry at most the model's per-image byte limit (`register.max_image_bytes`)
  in base64, plus JSON framing (`ServerLimits.from_settings`); a larger declared length is refused with
  413 before any byte of the body is read, a larger stream as soon as it passes the limit;
- concurrency: at most `max_active` requests are read and answered at once; one more gets 503 at
  once (with Retry-After) instead of queueing its body in memory, and uvicorn refuses connections beyond
  `max_connections` with 503 as well. A request holds at most `MAX_ROWS` images (413 beyond: a body
  of many tiny rows costs far more memory as parsed rows than as bytes). So the server's memory stays
  within about max_active x (body limit x `BODY_MEMORY_FACTOR` + decoding threads x
  register.max_image_pixels x `DECODED_BYTES_PER_PIXEL`) above its idle size
  (`ServerLimits.memory_bound`; tests/integration/test_model_server.py checks it under 30 concurrent
  requests); a body that does not arrive within `body_seconds` gets 408, so slow clients cannot
  hold the active places forever (a reverse proxy that buffers bodies and times out slow headers
  is still wanted in front of a server others reach);
- errors: every 4xx/5xx is one line of JSON (`{"error_code", "message"}`, MLflow's shape, so existing
  clients read it), without a traceback or a path; the trace of a 500 goes to the server's log.

Requests are MLflow's scoring protocol: POST /invocations with JSON `dataframe_split` or
`dataframe_records` whose columns are `image` (base64 of each file's bytes) and optionally
`claimed_writer`; a `path` column is answered with a refusal per row (the server never opens a file a
client names). Answers are `{"predictions": [...], "model": name, "version": n}`; GET /ping and
/health answer when the model is loaded, GET /version names the model version served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from tasks.data.images import PreprocessSettings
from tasks.registration.model_store import LoadedModel
from tasks.serving.model_input import BASE64_CHARACTERS_PER_BYTE, CLAIM_COLUMN, IMAGE_COLUMN, PATH_COLUMN, items_from
from tasks.workspace.errors import ModelInputError
from tasks.workspace.files import json_ready

LOGGER = logging.getLogger(__name__)
INVOCATIONS_PATH = "/invocations"
HEALTH_PATHS = ("/ping", "/health")
VERSION_PATH = "/version"
KNOWN_COLUMNS = (IMAGE_COLUMN, CLAIM_COLUMN, PATH_COLUMN)
JSON_CONTENT_TYPE = "application/json"
FRAMING_BYTES = 1 << 16  # JSON syntax, column names and claimed writers around the base64 text
FALLBACK_MAX_IMAGE_BYTES = 32 << 20  # a model packaged without a byte limit: register.max_image_bytes' default
DEFAULT_MAX_ACTIVE = 2  # requests read and answered at once (the model itself answers one at a time)
DEFAULT_BODY_SECONDS = 60.0  # a body at the limit (about 43 MiB) over a 1 MB/s link, with room to spare
# Open connections (each one idle or being shed costs little: no body is read) uvicorn keeps per active
# request before it answers 503 itself, in plain text: a bound on connection floods, not the usual shedding.
CONNECTIONS_PER_ACTIVE = 32
BODY_MEMORY_FACTOR = 4  # body bytes, the JSON text, the decoded base64 and the rows, at most
MAX_ROWS = 64  # images per request; more is a 413 (the model answers in batches of 32 anyway)
DECODED_BYTES_PER_PIXEL = 4  # an image being decoded and converted (RGBA at most), per pixel
FALLBACK_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit, for a model without register.max_image_pixels
RETRY_AFTER_SECONDS = "1"
MODEL_VERSION_HEADER = "X-Model-Version"


@dataclass(frozen=True)
class ServerLimits:
    """What one request may carry and how many are served at once."""

    max_body_bytes: int
    max_active: int
    max_connections: int
    body_seconds: float  # how long a request's body may take to arrive
    memory_bound: int  # bytes the server may grow by under load, above its idle size (the stated bound)

    @classmethod
    def from_settings(
        cls,
        settings: PreprocessSettings,
        max_active: int = DEFAULT_MAX_ACTIVE,
        body_seconds: float = DEFAULT_BODY_SECONDS,
    ) -> ServerLimits:
        """Limits derived from the model's per-image byte limit (one image at the limit, base64, fits)."""
        image_bytes = settings.max_image_bytes or FALLBACK_MAX_IMAGE_BYTES
        body = math.ceil(image_bytes * BASE64_CHARACTERS_PER_BYTE) + FRAMING_BYTES
        connections = max_active * CONNECTIONS_PER_ACTIVE
        decoding = (os.cpu_count() or 1) * (settings.max_pixels or FALLBACK_MAX_PIXELS) * DECODED_BYTES_PER_PIXEL
        return cls(
            max_body_bytes=body,
            max_active=max_active,
            max_connections=connections,
            body_seconds=body_seconds,
            memory_bound=max_active * (body * BODY_MEMORY_FACTOR + decoding),
        )


class RequestError(Exception):
    """A request the server refuses: its HTTP status, MLflow error code and one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str) -> RequestError:
    """A 400 in MLflow's shape: the request itself is wrong, and `message` says how."""
    return RequestError(HTTPStatus.BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)


def too_large(limit: int) -> RequestError:
    """A 413 for a body above `limit` bytes, saying what one request may carry."""
    return RequestError(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        "REQUEST_LIMIT_EXCEEDED",
        f"the request body is above this server's limit of {limit} bytes (one image at the model's "
        "register.max_image_bytes, base64-encoded): send fewer or smaller images per request",
    )


def declared_length(headers: Any) -> int | None:
    """The Content-Length a client declared, or None (chunked or absent); a malformed one is a 400."""
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise bad_request("the Content-Length header is not a number")
    return int(value)


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to pass `limit` bytes."""
    declared = declared_length(request.headers)
    if declared is not None and declared > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def body_in_time(request: Any, limits: ServerLimits) -> bytes:
    """`read_body` within `limits.body_seconds`, else 408: a client that sends slowly frees its place."""
    try:
        return await asyncio.wait_for(read_body(request, limits.max_body_bytes), limits.body_seconds)
    except TimeoutError:
        message = f"the request body did not arrive within {limits.body_seconds:g} s: send it at once"
        raise RequestError(HTTPStatus.REQUEST_TIMEOUT, "REQUEST_TIMEOUT", message) from None


def table_of(content: object) -> tuple[list[str], list[list[object]]]:
    """(columns, rows) of a `dataframe_split` or `dataframe_records` request, or a 400 saying what to send."""
    if isinstance(content, dict) and isinstance(content.get("dataframe_split"), dict):
        split = content["dataframe_split"]
        columns, rows = split.get("columns"), split.get("data")
        if isinstance(columns, list) and isinstance(rows, list) and all(isinstance(row, list) for row in rows):
            if any(len(row) != len(columns) for row in rows):
                raise bad_request("every row of dataframe_split.data must have one value per column")
            return [str(column) for column in columns], rows
    if isinstance(content, dict) and isinstance(content.get("dataframe_records"), list):
        records = content["dataframe_records"]
        if all(isinstance(record, dict) for record in records):
            columns = list(dict.fromkeys(str(key) for record in records for key in record))
            return columns, [[record.get(column) for column in columns] for record in records]
    raise bad_request(
        "send JSON {'dataframe_split': {'columns': ['image'], 'data': [[<base64 of the image file>]]}} "
        "(or 'dataframe_records'); an optional 'claimed_writer' column asks whether that writer signed"
    )


def request_frame(body: bytes) -> Any:  # -> pandas.DataFrame
    """The request's rows as a DataFrame of known columns; a 400 names unknown columns and what is read."""
    import pandas as pd

    try:
        content = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_request(f"the body is not JSON ({type(error).__name__} at byte {getattr(error, 'pos', 0)})") from None
    columns, rows = table_of(content)
    if len(rows) > MAX_ROWS:
        too_many = f"{len(rows)} images in one request; this server takes {MAX_ROWS} at most"
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "REQUEST_LIMIT_EXCEEDED", too_many)
    unknown = [column for column in columns if column not in KNOWN_COLUMNS]
    if unknown or (IMAGE_COLUMN not in columns and PATH_COLUMN not in columns):
        raise bad_request(
            f"the input has the columns {columns}; the server reads '{IMAGE_COLUMN}' (base64 of each image "
            f"file's bytes) and optionally '{CLAIM_COLUMN}'" + (f"; unknown: {unknown}" if unknown else "")
        )
    return pd.DataFrame(rows, columns=columns, dtype=object)


class ModelService:
    """The loaded model, answered one request at a time (Keras models are not shared across threads)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model_lock = threading.Lock()

    def predictions(self, body: bytes) -> dict[str, object]:
        """The JSON answer to a request body: one prediction row per image, and the model version."""
        frame = request_frame(body)
        try:
            items = items_from(frame, accept_paths=False, max_bytes=self.loaded.model.settings.max_image_bytes)
        except ModelInputError as error:
            raise bad_request(str(error)) from error
        with self.model_lock:
            answers = self.loaded.model.answers(items)
        rows = [json_ready(answer.as_row()) for answer in answers]
        return {"predictions": rows, "model": self.loaded.name, "version": self.loaded.version}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Any:
    """One-line JSON error in MLflow's shape. The connection is closed after it: the body may be unread
    (a refused or shed request), and uvicorn would otherwise read and discard it to its end, holding
    the connection (and a place under `max_connections`) meanwhile."""
    from starlette.responses import JSONResponse

    headers = {**(headers or {}), "Connection": "close"}
    return JSONResponse({"error_code": code, "message": message}, status_code=status, headers=headers)


def create_app(service: ModelService, limits: ServerLimits) -> Any:  # -> starlette.applications.Starlette
    """The ASGI application: /invocations with the limits, /ping, /health and /version."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    active = asyncio.Semaphore(limits.max_active)
    version_header = {MODEL_VERSION_HEADER: f"{service.loaded.name}/{service.loaded.version}"}

    async def invocations(request: Request) -> Any:
        """POST /invocations: shed when busy, else read the body within the limits and answer it."""
        if active.locked():
            busy = f"the server is busy ({limits.max_active} requests in progress): retry shortly"
            unavailable = HTTPStatus.SERVICE_UNAVAILABLE
            return error_response(unavailable, "TEMPORARILY_UNAVAILABLE", busy, {"Retry-After": RETRY_AFTER_SECONDS})
        async with active:
            try:
                if not request.headers.get("content-type", "").startswith(JSON_CONTENT_TYPE):
                    wrong_type = f"send the request as {JSON_CONTENT_TYPE}"
                    raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "INVALID_PARAMETER_VALUE", wrong_type)
                body = await body_in_time(request, limits)
                answer = await run_in_threadpool(service.predictions, body)
            except RequestError as refused:
                return error_response(refused.status, refused.code, refused.message)
            except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing to log
                return error_response(HTTPStatus.BAD_REQUEST, "INVALID_PARAMETER_VALUE", "the client disconnected")
            except Exception:
                LOGGER.exception("predict failed")
                internal = "the model failed on this request (an internal error); the server's log has the details"
                return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", internal)
        return JSONResponse(answer, headers=version_header)

    async def health(request: Request) -> Any:
        """GET /ping and /health: the model is loaded (the server starts only once it is)."""
        return PlainTextResponse("OK\n", headers=version_header)

    async def version(request: Request) -> Any:
        """GET /version: the registered model name and version this server answers with."""
        return JSONResponse({"model": service.loaded.name, "version": service.loaded.version})

    routes = [Route(INVOCATIONS_PATH, invocations, methods=["POST"])]
    routes += [Route(path, health, methods=["GET"]) for path in HEALTH_PATHS]
    routes.append(Route(VERSION_PATH, version, methods=["GET"]))
    return Starlette(routes=routes)


def serve(
    loaded: LoadedModel,
    host: str,
    port: int,
    max_active: int = DEFAULT_MAX_ACTIVE,
    body_seconds: float = DEFAULT_BODY_SECONDS,
) -> None:
    """Serve `loaded` on host:port until SIGINT or SIGTERM (uvicorn's own handling: a graceful stop)."""
    import uvicorn

    limits = ServerLimits.from_settings(loaded.model.settings, max_active, body_seconds)
    application = create_app(ModelService(loaded), limits)
    uvicorn.run(
        application,
        host=host,
        port=port,
        workers=1,
        limit_concurrency=limits.max_connections,
        log_level="warning",
        server_header=False,
    )
