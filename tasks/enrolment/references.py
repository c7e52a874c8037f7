"""Checking a new writer's references before anything is written: every problem is one line naming the file.

A reference is refused when it cannot be read, holds no ink (blank) or is too small, does not look
like a signature on paper (its ink share, as `prepare` measures it, outside `enrol`'s range), is given
twice, or is already a signature of another writer (enrolled, or in the dataset's manifest). The
images are preprocessed exactly as `prepare` does, so what is embedded is what the next `dvc repro`
will prepare from the stored file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.data.datasets.base import is_image_file
from tasks.data.images import ImageReadError, NoInkError, PreprocessSettings, preprocess_file
from tasks.workspace.errors import EnrolmentError
from tasks.workspace.files import sha256_file
from tasks.workspace.params_model import EnrolParams

PNG_COMPRESS_LEVEL = 6  # as `save_grey_png` writes the prepared images


@dataclass(frozen=True)
class CheckedReference:
    """A reference that passed every check: the file, its SHA-256, the preprocessed image and its hash."""

    source: Path
    sha256: str
    image: np.ndarray  # (size, size) uint8, as `prepare` writes it
    prepared_sha256: str


def reference_files(inputs: Sequence[Path]) -> list[Path]:
    """The files to enrol: the images of a single folder given (sorted), or the files given."""
    if len(inputs) == 1 and inputs[0].is_dir():
        return sorted(path for path in inputs[0].iterdir() if is_image_file(path))
    return list(inputs)


def prepared_digest(image: np.ndarray) -> str:
    """The SHA-256 of the PNG `prepare` would write for `image` (the manifest's `prepared_sha256`)."""
    import hashlib

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def image_problem(path: Path, settings: PreprocessSettings, rules: EnrolParams) -> str | np.ndarray:
    """The preprocessed image of `path`, or why it is refused (unreadable, blank, too small, not a signature)."""
    if not path.is_file():
        return "not a file"
    try:
        result = preprocess_file(path, settings)
    except ImageReadError as error:
        return f"unreadable: {str(error).removeprefix(f'{path}: ')}"
    except NoInkError as error:
        return f"blank or unusable: {str(error).removeprefix(f'{path}: ')}"
    shorter = min(result.original_width, result.original_height)
    if shorter < rules.min_reference_side:
        size = f"{result.original_width}x{result.original_height}"
        return f"too small: {size} pixels, below enrol.min_reference_side={rules.min_reference_side}"
    if not rules.min_ink_fraction <= result.ink_fraction <= rules.max_ink_fraction:
        return (
            f"not a signature: {result.ink_fraction:.1%} of it is ink, outside enrol.min_ink_fraction="
            f"{rules.min_ink_fraction} .. enrol.max_ink_fraction={rules.max_ink_fraction}"
        )
    return result.image


def check_references(
    files: Sequence[Path],
    writer: str,
    known: Mapping[str, str],
    settings: PreprocessSettings,
    rules: EnrolParams,
) -> list[CheckedReference]:
    """Check every file (`known`: SHA-256 -> the writer it is already a signature of); raise EnrolmentError
    with one line per refused file, naming it, when any is refused."""
    problems: list[str] = []
    checked: list[CheckedReference] = []
    seen: dict[str, Path] = {}
    for path in files:
        digest = sha256_file(path) if path.is_file() else ""
        if digest and digest in seen:
            problems.append(f"{path}: the same image as {seen[digest]}")
            continue
        if digest in known:
            owner = known[digest]
            where = (
                "already a reference of this writer" if owner == writer else f"already a signature of writer {owner}"
            )
            problems.append(f"{path}: {where}")
            continue
        outcome = image_problem(path, settings, rules)
        if isinstance(outcome, str):
            problems.append(f"{path}: {outcome}")
            continue
        seen[digest] = path
        checked.append(CheckedReference(path, digest, outcome, prepared_digest(outcome)))
    if problems:
        raise EnrolmentError("\n".join(problems))
    return checked
