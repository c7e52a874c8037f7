"""`sigpipe enrol` and `remove` end to end on a copy of the trained workspace (3 generated writers, 75 px):
every refusal, a new writer's signed version with its lineage, the champion rule, --add-references,
removal with the earlier versions listed and purged, and the record: the next rebuild (the stage flows,
as `dvc repro` runs them) includes the enrolled writer and answers as the enrolled model did, and a
removed writer leaves no file in data/; last, enrol and remove against a real tracking server (team mode).

The tests run in order on one workspace (each builds on the previous one's registry and record)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from tasks.cli.app import app
from tasks.data.synthetic import draw_sample
from tasks.enrolment.versions import TAG_OPERATION, TAG_PARENT, TAG_REFERENCES, TAG_RUN, TAG_WRITER, TAG_WRITERS
from tasks.workspace.files import sha256_file
from tasks.workspace.params_data import SyntheticParams
from tasks.workspace.paths import ProjectPaths
from tests.conftest import PROJECT_ROOT, TRAINED_PARAMS, edit_params, later_artifacts
from tests.conftest import TRAINED_MODEL_NAME as MODEL_NAME

pytestmark = [pytest.mark.xdist_group("trained"), pytest.mark.slow]

NEW_WRITER = "900"
IMPOSTOR = "902"  # enrolled from writer 001's own signatures: the writers enrolled before lose accuracy
TEAM_WRITER = "904"  # enrolled and removed against a tracking server (team mode)
SYNTHETIC_WRITER = 9  # the generated dataset's writers are 1..3: writer 9's style is new to the model
REFERENCES = 5
HUGE_TOLERANCE = 1.0
# The rebuilt model (`dvc repro` after an enrolment) and the enrolled one see the same embeddings: the
# clean ones are equal, and every augmented view is seeded by the image's prepared-PNG hash
# (`tasks.training.input_pipeline.image_keys`), not by its position, so an enrolled reference gets the
# same views among all training images as among the new references. What is left is float rounding
# (other batch compositions, another row order in the solve). Stated tolerance (docs/enrolment.md):
# the same top writer for every held-out image, every claim score within SCORE_TOLERANCE (the package
# stage's check of the packaged model against the light stages' scores), and both answer the enrolled
# writer's references with it.
AGREEMENT = 1.0
SCORE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, trained_original: Path) -> ProjectPaths:
    """One copy of the trained workspace for the whole module, with the huge tolerance (the rule is tested apart)."""
    root = tmp_path_factory.mktemp("enrolment") / "workspace"
    shutil.copytree(trained_original, root, symlinks=True, ignore=later_artifacts(trained_original))
    paths = ProjectPaths.from_root(root)
    edit_params(paths.params_file, {"enrol": {"tolerance": HUGE_TOLERANCE}})
    return paths


def png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path


def references(folder: Path, writer: int, count: int, first: int = 1) -> list[Path]:
    """`count` generated genuine signatures of synthetic writer `writer`, as PNG files in `folder`."""
    defaults = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["synthetic"]
    params = SyntheticParams.model_validate({**defaults, **TRAINED_PARAMS["synthetic"]})
    return [
        png(draw_sample(params, writer, "genuine", number), folder / f"ref{number}.png")
        for number in range(first, first + count)
    ]


def sigpipe(paths: ProjectPaths, *arguments: str):  # -> click.testing.Result
    return CliRunner().invoke(app, [*arguments, "--params", str(paths.params_file)])


def version_numbers() -> list[int]:
    import mlflow

    client = mlflow.tracking.MlflowClient()
    return sorted(int(version.version) for version in client.search_model_versions(f"name = '{MODEL_NAME}'"))


def champion() -> str:
    import mlflow

    return str(mlflow.tracking.MlflowClient().get_model_version_by_alias(MODEL_NAME, "champion").version)


def record_files(paths: ProjectPaths) -> list[Path]:
    return sorted(path for path in paths.enrolments_dir.rglob("*") if path.is_file() and path.name != "README.md")


def remembered_record_verifier(paths: ProjectPaths):  # -> WriterVerifier | None
    """The verifier the workspace's last fit kept for its record as it stands (what an enrolment reads as its
    "before" instead of solving it again), or None when it kept another problem's."""
    from tasks.enrolment.training_set import problem_of, training_set
    from tasks.enrolment.workspace_state import manifest, read_settings
    from tasks.model.verifier_cache import remembered_verifier

    problem = problem_of(training_set(paths, manifest(paths)), read_settings(paths).model)
    return remembered_verifier(paths.verifier_cache_file, problem)


