"""Temperature scaling, the verification threshold and its test results, on synthetic score tables."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tasks.evaluation.calibrate import fit_calibration, fit_temperature, negative_log_likelihood
from tasks.evaluation.calibration_report import calibration_report, open_set_results, verification_results
from tasks.evaluation.scores import SOFTMAX, TABLE_ARRAYS, VERIFIER, ScoreTable, softmax

FEATURES = 3


def sample_labels(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    probabilities = softmax(logits)
    cumulative = probabilities.cumsum(axis=1)
    return (rng.uniform(size=(len(logits), 1)) > cumulative).sum(axis=1)


def test_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, (6000, 5))
    labels = sample_labels(true_logits, rng)
    overconfident = true_logits * 3.0
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert negative_log_likelihood(overconfident, labels, temperature) < negative_log_likelihood(
        overconfident, labels, 1.0
    )
    assert np.array_equal(softmax(overconfident).argmax(axis=1), softmax(overconfident, temperature).argmax(axis=1))


def build_table(rows: list[tuple[str, str, int, list[float], list[float]]]) -> ScoreTable:
    """A table from (split, kind, claimed, logits, verifier scores) rows."""
    return ScoreTable(
        logits=np.array([row[3] for row in rows], dtype=np.float32),
        verification=np.array([row[4] for row in rows], dtype=np.float64),
        embeddings=np.zeros((len(rows), FEATURES), dtype=np.float32),
        claimed=np.array([row[2] for row in rows]),
        kinds=np.array([row[1] for row in rows]),
        splits=np.array([row[0] for row in rows]),
        paths=np.array([f"f{index}" for index in range(len(rows))]),
    )


def table(rng: np.random.Generator, classes: int = 4) -> ScoreTable:
    """Genuine rows peak on their class in logits and verifier scores; forgeries peak less; splits
    val / calibration / test (calibration forgeries and test forgeries from different writers)."""
    rows = []
    for split, genuine_count, forgery_count in (("val", 80, 0), ("calibration", 0, 200), ("test", 80, 200)):
        for index in range(genuine_count):
            logits, scores = rng.normal(0, 1, classes), rng.normal(-1, 0.3, classes)
            logits[index % classes] += 5
            scores[index % classes] = rng.normal(1.0, 0.3)
            rows.append((split, "genuine", index % classes, list(logits), list(scores)))
        for index in range(forgery_count):
            writer = index % 2 if split == "calibration" else 2 + index % 2
            logits, scores = rng.normal(0, 1, classes), rng.normal(-1, 0.3, classes)
            logits[writer] += 4
            scores[writer] = rng.normal(0.0, 0.3)
            kind = "skilled" if index % 4 else "opposite"
            rows.append((split, kind, writer, list(logits), list(scores)))
    return build_table(rows)


def rows_where(scores: ScoreTable, keep: np.ndarray) -> ScoreTable:
    return ScoreTable(*(getattr(scores, name)[keep] for name in TABLE_ARRAYS))


def test_threshold_meets_target_far_on_calibration_skilled_forgeries_and_is_reported_on_test() -> None:
    scores = table(np.random.default_rng(1))
    calibration = fit_calibration(scores, "target_far", 0.05)
    skilled = scores.select("calibration", "skilled")
    claims = skilled.verification[np.arange(len(skilled)), skilled.claimed]
    # 150 skilled forgeries, target 0.05: floor(7.5) = 7 may pass, and the threshold is the lowest that
    # lets no more through (one float lower lets the 8th in).
    assert np.mean(claims >= calibration.threshold) == pytest.approx(7 / 150)
    assert np.mean(claims >= np.nextafter(calibration.threshold, -np.inf)) == pytest.approx(8 / 150)
    assert calibration.score == VERIFIER and calibration.impostor_kinds == ("skilled",)
    assert calibration.impostor_claims == 150 and calibration.genuine_claims == 80
    report = calibration_report(scores, calibration, reference_threshold=0.40)
    for key in ("temperature", "threshold", "frr", "far_skilled", "far_opposite", "far_random"):
        assert key in report
    assert report["far_skilled"] < 0.2 and report["frr"] < 0.2 and report["far_random"] == 0.0
    assert report["eer_skilled_a_posteriori"] < 0.1
    assert report["accuracy_accepted"] == pytest.approx(1.0)
    assert report["reference_fixed_threshold"]["threshold"] == 0.40
    # The softmax probability cannot tell a forgery of W from W: the fixed 0.40 lets almost all through.
    assert report["reference_fixed_threshold"]["verification"]["far_skilled"] > 0.8


def test_equal_error_objective_balances_the_two_errors_on_calibration_data() -> None:
    scores = table(np.random.default_rng(2))
    calibration = fit_calibration(scores, "eer", 0.05)
    genuine = scores.select("val", "genuine")
    skilled = scores.select("calibration", "skilled")
    frr = np.mean(genuine.verification[np.arange(len(genuine)), genuine.claimed] < calibration.threshold)
    far = np.mean(skilled.verification[np.arange(len(skilled)), skilled.claimed] >= calibration.threshold)
    assert abs(frr - far) < 0.05


def test_without_skilled_forgeries_every_calibration_row_is_an_impostor() -> None:
    scores = table(np.random.default_rng(7))
    no_skilled = rows_where(scores, scores.kinds != "skilled")
    calibration = fit_calibration(no_skilled, "eer", 0.05)
    assert calibration.impostor_kinds == ("opposite",) and calibration.impostor_claims == 50


def test_hand_computed_results_at_a_threshold() -> None:
    """Two writers, threshold 0.5 on the verifier's score; every count below is done by hand."""
    rows = [
        # test genuine of writer 0: identified as 0 (logits), verifier scores 0.9 / 0.2 for claims 0 / 1
        ("test", "genuine", 0, [3.0, 0.0], [0.9, 0.2]),
        # test genuine of writer 0, verifier rejects it (0.4 < 0.5): an FRR case
        ("test", "genuine", 0, [3.0, 0.0], [0.4, 0.1]),
        # test genuine of writer 1, identified as 0 by the classifier (wrong), verifier says 0.6 for 0
        ("test", "genuine", 1, [2.0, 1.0], [0.6, 0.7]),
        # skilled forgeries of writer 1: one accepted (0.55), one rejected (0.3)
        ("test", "skilled", 1, [0.0, 2.0], [0.0, 0.55]),
        ("test", "skilled", 1, [0.0, 2.0], [0.0, 0.3]),
    ]
    scores = build_table(rows)
    verification = verification_results(scores, 1.0, 0.5, VERIFIER)
    # Genuine claims (own writer): 0.9, 0.4, 0.7 -> one of three rejected.
    assert verification["frr"] == pytest.approx(1 / 3)
    assert verification["far_skilled"] == pytest.approx(1 / 2)
    # Random forgeries: claims of the other writer: 0.2, 0.1 (rows 1-2, as writer 1), 0.6 (row 3, as 0).
    assert verification["far_random"] == pytest.approx(1 / 3)
    open_set = open_set_results(scores, 1.0, 0.5, VERIFIER)
    # Top writers 0, 0, 0 with verifier scores 0.9, 0.4, 0.6: two accepted, one of them correct.
    assert open_set["frr"] == pytest.approx(1 / 3)
    assert open_set["accuracy_accepted"] == pytest.approx(1 / 2)
    assert open_set["accuracy_overall"] == pytest.approx(1 / 3)
    # Skilled forgeries are answered as writer 1 (their top) with scores 0.55 and 0.3: one accepted.
    assert open_set["far_skilled"] == pytest.approx(1 / 2)


