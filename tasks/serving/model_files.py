"""Reading a model's files with one clear error, and checking a packaged model's files against the
SHA-256 digests recorded when it was packaged.

`tasks.registration.packaging.log_packaged_model` writes the digest of every artifact file the packaged model
carries (classifier, verifier, calibration, preprocessing, parameters) into the model itself, as
the artifact `file_digests.json`. Loading the model (`tasks/serving/pyfunc_model.py`) checks every file
against it before reading any, so a truncated or altered file fails with one line that names the
model, the file and the repair, instead of the reader's own error in a long traceback ("File not
found" for a truncated Keras file, BadZipFile, JSONDecodeError, KeyError). A model packaged before
digests were recorded still loads; a file of it that cannot be read fails the same one-line way.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tasks.data.images import PreprocessSettings
from tasks.workspace.errors import CorruptModelError, ModelFileError
from tasks.workspace.files import sha256_file

ARTIFACT_DIGESTS = "digests"
DIGESTS_FILE_NAME = "file_digests.json"
DIGEST_KEY = "sha256"
FILE_KEY = "file"
MODEL_METADATA_FILE = "MLmodel"
ARTIFACT_DEPTH = 1  # MLflow stores a pyfunc's artifacts one folder below the model folder (`artifacts/`)
TOP_K_KEY = "top_k"
CALIBRATION_KEYS = ("classes", "temperature", "threshold", "unknown_class_id")
# What Keras, NumPy, zipfile and json raise on a damaged file (JSONDecodeError is a ValueError).
READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile)
REPAIR = (
    "re-register the model (`sigpipe register`, or `dvc repro --force register`), restore this version's "
    "files from a backup, or point the alias at another version"
)

T = TypeVar("T")


def reason_of(error: BaseException) -> str:
    """The exception's type and the first line of its message: enough to say why, on one line."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_model_file(path: Path, what: str, read: Callable[[Path], T]) -> T:
    """`read(path)`, with ModelFileError (naming the file and what it should hold) for a missing or
    unreadable file instead of the reader's own exception."""
    if not path.is_file():
        raise ModelFileError(f"{path}: missing (it should hold {what})")
    try:
        return read(path)
    except READ_ERRORS as error:
        raise ModelFileError(f"{path}: cannot be read as {what} ({reason_of(error)})") from error


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object."""
    content = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(content, dict):
        raise ValueError(f"a JSON object was expected, found {type(content).__name__}")
    return content


def read_calibration(path: Path) -> dict[str, Any]:
    """The calibration (classes, temperature, threshold, unknown class id), every key present."""
    calibration = read_json_object(path)
    missing = [key for key in CALIBRATION_KEYS if key not in calibration]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(map(repr, missing))}")
    if not isinstance(calibration["classes"], list):
        raise ValueError("'classes' is not a list")
    return calibration


def read_preprocess(path: Path) -> tuple[PreprocessSettings, int]:
    """The preprocessing settings and top-k a packaged model applies (written by
    `tasks.registration.packaging.write_preprocess_artifact`)."""
    preprocess = read_json_object(path)
    top_k = preprocess.pop(TOP_K_KEY)
    return PreprocessSettings(**preprocess), int(top_k)


def write_digests(artifacts: Mapping[str, Path], folder: Path) -> Path:
    """A JSON file in `folder` with the file name and SHA-256 of each artifact, to package with them."""
    digests = {name: {FILE_KEY: path.name, DIGEST_KEY: sha256_file(path)} for name, path in sorted(artifacts.items())}
    target = folder / DIGESTS_FILE_NAME
    target.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def read_digests(path: Path) -> dict[str, str]:
    """Artifact name -> recorded SHA-256, from a file written by `write_digests`."""
    digests = {}
    for name, entry in read_json_object(path).items():
        if not isinstance(entry, dict) or not isinstance(entry.get(DIGEST_KEY), str):
            raise ValueError(f"no {DIGEST_KEY} recorded for artifact {name!r}")
        digests[name] = entry[DIGEST_KEY]
    return digests


def verify_packaged_files(artifacts: Mapping[str, str]) -> None:
    """Check every artifact file of a packaged model against the digests recorded at packaging.

    `artifacts` is the pyfunc context's name -> path mapping. Raises ModelFileError naming the
    first missing or altered file. A model without recorded digests (packaged before they existed)
    passes: its files are then only checked by reading them.
    """
    if ARTIFACT_DIGESTS not in artifacts:
        return
    recorded = read_model_file(Path(artifacts[ARTIFACT_DIGESTS]), "the model's file digests", read_digests)
    files = {name: Path(path) for name, path in artifacts.items() if name != ARTIFACT_DIGESTS}
    absent = sorted(set(recorded) - set(files))
    if absent:
        raise ModelFileError(f"artifact {absent[0]!r} was recorded when the model was packaged but is not in the model")
    for name, path in sorted(files.items()):
        if name not in recorded:
            raise ModelFileError(f"{path}: not recorded when the model was packaged (no digest for {name!r})")
        if not path.is_file():
            raise ModelFileError(f"{path}: missing")
        if sha256_file(path) != recorded[name]:
            raise ModelFileError(
                f"{path}: damaged: its SHA-256 differs from the one recorded when the model was packaged"
            )


def model_label(artifacts: Mapping[str, str]) -> str:
    """`model models:/<model id> (run <run id>)` from the packaged model's MLmodel file, or the
    model's folder when that cannot be read; what to look up in the registry to find the version."""
    if not artifacts:
        return "model"
    folder = Path(next(iter(artifacts.values()))).parents[ARTIFACT_DEPTH]
    import yaml
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        metadata = Model.load(str(folder / MODEL_METADATA_FILE))
    except (*READ_ERRORS, yaml.YAMLError, MlflowException):
        return f"model in {folder}"
    if metadata.model_id:
        return f"model models:/{metadata.model_id} (run {metadata.run_id})"
    return f"model in {folder} (run {metadata.run_id})"


@contextmanager
def packaged_model_errors(artifacts: Mapping[str, str]) -> Iterator[None]:
    """Turn a ModelFileError raised while loading a packaged model into a CorruptModelError whose one
    line names the model and the file and says how to repair it."""
    try:
        yield
    except CorruptModelError:
        raise
    except ModelFileError as error:
        raise CorruptModelError(f"{model_label(artifacts)}: {error}; {REPAIR}") from error
