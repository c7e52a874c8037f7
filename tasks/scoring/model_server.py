"""The model server of `sigpipe serve` and `make up`: a signed model version, served with limits.

It replaces `mlflow models serve`, which imports the code shipped inside the artifact and accepts any
body. This one serves a version loaded as data (`tasks.registration.model_store.load_verified_model`: signature and
files checked, nothing of the artifact executed) and protects itself:

- body size: a request may carry at most the model's per-image byte limit (`register.max_image_bytes`)
  in base64, plus JSON framing (`ServerLimits.from_settings`); a larger declared length is refused with
  413 before any byte of the body is read, a larger stream as soon as it passes the limit;
- concurrency: at most `max_active` requests are read and answered at once; one more gets 503 at
  once (with Retry-After) instead of queueing its body in memory, and uvicorn refuses connections beyond
  `max_connections` with 503 as well. A request holds at most `request_body.MAX_ROWS` images (413 beyond: a body
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
client names). Answers are `{"predictions": [...], "model": name, "version": n}` with the header
`X-Model-Version: name/n`, naming the version that gave them; GET /ping and /health answer when the model
is loaded, GET /version names the version served now. Started on an alias, the server follows it
(`tasks.scoring.champion_follower`): a moved champion is verified and swapped in without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from tasks.data.images import PreprocessSettings
from tasks.registration.model_store import LoadedModel
from tasks.scoring.champion_follower import ChampionFollower
from tasks.scoring.model_slot import ModelSlot
from tasks.scoring.request_body import RequestError, bad_request, read_body, request_frame
from tasks.serving.model_input import BASE64_CHARACTERS_PER_BYTE, items_from
from tasks.workspace.errors import ModelInputError
from tasks.workspace.files import json_ready

LOGGER = logging.getLogger(__name__)
INVOCATIONS_PATH = "/invocations"
HEALTH_PATHS = ("/ping", "/health")
VERSION_PATH = "/version"
JSON_CONTENT_TYPE = "application/json"
FRAMING_BYTES = 1 << 16  # JSON syntax, column names and claimed writers around the base64 text
FALLBACK_MAX_IMAGE_BYTES = 32 << 20  # a model packaged without a byte limit: register.max_image_bytes' default
DEFAULT_MAX_ACTIVE = 2  # requests read and answered at once (the model itself answers one at a time)
DEFAULT_BODY_SECONDS = 60.0  # a body at the limit (about 43 MiB) over a 1 MB/s link, with room to spare
# Open connections (each one idle or being shed costs little: no body is read) uvicorn keeps per active
# request before it answers 503 itself, in plain text: a bound on connection floods, not the usual shedding.
CONNECTIONS_PER_ACTIVE = 32
BODY_MEMORY_FACTOR = 4  # body bytes, the JSON text, the decoded base64 and the rows, at most
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


async def body_in_time(request: Any, limits: ServerLimits) -> bytes:
    """`read_body` within `limits.body_seconds`, else 408: a client that sends slowly frees its place."""
    try:
        return await asyncio.wait_for(read_body(request, limits.max_body_bytes), limits.body_seconds)
    except TimeoutError:
        message = f"the request body did not arrive within {limits.body_seconds:g} s: send it at once"
        raise RequestError(HTTPStatus.REQUEST_TIMEOUT, "REQUEST_TIMEOUT", message) from None


class ModelService:
    """The served model (`slot`, swapped by the champion follower), answering one request at a time
    (Keras models are not shared across threads)."""

    def __init__(self, slot: ModelSlot) -> None:
        self.slot = slot
        self.model_lock = threading.Lock()

    def predictions(self, body: bytes, loaded: LoadedModel) -> dict[str, object]:
        """The JSON answer to a request body from `loaded`: one prediction row per image, and its version."""
        frame = request_frame(body)
        try:
            items = items_from(frame, accept_paths=False, max_bytes=loaded.model.settings.max_image_bytes)
        except ModelInputError as error:
            raise bad_request(str(error)) from error
        with self.model_lock:
            answers = loaded.model.answers(items)
        rows = [json_ready(answer.as_row()) for answer in answers]
        return {"predictions": rows, "model": loaded.name, "version": loaded.version}


def version_header(loaded: LoadedModel) -> dict[str, str]:
    """The header naming the model version of an answer."""
    return {MODEL_VERSION_HEADER: f"{loaded.name}/{loaded.version}"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Any:
    """One-line JSON error in MLflow's shape. The connection is closed after it: the body may be unread
    (a refused or shed request), and uvicorn would otherwise read and discard it to its end, holding
    the connection (and a place under `max_connections`) meanwhile."""
    from starlette.responses import JSONResponse

    headers = {**(headers or {}), "Connection": "close"}
    return JSONResponse({"error_code": code, "message": message}, status_code=status, headers=headers)


def create_app(
    service: ModelService, limits: ServerLimits, follower: ChampionFollower | None = None
) -> Any:  # -> starlette.applications.Starlette
    """The ASGI application: /invocations with the limits, /ping, /health and /version; `follower`
    polls while it runs."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    active = asyncio.Semaphore(limits.max_active)

    async def invocations(request: Request) -> Any:
        """POST /invocations: shed when busy, else read the body within the limits and answer it."""
        if active.locked():
            busy = f"the server is busy ({limits.max_active} requests in progress): retry shortly"
            unavailable = HTTPStatus.SERVICE_UNAVAILABLE
            return error_response(unavailable, "TEMPORARILY_UNAVAILABLE", busy, {"Retry-After": RETRY_AFTER_SECONDS})
        async with active:
            with service.slot.borrowed() as loaded:  # the version this request is answered with, to its end
                return await answered(request, loaded)

    async def answered(request: Request, loaded: LoadedModel) -> Any:
        """The answer to one admitted request by `loaded` (its version in a header), or a one-line refusal."""
        try:
            if not request.headers.get("content-type", "").startswith(JSON_CONTENT_TYPE):
                wrong_type = f"send the request as {JSON_CONTENT_TYPE}"
                raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "INVALID_PARAMETER_VALUE", wrong_type)
            body = await body_in_time(request, limits)
            answer = await run_in_threadpool(service.predictions, body, loaded)
        except RequestError as refused:
            return error_response(refused.status, refused.code, refused.message)
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing to log
            return error_response(HTTPStatus.BAD_REQUEST, "INVALID_PARAMETER_VALUE", "the client disconnected")
        except Exception:
            LOGGER.exception("predict failed")
            internal = "the model failed on this request (an internal error); the server's log has the details"
            return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", internal)
        return JSONResponse(answer, headers=version_header(loaded))

    async def health(request: Request) -> Any:
        """GET /ping and /health: the model is loaded (the server starts only once it is)."""
        return PlainTextResponse("OK\n", headers=version_header(service.slot.current))

    async def version(request: Request) -> Any:
        """GET /version: the registered model name and version new requests are answered with."""
        loaded = service.slot.current
        return JSONResponse({"model": loaded.name, "version": loaded.version})

    @asynccontextmanager
    async def following(app: Starlette) -> AsyncIterator[None]:
        """The follower polls while the server runs, and stops before it exits."""
        if follower is not None:
            follower.start()
        try:
            yield
        finally:
            if follower is not None:
                await asyncio.to_thread(follower.stop)

    routes = [Route(INVOCATIONS_PATH, invocations, methods=["POST"])]
    routes += [Route(path, health, methods=["GET"]) for path in HEALTH_PATHS]
    routes.append(Route(VERSION_PATH, version, methods=["GET"]))
    return Starlette(routes=routes, lifespan=following)


def serve(
    slot: ModelSlot,
    host: str,
    port: int,
    max_active: int = DEFAULT_MAX_ACTIVE,
    body_seconds: float = DEFAULT_BODY_SECONDS,
    follower: ChampionFollower | None = None,
) -> None:
    """Serve `slot`'s model on host:port until SIGINT or SIGTERM (uvicorn's own handling: a graceful stop),
    swapping in the versions `follower` verifies. The limits are those of the version served at start."""
    import uvicorn

    limits = ServerLimits.from_settings(slot.current.model.settings, max_active, body_seconds)
    application = create_app(ModelService(slot), limits, follower)
    uvicorn.run(
        application,
        host=host,
        port=port,
        workers=1,
        limit_concurrency=limits.max_connections,
        log_level="warning",
        server_header=False,
    )