def test_the_train_stage_keeps_the_verifier_an_enrolment_would_solve_first(workspace: ProjectPaths) -> None:
    from tasks.enrolment.training_set import fit, training_set
    from tasks.enrolment.workspace_state import manifest, read_settings

    remembered = remembered_record_verifier(workspace)
    assert remembered is not None  # the train stage's problem is the enrolment's record before any enrolment
    solved = fit(training_set(workspace, manifest(workspace)), read_settings(workspace).model)
    for name in ("mean", "scale", "kernel", "bias"):  # the same problem, rows in another order: rounding apart
        np.testing.assert_allclose(getattr(remembered, name), getattr(solved, name), rtol=1e-6, atol=1e-8)
    penalty = read_settings(workspace).model.verifier_regularization
    edit_params(workspace.params_file, {"model": {"verifier_regularization": 0.123}})
    try:  # another penalty is another problem: solved again, never read from the cache
        assert remembered_record_verifier(workspace) is None
    finally:
        edit_params(workspace.params_file, {"model": {"verifier_regularization": penalty}})
    assert remembered_record_verifier(workspace) is not None


def test_every_refusal_names_the_file_and_writes_nothing(workspace: ProjectPaths, tmp_path: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(workspace.mlflow_tracking_uri)
    before = version_numbers()
    good = references(tmp_path / "good", SYNTHETIC_WRITER, REFERENCES - 1)
    signature = np.asarray(Image.open(good[0]))
    blank = np.full((80, 120), 250, dtype=np.uint8)
    block = blank.copy()
    block[:, :50] = 20
    unreadable = tmp_path / "bad" / "unreadable.png"
    unreadable.parent.mkdir(parents=True)
    unreadable.write_bytes(b"not an image")
    dataset_image = workspace.raw_dir / "UTSig" / "Genuine" / "1" / "1.tif"
    cases = {
        unreadable: "unreadable",
        png(blank, tmp_path / "bad" / "blank.png"): "blank",
        png(np.asarray(Image.fromarray(signature).resize((48, 32))), tmp_path / "bad" / "small.png"): "too small",
        png(block, tmp_path / "bad" / "block.png"): "not a signature",
        dataset_image: "already a signature of writer 001",
    }
    for bad, reason in cases.items():
        result = sigpipe(workspace, "enrol", NEW_WRITER, *map(str, good), str(bad))
        assert result.exit_code == 1, result.output
        assert len(result.stderr.splitlines()) == 1 and str(bad) in result.stderr and reason in result.stderr
    twice = shutil.copy(good[0], tmp_path / "bad" / "copy.png")
    result = sigpipe(workspace, "enrol", NEW_WRITER, *map(str, good), str(twice))
    assert result.exit_code == 1 and result.stderr.splitlines() == [f"error: {twice}: the same image as {good[0]}"]
    result = sigpipe(workspace, "enrol", NEW_WRITER, *map(str, good))
    assert result.exit_code == 1 and "enrol.min_references=5" in result.stderr
    result = sigpipe(workspace, "enrol", "1", *map(str, good))
    assert result.exit_code == 1 and "writer 001 is already enrolled" in result.stderr
    assert record_files(workspace) == [] and version_numbers() == before
    # A refusal answers before TensorFlow or scikit-learn is imported (their imports alone cost seconds).
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from tasks.cli.app import app\n"
        "result = CliRunner().invoke(app, sys.argv[1:])\n"
        "assert result.exit_code == 1 and 'min_references' in result.stderr, result.output\n"
        "sys.exit(3 if {'tensorflow', 'sklearn'} & set(sys.modules) else 0)\n"
    )
    arguments = ["enrol", NEW_WRITER, *map(str, good), "--params", str(workspace.params_file)]
    refused = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, check=False)
    assert refused.returncode == 0, refused.stdout + refused.stderr