def test_empty_calibration_split_is_a_clear_error() -> None:
    scores = table(np.random.default_rng(3))
    with pytest.raises(ValueError, match="calibration split is empty"):
        fit_calibration(rows_where(scores, scores.splits != "calibration"), "target_far", 0.05)


def test_perfectly_separated_validation_stops_at_the_lower_temperature_bound() -> None:
    logits = np.eye(3)[np.arange(30) % 3] * 10.0
    temperature = fit_temperature(logits, np.arange(30) % 3)
    assert temperature == pytest.approx(0.5, abs=1e-3)


def test_too_few_impostors_for_the_target_far_is_refused() -> None:
    scores = table(np.random.default_rng(4))
    keep = (scores.splits != "calibration") | (np.arange(len(scores)) % 20 == 1)
    few = rows_where(scores, keep)
    assert len(few.select("calibration", "skilled")) == 10
    with pytest.raises(ValueError, match=r"too few .* at least 20"):
        fit_calibration(few, "target_far", 0.05)
    # 10 impostors can show a FAR of 0.1: one of them passes, the threshold is just above the second highest.
    skilled = few.select("calibration", "skilled")
    claims = np.sort(skilled.verification[np.arange(len(skilled)), skilled.claimed])
    assert fit_calibration(few, "target_far", 0.1).threshold == np.nextafter(claims[-2], np.inf)
    # The equal-error objective has no minimum: it fits on the 10 as well.
    assert fit_calibration(few, "eer", 0.05).impostor_claims == 10


