"""What the model server reads of a request: its body within a byte limit, and its rows as a DataFrame.

Every refusal is a `RequestError` (an HTTP status, MLflow's error code, one line saying what to send),
which `tasks.scoring.model_server` answers as one line of JSON.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from tasks.serving.model_input import CLAIM_COLUMN, IMAGE_COLUMN, PATH_COLUMN

KNOWN_COLUMNS = (IMAGE_COLUMN, CLAIM_COLUMN, PATH_COLUMN)
MAX_ROWS = 64  # images per request; more is a 413 (the model answers in batches of 32 anyway)


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
