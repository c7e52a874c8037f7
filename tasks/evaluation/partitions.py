"""Verification figures with error bars: means and 95% intervals over random writer partitions.

Writers differ more than images do, so one calibration/test division of the writers gives figures
whose spread is of the size of the differences one wants to see. Here the writers whose forgeries
were scored (both the `calibration` and the `test` split's) are divided again and again at random
(`evaluate.partitions` times, seeded) into calibration writers and test writers, in the proportion
`prepare.calibration_fraction`. For each division, on scores only (nothing is embedded or refitted:
the verifier never trains on a forgery, so any writer's forgeries may serve as calibration or test):

- the threshold is fitted as `calibrate` fits the registered one: validation genuine claims of
  every enrolled writer against the calibration writers' skilled forgeries;
- at that threshold, on the test writers: FRR (their test genuine claims), skilled FAR (their
  skilled forgeries), random FAR (their test genuine images claimed as any other enrolled writer),
  and the share of never-enrolled writers' genuine signatures answered as an enrolled writer;
- a posteriori, on the test writers: the skilled-forgery EER with one global threshold and the
  mean of the per-writer EERs (each writer's own threshold), as sigver reports both.

Each figure is then summarised by its mean over the divisions and a 95% interval of that mean. The
divisions overlap (they redraw the same writers), so the plain Student-t interval, which shrinks as
1/sqrt(K) as partitions are added, would be far too narrow: the interval uses Nadeau and Bengio's
correction for repeated random splits (Machine Learning 52, 2003), variance (1/K + n_test/n_calibration)
times the partitions' sample variance, which stays wide however many partitions are drawn. It is about
how much the figure moves with the choice of writers among these; a new sample of writers may move it
more.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict, cast

import numpy as np
from scipy.stats import t as student_t

from tasks.evaluation.metrics import equal_error_rate, false_rates, threshold_for_far
from tasks.evaluation.scores import (
    CALIBRATION_IMPOSTOR_KIND,
    NO_CLASS,
    UNENROLLED_SPLIT,
    ScoreTable,
    claimed_scores,
    random_forgery_scores,
)

FORGERY_SPLITS = ("calibration", "test")
INTERVAL_LEVEL = 0.95
HALF = 0.5
RATE_BOUNDS = (0.0, 1.0)
FLAT_PREFIX = "partitions_"  # flat keys of a figure's summary: partitions_<figure>_mean, _ci95_low, _ci95_high
FLAT_SUFFIXES = ("_mean", "_ci95_low", "_ci95_high")
# The per-partition figures, in the order the reports list them: the calibrated operating point first.
OPERATING_POINT_FIGURES = ("frr", "far_skilled", "far_random", "unenrolled_accepted")
A_POSTERIORI_FIGURES = ("eer_skilled_a_posteriori", "eer_skilled_per_writer_a_posteriori")
PARTITION_FIGURES = ("threshold", *OPERATING_POINT_FIGURES, *A_POSTERIORI_FIGURES)

ThresholdRule = Callable[[np.ndarray, np.ndarray], float]


class IntervalSummary(TypedDict):
    """An `Interval` as the reports hold it (JSON: the interval's ends as a list)."""

    mean: float
    ci95: list[float]
    values: list[float]


@dataclass(frozen=True)
class Interval:
    """A figure's mean over partitions, the 95% interval of that mean, and the values it came from."""

    mean: float
    low: float
    high: float
    values: tuple[float, ...]

    def as_dict(self) -> IntervalSummary:
        return {"mean": self.mean, "ci95": [self.low, self.high], "values": list(self.values)}


def mean_interval(
    values: Sequence[float],
    level: float = INTERVAL_LEVEL,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    test_to_calibration: float = 0.0,
) -> Interval:
    """Mean and Student-t interval of the mean of `values` (NaNs left out; NaN when none remain, and
    NaN ends when only one does), its ends clipped to `bounds` (a rate's interval stays within [0, 1]).

    `test_to_calibration` > 0 (n_test / n_calibration writers) applies Nadeau and Bengio's correction
    for overlapping random splits: the variance of the mean is (1/K + test_to_calibration) times the
    sample variance instead of 1/K times it. 0 is the plain interval of independent values.
    """
    finite = np.array([value for value in values if not math.isnan(value)], dtype=np.float64)
    if not len(finite):
        return Interval(math.nan, math.nan, math.nan, tuple(float(value) for value in values))
    mean = float(finite.mean())
    if len(finite) < 2:
        return Interval(mean, math.nan, math.nan, tuple(float(value) for value in values))
    spread = math.sqrt(1.0 / len(finite) + test_to_calibration) * finite.std(ddof=1)
    half_width = float(student_t.ppf(0.5 + level / 2, len(finite) - 1) * spread)
    low, high = max(mean - half_width, bounds[0]), min(mean + half_width, bounds[1])
    return Interval(mean, low, high, tuple(float(value) for value in values))


def forgery_writers(table: ScoreTable) -> np.ndarray:
    """The enrolled writers (class indices) with at least one scored forgery, sorted."""
    rows = np.isin(table.splits, FORGERY_SPLITS) & (table.kinds != "genuine") & (table.claimed != NO_CLASS)
    return np.unique(table.claimed[rows])


def writer_partitions(writers: np.ndarray, calibration_fraction: float, count: int, seed: int) -> list[np.ndarray]:
    """`count` distinct seeded random sets of calibration writers, each `calibration_fraction` of
    `writers` (rounded, and at least one writer on each side when there are two or more); every such
    set, in a seeded order, when there are no more than `count` of them (a few writers: a division
    drawn twice would count twice in the mean and narrow the interval without new information)."""
    size = math.floor(calibration_fraction * len(writers) + HALF)  # halves up, as the split rounds
    if len(writers) >= 2:
        size = min(max(size, 1), len(writers) - 1)
    generator = np.random.default_rng(seed)
    if math.comb(len(writers), size) <= count:
        every = [np.array(chosen) for chosen in itertools.combinations(np.sort(writers).tolist(), size)]
        return [every[index] for index in generator.permutation(len(every))]
    divisions: list[np.ndarray] = []
    drawn: set[tuple[int, ...]] = set()
    while len(divisions) < count:
        calibration = np.sort(generator.permutation(writers)[:size])
        if tuple(calibration.tolist()) not in drawn:
            drawn.add(tuple(calibration.tolist()))
            divisions.append(calibration)
    return divisions


def forgeries_of(table: ScoreTable, writers: np.ndarray, kind: str) -> ScoreTable:
    """Forgeries of one kind imitating `writers`, from both forgery splits."""
    return table.rows(np.isin(table.splits, FORGERY_SPLITS) & (table.kinds == kind) & np.isin(table.claimed, writers))


def calibration_forgeries(table: ScoreTable, writers: np.ndarray) -> ScoreTable:
    """The impostors a threshold is fitted on: the writers' skilled forgeries, or all their forgeries
    when the dataset has no skilled ones (as `tasks.evaluation.scores.calibration_impostors`)."""
    skilled = forgeries_of(table, writers, CALIBRATION_IMPOSTOR_KIND)
    if len(skilled):
        return skilled
    mask = np.isin(table.splits, FORGERY_SPLITS) & (table.kinds != "genuine") & np.isin(table.claimed, writers)
    return table.rows(mask)


def fitted_threshold(
    table: ScoreTable, calibration: np.ndarray, objective: str, target_far: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """The threshold `calibrate` would fit with `calibration` as calibration writers, and the
    (genuine, impostor) claim scores it was fitted on."""
    validation = table.select("val", "genuine")
    genuine = claimed_scores(validation.verification, validation.claimed)
    impostors = calibration_forgeries(table, calibration)
    impostor = claimed_scores(impostors.verification, impostors.claimed)
    if objective == "target_far":
        return threshold_for_far(impostor, target_far), genuine, impostor
    return equal_error_rate(genuine, impostor, with_auc=False).threshold, genuine, impostor


def unenrolled_accepted(table: ScoreTable, threshold: float) -> float:
    """Share of never-enrolled writers' genuine signatures answered as an enrolled writer: the
    verifier accepts the claim that the identification's top writer signed (NaN when there are none)."""
    rows = (table.splits == UNENROLLED_SPLIT) & (table.kinds == "genuine")
    if not rows.any():
        return math.nan
    top = np.argmax(table.logits[rows], axis=1)
    return float(np.mean(claimed_scores(table.verification[rows].astype(np.float64), top) >= threshold))


def per_writer_eer(
    genuine: np.ndarray, genuine_writers: np.ndarray, impostor: np.ndarray, impostor_writers: np.ndarray
) -> float:
    """Mean over writers of each writer's own EER (its genuine claims against its impostor claims):
    the per-writer-threshold EER. Writers without both sides are left out (NaN when none has both)."""
    rates = [
        equal_error_rate(genuine[genuine_writers == writer], impostor[impostor_writers == writer], with_auc=False).eer
        for writer in np.unique(genuine_writers)
        if (impostor_writers == writer).any()
    ]
    return float(np.mean(rates)) if rates else math.nan


def operating_point(table: ScoreTable, calibration: np.ndarray, threshold: float) -> dict[str, float]:
    """At `threshold`, on the writers with forgeries outside `calibration` (the test writers): FRR,
    skilled FAR, random FAR, the never-enrolled writers' acceptance, and the a-posteriori skilled
    EERs (global and per-writer thresholds)."""
    test_writers = np.setdiff1d(forgery_writers(table), calibration)
    genuine_rows = table.rows(
        (table.splits == "test") & (table.kinds == "genuine") & np.isin(table.claimed, test_writers)
    )
    genuine_scores = genuine_rows.verification.astype(np.float64)
    genuine = claimed_scores(genuine_scores, genuine_rows.claimed)
    skilled_rows = forgeries_of(table, test_writers, CALIBRATION_IMPOSTOR_KIND)
    skilled = claimed_scores(skilled_rows.verification.astype(np.float64), skilled_rows.claimed)
    frr, far_skilled = false_rates(genuine, skilled, threshold)
    _frr, far_random = false_rates(genuine, random_forgery_scores(genuine_scores, genuine_rows.claimed), threshold)
    return {
        "frr": frr,
        "far_skilled": far_skilled,
        "far_random": far_random,
        "unenrolled_accepted": unenrolled_accepted(table, threshold),
        "eer_skilled_a_posteriori": equal_error_rate(genuine, skilled, with_auc=False).eer,
        "eer_skilled_per_writer_a_posteriori": per_writer_eer(
            genuine, genuine_rows.claimed, skilled, skilled_rows.claimed
        ),
    }


def partition_figures(
    table: ScoreTable, calibration: np.ndarray, objective: str, target_far: float
) -> dict[str, float]:
    """Every figure of `PARTITION_FIGURES` for one division: calibration writers `calibration`, the
    other writers with forgeries as test writers."""
    threshold, _genuine, _impostor = fitted_threshold(table, calibration, objective, target_far)
    return {"threshold": threshold, **operating_point(table, calibration, threshold)}


def bounds_of(figure: str) -> tuple[float, float]:
    """The range a partition figure's interval is clipped to: [0, 1] for rates, none for the threshold."""
    return (-math.inf, math.inf) if figure == "threshold" else RATE_BOUNDS


def overlap_ratio(calibration_writers: int, test_writers: int) -> float:
    """n_test / n_calibration of a partition, for `mean_interval`'s overlap correction (0 when undefined)."""
    return test_writers / calibration_writers if calibration_writers else 0.0


def partition_report(
    table: ScoreTable, calibration_fraction: float, count: int, seed: int, objective: str, target_far: float
) -> dict[str, object]:
    """Mean and 95% interval of every partition figure over `count` seeded writer partitions."""
    writers = forgery_writers(table)
    divisions = writer_partitions(writers, calibration_fraction, count, seed)
    figures = [partition_figures(table, calibration, objective, target_far) for calibration in divisions]
    calibration_count = len(divisions[0]) if divisions else 0
    ratio = overlap_ratio(calibration_count, len(writers) - calibration_count)
    return {
        "partitions": len(divisions),
        "seed": seed,
        "calibration_writers": len(divisions[0]) if divisions else 0,
        "test_writers": len(writers) - (len(divisions[0]) if divisions else 0),
        "interval": (
            f"{INTERVAL_LEVEL:.0%} Student-t interval of the mean over partitions, Nadeau-Bengio corrected for "
            "their overlap (variance factor 1/K + test writers / calibration writers)"
        ),
        **{
            name: mean_interval(
                [figure[name] for figure in figures], bounds=bounds_of(name), test_to_calibration=ratio
            ).as_dict()
            for name in PARTITION_FIGURES
        },
    }


def partitions_used(report: Mapping[str, object], requested: int) -> int:
    """How many writer partitions a report's intervals are over: `requested` (`evaluate.partitions`), or
    fewer when the writers allow fewer distinct ones (`writer_partitions`)."""
    summary = report.get("partitions")
    return int(summary["partitions"]) if isinstance(summary, Mapping) and "partitions" in summary else requested


def interval_of(metrics: Mapping[str, object], figure: str) -> tuple[object, object, object]:
    """(mean, low, high) of a figure from the flat keys `flat_intervals` wrote into `metrics`
    (None where a key is missing), for reports that print them."""
    prefix = f"{FLAT_PREFIX}{figure}"
    mean, low, high = (metrics.get(f"{prefix}{suffix}") for suffix in FLAT_SUFFIXES)
    return mean, low, high


def flat_intervals(report: dict[str, object], figures: Sequence[str] = PARTITION_FIGURES) -> dict[str, float]:
    """`partitions_<figure>_mean`, `_ci95_low` and `_ci95_high` of a `partition_report`, as top-level
    numbers (MLflow logs top-level numbers only; the values stay in the nested report)."""
    flat: dict[str, float] = {}
    for name in figures:
        summary = cast(IntervalSummary, report[name])  # `Interval.as_dict`, as partition_report stores it
        for suffix, value in zip(FLAT_SUFFIXES, (summary["mean"], *summary["ci95"]), strict=True):
            flat[f"{FLAT_PREFIX}{name}{suffix}"] = value
    return flat


def a_posteriori_report(table: ScoreTable, calibration_fraction: float, count: int, seed: int) -> dict[str, object]:
    """The a-posteriori EERs (global and per-writer thresholds) over writer partitions: what `evaluate`
    reports; they need no fitted threshold."""
    full = partition_report(table, calibration_fraction, count, seed, "eer", 0.0)
    return {key: value for key, value in full.items() if key not in ("threshold", *OPERATING_POINT_FIGURES)}