def test_test_rows_never_influence_the_fit() -> None:
    """No leakage: scrambling every test logit and verifier score leaves temperature and threshold unchanged."""
    scores = table(np.random.default_rng(5))
    is_test = scores.splits == "test"
    rng = np.random.default_rng(6)
    logits, verification = scores.logits.copy(), scores.verification.copy()
    logits[is_test] = rng.normal(0, 10, logits[is_test].shape)
    verification[is_test] = rng.normal(0, 10, verification[is_test].shape)
    scrambled = dataclasses.replace(scores, logits=logits, verification=verification)
    assert fit_calibration(scrambled, "target_far", 0.05) == fit_calibration(scores, "target_far", 0.05)


def hand_fit_table() -> ScoreTable:
    """Three writers; validation genuine claims 0.9, 0.7, 0.5; calibration skilled forgeries 0.8, 0.6,
    0.4, 0.2 and one opposite-hand sample at 0.95 (not an impostor while skilled forgeries exist)."""
    logits = [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]
    return build_table(
        [
            ("val", "genuine", 0, logits[0], [0.9, 0.0, 0.0]),
            ("val", "genuine", 1, logits[1], [0.0, 0.7, 0.0]),
            ("val", "genuine", 2, logits[2], [0.0, 0.0, 0.5]),
            ("calibration", "skilled", 0, logits[0], [0.8, 0.0, 0.0]),
            ("calibration", "skilled", 1, logits[1], [0.0, 0.6, 0.0]),
            ("calibration", "skilled", 2, logits[2], [0.0, 0.0, 0.4]),
            ("calibration", "skilled", 0, logits[0], [0.2, 0.0, 0.0]),
            ("calibration", "opposite", 1, logits[1], [0.0, 0.95, 0.0]),
        ]
    )


def test_fitted_thresholds_by_hand() -> None:
    scores = hand_fit_table()
    # target_far 1/4 of 4 skilled forgeries: one may pass (0.8): accept strictly above 0.6.
    far = fit_calibration(scores, "target_far", 0.25)
    assert far.threshold == np.nextafter(0.6, np.inf)
    assert (far.genuine_claims, far.impostor_claims, far.impostor_kinds) == (3, 4, ("skilled",))
    # EER: genuine 0.9 0.7 0.5 against 0.8 0.6 0.4 0.2:
    #   t=0.8: FRR 2/3, FAR 1/4 (gap 5/12); t=0.7: FRR 1/3, FAR 1/4 (gap 1/12, smallest); t=0.6: FRR 1/3, FAR 1/2.
    assert fit_calibration(scores, "eer", 0.25).threshold == 0.7


def two_writer_table() -> ScoreTable:
    """Logits are logs of weights: [ln 9, 0] gives 9/10 at T=1 and (ln 9 / 2 = ln 3) 3/4 at T=2;
    [ln 4, 0] gives 4/5 at T=1 and 2/3 at T=2; [0, 0] gives 1/2 at any T."""
    nine, four = math.log(9.0), math.log(4.0)
    unused = [0.0, 0.0]  # verifier scores: these tests score with the softmax
    return build_table(
        [
            ("test", "genuine", 0, [nine, 0.0], unused),  # g0: top 0 (right)
            ("test", "genuine", 0, [four, 0.0], unused),  # g1: top 0 (right)
            ("test", "genuine", 1, [nine, 0.0], unused),  # g2: top 0 (wrong)
            ("test", "genuine", 1, [0.0, nine], unused),  # g3: top 1 (right)
            ("test", "skilled", 1, [nine, 0.0], unused),  # k0: imitates 1, but the classifier's top is 0
            ("test", "skilled", 1, [0.0, four], unused),  # k1: imitates 1, top 1
            ("test", "simple", 0, [0.0, 0.0], unused),  # m0: a tie, top 0 (the first)
            ("val", "genuine", 0, [nine, 0.0], [0.99, 0.99]),  # other splits never count
            ("calibration", "skilled", 0, [nine, 0.0], [0.99, 0.99]),
        ]
    )