def test_enrol_registers_a_signed_version_that_answers_the_new_writer(workspace: ProjectPaths, tmp_path: Path) -> None:
    import mlflow

    from tasks.registration.model_store import load_verified_model, workspace_keys

    mlflow.set_tracking_uri(workspace.mlflow_tracking_uri)
    parent = champion()
    parent_model = load_verified_model(f"models:/{MODEL_NAME}@champion", workspace_keys(workspace)).model
    given = references(tmp_path / "refs", SYNTHETIC_WRITER, REFERENCES)
    result = sigpipe(workspace, "enrol", NEW_WRITER, str(tmp_path / "refs"))  # the folder form
    assert result.exit_code == 0, result.output
    assert "is champion" in result.stdout
    enrolled = load_verified_model(f"models:/{MODEL_NAME}@champion", workspace_keys(workspace)).model
    with np.load(workspace.scores_file) as table:
        embeddings = table["embeddings"]
    # Every other writer's model is the one it had: the enrolled references are not in the background.
    np.testing.assert_allclose(
        enrolled.verifier.scores(embeddings)[:, :3], parent_model.verifier.scores(embeddings), rtol=0, atol=1e-9
    )
    version = mlflow.tracking.MlflowClient().get_model_version_by_alias(MODEL_NAME, "champion")
    assert str(version.version) != parent
    tags = version.tags
    assert tags[TAG_OPERATION] == "enrol" and tags[TAG_WRITER] == NEW_WRITER and tags[TAG_PARENT] == parent
    assert tags[TAG_REFERENCES].split(",") == [sha256_file(path) for path in given]
    assert mlflow.get_run(tags[TAG_RUN]).info.run_id == tags[TAG_RUN]
    assert tags[TAG_WRITERS] == "001,002,003,900"
    assert remembered_record_verifier(workspace) is not None  # the next enrolment's "before", not solved again
    loaded = load_verified_model(f"models:/{MODEL_NAME}@champion", workspace_keys(workspace))  # signature checked
    assert loaded.model.classes == ["001", "002", "003", NEW_WRITER]
    calibration = json.loads(workspace.calibration_file.read_text())
    assert loaded.model.threshold == calibration["threshold"]
    answer = sigpipe(workspace, "predict", str(given[0]), "--json")
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.stdout)["writer"] == NEW_WRITER
    stored = workspace.enrolments_dir / "writers" / NEW_WRITER
    assert {path.name for path in stored.iterdir()} == {"enrolment.json", "references", "embeddings.npz"}
    assert sorted(sha256_file(path) for path in (stored / "references").iterdir()) == sorted(map(sha256_file, given))
    # A reference of the new writer is now refused for another one.
    others = references(tmp_path / "others", SYNTHETIC_WRITER + 1, REFERENCES - 1)
    refused = sigpipe(workspace, "enrol", "901", *map(str, others), str(given[1]))
    assert refused.exit_code == 1 and refused.stderr.splitlines() == [
        f"error: {given[1]}: already a signature of writer {NEW_WRITER}"
    ]


def reencoded(source: Path, target: Path) -> Path:
    """`source`'s pixels in a PNG file: the same signature, another file (another SHA-256)."""
    with Image.open(source) as image:
        buffer = io.BytesIO()
        image.convert("L").save(buffer, format="PNG")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return target


