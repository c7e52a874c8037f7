"""A registered model whose files were damaged fails to load with one line naming the model and the
file and saying how to repair it, through MLflow in Python (the packaged digests) and through the
`sigpipe` CLI (the signed file list, tasks/registration/model_store.py).

One tiny model is packaged and registered (MLflow in a temporary folder); each test damages one
file in the registry's artifact store the way a disk or a copy does, and restores it afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tasks.model.classifier import LogitScorer
from tasks.model.verifier import save_verifier
from tasks.serving.inference import SignatureClassifier
from tasks.serving.model_files import ARTIFACT_DIGESTS, DIGESTS_FILE_NAME, packaged_model_errors, verify_packaged_files
from tasks.workspace.errors import CorruptModelError, ModelFileError
from tasks.workspace.paths import ProjectPaths
from tests.support.registered_model import registered_workspace
from tests.unit.test_inference import SETTINGS, tiny_classifier, tiny_verifier

MODEL_NAME = "integrity-test"
MODEL_URI = f"models:/{MODEL_NAME}@champion"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_SECONDS = 300
CALIBRATION = {"classes": ["a", "b", "c"], "temperature": 1.0, "threshold": 0.0, "unknown_class_id": 3}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_bytes(path: Path) -> None:
    """Invert 64 bytes a third of the way in: the size stays, the content does not."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start : start + 64] = bytes(value ^ 0xFF for value in data[start : start + 64])
    path.write_bytes(bytes(data))


def invalid_json(path: Path) -> None:
    path.write_text("{not json", encoding="utf-8")


def without_classes(path: Path) -> None:
    path.write_text(json.dumps({key: value for key, value in CALIBRATION.items() if key != "classes"}))


def remove(path: Path) -> None:
    path.unlink()


DAMAGES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "truncated classifier": ("classifier.keras", truncate),
    "flipped classifier bytes": ("classifier.keras", flip_bytes),
    "invalid calibration JSON": ("calibration.json", invalid_json),
    "calibration without classes": ("calibration.json", without_classes),
    "missing verifier": ("verifier.npz", remove),
}


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> ProjectPaths:
    """A workspace whose MLflow store holds a tiny packaged model, registered as champion."""
    return registered_workspace(tmp_path_factory.mktemp("integrity"), MODEL_NAME, CALIBRATION)


def stored_file(paths: ProjectPaths, name: str) -> Path:
    """The registered model's copy of artifact file `name` in the store."""
    (found,) = (paths.mlruns_dir / "artifacts").rglob(f"artifacts/{name}")
    return found


@pytest.fixture(params=list(DAMAGES))
def damaged(request: pytest.FixtureRequest, registered: ProjectPaths) -> Iterator[Path]:
    """Damage one stored file as `DAMAGES[request.param]` says; restore it after the test."""
    name, damage = DAMAGES[request.param]
    path = stored_file(registered, name)
    original = path.read_bytes()
    damage(path)
    yield path
    path.write_bytes(original)


@pytest.fixture
def store(registered: ProjectPaths, monkeypatch: pytest.MonkeyPatch) -> ProjectPaths:
    """MLflow pointed at the workspace's store, as the CLI does (no environment override)."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(registered.mlflow_tracking_uri)
    return registered


def test_the_packaged_model_records_a_digest_of_every_artifact_and_loads(store: ProjectPaths) -> None:
    import mlflow

    digests = json.loads(stored_file(store, DIGESTS_FILE_NAME).read_text())
    assert set(digests) == {"classifier", "verifier", "calibration", "preprocess", "params"}
    model = mlflow.pyfunc.load_model(MODEL_URI).unwrap_python_model().model
    assert model.classes == ["a", "b", "c"]


def test_python_loading_raises_one_line_naming_the_model_and_file(store: ProjectPaths, damaged: Path) -> None:
    import mlflow

    with pytest.raises(CorruptModelError) as raised:
        mlflow.pyfunc.load_model(MODEL_URI)
    message = str(raised.value)
    assert "\n" not in message
    assert str(damaged) in message and "models:/m-" in message and "re-register the model" in message


def test_the_cli_prints_one_line_and_exits_non_zero(store: ProjectPaths, damaged: Path) -> None:
    from tasks.cli.app import app

    result = CliRunner().invoke(app, ["predict", str(store.root / "signature.png"), "-p", str(store.params_file)])
    assert result.exit_code == 1 and not isinstance(result.exception, CorruptModelError | ModelFileError)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    # The CLI checks the signed file list before reading any file (tasks/registration/model_store.py).
    assert errors[0].startswith(f"error: {MODEL_URI} (version 1): {MODEL_NAME} version 1: ")
    assert f"artifacts/{damaged.name}" in errors[0] and "re-register it" in errors[0]


def test_the_model_carries_only_the_code_it_serves_with(store: ProjectPaths) -> None:
    """Issue 25: the packaged code is the import closure of the model's code file, not all of tasks/:
    the serving package and what it reads (images, the verifier, ...), none of training, evaluation's
    fitting, registration, the services, the CLI or the pipeline's runtime."""
    (code,) = (store.mlruns_dir / "artifacts").rglob("code/tasks")
    shipped = {path.relative_to(code).as_posix() for path in code.rglob("*.py")}
    assert {"__init__.py", "serving/pyfunc_model.py", "serving/inference.py", "model/verifier.py"} <= shipped
    packages = {name.split("/")[0] for name in shipped if "/" in name}
    assert not packages & {"training", "registration", "services", "runtime", "cli", "scoring", "tracking"}
    assert "evaluation/calibrate.py" not in shipped and "data/download.py" not in shipped


