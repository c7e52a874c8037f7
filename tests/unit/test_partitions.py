"""Writer-partition figures (tasks.evaluation.partitions) on tiny hand-built score tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from tasks.evaluation.metrics import equal_error_rate
from tasks.evaluation.partitions import (
    PARTITION_FIGURES,
    calibration_forgeries,
    fitted_threshold,
    forgery_writers,
    mean_interval,
    partition_figures,
    partition_report,
    partitions_used,
    per_writer_eer,
    unenrolled_accepted,
    writer_partitions,
)
from tasks.evaluation.scores import NO_CLASS, ScoreTable
from tests.support.score_tables import score_table

CLASSES = 4


def table_of(rows: list[tuple[str, str, int, dict[int, float], int | None]]) -> ScoreTable:
    """A ScoreTable from (split, kind, claimed, verification scores by writer (others 0), top writer by logits)."""
    verification = np.zeros((len(rows), CLASSES))
    logits = np.zeros((len(rows), CLASSES))
    for index, (_split, _kind, claimed, scores, top) in enumerate(rows):
        for writer, score in scores.items():
            verification[index, writer] = score
        logits[index, claimed if top is None else top] = 5.0
    return score_table(
        logits, verification, [row[2] for row in rows], [row[1] for row in rows], [row[0] for row in rows]
    )


def claim(split: str, kind: str, writer: int, score: float, **others: float) -> tuple:
    """A row claimed as `writer` with verification `score` for it (and `others`, keyed w<writer>)."""
    scores = {writer: score, **{int(key[1:]): value for key, value in others.items()}}
    return (split, kind, writer, scores, None)


# Writers 0 and 1 serve as calibration writers in the hand computations, 2 and 3 as test writers.
ROWS = [
    # Validation genuine of every enrolled writer.
    claim("val", "genuine", 0, 0.9),
    claim("val", "genuine", 1, 0.8),
    claim("val", "genuine", 2, 0.7),
    claim("val", "genuine", 3, 0.6),
    # Skilled forgeries, from both forgery splits (a partition ignores which split a writer was in).
    claim("calibration", "skilled", 0, 0.3),
    claim("test", "skilled", 1, 0.5),
    claim("test", "skilled", 2, 0.65),
    claim("calibration", "skilled", 3, 0.05),
    # Simple forgeries: never in the threshold nor in the skilled FAR while skilled ones exist.
    claim("calibration", "simple", 0, 0.95),
    claim("test", "simple", 2, 0.99),
    # Forgeries of an unused writer: not a forgery writer.
    claim("unused", "skilled", 1, 0.99),
    # Test genuine of the test writers; one random claim at 0.6 (accepted), one at exactly 0.5 (rejected).
    claim("test", "genuine", 2, 0.7, w0=0.6),
    claim("test", "genuine", 2, 0.9),
    claim("test", "genuine", 3, 0.1, w1=0.5),
    claim("test", "genuine", 3, 0.3),
    # Test genuine of the calibration writers: rejected at any threshold, must not count in FRR.
    claim("test", "genuine", 0, 0.0),
    claim("test", "genuine", 1, 0.0),
    # Never-enrolled writers: top writer 1 by logits scores 0.8 there (accepted); top writer 2 scores
    # 0.3 there (rejected) although its best verification score, for writer 0, is 0.99.
    ("unenrolled", "genuine", NO_CLASS, {1: 0.8}, 1),
    ("unenrolled", "genuine", NO_CLASS, {0: 0.99, 2: 0.3}, 2),
]


@pytest.fixture
def table() -> ScoreTable:
    return table_of(ROWS)


def replaced(rows: list[tuple], index: int, score: float) -> ScoreTable:
    """`rows` with row `index`'s verification score for its claimed writer set to `score`."""
    split, kind, writer, scores, top = rows[index]
    changed = list(rows)
    changed[index] = (split, kind, writer, {**scores, writer: score}, top)
    return table_of(changed)


# mean_interval


def test_mean_interval_is_the_student_t_interval_of_the_mean_without_nans() -> None:
    interval = mean_interval([1.0, 2.0, 3.0, 4.0, math.nan])
    # Mean 2.5; sample standard deviation sqrt(((1.5^2 + 0.5^2) * 2) / 3) = sqrt(5/3); t(0.975, 3 dof) = 3.18245.
    half = student_t.ppf(0.975, 3) * math.sqrt(5 / 3) / 2
    assert half == pytest.approx(3.1824463 * 1.2909944 / 2)
    assert interval.mean == pytest.approx(2.5)
    assert (interval.low, interval.high) == pytest.approx((2.5 - half, 2.5 + half))
    # The values keep the NaN (what each partition gave).
    assert interval.values[:4] == (1.0, 2.0, 3.0, 4.0) and math.isnan(interval.values[4])
    report = interval.as_dict()
    assert set(report) == {"mean", "ci95", "values"}
    assert report["ci95"] == pytest.approx([2.5 - half, 2.5 + half])


