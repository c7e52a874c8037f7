"""The stage flows in order on one generated workspace: train, evaluate, calibrate, package, register, and
then what a user does with the result: load it from the registry, the CLI, and HTTP serving."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import requests

from flows.calibrate import HEADLINE_METRICS as CALIBRATE_HEADLINE
from flows.evaluate import HEADLINE_METRICS as EVALUATE_HEADLINE
from tasks.data.manifest import read_manifest
from tasks.evaluation.scores import claim_probability, load_scores
from tasks.serving.answers import OUTPUT_COLUMNS, UNKNOWN_WRITER
from tasks.serving.inference import ACCEPT_PATHS
from tasks.serving.model_input import PATHS_REFUSED
from tasks.workspace.paths import ProjectPaths
from tests.conftest import TRAINED_MODEL_NAME as MODEL_NAME
from tests.support.model_server import free_port, served_model

# With pytest-xdist, every module that uses the session's `trained` workspace runs on one worker.
pytestmark = pytest.mark.xdist_group("trained")

SERVE_STARTUP_SECONDS = 180
CLI_TIMEOUT_SECONDS = 300
HTTP_TIMEOUT_SECONDS = 120
# The served model and the evaluate stage score the same image through two paths (raw file decoded in
# memory, prepared PNG in batches); their verifier scores differ by about 1e-6. A claim closer than this
# to the threshold could go either way, and is not used to decide an expected answer.
DECISION_MARGIN = 1e-2


def test_train_outputs_and_mlflow_run(trained: ProjectPaths) -> None:
    import mlflow

    metrics = json.loads(trained.train_metrics_file.read_text())
    assert trained.learning_curve_file.stat().st_size > 0
    assert json.loads(trained.labels_file.read_text()) == {"classes": ["001", "002", "003"], "unknown_class_id": 3}
    assert keras.models.load_model(trained.classifier_file).output_shape == (None, 3)  # package built it
    run_info = json.loads(trained.train_run_file.read_text())
    mlflow.set_tracking_uri(trained.mlflow_tracking_uri)
    run = mlflow.get_run(run_info["run_id"])
    assert run.data.params["train.epochs"] == "3" and run.data.params["prepare.image_size"] == "75"
    assert run.data.tags["mode"] == "cached" and run.data.tags["device"] == "cpu"
    assert run.data.tags["data_version"] == run_info["data_version"]
    # Named by what ran (head, mode, size, data), not "train"; device and wall times are in the run record.
    head = run.data.params["model.head"]
    mode = "closed form" if head == "ridge" else "cached"
    assert run.info.run_name == f"train · {head} head · {mode} · 75 px · data {run_info['data_version'][:6]}"
    # (The ridge head's closed-form solve on 3 writers can round to 0.000 s: only the place is checked.)
    circumstances = {"device", "resumed_from_epoch", "train_seconds", "embed_seconds"}
    assert circumstances <= set(run_info) and not circumstances & set(metrics)
    assert run_info["device"] == "cpu" and run_info["train_seconds"] >= 0
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [point.step for point in history] == list(range(metrics["epochs_run"]))
    logged = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"plots", "labels.json", "verifier.npz", "head.npz"} <= logged


def test_evaluate_and_calibrate_outputs_and_nested_runs(trained: ProjectPaths) -> None:
    import mlflow

    written = json.loads(trained.evaluate_details_file.read_text())
    assert json.loads(trained.evaluate_metrics_file.read_text()) == {key: written[key] for key in EVALUATE_HEADLINE}
    for key in (
        "accuracy",
        "f1_weighted",
        "f1_macro",
        "top5_accuracy",
        "eer_skilled_a_posteriori",
        "eer_skilled_per_writer_a_posteriori",
        "auc_skilled",
    ):
        assert key in written, key
    assert 0.0 <= written["accuracy"] <= 1.0 and written["test_genuine_images"] == 15
    # Every verification figure over the writer partitions: mean, 95% interval around it, one value each.
    for figure in ("eer_skilled_a_posteriori", "eer_skilled_per_writer_a_posteriori"):
        summary = written["partitions"][figure]
        assert len(summary["values"]) == written["partitions"]["partitions"]
        assert summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    assert written["eer_simple_a_posteriori"] is None  # no simple forgeries in this dataset: null, not a made-up number
    assert written["verification_a_posteriori"]["threshold_source"] == "test scores (a posteriori)"
    assert len(read_manifest(trained.per_writer_file)) == 3
    for plot in (trained.confusion_matrix_file, trained.roc_det_file, trained.score_distributions_file):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(trained.calibrate_details_file.read_text())
    assert json.loads(trained.calibrate_metrics_file.read_text()) == {key: report[key] for key in CALIBRATE_HEADLINE}
    for key in (
        "temperature",
        "threshold",
        "frr",
        "far_skilled",
        "far_opposite",
        "far_random",
        "unenrolled_accepted",
        "expected_calibration_error",
        "softmax_expected_calibration_error",
    ):
        assert key in report, key
    for figure in ("frr", "far_skilled", "far_random", "eer_skilled_a_posteriori"):
        summary = report["partitions"][figure]
        assert summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1] and len(summary["values"]) >= 2
        assert report[f"partitions_{figure}_mean"] == summary["mean"]
    calibration = json.loads(trained.calibration_file.read_text())
    assert calibration["unknown_class_id"] == 3 and calibration["threshold"] == report["threshold"]
    assert trained.reliability_file.stat().st_size > 0
    train_run_id = json.loads(trained.train_run_file.read_text())["run_id"]
    mlflow.set_tracking_uri(trained.mlflow_tracking_uri)
    client = mlflow.tracking.MlflowClient()
    experiment = client.get_run(train_run_id).info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{train_run_id}'")
    stages = {run.data.tags["stage"]: run for run in children}
    assert set(stages) == {"evaluate", "calibrate", "register"}
    assert stages["evaluate"].data.metrics["accuracy"] == pytest.approx(written["accuracy"])
    data = f"data {json.loads(trained.train_run_file.read_text())['data_version'][:6]}"
    assert stages["evaluate"].info.run_name == f"evaluate · 75 px · {data}"
    assert stages["calibrate"].info.run_name.startswith("calibrate · threshold at ")
    assert stages["calibrate"].info.run_name.endswith(data)
    assert stages["register"].info.run_name.startswith(f"register · {MODEL_NAME} v")
    assert stages["register"].info.run_name.endswith(data)
    assert stages["calibrate"].data.metrics["threshold"] == pytest.approx(report["threshold"])


def test_champion_moves_only_to_a_better_model(trained: ProjectPaths) -> None:
    """Registering again with the selection accuracy lowered, then raised (standing for a worse and a
    better model on the same validation and calibration data), leaves the champion, then moves it;
    a higher *test* accuracy alone moves nothing."""
    import mlflow

    from flows.register import register_flow

    first = json.loads(trained.register_details_file.read_text())
    assert first["alias"] == "champion" and first["reason"] == "no champion yet"
    assert first["metric"] == "selection_accuracy" and "model_uri" not in first  # differs on every run
    assert json.loads(trained.register_metrics_file.read_text()) == {"version": first["version"], "alias": "champion"}
    evaluation = json.loads(trained.evaluate_details_file.read_text())
    selection = evaluation["selection_accuracy"]
    params_file = str(trained.params_file)
    try:
        trained.evaluate_details_file.write_text(
            json.dumps({**evaluation, "accuracy": evaluation["accuracy"] + 0.5, "selection_accuracy": selection - 0.1})
        )
        worse = register_flow(params_file)
        trained.evaluate_details_file.write_text(json.dumps({**evaluation, "selection_accuracy": selection + 0.1}))
        better = register_flow(params_file)
    finally:
        trained.evaluate_details_file.write_text(json.dumps(evaluation))
    mlflow.set_tracking_uri(trained.mlflow_tracking_uri)
    client = mlflow.tracking.MlflowClient()
    assert worse["alias"] == "challenger" and worse["champion_version"] == first["version"]
    assert worse["champion_value"] == pytest.approx(selection)
    assert better["alias"] == "champion" and better["champion_version"] == first["version"]
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == better["version"]
    assert str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == worse["version"]
    assert json.loads(trained.register_metrics_file.read_text())["version"] == better["version"]


def test_register_builds_and_runs_no_model(trained: ProjectPaths, subprocess_env: dict[str, str]) -> None:
    """Issue 25: register logs the classifier the package stage built and checked; its process imports
    neither TensorFlow nor Keras (a calibration change then costs seconds, not an InceptionV3 build).
    The stage's own entry point, in a fresh process, registers one more version (a challenger: the
    same numbers as the champion above)."""
    code = (
        "import runpy, sys; runpy.run_module('flows.register', run_name='__main__'); "
        "print('loaded:', sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=trained.root,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded: []" in result.stdout
    assert json.loads(trained.register_details_file.read_text())["alias"] == "challenger"


def stored_claims(paths: ProjectPaths, image: Path) -> tuple[np.ndarray, np.ndarray]:
    """The logits and verifier scores (one per writer) the evaluate stage stored for a raw image."""
    table = load_scores(paths.scores_file)
    row = table.paths.tolist().index(image.relative_to(paths.root).as_posix())
    return table.logits[row].astype(np.float64), table.verification[row]


def expected_answer(paths: ProjectPaths, image: Path) -> tuple[str, int, float]:
    """(writer, class_id, confidence) the stored scores and the calibration file decide for an image:
    the classifier's top writer when its verifier score reaches the threshold, else unknown; the
    confidence is the Platt-calibrated probability of the top writer's claim."""
    calibration = json.loads(paths.calibration_file.read_text())
    logits, verification = stored_claims(paths, image)
    top = int(np.argmax(logits))
    confidence = float(
        claim_probability(verification[top], calibration["confidence_slope"], calibration["confidence_intercept"])
    )
    if verification[top] >= calibration["threshold"]:
        return calibration["classes"][top], top, confidence
    return UNKNOWN_WRITER, calibration["unknown_class_id"], confidence


