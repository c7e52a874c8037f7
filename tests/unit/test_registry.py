"""The champion decision: better on a selection metric (then the tie-break) on the same selection
data, never on test, and a missing or NaN number never wins."""

from __future__ import annotations

import pytest

from tasks.registration.registry import (
    CHALLENGER,
    CHAMPION,
    check_selection_metric,
    compare,
    decide,
    digest_of_rows,
    lower_is_better,
)

MANIFEST = "m1"
METRIC = "selection_accuracy"
TIE = "selection_eer_skilled"


def champion(accuracy: float | None, eer: float | None = 0.2, manifest: str = MANIFEST) -> dict:
    return {"version": "3", "metrics": {METRIC: accuracy, TIE: eer}, "selection_manifest": manifest}


def test_first_version_is_champion() -> None:
    decision = decide({METRIC: 0.5}, MANIFEST, None, METRIC)
    assert decision.alias == CHAMPION and decision.champion_version is None


def test_better_worse_and_tie_break() -> None:
    assert decide({METRIC: 0.9, TIE: 0.3}, MANIFEST, champion(0.8), METRIC).alias == CHAMPION
    worse = decide({METRIC: 0.7, TIE: 0.1}, MANIFEST, champion(0.8), METRIC)
    assert worse.alias == CHALLENGER and worse.champion_value == 0.8 and worse.new_value == 0.7
    assert decide({METRIC: 0.8, TIE: 0.1}, MANIFEST, champion(0.8), METRIC).alias == CHAMPION
    assert decide({METRIC: 0.8, TIE: 0.3}, MANIFEST, champion(0.8), METRIC).alias == CHALLENGER
    assert decide({METRIC: 0.8, TIE: 0.2}, MANIFEST, champion(0.8), METRIC).alias == CHALLENGER


def test_lower_is_better_metrics() -> None:
    assert compare({TIE: 0.1}, {TIE: 0.2}, TIE) == 1
    assert compare({TIE: 0.3}, {TIE: 0.2}, TIE) == -1
    assert lower_is_better("selection_eer_skilled") and lower_is_better("far_skilled")
    assert not lower_is_better("selection_accuracy") and not lower_is_better("f1_weighted")


def test_another_selection_manifest_never_replaces_the_champion() -> None:
    decision = decide({METRIC: 0.99}, "m2", champion(0.5), METRIC)
    assert decision.alias == CHALLENGER and "other selection data" in decision.reason


def test_a_nan_primary_metric_never_wins_through_the_tie_break() -> None:
    """The demonstrated bug: NaN accuracy with a better EER beat a 0.95 / 0.20 champion."""
    new = {METRIC: float("nan"), TIE: 0.10}
    assert compare(new, champion(0.95)["metrics"], METRIC) == -1
    assert decide(new, MANIFEST, champion(0.95), METRIC).alias == CHALLENGER
    assert decide({METRIC: None, TIE: 0.1}, MANIFEST, champion(0.5), METRIC).alias == CHALLENGER
    assert decide({TIE: 0.1}, MANIFEST, champion(0.5), METRIC).alias == CHALLENGER


def test_a_nan_tie_break_never_wins_a_tie() -> None:
    assert decide({METRIC: 0.8, TIE: float("nan")}, MANIFEST, champion(0.8, eer=0.2), METRIC).alias == CHALLENGER


def test_a_champion_without_the_metric_loses_to_a_measured_version() -> None:
    assert decide({METRIC: 0.5, TIE: 0.3}, MANIFEST, champion(None), METRIC).alias == CHAMPION
    assert decide({METRIC: 0.5, TIE: 0.3}, MANIFEST, champion(0.5, eer=float("nan")), METRIC).alias == CHAMPION


def test_both_missing_keeps_the_champion() -> None:
    assert decide({METRIC: None}, MANIFEST, champion(None), METRIC).alias == CHALLENGER


@pytest.mark.parametrize("metric", ["accuracy", "eer_skilled", "f1_weighted"])
def test_test_metrics_are_refused_for_promotion(metric: str) -> None:
    with pytest.raises(ValueError, match="never on test"):
        check_selection_metric(metric)
    check_selection_metric("selection_accuracy")


def test_digest_covers_only_the_chosen_splits() -> None:
    rows = [
        {"path": "a", "source_sha256": "1", "split": "val", "kind": "genuine"},
        {"path": "b", "source_sha256": "2", "split": "test", "kind": "genuine"},
        {"path": "c", "source_sha256": "3", "split": "calibration", "kind": "skilled"},
    ]
    digest = digest_of_rows(rows, ("val", "calibration"))
    assert digest_of_rows([rows[0], {**rows[1], "source_sha256": "9"}, rows[2]], ("val", "calibration")) == digest
    assert digest_of_rows([{**rows[0], "source_sha256": "8"}, rows[1], rows[2]], ("val", "calibration")) != digest
    assert digest_of_rows([rows[0], rows[1], {**rows[2], "split": "test"}], ("val", "calibration")) != digest


def test_register_refuses_a_classifier_the_package_stage_did_not_check(tmp_path) -> None:
    """`sigpipe register` runs without DVC: a classifier file replaced or damaged after package checked
    it, or one for other writers than the calibration's, is refused before anything is logged or signed."""
    import json

    from tasks.registration.packaging import check_package_record
    from tasks.workspace.errors import ModelFileError
    from tasks.workspace.files import sha256_file, write_json
    from tasks.workspace.paths import ProjectPaths

    paths = ProjectPaths.from_root(tmp_path)
    paths.classifier_file.parent.mkdir(parents=True)
    paths.classifier_file.write_bytes(b"the classifier package built")
    write_json(
        paths.calibration_file, {"classes": ["a", "b"], "temperature": 1.0, "threshold": 0.5, "unknown_class_id": 2}
    )
    with pytest.raises(ModelFileError, match=r"package\.json cannot be read .*dvc repro package"):
        check_package_record(paths)
    write_json(paths.package_record_file, {"classifier_sha256": sha256_file(paths.classifier_file), "classes": 2})
    check_package_record(paths)
    paths.classifier_file.write_bytes(b"a stale or damaged classifier")
    with pytest.raises(ModelFileError, match=r"classifier\.keras is not the classifier the package stage checked"):
        check_package_record(paths)
    record = json.loads(paths.package_record_file.read_text())
    write_json(
        paths.package_record_file, {**record, "classifier_sha256": sha256_file(paths.classifier_file), "classes": 3}
    )
    with pytest.raises(ModelFileError, match=r"answers 3 writers but .*calibration\.json names 2"):
        check_package_record(paths)
