"""Packaging the model for the registry: the classifier the `package` stage built, the verifier, the
calibration, the preprocessing settings and params.yaml, logged as an MLflow pyfunc (model from code)
that carries only the code it serves with, with a digest of every artifact file.

Nothing here builds or runs a model (no TensorFlow): `register` logs in seconds what `package` built
and checked.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.data.images import PreprocessSettings
from tasks.serving.answers import NULLABLE_COLUMNS, OUTPUT_COLUMNS
from tasks.serving.inference import (
    ACCEPT_PATHS,
    ARTIFACT_CALIBRATION,
    ARTIFACT_CLASSIFIER,
    ARTIFACT_PREPROCESS,
    ARTIFACT_VERIFIER,
)
from tasks.serving.model_files import ARTIFACT_DIGESTS, read_model_file, write_digests
from tasks.serving.model_input import CLAIM_COLUMN, IMAGE_COLUMN, PATH_COLUMN
from tasks.workspace.errors import ModelFileError
from tasks.workspace.files import sha256_file
from tasks.workspace.paths import ProjectPaths

ARTIFACT_PARAMS = "params"
# The MLflow type of each answer column (what `infer_signature` gives for an answers frame; a test checks it).
OUTPUT_COLUMN_TYPES = {
    "input": "string",
    "writer": "string",
    "class_id": "long",
    "confidence": "double",
    "verification_score": "double",
    "top_k": "string",
    "claimed_writer": "string",
    "claim_score": "double",
    "claim_accepted": "boolean",
    "error": "string",
}
PYFUNC_MODULE = "tasks.serving.pyfunc_model"  # the MLflow model-from-code file: found, never imported here


@dataclass(frozen=True)
class PackagedFiles:
    """The files a packaged model is logged from: the workspace's models/ (the register stage), or a
    scratch folder (`sigpipe enrol` and `remove`, which build a model without touching the stages' outputs)."""

    classifier: Path
    verifier: Path
    calibration: Path
    params: Path

    @classmethod
    def of_workspace(cls, paths: ProjectPaths) -> PackagedFiles:
        """What the package, train and calibrate stages wrote, and the workspace's params.yaml."""
        return cls(paths.classifier_file, paths.verifier_file, paths.calibration_file, paths.params_file)


def module_source(module: str) -> Path:
    """The file of `module`, found without running it (the model-from-code file does work on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelFileError(f"the packaged model's code {module} is not installed: reinstall the project")
    return Path(spec.origin)


def write_preprocess_artifact(settings: PreprocessSettings, top_k: int, folder: Path) -> Path:
    """The preprocessing settings (and top-k) the packaged model applies, as a JSON artifact."""
    path = folder / "preprocess.json"
    path.write_text(json.dumps({**asdict(settings), "top_k": top_k}, indent=2, sort_keys=True) + "\n")
    return path


def check_artifact_files(files: PackagedFiles) -> None:
    """Refuse, before anything is logged, a classifier file that is missing and a verifier or calibration
    file that does not read (the classifier's contents were checked by the `package` stage)."""
    from tasks.model.verifier import load_verifier
    from tasks.serving.model_files import read_calibration

    if not files.classifier.is_file():
        raise ModelFileError(f"{files.classifier} is missing: run the package stage (`dvc repro package`)")
    try:
        read_model_file(files.verifier, "the verifier", load_verifier)
        read_model_file(files.calibration, "the calibration", read_calibration)
    except ModelFileError as error:
        raise ModelFileError(f"{error}; rerun the stage that writes it (`dvc repro`)") from error


def check_package_record(paths: ProjectPaths) -> None:
    """Refuse to register a classifier file that is not the one the package stage built and checked (its
    SHA-256 in metrics/package.json), or whose writers are not the calibration's: `sigpipe register` and
    `python -m flows.register` run without DVC, which would otherwise pair a stale or damaged classifier
    with a newer verifier and calibration and sign it."""
    from tasks.serving.model_files import read_calibration

    repair = "rebuild it: `dvc repro package` (or `dvc repro --force package register`)"
    try:
        record = json.loads(paths.package_record_file.read_text())
        recorded, writers = str(record["classifier_sha256"]), int(record["classes"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"{paths.package_record_file} cannot be read ({error}): {repair}") from error
    if not paths.classifier_file.is_file() or sha256_file(paths.classifier_file) != recorded:
        raise ModelFileError(f"{paths.classifier_file} is not the classifier the package stage checked: {repair}")
    classes = len(read_model_file(paths.calibration_file, "the calibration", read_calibration)["classes"])
    if classes != writers:
        raise ModelFileError(
            f"{paths.classifier_file} answers {writers} writers but {paths.calibration_file} names {classes}: "
            f"{repair} after `dvc repro calibrate`"
        )


def serving_code(folder: Path) -> Path:
    """A copy, under `folder`, of the project modules the packaged model's code file can run (its import
    closure, `tasks.workspace.import_closure`), as the `tasks` package: the code a registered model carries,
    without the training, orchestration and supervision code it never runs."""
    from tasks.workspace.import_closure import import_closure

    package = PYFUNC_MODULE.split(".")[0]
    project_folder = module_source(package).parents[1]  # the folder that holds the package
    for source in sorted(import_closure(project_folder, PYFUNC_MODULE)):
        target = folder / source.relative_to(project_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return folder / package


def model_signature():  # -> mlflow.models.ModelSignature
    """The packaged model's signature: optional path, image and claim columns in; every answer's columns
    out (`tasks.serving.answers.OUTPUT_COLUMNS`, typed as MLflow infers them from an answers frame; the
    columns an answer may leave empty, a row's claim or an unreadable image's numbers, not required)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([ColSpec("string", column, required=False) for column in (PATH_COLUMN, IMAGE_COLUMN, CLAIM_COLUMN)])
    outputs = Schema(
        [
            ColSpec(OUTPUT_COLUMN_TYPES[column], column, required=column not in NULLABLE_COLUMNS)
            for column in OUTPUT_COLUMNS
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_packaged_model(source: ProjectPaths | PackagedFiles, settings: PreprocessSettings, top_k: int) -> str:
    """`log_packaged_model_with_digests`, for callers that only need the logged model's URI."""
    return log_packaged_model_with_digests(source, settings, top_k)[0]


def log_packaged_model_with_digests(
    source: ProjectPaths | PackagedFiles, settings: PreprocessSettings, top_k: int
) -> tuple[str, dict[str, str]]:
    """Log the pyfunc (model from code, with the serving part of the `tasks` package: `serving_code`) to
    the active run; returns its URI and the SHA-256 of each artifact file as it was logged (file name ->
    digest), so that `register` signs only those files (`tasks.registration.model_store.sign_version`).

    `source` is a workspace (its models/ files and params.yaml: the register stage) or `PackagedFiles` in
    a scratch folder (`sigpipe enrol` and `remove`). Nothing is built or run here: the classifier is the
    float32 classifier the `package` stage (or the enrolment) built and checked against the verifier's
    scores, and the signature is `model_signature()`, the columns every answer has. No input example is
    stored: MLflow checks one by loading the model from its artifacts and predicting it, which would
    import TensorFlow and read InceptionV3 in every register (about 6 s here) to repeat the package
    stage's check.

    The model is logged with model_config {"accept_paths": False}, so what `mlflow models serve`
    loads reads only image bytes.
    """
    import mlflow

    from tasks.tracking.runs import model_artifacts_removed_on_failure, model_requirements

    packaged = PackagedFiles.of_workspace(source) if isinstance(source, ProjectPaths) else source
    check_artifact_files(packaged)
    with tempfile.TemporaryDirectory() as scratch:
        files = {
            ARTIFACT_CLASSIFIER: packaged.classifier,
            ARTIFACT_VERIFIER: packaged.verifier,
            ARTIFACT_CALIBRATION: packaged.calibration,
            ARTIFACT_PREPROCESS: write_preprocess_artifact(settings, top_k, Path(scratch)),
            ARTIFACT_PARAMS: packaged.params,
        }
        # Digests of every artifact, packaged with them and checked whenever the model loads.
        files[ARTIFACT_DIGESTS] = write_digests(files, Path(scratch))
        logged = {path.name: sha256_file(path) for path in files.values()}
        with model_artifacts_removed_on_failure("packaged model"):
            info = mlflow.pyfunc.log_model(
                name="signature_model",
                python_model=str(module_source(PYFUNC_MODULE)),
                artifacts={name: str(path) for name, path in files.items()},
                code_paths=[str(serving_code(Path(scratch) / "code"))],
                pip_requirements=model_requirements(),
                signature=model_signature(),
                model_config={ACCEPT_PATHS: False},
            )
    return info.model_uri, logged
