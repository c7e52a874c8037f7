"""Answers from a running model server (`sigpipe serve`, tasks/scoring/model_server.py, which `make up`
starts too) instead of a model loaded in this process.

Loading the model is what makes a one-shot `sigpipe predict` slow (TensorFlow, Keras, MLflow and
InceptionV3 take seconds to import and build; bench/README.md); a resident server pays that once.
The client sends each image's bytes, base64-encoded, in the `image` column the served model reads
(it refuses paths: it never opens a file a client names) and turns the rows it gets back into the
same answers an in-process model gives. It imports neither TensorFlow nor MLflow.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from tasks.serving.answers import Answer
from tasks.serving.model_input import IMAGE_COLUMN, InputItem
from tasks.workspace.errors import ScorerError

INVOCATIONS_PATH = "/invocations"  # the scoring endpoint (MLflow's protocol)
REQUEST_TIMEOUT_SECONDS = 300  # a large batch of images on a busy CPU server
ERROR_MESSAGE_CHARACTERS = 300  # of a server's error body, in the one-line error

JsonCell = str | int | float | bool | None  # one cell of a served model's JSON answer row


def encoded_image(item: InputItem) -> str:
    """The base64 text of an input's encoded image (a file is read here, by the client)."""
    data = item.source.read_bytes() if isinstance(item.source, Path) else item.source
    if data is None:
        raise ValueError(f"{item.name}: no image to send")
    return base64.b64encode(data).decode("ascii")


def number(value: JsonCell) -> float:
    """A float from a JSON cell (null for rows without numbers)."""
    return float("nan") if value is None else float(value)


def answer_from_row(row: Mapping[str, JsonCell], name: str) -> Answer:
    """The Answer of one row of the served model's output, shown under the input's own `name`."""
    top_k = json.loads(str(row.get("top_k") or "[]"))
    class_id = row.get("class_id")
    claim_accepted = row.get("claim_accepted")
    return Answer(
        input=name,
        writer=str(row.get("writer") or ""),
        class_id=-1 if class_id is None or (isinstance(class_id, float) and math.isnan(class_id)) else int(class_id),
        confidence=number(row.get("confidence")),
        verification_score=number(row.get("verification_score")),
        top_k=[(str(writer), float(probability)) for writer, probability in top_k],
        error=str(row.get("error") or ""),
        claimed_writer=str(row.get("claimed_writer") or ""),
        claim_score=number(row.get("claim_score")),
        claim_accepted=claim_accepted if isinstance(claim_accepted, bool) else None,
    )


def server_message(body: str) -> str:
    """The `message` of an MLflow error body, or the body's start."""
    try:
        message = json.loads(body).get("message", body)
    except (ValueError, AttributeError):
        message = body
    return " ".join(str(message).split())[:ERROR_MESSAGE_CHARACTERS]


def served_answers(url: str, items: Sequence[InputItem]) -> list[Answer]:
    """Score `items` (files that can be opened, or encoded bytes) on the model server at `url`, one
    answer per item, in order. Raises ScorerError, naming the server and what to do, when it does
    not answer or refuses the request."""
    import requests

    payload: dict[str, dict[str, list[str] | list[list[str]]]] = {
        "dataframe_split": {"columns": [IMAGE_COLUMN], "data": [[encoded_image(item)] for item in items]}
    }
    endpoint = url.rstrip("/") + INVOCATIONS_PATH
    try:
        response = requests.post(endpoint, json=payload, timeout=REQUEST_TIMEOUT_SECONDS)
    except requests.RequestException as error:
        raise ScorerError(
            f"the model server {url} does not answer ({type(error).__name__}): start it (sigpipe serve, or make up)"
        ) from None
    if response.status_code != 200:
        raise ScorerError(
            f"the model server {url} refused the request (HTTP {response.status_code}: "
            f"{server_message(response.text)}); is it serving this project's packaged model (sigpipe serve)?"
        )
    try:
        rows = response.json()["predictions"]
    except (ValueError, KeyError, TypeError):
        raise ScorerError(
            f"the model server {url} answered without predictions ({server_message(response.text)}): "
            "is it a model server (sigpipe serve)?"
        ) from None
    if len(rows) != len(items):
        raise ScorerError(f"the model server {url} answered {len(rows)} rows for {len(items)} images")
    return [answer_from_row(row, item.name) for row, item in zip(rows, items, strict=True)]