def test_mean_interval_level_and_degenerate_cases() -> None:
    narrower = mean_interval([1.0, 2.0, 3.0, 4.0], level=0.5)
    assert narrower.high - narrower.mean == pytest.approx(student_t.ppf(0.75, 3) * math.sqrt(5 / 3) / 2)
    one = mean_interval([0.25, math.nan])
    assert one.mean == 0.25 and math.isnan(one.low) and math.isnan(one.high)  # one value: no interval
    for empty in (mean_interval([]), mean_interval([math.nan, math.nan])):
        assert math.isnan(empty.mean) and math.isnan(empty.low) and math.isnan(empty.high)
    same = mean_interval([0.1, 0.1, 0.1])
    assert (same.low, same.high) == pytest.approx((0.1, 0.1))


def test_the_overlap_correction_widens_the_interval_and_does_not_shrink_with_more_partitions() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    plain, corrected = mean_interval(values), mean_interval(values, test_to_calibration=1.0)
    # Nadeau-Bengio: the variance of the mean is (1/K + n_test/n_calibration) s^2, not s^2 / K.
    half = student_t.ppf(0.975, 3) * math.sqrt(1 / 4 + 1.0) * math.sqrt(5 / 3)
    assert corrected.high - corrected.mean == pytest.approx(half)
    assert corrected.high - corrected.mean > 2 * (plain.high - plain.mean)
    # Over 16 partitions with the same spread, the plain interval shrinks as 1/sqrt(16); the corrected one
    # keeps the n_test/n_calibration term: sqrt(1/16 + 1) against sqrt(1/16), over 4 times wider.
    many = values * 4
    spread = float(np.std(many, ddof=1))
    t_many = student_t.ppf(0.975, 15)
    assert mean_interval(many).high - 2.5 == pytest.approx(t_many * spread / 4)
    assert mean_interval(many, test_to_calibration=1.0).high - 2.5 == pytest.approx(
        t_many * spread * math.sqrt(1 / 16 + 1)
    )


# writer_partitions


def test_writer_partitions_are_seeded_sized_and_split_the_writers() -> None:
    writers = np.array([2, 3, 5, 7, 11, 13, 17, 19, 23, 29])
    divisions = writer_partitions(writers, 0.3, 6, seed=1)
    assert len(divisions) == 6
    for calibration in divisions:
        assert len(calibration) == 3
        assert list(calibration) == sorted(set(calibration.tolist()))
        assert set(calibration) <= set(writers)
        assert len(np.setdiff1d(writers, calibration)) == 7
    assert len({tuple(calibration) for calibration in divisions}) > 1
    again = writer_partitions(writers, 0.3, 6, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(divisions, again, strict=True))
    other = writer_partitions(writers, 0.3, 6, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(divisions, other, strict=True))


@pytest.mark.parametrize(
    ("count", "fraction", "size"),
    [(10, 0.25, 3), (10, 0.5, 5), (4, 0.05, 1), (4, 0.99, 3), (2, 0.5, 1), (3, 0.5, 2)],
)
def test_writer_partitions_round_half_up_and_keep_both_sides(count: int, fraction: float, size: int) -> None:
    for calibration in writer_partitions(np.arange(count), fraction, 4, seed=0):
        assert len(calibration) == size


def test_writer_partitions_are_distinct() -> None:
    divisions = writer_partitions(np.arange(8), 0.5, 20, seed=0)
    assert len(divisions) == 20
    assert len({tuple(calibration.tolist()) for calibration in divisions}) == 20


def test_writer_partitions_are_every_division_when_there_are_fewer_than_asked() -> None:
    # 4 writers, 2 on the calibration side: 6 divisions exist; asking for 20 gives those 6 once each.
    divisions = writer_partitions(np.array([3, 5, 7, 9]), 0.5, 20, seed=0)
    assert sorted(tuple(calibration.tolist()) for calibration in divisions) == [
        (3, 5),
        (3, 7),
        (3, 9),
        (5, 7),
        (5, 9),
        (7, 9),
    ]
    assert [c.tolist() for c in divisions] == [
        c.tolist() for c in writer_partitions(np.array([3, 5, 7, 9]), 0.5, 20, 0)
    ]


