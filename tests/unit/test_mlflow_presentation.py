"""What a user sees first in MLflow: the experiment is marked classic ML (runs table and charts, not
the GenAI views), and run names say what ran. A real SQLite tracking store in a tmp folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.calibrate import calibrate_run_name
from tasks.tracking.runs import (
    CLASSIC_ML_KIND,
    EXPERIMENT_KIND_TAG,
    TRACKING_URI_VARIABLE,
    UI_CLASSIC_ML_QUERY,
    data_label,
    ensure_experiment,
    open_local_store,
    recorded_data_version,
    run_name,
    run_ui_link,
)
from tasks.workspace.params_model import CalibrateParams
from tasks.workspace.paths import ProjectPaths

UI_BUNDLE = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
DIGEST = "3f2a1c" + "0" * 58


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProjectPaths]:
    """A workspace whose MLflow store is its own SQLite file; the previous tracking URI is restored."""
    monkeypatch.delenv(TRACKING_URI_VARIABLE, raising=False)
    previous = mlflow.get_tracking_uri()
    yield ProjectPaths.from_root(tmp_path)
    mlflow.set_tracking_uri(previous)


def test_a_new_experiment_is_marked_classic_ml(paths: ProjectPaths) -> None:
    experiment_id = ensure_experiment(paths, "fresh")
    assert MlflowClient().get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML_KIND


def test_an_existing_experiment_without_a_kind_is_marked_and_a_chosen_kind_is_kept(paths: ProjectPaths) -> None:
    """Stores made before this change get the tag on the next stage run; a kind a user picked stays."""
    paths.mlruns_dir.mkdir(parents=True)
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
    untagged = mlflow.create_experiment("made-earlier")
    chosen = mlflow.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert EXPERIMENT_KIND_TAG not in MlflowClient().get_experiment(untagged).tags

    assert ensure_experiment(paths, "made-earlier") == untagged
    assert ensure_experiment(paths, "chosen") == chosen
    client = MlflowClient()
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_tag_and_its_value_are_the_ones_the_installed_mlflow_ui_reads() -> None:
    """Fails when an MLflow upgrade renames the tag or the kind (the UI bundle is where they live)."""
    bundle = "".join(path.read_text(encoding="utf-8", errors="replace") for path in UI_BUNDLE.glob("*.js"))
    assert f'"{EXPERIMENT_KIND_TAG}"' in bundle
    assert f'CUSTOM_MODEL_DEVELOPMENT="{CLASSIC_ML_KIND}"' in bundle
    # 3.17 chooses the views by its sidebar switch, which a link's `workflowType` query sets.
    parameter, value = UI_CLASSIC_ML_QUERY.split("=")
    assert f'get("{parameter}")' in bundle and f'MACHINE_LEARNING="{value}"' in bundle


def test_run_links_open_in_the_classic_ml_views() -> None:
    assert run_ui_link("http://127.0.0.1:5000", "1", "abc") == (
        "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    )


def test_run_names_say_what_ran(tmp_path: Path) -> None:
    assert run_name("train", "mlp head", "cached", "150 px", data_label(DIGEST)) == (
        "train · mlp head · cached · 150 px · data 3f2a1c"
    )
    assert run_name("calibrate", "", data_label(DIGEST)) == "calibrate · data 3f2a1c"  # empty details left out
    params = CalibrateParams(objective="target_far", target_far=0.05, reference_threshold=0.4)
    assert calibrate_run_name(params, DIGEST) == "calibrate · threshold at FAR 0.05 · data 3f2a1c"
    assert calibrate_run_name(params.model_copy(update={"objective": "eer"}), None) == "calibrate · threshold at EER"
    train_run = tmp_path / "train_run.json"
    assert recorded_data_version(train_run) is None
    train_run.write_text(f'{{"run_id": "abc", "data_version": "{DIGEST}"}}')
    assert recorded_data_version(train_run) == DIGEST


def test_the_local_store_is_opened_ahead_and_a_tracking_server_is_left_alone(
    paths: ProjectPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline opens (in a fresh workspace: creates) the workspace's store while its Prefect server
    starts; the experiment created afterwards lands in that same store. A configured server is not
    contacted ahead (the stages check it and say what is wrong)."""
    monkeypatch.setenv(TRACKING_URI_VARIABLE, "http://127.0.0.1:9")  # nothing listens on the discard port
    open_local_store(paths)
    assert not paths.mlruns_dir.exists()
    monkeypatch.delenv(TRACKING_URI_VARIABLE)
    elsewhere = paths.root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the pipeline may be started from another folder
    open_local_store(paths)
    database = paths.mlruns_dir / "mlflow.db"
    assert database.is_file() and database.stat().st_size > 0
    default = MlflowClient(paths.mlflow_tracking_uri).get_experiment("0").artifact_location
    assert default == str(paths.mlruns_dir / "0"), default  # as a stage, run from the root, places it
    experiment_id = ensure_experiment(paths, "after-the-warm-up")
    assert MlflowClient(paths.mlflow_tracking_uri).get_experiment(experiment_id).name == "after-the-warm-up"
