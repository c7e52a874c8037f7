"""A packaged model's inputs: images as base64 text, bytes or file paths, one `InputItem` each.

Callers pass a DataFrame with an `image` (base64) or a `path` column (and optionally a
`claimed_writer` column), a list of paths or of encoded image bytes, or one path. An input that
cannot be used (bad base64, too large, a path the served model refuses, a file that cannot be
opened) becomes an item carrying its one-line error, so the others are still answered.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tasks.workspace.errors import ModelInputError

PATH_COLUMN = "path"
IMAGE_COLUMN = "image"
CLAIM_COLUMN = "claimed_writer"  # optional input: the writer a row claims signed its image
PATHS_REFUSED = (
    "file paths are not accepted by the model server (it never opens a file a client names): "
    f"send the file's bytes base64-encoded in the '{IMAGE_COLUMN}' column"
)
BASE64_CHARACTERS_PER_BYTE = 4 / 3  # base64 writes 4 characters for every 3 bytes


@dataclass(frozen=True)
class InputItem:
    """One image to score: a display name and a path or encoded bytes (or why it has neither)."""

    name: str
    source: Path | bytes | None
    error: str = ""
    claim: str = ""  # the writer this input claims signed it, as the caller names it ("" for none)


def too_large(name: str, size: int, max_bytes: int) -> str:
    """The error of an encoded image above the model's byte limit."""
    return (
        f"{name}: {size} bytes is above the model's limit of {max_bytes} bytes per image "
        "(register.max_image_bytes); send a smaller scan"
    )


def decode_base64(text: str, name: str, max_bytes: int | None = None) -> InputItem:
    """An InputItem from base64 text (HTTP clients send images this way); text that would decode
    to more than `max_bytes` is refused without decoding it."""
    size = math.floor(len(text) / BASE64_CHARACTERS_PER_BYTE)
    if max_bytes is not None and size > max_bytes:
        return InputItem(name, None, too_large(name, size, max_bytes))
    try:
        return InputItem(name, base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError) as error:
        return InputItem(name, None, f"{name}: not valid base64 ({error})")


def bytes_item(data: bytes, name: str, max_bytes: int | None) -> InputItem:
    """An InputItem of encoded image bytes, or an error when they exceed `max_bytes`."""
    if max_bytes is not None and len(data) > max_bytes:
        return InputItem(name, None, too_large(name, len(data), max_bytes))
    return InputItem(name, data)


def path_item(value: object, name: str, accept_paths: bool) -> InputItem:
    """An InputItem of a file path, or (paths not accepted) an error that is the same whether or
    not the file exists: the file is never looked at."""
    if not accept_paths:
        return InputItem(name, None, f"{name}: {PATHS_REFUSED}")
    return InputItem(str(value), Path(str(value)))


def is_missing(value: object) -> bool:
    """An empty cell: None or NaN (what pandas puts in a column a row leaves out)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def frame_items(frame: Any, accept_paths: bool, max_bytes: int | None) -> list[InputItem]:
    """One InputItem per row of a DataFrame: its `image` cell (base64 text or bytes) when set, else
    its `path` cell, with the row's `claimed_writer` when that column is there. Raises
    ModelInputError, naming the columns read, when the frame has neither image nor path."""
    items = frame_images(frame, accept_paths, max_bytes)
    if CLAIM_COLUMN not in frame.columns:
        return items
    claims = ["" if is_missing(claim) else str(claim).strip() for claim in frame[CLAIM_COLUMN].tolist()]
    return [replace(item, claim=claim) for item, claim in zip(items, claims, strict=True)]


def frame_images(frame: Any, accept_paths: bool, max_bytes: int | None) -> list[InputItem]:
    """The image of each row of a DataFrame (`frame_items` without the claims)."""
    if IMAGE_COLUMN not in frame.columns and PATH_COLUMN not in frame.columns:
        expected = f"an '{IMAGE_COLUMN}' column (base64 of each image file's bytes)"
        if accept_paths:
            expected += f" or a '{PATH_COLUMN}' column (image files)"
        raise ModelInputError(
            f"the input has the columns {[str(column) for column in frame.columns]}; the model reads {expected}"
        )
    empty = [None] * len(frame)
    images = frame[IMAGE_COLUMN].tolist() if IMAGE_COLUMN in frame.columns else empty
    paths = frame[PATH_COLUMN].tolist() if PATH_COLUMN in frame.columns else empty
    items = []
    for index, (image, path) in enumerate(zip(images, paths, strict=True)):
        if isinstance(image, bytes):
            items.append(bytes_item(image, f"{IMAGE_COLUMN}[{index}]", max_bytes))
        elif not is_missing(image):
            items.append(decode_base64(str(image), f"{IMAGE_COLUMN}[{index}]", max_bytes))
        elif not is_missing(path):
            items.append(path_item(path, f"{PATH_COLUMN}[{index}]", accept_paths))
        else:
            items.append(
                InputItem(f"row[{index}]", None, f"row {index}: no image (its '{IMAGE_COLUMN}' cell is empty)")
            )
    return items


def items_from(model_input: Any, accept_paths: bool = True, max_bytes: int | None = None) -> list[InputItem]:
    """Normalise what callers pass: a DataFrame with an `image` (base64) or a `path` column, a list
    of paths or of encoded image bytes, or one path.

    `accept_paths` False (the served model) turns every path into an error row without touching
    the file; `max_bytes` caps each encoded image (None: no cap).
    """
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return frame_items(model_input, accept_paths, max_bytes)
    if isinstance(model_input, str | Path):
        return [path_item(model_input, f"{PATH_COLUMN}[0]", accept_paths)]
    return [
        bytes_item(value, f"{IMAGE_COLUMN}[{index}]", max_bytes)
        if isinstance(value, bytes)
        else path_item(value, f"{PATH_COLUMN}[{index}]", accept_paths)
        for index, value in enumerate(model_input)
    ]


def file_problem(path: Path) -> str:
    """Why the image file `path` cannot be opened ("" when it can): checked before anything is
    loaded, so a mistyped name is reported at once, and again by each input's preprocessing."""
    try:
        with path.open("rb"):
            return ""
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "a folder, not an image file"
    except PermissionError:
        return "cannot be read (permission denied)"
    except OSError as error:
        return f"cannot be read ({error.strerror or type(error).__name__})"


def input_problem(item: InputItem) -> str:
    """The one-line error of an input that is unusable before any decoding ("" when none): its
    own error, or why its file cannot be opened."""
    if item.error:
        return item.error
    if isinstance(item.source, Path) and (problem := file_problem(item.source)):
        return f"{item.name}: {problem}"
    return ""