def test_champion_rule_keeps_the_champion_when_enrolled_writers_lose(workspace: ProjectPaths, tmp_path: Path) -> None:
    from tasks.data.manifest import read_manifest

    rows = read_manifest(workspace.manifest_file)
    own = [
        row for row in rows if row["writer"] == "001" and row["kind"] == "genuine" and row["split"] in ("val", "test")
    ]
    # Every writer's verifier is its own (the background's negatives), so an impostor cannot move the others'
    # FRR; it takes their identification where its model scores their signatures higher: here writer 001's
    # validation image, among the references, is answered as the impostor's.
    copies = [reencoded(workspace.root / row["path"], tmp_path / f"{index}.png") for index, row in enumerate(own)]
    champion_before = champion()
    edit_params(workspace.params_file, {"enrol": {"tolerance": 0.0}})
    try:
        result = sigpipe(workspace, "enrol", IMPOSTOR, *map(str, copies))
    finally:
        edit_params(workspace.params_file, {"enrol": {"tolerance": HUGE_TOLERANCE}})
    assert result.exit_code == 0, result.output
    assert "is challenger" in result.stdout and "more than enrol.tolerance=0.0" in result.stdout
    assert champion() == champion_before


def test_add_references(workspace: ProjectPaths, tmp_path: Path) -> None:
    more = references(tmp_path / "more", SYNTHETIC_WRITER, 1, first=REFERENCES + 1)
    again = sigpipe(workspace, "enrol", NEW_WRITER, *map(str, more))
    assert again.exit_code == 1 and f"writer {NEW_WRITER} is already enrolled" in again.stderr
    result = sigpipe(workspace, "enrol", NEW_WRITER, *map(str, more), "--add-references")
    assert result.exit_code == 0, result.output
    record = json.loads((workspace.enrolments_dir / "writers" / NEW_WRITER / "enrolment.json").read_text())
    assert len(record["references"]) == REFERENCES + 1
    assert remembered_record_verifier(workspace) is not None  # the stored views are read back as they were solved


def test_remove_lists_then_purges_the_versions_that_know_the_writer(workspace: ProjectPaths) -> None:
    import mlflow

    client = mlflow.tracking.MlflowClient()
    knowing = [
        v
        for v in version_numbers()
        if IMPOSTOR in client.get_model_version(MODEL_NAME, str(v)).tags.get(TAG_WRITERS, "")
    ]
    result = sigpipe(workspace, "remove", IMPOSTOR)
    assert result.exit_code == 0, result.output
    new = champion()
    assert IMPOSTOR not in client.get_model_version(MODEL_NAME, new).tags[TAG_WRITERS].split(",")
    assert (
        f"earlier versions that know it (--purge-versions deletes them): {', '.join(map(str, knowing))}"
        in result.stdout
    )
    assert not (workspace.enrolments_dir / "writers" / IMPOSTOR).exists()
    assert remembered_record_verifier(workspace) is not None
    assert set(map(int, knowing)) <= set(version_numbers())  # untouched without --purge-versions
    unknown = sigpipe(workspace, "remove", IMPOSTOR)
    assert unknown.exit_code == 1 and f"writer {IMPOSTOR} is not a writer of the model" in unknown.stderr


def test_next_rebuild_includes_the_enrolled_writer_and_answers_alike(workspace: ProjectPaths) -> None:
    from tasks.model.verifier import load_verifier
    from tasks.registration.model_store import load_verified_model, workspace_keys
    from tasks.training.embedding_files import load_embedded_rows

    enrolled = load_verified_model(f"models:/{MODEL_NAME}@champion", workspace_keys(workspace)).model
    run_stages(workspace, ("prepare", "embed", "train", "evaluate", "calibrate"))
    assert remembered_record_verifier(workspace) is not None  # the rebuilt record is the train stage's problem
    labels = json.loads(workspace.labels_file.read_text())["classes"]
    assert labels == ["001", "002", "003", NEW_WRITER]
    rebuilt = load_verifier(workspace.verifier_file)
    with np.load(workspace.scores_file) as table:
        embeddings = table["embeddings"]
    order = [enrolled.classes.index(writer) for writer in labels]
    before, after = enrolled.verifier.scores(embeddings)[:, order], rebuilt.scores(embeddings)
    agreement = float(np.mean(np.argmax(before, axis=1) == np.argmax(after, axis=1)))
    largest = float(np.abs(before - after).max())
    print(f"rebuilt vs enrolled: top writer agreement {agreement:.3f}, largest score difference {largest:.3f}")
    assert agreement >= AGREEMENT and largest <= SCORE_TOLERANCE
    own = load_embedded_rows(workspace.enrolments_dir / "writers" / NEW_WRITER / "embeddings.npz").clean
    new_class = labels.index(NEW_WRITER)
    assert (np.argmax(rebuilt.scores(own), axis=1) == new_class).all()
    assert (np.argmax(enrolled.verifier.scores(own)[:, order], axis=1) == new_class).all()