def generated_images(paths: ProjectPaths) -> list[Path]:
    """Three test genuine images whose top writer's verifier score is clearly above or below the threshold."""
    threshold = json.loads(paths.calibration_file.read_text())["threshold"]
    rows = read_manifest(paths.manifest_file)
    images = [paths.root / row["path"] for row in rows if row["split"] == "test" and row["kind"] == "genuine"]
    decided = []
    for image in images:
        logits, verification = stored_claims(paths, image)
        if abs(verification[int(np.argmax(logits))] - threshold) > DECISION_MARGIN:
            decided.append(image)
    assert len(decided) >= 3, "fewer than 3 test genuine images are decided clearly by the threshold"
    return decided[:3]


def test_load_by_alias_and_predict_paths_and_base64(trained: ProjectPaths, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(trained.mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion", model_config={ACCEPT_PATHS: True})
    images = generated_images(trained)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    answers = model.predict(pd.DataFrame({"path": [str(images[0]), str(broken), str(images[1])]}))
    assert list(answers.columns) == list(OUTPUT_COLUMNS)
    assert answers["error"].tolist()[0] == "" and answers["error"].tolist()[2] == ""
    assert "broken.png" in answers["error"].tolist()[1]
    for row, image in zip(answers.iloc[[0, 2]].itertuples(), images[:2], strict=True):
        writer, class_id, confidence = expected_answer(trained, image)
        assert (row.writer, row.class_id) == (writer, class_id), image
        assert row.confidence == pytest.approx(confidence, abs=1e-4)
        top_k = json.loads(row.top_k)
        assert len(top_k) == 2 and top_k[0][1] == pytest.approx(confidence, abs=1e-4)
    encoded = base64.b64encode(images[0].read_bytes()).decode()
    by_bytes = model.predict(pd.DataFrame({"image": [encoded, "@@not base64@@"]}))
    # One image in this batch, two above: float32 kernels sum in a batch-dependent order (about 1e-6 apart).
    assert by_bytes["confidence"].iloc[0] == pytest.approx(answers["confidence"].iloc[0], abs=1e-5)
    assert "not valid base64" in by_bytes["error"].iloc[1]
    signature = model.metadata.get_input_schema().input_names()
    assert set(signature) == {"path", "image", "claimed_writer"}
    # Loaded as `mlflow models serve` loads it (no model_config): paths are refused, bytes are read.
    served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    refused = served.predict(pd.DataFrame({"path": [str(images[0])]}))
    assert refused["error"].tolist() == [f"path[0]: {PATHS_REFUSED}"]
    assert served.predict(pd.DataFrame({"image": [encoded]}))["error"].tolist() == [""]


def run_cli(arguments: list[str], workspace: Path) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli.app", *arguments],
        cwd=workspace,
        env=environment,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )


@pytest.mark.slow
def test_cli_predict_and_verify(trained: ProjectPaths) -> None:
    image = generated_images(trained)[0]
    result = run_cli(["predict", str(image), "missing.png", "--json"], trained.root)
    assert result.returncode == 1  # one input failed; the other is still answered
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    # A file that cannot be opened is reported first, before the model loads; the others follow.
    assert [line["input"] for line in lines] == ["missing.png", str(image)]
    assert lines[0]["error"] == "missing.png: no such file" and lines[1]["error"] == ""
    # The highest and the lowest claim the evaluate stage scored among these images (each image claimed as
    # each writer): the first clearly reaches the calibrated threshold, the second clearly does not.
    threshold = json.loads(trained.calibration_file.read_text())["threshold"]
    classes = json.loads(trained.labels_file.read_text())["classes"]
    claims = sorted(
        (float(score), str(candidate), classes[writer])
        for candidate in generated_images(trained)
        for writer, score in enumerate(stored_claims(trained, candidate)[1])
    )
    (low, low_image, low_writer), (high, high_image, high_writer) = claims[0], claims[-1]
    assert low < threshold - DECISION_MARGIN and high > threshold + DECISION_MARGIN, (low, threshold, high)
    for verdict_word, exit_code, score, claimed_image, writer in (
        ("accept", 0, high, high_image, high_writer),
        ("reject", 2, low, low_image, low_writer),
    ):
        verdict = run_cli(["verify", claimed_image, "--writer", writer], trained.root)
        assert verdict.returncode == exit_code, verdict.stdout + verdict.stderr
        fields = verdict.stdout.strip().split("\t")
        assert fields[:3] == [verdict_word, claimed_image, f"writer {writer}"]
        assert float(fields[3].removeprefix("score ")) == pytest.approx(score, abs=2e-3)
        assert fields[4] == f"threshold {threshold:.3f}"
    # (An unknown writer's one-line error: tests/unit/test_cli_output.py, on a model of the same kind.)
    no_model = run_cli(["predict", str(image), "--model", "models:/absent@champion"], trained.root)
    assert no_model.returncode == 1 and "models:/absent@champion" in no_model.stderr
    assert len(no_model.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def served(trained: ProjectPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`sigpipe serve` of the champion on 127.0.0.1 (tasks/scoring/model_server.py); yields its URL. At the end
    it is stopped with SIGTERM, which must free the port."""
    server_log = tmp_path_factory.mktemp("serve") / "serve.log"
    with served_model(trained.root, server_log, SERVE_STARTUP_SECONDS) as (url, _):
        yield url


CLIENT_SCRIPT = """
import sys
from tasks.cli.app import app
try:
    app(sys.argv[1:])
except SystemExit as stop:
    code = stop.code or 0
loaded = [name for name in ("tensorflow", "keras", "mlflow") if name in sys.modules]
print("loaded:", ",".join(loaded), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow
def test_cli_predict_through_the_model_server(trained: ProjectPaths, served: str, tmp_path: Path) -> None:
    """`sigpipe predict --server` answers as the model does, without loading TensorFlow, Keras or MLflow."""
    images = generated_images(trained)[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    arguments = ["predict", "--json", "--server", served, str(images[0]), str(broken), str(images[1])]
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, *arguments],
        cwd=trained.root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )
    assert result.returncode == 1, result.stderr  # the broken file fails; the others are answered
    loaded = [line for line in result.stderr.splitlines() if line.startswith("loaded:")]
    assert loaded == ["loaded: "], result.stderr  # none of TensorFlow, Keras, MLflow
    rows = {row["input"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert set(rows) == {str(images[0]), str(broken), str(images[1])}
    assert rows[str(broken)]["error"] != "" and rows[str(broken)]["writer"] == ""
    for image in images:
        writer, class_id, confidence = expected_answer(trained, image)
        row = rows[str(image)]
        assert (row["writer"], row["class_id"], row["error"]) == (writer, class_id, ""), row
        assert row["confidence"] == pytest.approx(confidence, abs=1e-4)
        assert row["top_k"][0][1] == pytest.approx(confidence, abs=1e-4)
    # The table of the in-process model is the one the server's answers print.
    table = run_cli(["predict", "--server", served, str(images[0])], trained.root)
    assert table.returncode == 0 and table.stdout.startswith(f"{images[0]}\t{rows[str(images[0])]['writer']}\t")


def test_cli_predict_names_a_model_server_that_does_not_answer(trained: ProjectPaths) -> None:
    image = generated_images(trained)[0]
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_cli(["predict", "--server", dead, str(image)], trained.root)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: the model server {dead} does not answer (ConnectionError): start it (sigpipe serve, or make up); "
        "or leave out --server (and unset SIGPIPE_SCORER_URL) to load the model here"
    ]
    both = run_cli(["predict", "--server", dead, "--model", f"models:/{MODEL_NAME}/1", str(image)], trained.root)
    assert both.returncode == 1 and "--model and --server exclude each other" in both.stderr


def invoke(url: str, columns: list[str], rows: list[list[object]]) -> requests.Response:
    """POST a `dataframe_split` request to the served model."""
    payload = {"dataframe_split": {"columns": columns, "data": rows}}
    return requests.post(f"{url}/invocations", json=payload, timeout=HTTP_TIMEOUT_SECONDS)


@pytest.mark.slow
def test_the_model_server_scores_a_file_over_http(trained: ProjectPaths, served: str) -> None:
    image = generated_images(trained)[0]
    response = invoke(served, ["image"], [[base64.b64encode(image.read_bytes()).decode()]])
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 1 and predictions[0]["error"] == ""
    writer, class_id, confidence = expected_answer(trained, image)
    assert (predictions[0]["writer"], predictions[0]["class_id"]) == (writer, class_id)
    assert predictions[0]["confidence"] == pytest.approx(confidence, abs=1e-4)


@pytest.mark.slow
def test_the_server_reads_no_file_a_client_names(trained: ProjectPaths, served: str) -> None:
    """A readable image, a missing file and an unreadable one all get the same refusal: no
    existence oracle, and no image on the server can be classified."""
    names = [str(generated_images(trained)[0]), str(trained.root / "absent.png"), str(trained.params_file)]
    response = invoke(served, ["path"], [[name] for name in names])
    assert response.status_code == 200, response.text
    errors = [row["error"] for row in response.json()["predictions"]]
    assert errors == [f"path[{index}]: {PATHS_REFUSED}" for index in range(len(names))]
    mixed = invoke(served, ["image", "path"], [[base64.b64encode(Path(names[0]).read_bytes()).decode(), None]])
    assert mixed.status_code == 200 and mixed.json()["predictions"][0]["error"] == "", mixed.text


@pytest.mark.slow
def test_bad_requests_get_a_clear_400_without_a_stack_trace(served: str) -> None:
    wrong_column = invoke(served, ["img"], [["aGVsbG8="]])
    assert wrong_column.status_code == 400, wrong_column.text
    body = wrong_column.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "the server reads 'image' (base64 of each image file's bytes)" in body["message"]
    assert "stack_trace" not in body and "Traceback" not in wrong_column.text
    not_json = requests.post(
        f"{served}/invocations",
        data="{not json",
        headers={"Content-Type": "application/json"},
        timeout=HTTP_TIMEOUT_SECONDS,
    )
    assert not_json.status_code == 400 and "Traceback" not in not_json.text and "stack_trace" not in not_json.json()


@pytest.mark.slow
def test_an_image_over_the_pixel_cap_is_refused_by_the_server(trained: ProjectPaths, served: str) -> None:
    """A 0.1 KB PNG declaring 9400 x 9400 pixels (the issue's 1.5 GB a request) is refused from its
    header, in its own row; the image beside it is answered."""
    from tasks.workspace.config import load_group
    from tasks.workspace.params_model import RegisterParams
    from tests.unit.test_input_limits import HUGE_SIDE, png_declaring

    limit = load_group(trained.params_file, "register", RegisterParams).max_image_pixels
    huge = base64.b64encode(png_declaring(HUGE_SIDE, HUGE_SIDE)).decode()
    real = base64.b64encode(generated_images(trained)[0].read_bytes()).decode()
    response = invoke(served, ["image"], [[huge], [real]])
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert predictions[0]["error"] == (
        f"image[0]: 9400x9400 = {HUGE_SIDE**2} pixels is above the model's limit of {limit} pixels "
        "(register.max_image_pixels); send a smaller scan"
    )
    assert predictions[0]["confidence"] is None and predictions[1]["error"] == ""