def test_open_set_results_on_calibrated_softmax_by_hand() -> None:
    scores = two_writer_table()
    # T=2, threshold 0.7. Top writer's probability: g0 3/4, g1 2/3, g2 3/4, g3 3/4 -> g1 alone is unknown.
    at_two = open_set_results(scores, 2.0, 0.7, SOFTMAX)
    # FRR 1/4; answered g0 (right), g2 (wrong), g3 (right): 2/3 right; overall 2 right of 4.
    # Skilled: k0 is answered writer 0 at 3/4 (an accept, although it imitates 1), k1 writer 1 at 2/3 (unknown).
    # Simple: m0 at 1/2, unknown. No opposite-hand samples: NaN.
    assert at_two == pytest.approx(
        {
            "frr": 1 / 4,
            "accuracy_accepted": 2 / 3,
            "accuracy_overall": 1 / 2,
            "far_skilled": 1 / 2,
            "far_simple": 0.0,
            "far_opposite": math.nan,
        },
        nan_ok=True,
    )
    # T=1: 9/10, 4/5, 9/10, 9/10 all pass 0.7; 3 of 4 right. k0 (9/10) and k1 (4/5) pass; m0 (1/2) does not.
    at_one = open_set_results(scores, 1.0, 0.7, SOFTMAX)
    assert (at_one["frr"], at_one["accuracy_accepted"], at_one["accuracy_overall"]) == pytest.approx((0, 3 / 4, 3 / 4))
    assert (at_one["far_skilled"], at_one["far_simple"]) == pytest.approx((1.0, 0.0))
    # Nothing accepted: accuracy among the accepted is NaN, overall 0, FRR 1.
    none = open_set_results(scores, 1.0, 0.95, SOFTMAX)
    assert none["frr"] == 1.0 and math.isnan(none["accuracy_accepted"]) and none["accuracy_overall"] == 0.0


def test_verification_results_on_calibrated_softmax_by_hand() -> None:
    results = verification_results(two_writer_table(), 2.0, 0.7, SOFTMAX)
    # T=2, probability of the *claimed* writer. Genuine: g0 3/4, g1 2/3, g2 1/4, g3 3/4 -> FRR at 0.7: 2/4.
    # Skilled (claim 1): k0 1/4, k1 2/3 -> none reaches 0.7. Simple (claim 0): 1/2 -> 0.
    # Random (the other writer): g0 1/4, g1 1/3, g2 3/4, g3 1/4 -> 1 of 4.
    # A-posteriori EERs against genuine 3/4 3/4 2/3 1/4:
    #   skilled 2/3 1/4: t=3/4: FRR 2/4, FAR 0; t=2/3: FRR 1/4, FAR 1/2 (gap 1/4, smallest); t=1/4: FRR 0, FAR 1
    #     -> (1/4 + 1/2) / 2 = 3/8.
    #   random: t=3/4: FRR 2/4, FAR 1/4; t=2/3: FRR 1/4, FAR 1/4 (gap 0) -> 1/4.
    #   simple 1/2: t=3/4: FRR 2/4, FAR 0; t=2/3: FRR 1/4, FAR 0 (gap 1/4, smallest); t=1/2: FRR 1/4, FAR 1
    #     -> (1/4 + 0) / 2 = 1/8.
    assert results == pytest.approx(
        {
            "frr": 1 / 2,
            "far_skilled": 0.0,
            "far_simple": 0.0,
            "far_opposite": math.nan,
            "far_random": 1 / 4,
            "eer_skilled_a_posteriori": 3 / 8,
            "eer_simple_a_posteriori": 1 / 8,
            "eer_opposite_a_posteriori": math.nan,
            "eer_random_a_posteriori": 1 / 4,
        },
        nan_ok=True,
    )


def test_the_stage_printout_reads_n_a_for_figures_the_data_cannot_give() -> None:
    """A dataset without skilled forgeries or unenrolled writers gives null figures (JSON has no NaN):
    the calibrate stage's printout says n/a instead of failing after its files are written."""
    from flows.calibrate import operating_point_text

    report = {
        "threshold": 0.5,
        "frr": 0.1,
        "far_skilled": None,
        "far_random": 0.0,
        "unenrolled_accepted": None,
        "expected_calibration_error": 0.02,
        **{f"partitions_frr_{key}": 0.1 for key in ("mean", "ci95_low", "ci95_high")},
        **{f"partitions_far_random_{key}": 0.0 for key in ("mean", "ci95_low", "ci95_high")},
        **{f"partitions_far_skilled_{key}": None for key in ("mean", "ci95_low", "ci95_high")},
    }
    text = operating_point_text(report, 5)
    assert "FAR skilled n/a (over 5 partitions n/a, n/a-n/a)" in text
    assert "test FRR 0.100 (over 5 partitions 0.100, 0.100-0.100)" in text
    assert "answered as enrolled: n/a" in text and "ECE 0.020" in text