def test_removed_writer_leaves_no_file_after_the_next_rebuild(workspace: ProjectPaths) -> None:
    import mlflow

    client = mlflow.tracking.MlflowClient()
    result = sigpipe(workspace, "remove", NEW_WRITER, "--purge-versions")
    assert result.exit_code == 0, result.output
    assert "deleted the earlier versions that knew it" in result.stdout
    kept = champion()
    for version in version_numbers():
        if str(version) != kept:
            assert NEW_WRITER not in client.get_model_version(MODEL_NAME, str(version)).tags.get(TAG_WRITERS, "")
    run_stages(workspace, ("prepare", "embed"))
    from tasks.data.manifest import read_manifest

    folder = f"writers/{NEW_WRITER}"
    leftovers = [path for path in workspace.data_dir.rglob("*") if folder in path.as_posix()]
    assert leftovers == []
    assert all(row["writer"] != NEW_WRITER for row in read_manifest(workspace.manifest_file))
    for split in workspace.embeddings_dir.glob("*.npz"):
        with np.load(split) as arrays:
            assert not any(folder in str(path) for path in arrays["paths"])


def run_stages(paths: ProjectPaths, stages: tuple[str, ...]) -> None:
    """Run stage flows in this process, in order, as `dvc repro` would run the out-of-date ones."""
    import importlib

    for stage in stages:
        flow = getattr(importlib.import_module(f"flows.{stage}"), f"{stage}_flow")
        flow(str(paths.params_file))


def test_enrol_and_remove_against_a_tracking_server(
    workspace: ProjectPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, subprocess_env: dict[str, str]
) -> None:
    """Team mode (docs/team.md): with MLFLOW_TRACKING_URI naming a real `mlflow server` (served artifacts),
    enrol and remove register, sign and alias their versions in the server's registry, the model files go
    through the server, and predict answers with the server's champion; the workspace's own store is untouched."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tests.support.tracking_server import TrackingServer

    mlflow.set_tracking_uri(workspace.mlflow_tracking_uri)
    local_versions = version_numbers()
    folder = tmp_path / "server"
    folder.mkdir()
    server = TrackingServer(folder, subprocess_env)
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        given = references(tmp_path / "refs", SYNTHETIC_WRITER + 2, REFERENCES)
        enrolled = sigpipe(workspace, "enrol", TEAM_WRITER, *map(str, given))
        assert enrolled.exit_code == 0, enrolled.output
        assert f"{MODEL_NAME} version 1 is champion" in enrolled.stdout  # the server's registry: its first version
        client = MlflowClient(tracking_uri=server.url)
        version = client.get_model_version_by_alias(MODEL_NAME, "champion")
        assert version.tags[TAG_WRITERS].split(",")[-1] == TEAM_WRITER
        assert any((folder / "artifacts").rglob("classifier.keras"))  # uploaded through the server
        answer = sigpipe(workspace, "predict", str(given[0]), "--json")  # the server's champion, signature checked
        assert answer.exit_code == 0, answer.output
        assert json.loads(answer.stdout)["writer"] == TEAM_WRITER
        removed = sigpipe(workspace, "remove", TEAM_WRITER)
        assert removed.exit_code == 0, removed.output
        champion_now = client.get_model_version_by_alias(MODEL_NAME, "champion")
        assert champion_now.version == "2" and TEAM_WRITER not in champion_now.tags[TAG_WRITERS].split(",")
    finally:
        server.kill()
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(workspace.mlflow_tracking_uri)
    assert version_numbers() == local_versions