def test_partition_report_counts_the_partitions_it_used(table: ScoreTable) -> None:
    report = partition_report(table, 0.5, 50, 0, "eer", 0.05)
    assert report["partitions"] == 6  # 4 writers with forgeries, 2 calibration writers: 6 divisions
    assert all(len(report[figure]["values"]) == 6 for figure in PARTITION_FIGURES)
    assert partitions_used({"partitions": report}, 50) == 6  # as evaluate and calibrate nest it
    assert partitions_used({}, 50) == 50


# forgery_writers, calibration_forgeries


def test_forgery_writers_are_the_enrolled_writers_with_scored_forgeries(table: ScoreTable) -> None:
    assert forgery_writers(table).tolist() == [0, 1, 2, 3]
    only_some = table_of(
        [
            claim("val", "genuine", 0, 0.9),
            claim("test", "genuine", 1, 0.9),
            claim("test", "opposite", 3, 0.1),
            claim("calibration", "simple", 2, 0.1),
            claim("unused", "skilled", 0, 0.1),
            ("test", "skilled", NO_CLASS, {}, 0),
        ]
    )
    assert forgery_writers(only_some).tolist() == [2, 3]


def test_calibration_forgeries_are_the_writers_skilled_ones(table: ScoreTable) -> None:
    chosen = calibration_forgeries(table, np.array([0, 1]))
    assert sorted(zip(chosen.claimed.tolist(), chosen.kinds.tolist(), strict=True)) == [(0, "skilled"), (1, "skilled")]


def test_calibration_forgeries_fall_back_to_every_forgery_without_skilled_ones() -> None:
    no_skilled = table_of(
        [
            claim("val", "genuine", 0, 0.9),
            claim("calibration", "simple", 0, 0.4),
            claim("test", "opposite", 0, 0.2),
            claim("test", "simple", 1, 0.3),
            claim("unused", "simple", 0, 0.1),
        ]
    )
    chosen = calibration_forgeries(no_skilled, np.array([0]))
    assert sorted(chosen.verification[:, 0].tolist()) == [0.2, 0.4]
    assert set(chosen.kinds) == {"simple", "opposite"}


# fitted_threshold


def test_fitted_threshold_uses_all_validation_genuine_and_the_calibration_writers_forgeries(
    table: ScoreTable,
) -> None:
    threshold, genuine, impostor = fitted_threshold(table, np.array([0, 1]), "target_far", 0.0)
    assert sorted(genuine.tolist()) == [0.6, 0.7, 0.8, 0.9]
    assert sorted(impostor.tolist()) == [0.3, 0.5]
    # FAR 0 on {0.3, 0.5}: just above the highest.
    assert threshold == np.nextafter(0.5, np.inf)
    assert fitted_threshold(table, np.array([0, 1]), "eer", 0.0)[0] == equal_error_rate(genuine, impostor).threshold


@pytest.mark.parametrize("objective", ["eer", "target_far"])
def test_only_validation_genuine_and_calibration_forgeries_move_the_threshold(objective: str) -> None:
    calibration = np.array([0, 1])
    base = fitted_threshold(table_of(ROWS), calibration, objective, 0.0)[0]
    # Test writers' forgeries, simple or unused forgeries while skilled ones exist, and test genuine
    # images, however high, leave it where it is.
    for index in (6, 7, 8, 9, 10, 11, 13):
        assert fitted_threshold(replaced(ROWS, index, 0.97), calibration, objective, 0.0)[0] == base
    # A calibration writer's forgery moves it.
    assert fitted_threshold(replaced(ROWS, 5, 0.75), calibration, objective, 0.0)[0] != base


def test_validation_genuine_moves_the_equal_error_threshold() -> None:
    calibration = np.array([0, 1])
    base = fitted_threshold(table_of(ROWS), calibration, "eer", 0.0)[0]
    assert fitted_threshold(replaced(ROWS, 3, 0.4), calibration, "eer", 0.0)[0] != base


# unenrolled_accepted


def test_unenrolled_accepted_checks_the_top_writer_by_logits(table: ScoreTable) -> None:
    assert unenrolled_accepted(table, 0.5) == 0.5
    # At exactly the top writer's score the claim is accepted; above both, none is.
    assert unenrolled_accepted(table, 0.3) == 1.0
    assert unenrolled_accepted(table, 0.81) == 0.0


def test_unenrolled_accepted_is_nan_without_unenrolled_rows() -> None:
    assert math.isnan(unenrolled_accepted(table_of(ROWS[:-2]), 0.5))


# per_writer_eer


