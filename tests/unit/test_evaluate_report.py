"""The numbers `metrics/evaluate_details.json` reports and promotion decides on, against hand-worked values.

One small score table of three writers (a, b, c), every row written out below. Logits are logs of
small whole weights, so softmax probabilities are simple fractions (weights 3, 1, 1 give 3/5,
1/5, 1/5); verifier scores are given directly. Every expected number is worked out in a comment.

EER rule (`tasks.evaluation.metrics.equal_error_rate`): thresholds are the scores; a claim is accepted at
score >= threshold; the threshold with the smallest |FRR - FAR| wins, the lowest one on a tie, and
the EER is (FRR + FAR) / 2 there.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tasks.evaluation.evaluate import evaluation_report, selection_metrics, verification_report
from tasks.evaluation.scores import NO_CLASS, SOFTMAX, TABLE_ARRAYS, VERIFIER, ScoreTable
from tasks.workspace.errors import EvaluationError

CLASSES = ("a", "b", "c")
A, B, C = 0, 1, 2
NAN = pytest.approx(math.nan, nan_ok=True)

# (split, kind, claimed writer, softmax weights, verifier scores for a, b, c)
ROWS: list[tuple[str, str, int, list[float], list[float]]] = [
    # --- test genuine ---------------------------------------------------------------- predicted
    ("test", "genuine", A, [3, 1, 1], [0.9, 0.1, 0.2]),  # r0: p = 3/5 1/5 1/5            a (right)
    ("test", "genuine", A, [1, 4, 2], [0.6, 0.3, 0.0]),  # r1: p = 1/7 4/7 2/7            b (wrong)
    ("test", "genuine", B, [1, 3, 1], [0.2, 0.8, 0.4]),  # r2: p = 1/5 3/5 1/5            b (right)
    ("test", "genuine", C, [1, 1, 2], [0.65, 0.3, 0.7]),  # r3: p = 1/4 1/4 1/2           c (right)
    # a writer the classifier does not know: never counted anywhere
    ("test", "genuine", NO_CLASS, [9, 1, 1], [0.99, 0.99, 0.99]),
    # --- test forgeries (no simple ones) ---
    ("test", "skilled", A, [1, 1, 1], [0.7, 0.0, 0.0]),  # s0: verifier 0.7, softmax 1/3
    ("test", "skilled", B, [1, 1, 1], [0.0, 0.3, 0.0]),  # s1: verifier 0.3, softmax 1/3
    ("test", "opposite", C, [1, 1, 1], [0.0, 0.0, 0.75]),  # o0: verifier 0.75, softmax 1/3
    ("test", "opposite", A, [1, 1, 1], [0.72, 0.0, 0.0]),  # o1: verifier 0.72, softmax 1/3
    # --- validation ---
    ("val", "genuine", A, [3, 1, 1], [0.8, 0.0, 0.0]),  # v0: predicted a (right), verifier 0.8
    ("val", "genuine", B, [3, 1, 1], [0.0, 0.4, 0.0]),  # v1: predicted a (wrong), verifier 0.4
    ("val", "genuine", C, [1, 1, 3], [0.0, 0.0, 0.6]),  # v2: predicted c (right), verifier 0.6
    ("val", "skilled", A, [1, 1, 1], [0.99, 0.0, 0.0]),  # validation forgeries are used by nothing
    # --- calibration ---
    ("calibration", "skilled", A, [1, 1, 1], [0.5, 0.0, 0.0]),  # c0
    ("calibration", "skilled", B, [1, 1, 1], [0.0, 0.3, 0.0]),  # c1
    ("calibration", "opposite", C, [1, 1, 1], [0.0, 0.0, 0.95]),  # c2
    ("calibration", "simple", A, [1, 1, 1], [0.7, 0.0, 0.0]),  # c3
    ("calibration", "opposite", B, [1, 1, 1], [0.0, 0.05, 0.0]),  # c4
    ("calibration", "skilled", NO_CLASS, [1, 1, 1], [0.99, 0.99, 0.99]),  # c5: unknown writer, ignored
]


def build_table(rows: list[tuple[str, str, int, list[float], list[float]]]) -> ScoreTable:
    return ScoreTable(
        logits=np.log(np.array([row[3] for row in rows], dtype=np.float64)).astype(np.float32),
        verification=np.array([row[4] for row in rows], dtype=np.float64),
        embeddings=np.zeros((len(rows), 2), dtype=np.float32),
        claimed=np.array([row[2] for row in rows], dtype=np.int64),
        kinds=np.array([row[1] for row in rows]),
        splits=np.array([row[0] for row in rows]),
        paths=np.array([f"image{index}.png" for index in range(len(rows))]),
    )


def without(table: ScoreTable, drop: np.ndarray) -> ScoreTable:
    keep = ~drop
    return ScoreTable(*(getattr(table, name)[keep] for name in TABLE_ARRAYS))


TABLE = build_table(ROWS)


def test_verifier_report_per_kind_by_hand() -> None:
    report = verification_report(TABLE, VERIFIER)
    assert report["score"] == VERIFIER and report["threshold_source"] == "test scores (a posteriori)"
    # Genuine claims (r0-r3 as their own writer): 0.9, 0.6, 0.8, 0.7; the NO_CLASS row is not one.
    assert report["genuine_claims"] == 4
    # Skilled 0.7, 0.3 against genuine 0.9 0.8 0.7 0.6 (FRR = genuine below t, FAR = skilled at or above t):
    #   t=0.8: FRR 2/4, FAR 0 (gap 1/2); t=0.7: FRR 1/4, FAR 1/2 (gap 1/4, the smallest); t=0.6: FRR 0, FAR 1/2.
    #   EER = (1/4 + 1/2) / 2 = 3/8 at 0.7.
    #   AUC: pairs genuine > skilled: 0.9 and 0.8 beat both (4), 0.7 ties 0.7 (1/2) and beats 0.3 (1),
    #   0.6 beats 0.3 (1): 6.5 / 8 = 13/16.
    assert report["skilled"] == pytest.approx({"claims": 2, "eer": 3 / 8, "eer_threshold": 0.7, "auc": 13 / 16})
    # Opposite 0.75, 0.72: t=0.8: FRR 2/4, FAR 0; t=0.75: FRR 2/4, FAR 1/2 (gap 0); t=0.72: FRR 2/4, FAR 1.
    #   EER 1/2 at 0.75. AUC: 0.9 and 0.8 beat both, 0.7 and 0.6 neither: 4/8.
    assert report["opposite"] == pytest.approx({"claims": 2, "eer": 0.5, "eer_threshold": 0.75, "auc": 0.5})
    # Random forgeries: r0-r3 claimed as the two other writers:
    #   0.1 0.2 | 0.3 0.0 | 0.2 0.4 | 0.65 0.3 (8 claims, one of them, 0.65, above genuine 0.6).
    #   t=0.7: FRR 1/4, FAR 0 (gap 1/4); t=0.65: FRR 1/4, FAR 1/8 (gap 1/8); t=0.6: FRR 0, FAR 1/8 (gap 1/8);
    #   t=0.4: FRR 0, FAR 2/8. Tie at 0.65 and 0.6: the lower, 0.6, wins: EER = (0 + 1/8) / 2 = 1/16.
    #   AUC: 0.9, 0.8, 0.7 beat all 8 (24), 0.6 beats 7 of them: 31/32.
    assert report["random"] == pytest.approx({"claims": 8, "eer": 1 / 16, "eer_threshold": 0.6, "auc": 31 / 32})
    # No simple forgeries on test: NaN, not a made-up number.
    assert report["simple"] == {"claims": 0, "eer": NAN, "eer_threshold": NAN, "auc": NAN}


def test_rates_at_the_skilled_eer_threshold_by_hand() -> None:
    at = verification_report(TABLE, VERIFIER)["at_skilled_eer_threshold"]
    # Threshold 0.7 (skilled EER above). Genuine 0.9 0.8 0.7 0.6: only 0.6 is rejected -> FRR 1/4.
    # Skilled 0.7 0.3 -> 1/2 accepted; opposite 0.75 0.72 -> both; random: none reaches 0.7 (max 0.65).
    assert at == pytest.approx(
        {
            "threshold": 0.7,
            "frr": 0.25,
            "far_skilled": 0.5,
            "far_simple": math.nan,
            "far_opposite": 1.0,
            "far_random": 0.0,
        },
        nan_ok=True,
    )


def test_no_skilled_forgeries_means_no_rates_at_their_threshold() -> None:
    no_skilled = without(TABLE, (TABLE.splits == "test") & (TABLE.kinds == "skilled"))
    report = verification_report(no_skilled, VERIFIER)
    assert report["skilled"] == {"claims": 0, "eer": NAN, "eer_threshold": NAN, "auc": NAN}
    assert "at_skilled_eer_threshold" not in report
    assert report["opposite"]["eer"] == pytest.approx(0.5)  # the other kinds are still reported


def test_softmax_baseline_report_by_hand() -> None:
    report = verification_report(TABLE, SOFTMAX)
    assert report["score"] == SOFTMAX and report["genuine_claims"] == 4
    # Softmax probability of the claimed writer: genuine r0 3/5, r1 1/7, r2 3/5, r3 1/2; skilled 1/3, 1/3.
    #   t=3/5: FRR 2/4, FAR 0; t=1/2: FRR 1/4, FAR 0 (gap 1/4, smallest); t=1/3: FRR 1/4, FAR 1.
    #   EER = (1/4 + 0) / 2 = 1/8 at 1/2. AUC: 3/5, 3/5, 1/2 beat both, 1/7 neither: 6/8.
    assert report["skilled"] == pytest.approx({"claims": 2, "eer": 1 / 8, "eer_threshold": 0.5, "auc": 0.75})
    # Random: r0 1/5 1/5 | r1 4/7 2/7 | r2 1/5 1/5 | r3 1/4 1/4.
    #   t=4/7: FRR 2/4, FAR 1/8; t=1/2: FRR 1/4, FAR 1/8; t=2/7: FRR 1/4, FAR 2/8 (gap 0); t=1/4: FRR 1/4,
    #   FAR 4/8. EER 1/4 at 2/7.
    assert report["random"]["eer"] == pytest.approx(0.25)
    assert report["random"]["eer_threshold"] == pytest.approx(2 / 7, rel=1e-6)
    # At 1/2: genuine 1/7 rejected (FRR 1/4); no skilled (1/3) through; random 4/7 through (1/8).
    at = report["at_skilled_eer_threshold"]
    assert at["threshold"] == pytest.approx(0.5, rel=1e-6)
    assert (at["frr"], at["far_skilled"], at["far_opposite"]) == pytest.approx((0.25, 0.0, 0.0))
    assert at["far_random"] == pytest.approx(1 / 8)


def test_evaluation_report_identification_confusion_and_per_writer_by_hand() -> None:
    metrics, per_writer, matrix = evaluation_report(TABLE, CLASSES, top_k=2)
    # Test genuine r0-r3: true a a b c, predicted a b b c.
    assert metrics["accuracy"] == pytest.approx(3 / 4)
    # a: P 1/1, R 1/2, F1 2/3; b: P 1/2, R 1/1, F1 2/3; c: P 1, R 1, F1 1. Supports 2, 1, 1.
    assert metrics["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)  # 7/9
    assert metrics["f1_weighted"] == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)  # 3/4
    # Top 2: r0 {a, .}, r2 {b, .}, r3 {c, .} hold the truth; r1 (1/7 4/7 2/7) is {b, c}, not a.
    assert metrics["top2_accuracy"] == pytest.approx(3 / 4)
    assert metrics["test_genuine_images"] == 4 and metrics["writers"] == 3
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert per_writer == [
        {"writer": "a", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2},
        {"writer": "b", "precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1},
        {"writer": "c", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    ]


def test_evaluation_report_flat_verification_keys_by_hand() -> None:
    metrics, _, _ = evaluation_report(TABLE, CLASSES, top_k=2)
    # Verifier EER / AUC per kind (worked out in test_verifier_report_per_kind_by_hand).
    assert (metrics["eer_skilled_a_posteriori"], metrics["auc_skilled"]) == pytest.approx((3 / 8, 13 / 16))
    assert (metrics["eer_opposite_a_posteriori"], metrics["auc_opposite"]) == pytest.approx((0.5, 0.5))
    assert (metrics["eer_random_a_posteriori"], metrics["auc_random"]) == pytest.approx((1 / 16, 31 / 32))
    assert math.isnan(metrics["eer_simple_a_posteriori"]) and math.isnan(metrics["auc_simple"])
    # Softmax baseline: skilled 1/8, random 1/4 (test_softmax_baseline_report_by_hand); opposite rows
    # are the skilled ones' twins (1/3 each), so 1/8 too; simple: none.
    assert metrics["softmax_eer_skilled_a_posteriori"] == pytest.approx(1 / 8)
    assert metrics["softmax_eer_random_a_posteriori"] == pytest.approx(1 / 4)
    assert metrics["softmax_eer_opposite_a_posteriori"] == pytest.approx(1 / 8)
    assert math.isnan(metrics["softmax_eer_simple_a_posteriori"])
    assert metrics["verification_a_posteriori"]["skilled"]["eer_threshold"] == pytest.approx(0.7)
    assert metrics["softmax_verification_a_posteriori"]["score"] == SOFTMAX
    # Promotion numbers travel with the report (worked out in test_selection_metrics_by_hand).
    assert metrics["selection_accuracy"] == pytest.approx(2 / 3)
    assert metrics["selection_eer_skilled"] == pytest.approx(5 / 12)


def test_selection_metrics_by_hand() -> None:
    selection = selection_metrics(TABLE)
    # Validation genuine v0 v1 v2: predicted a a c for true a b c -> 2/3.
    # Verifier EER of validation genuine claims 0.8, 0.4, 0.6 against the calibration skilled forgeries
    # c0 0.5 and c1 0.3 (c5 has no known writer; c2-c4 are not skilled; test and validation forgeries
    # never count):
    #   t=0.6: FRR 1/3, FAR 0 (gap 1/3); t=0.5: FRR 1/3, FAR 1/2 (gap 1/6, smallest); t=0.4: FRR 0, FAR 1/2.
    #   EER = (1/3 + 1/2) / 2 = 5/12.
    assert selection == pytest.approx(
        {
            "selection_accuracy": 2 / 3,
            "selection_eer_skilled": 5 / 12,
            "selection_genuine_claims": 3,
            "selection_impostor_claims": 2,
        }
    )


def test_selection_falls_back_to_every_calibration_row_without_skilled_forgeries() -> None:
    # Drop c0 and c1; c5 (skilled, unknown writer) stays and does not count as a skilled forgery.
    drop = (TABLE.splits == "calibration") & (TABLE.kinds == "skilled") & (TABLE.claimed != NO_CLASS)
    selection = selection_metrics(without(TABLE, drop))
    # Impostors: c2 0.95, c3 0.7, c4 0.05 against genuine 0.8, 0.4, 0.6:
    #   t=0.95: FRR 1, FAR 1/3; t=0.8: FRR 2/3, FAR 1/3; t=0.7: FRR 2/3, FAR 2/3 (gap 0); t=0.6: FRR 1/3, FAR 2/3.
    #   EER 2/3.
    assert selection == pytest.approx(
        {
            "selection_accuracy": 2 / 3,
            "selection_eer_skilled": 2 / 3,
            "selection_genuine_claims": 3,
            "selection_impostor_claims": 3,
        }
    )


def test_selection_ignores_test_rows() -> None:
    """Scrambling every test score changes the reported numbers, never the ones promotion compares."""
    is_test = TABLE.splits == "test"
    logits, verification = TABLE.logits.copy(), TABLE.verification.copy()
    logits[is_test] = logits[is_test][:, ::-1]
    verification[is_test] = 1.0 - verification[is_test]
    scrambled = dataclasses.replace(TABLE, logits=logits, verification=verification)
    assert selection_metrics(scrambled) == selection_metrics(TABLE)
    assert evaluation_report(scrambled, CLASSES, 2)[0]["eer_skilled_a_posteriori"] != pytest.approx(3 / 8)


def test_selection_without_validation_images_is_nan() -> None:
    selection = selection_metrics(without(TABLE, TABLE.splits == "val"))
    assert math.isnan(selection["selection_accuracy"]) and math.isnan(selection["selection_eer_skilled"])
    assert selection["selection_genuine_claims"] == 0 and selection["selection_impostor_claims"] == 2


def test_no_test_genuine_images_is_a_clear_error() -> None:
    no_test_genuine = without(TABLE, (TABLE.splits == "test") & (TABLE.kinds == "genuine"))
    with pytest.raises(EvaluationError, match="no test genuine signatures"):
        evaluation_report(no_test_genuine, CLASSES, top_k=2)