@pytest.mark.slow
def test_mlflow_serves_the_model_from_the_code_it_carries(store: ProjectPaths) -> None:
    """A fresh process loads the version with MLflow's pyfunc loader and answers an image: every module
    the shipped code imports was shipped (MLflow puts the model's code first on the import path)."""
    # The project's editable install would find any module the shipped copy lacks: without it, a module
    # missing from the model's code fails the import instead of loading from the working tree.
    script = (
        "import base64, sys;"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')];"
        "import mlflow, pandas as pd;"
        f"model = mlflow.pyfunc.load_model({MODEL_URI!r});"
        f"image = base64.b64encode(open({str(store.root / 'signature.png')!r}, 'rb').read()).decode();"
        "answer = model.predict(pd.DataFrame({'image': [image]}));"
        "ours = [m for n, m in sys.modules.items() if n.split('.')[0] == 'tasks'];"
        "outside = [m.__file__ for m in ours if '/code/tasks/' not in (m.__file__ or '')];"
        "print(outside); print(answer['writer'][0], answer['error'][0] or 'ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=store.root,
        env={**os.environ, "MLFLOW_TRACKING_URI": store.mlflow_tracking_uri},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outside, answer = result.stdout.strip().splitlines()[-2:]
    assert outside == "[]"  # every project module it ran came from the model's own code
    assert answer.split()[-1] == "ok"


def test_the_declared_signature_is_what_mlflow_infers_from_answers(store: ProjectPaths) -> None:
    """register declares the output columns instead of running the model (no TensorFlow in register):
    the names and types MLflow infers from a real answers frame; the columns an answer may leave empty
    (a row without a claim, an unreadable image) are declared not required."""
    import pandas as pd
    from mlflow.models import infer_signature

    from tasks.registration.packaging import model_signature
    from tasks.serving.answers import answers_frame
    from tasks.serving.model_input import items_from

    model = SignatureClassifier(LogitScorer(tiny_classifier()), tiny_verifier(), CALIBRATION, SETTINGS, top_k=2)
    example = pd.DataFrame({"path": [str(store.root / "signature.png")], "claimed_writer": ["a"]})
    inferred = infer_signature(example, answers_frame(model.answers(items_from(example)))).outputs.inputs
    declared = model_signature().outputs.inputs
    assert [(column.name, column.type) for column in declared] == [(column.name, column.type) for column in inferred]
    unclaimed = answers_frame(model.answers(items_from(pd.DataFrame({"path": [str(store.root / "nothing.png")]}))))
    optional = {column.name for column in declared if not column.required}
    assert optional == {name for name in unclaimed.columns if unclaimed[name].isna().all()}


@pytest.mark.slow
def test_the_cli_process_prints_no_traceback(store: ProjectPaths) -> None:
    """The real `sigpipe` process on a truncated classifier: one error line on stderr, exit 1."""
    path = stored_file(store, "classifier.keras")
    original = path.read_bytes()
    truncate(path)
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tasks.cli.app",
                "predict",
                str(store.root / "signature.png"),
                "-p",
                str(store.params_file),
            ],
            cwd=PROJECT_ROOT,
            env={key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
        )
    finally:
        path.write_bytes(original)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "file artifacts/classifier.keras differs from the one the register stage signed" in line
    assert "(version 1)" in line


def source_files(folder: Path) -> dict[str, Path]:
    """The four files `SignatureClassifier.from_files` reads, valid, in `folder`."""
    from tasks.registration.packaging import write_preprocess_artifact

    files = {
        "classifier": folder / "classifier.keras",
        "verifier": folder / "verifier.npz",
        "calibration": folder / "calibration.json",
        "preprocess": write_preprocess_artifact(SETTINGS, 2, folder),
    }
    tiny_classifier().save(files["classifier"])
    save_verifier(tiny_verifier(), files["verifier"])
    files["calibration"].write_text(json.dumps(CALIBRATION))
    return files


def load(files: dict[str, Path]) -> SignatureClassifier:
    return SignatureClassifier.from_files(
        files["classifier"], files["verifier"], files["calibration"], files["preprocess"]
    )


def test_a_model_without_digests_still_fails_with_one_line(tmp_path: Path) -> None:
    """Models packaged before digests were recorded: an unreadable file is still named, in one line."""
    files = source_files(tmp_path)
    invalid_json(files["calibration"])
    artifacts = {name: str(path) for name, path in files.items()}
    expected = r"calibration\.json: cannot be read as the calibration"
    with pytest.raises(CorruptModelError, match=expected) as raised, packaged_model_errors(artifacts):
        verify_packaged_files(artifacts)
        load(files)
    assert "\n" not in str(raised.value) and "re-register the model" in str(raised.value)


def test_a_damaged_digest_file_is_named(tmp_path: Path) -> None:
    digests = tmp_path / DIGESTS_FILE_NAME
    digests.write_text('{"classifier": {"file": "classifier.keras"}}')
    with pytest.raises(ModelFileError, match=r"file_digests\.json: cannot be read as the model's file digests"):
        verify_packaged_files({ARTIFACT_DIGESTS: str(digests)})


def test_registration_names_a_broken_source_file(tmp_path: Path) -> None:
    """The same readers guard registration: a source calibration without classes is named."""
    files = source_files(tmp_path)
    without_classes(files["calibration"])
    with pytest.raises(ModelFileError, match=r"calibration\.json: cannot be read as the calibration .*'classes'"):
        load(files)
