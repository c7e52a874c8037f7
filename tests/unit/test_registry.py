"""The champion decision: better on the metric (then the tie-break) on the same test manifest."""

from __future__ import annotations

from tasks.registry import CHALLENGER, CHAMPION, compare, decide, digest_of_test_rows

MANIFEST = "m1"


def champion(accuracy: float, eer: float | None = 0.2, manifest: str = MANIFEST) -> dict:
    return {"version": "3", "metrics": {"accuracy": accuracy, "eer_skilled": eer}, "test_manifest": manifest}


def test_first_version_is_champion() -> None:
    decision = decide({"accuracy": 0.5}, MANIFEST, None, "accuracy")
    assert decision.alias == CHAMPION and decision.champion_version is None


def test_better_worse_and_tie_break() -> None:
    assert decide({"accuracy": 0.9, "eer_skilled": 0.3}, MANIFEST, champion(0.8), "accuracy").alias == CHAMPION
    worse = decide({"accuracy": 0.7, "eer_skilled": 0.1}, MANIFEST, champion(0.8), "accuracy")
    assert worse.alias == CHALLENGER and worse.champion_value == 0.8 and worse.new_value == 0.7
    assert decide({"accuracy": 0.8, "eer_skilled": 0.1}, MANIFEST, champion(0.8), "accuracy").alias == CHAMPION
    assert decide({"accuracy": 0.8, "eer_skilled": 0.3}, MANIFEST, champion(0.8), "accuracy").alias == CHALLENGER
    assert decide({"accuracy": 0.8, "eer_skilled": 0.2}, MANIFEST, champion(0.8), "accuracy").alias == CHALLENGER


def test_lower_is_better_metrics() -> None:
    assert compare({"eer_skilled": 0.1}, {"eer_skilled": 0.2}, "eer_skilled") == 1
    assert compare({"eer_skilled": 0.3}, {"eer_skilled": 0.2}, "eer_skilled") == -1


def test_another_test_manifest_never_replaces_the_champion() -> None:
    decision = decide({"accuracy": 0.99}, "m2", champion(0.5), "accuracy")
    assert decision.alias == CHALLENGER and "another test manifest" in decision.reason


def test_missing_or_null_metrics_cannot_win() -> None:
    assert decide({"accuracy": None}, MANIFEST, champion(0.5, eer=None), "accuracy").alias == CHALLENGER
    assert decide({"accuracy": float("nan")}, MANIFEST, champion(0.5), "accuracy").alias == CHALLENGER


def test_digest_of_test_rows_covers_only_test_rows() -> None:
    rows = [
        {"path": "a", "source_sha256": "1", "split": "test"},
        {"path": "b", "source_sha256": "2", "split": "train"},
    ]
    digest = digest_of_test_rows(rows)
    assert digest_of_test_rows([rows[0], {**rows[1], "source_sha256": "9"}]) == digest
    assert digest_of_test_rows([{**rows[0], "source_sha256": "8"}, rows[1]]) != digest