def test_per_writer_eer_by_hand_zero_where_the_global_eer_is_not() -> None:
    # Writer 0 separates at 0.75, writer 1 at 0.25: each writer's EER is 0. Pooled, any threshold in
    # (0.4, 0.6] rejects 0.4 and 0.3 (FRR 2/4) and accepts 0.7 and 0.6 (FAR 2/4): EER 0.5.
    genuine, genuine_writers = np.array([0.9, 0.8, 0.4, 0.3]), np.array([0, 0, 1, 1])
    impostor, impostor_writers = np.array([0.7, 0.6, 0.2, 0.1]), np.array([0, 0, 1, 1])
    assert per_writer_eer(genuine, genuine_writers, impostor, impostor_writers) == 0.0
    assert equal_error_rate(genuine, impostor).eer == 0.5


def test_per_writer_eer_averages_writers_with_both_sides_only() -> None:
    # Writer 0: genuine 0.5 below impostor 0.6 (EER 1); writer 1: separated (EER 0); writer 2: no impostor.
    genuine, genuine_writers = np.array([0.5, 0.9, 0.1]), np.array([0, 1, 2])
    impostor, impostor_writers = np.array([0.6, 0.2, 0.95]), np.array([0, 1, 3])
    assert per_writer_eer(genuine, genuine_writers, impostor, impostor_writers) == pytest.approx(0.5)
    assert math.isnan(per_writer_eer(genuine, genuine_writers, np.array([0.3]), np.array([5])))


# partition_figures, partition_report


def test_partition_figures_by_hand(table: ScoreTable) -> None:
    figures = partition_figures(table, np.array([0, 1]), "target_far", 0.0)
    assert list(figures) == list(PARTITION_FIGURES)
    assert figures["threshold"] == np.nextafter(0.5, np.inf)
    # Test writers 2 and 3: genuine 0.7, 0.9, 0.1, 0.3 (0.1 and 0.3 rejected); skilled 0.65 (accepted), 0.05.
    assert figures["frr"] == 0.5
    assert figures["far_skilled"] == 0.5
    # 4 genuine images x 3 other writers = 12 random claims; only the 0.6 one reaches the threshold.
    assert figures["far_random"] == pytest.approx(1 / 12)
    assert figures["unenrolled_accepted"] == 0.5
    # A posteriori: pooled, 0.65 gives FRR 2/4 = FAR 1/2 (EER 0.5); per writer both separate (0).
    assert figures["eer_skilled_a_posteriori"] == 0.5
    assert figures["eer_skilled_per_writer_a_posteriori"] == 0.0


def test_partition_figures_with_the_other_calibration_writers(table: ScoreTable) -> None:
    figures = partition_figures(table, np.array([2, 3]), "target_far", 0.0)
    # Threshold just above 0.65 (writers 2 and 3's skilled). Test writers 0 and 1: genuine 0.0 and 0.0
    # (both rejected), skilled 0.3 and 0.5 (both rejected).
    assert figures["threshold"] == np.nextafter(0.65, np.inf)
    assert (figures["frr"], figures["far_skilled"], figures["far_random"]) == (1.0, 0.0, 0.0)
    # Top writer 1 scores 0.8 (accepted), top writer 2 scores 0.3 (rejected).
    assert figures["unenrolled_accepted"] == 0.5


def test_partition_report_summarises_every_figure_over_the_seeded_partitions(table: ScoreTable) -> None:
    report = partition_report(table, 0.5, 4, 7, "target_far", 0.0)
    assert (report["partitions"], report["seed"]) == (4, 7)
    assert (report["calibration_writers"], report["test_writers"]) == (2, 2)
    divisions = writer_partitions(np.array([0, 1, 2, 3]), 0.5, 4, 7)
    expected = [partition_figures(table, calibration, "target_far", 0.0) for calibration in divisions]
    for name in PARTITION_FIGURES:
        figure = report[name]
        assert set(figure) == {"mean", "ci95", "values"}
        assert figure["values"] == pytest.approx([values[name] for values in expected], nan_ok=True)
        finite = [value for value in figure["values"] if not math.isnan(value)]
        assert figure["mean"] == pytest.approx(np.mean(finite))
        low, high = figure["ci95"]
        assert low <= figure["mean"] <= high
    # The never-enrolled share does not depend on the partition here (0.5 at every threshold in (0.3, 0.8]).
    assert report["unenrolled_accepted"]["values"] == [0.5] * 4
    assert report["unenrolled_accepted"]["ci95"] == pytest.approx([0.5, 0.5])
    assert partition_report(table, 0.5, 4, 7, "target_far", 0.0) == report
