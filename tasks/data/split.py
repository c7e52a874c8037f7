"""Deterministic, per-writer assignment of every signature to a split.

Genuine signatures of each writer go to `test` (up to `test_per_writer`), then to training (up
to `train_per_writer`, of which `val_fraction` become `val`); any left over are `unused`.
Forgeries and opposite-hand samples go to `calibration` or `test` by *writer*: a
`calibration_fraction` share of the writers give all of theirs to calibration, the others all to
test, so a threshold fitted on calibration forgeries is judged on forgeries of other writers
(writer-disjoint, as the field's protocols ask). Each writer's files are shuffled, and each
writer is drawn to a side, with a seed derived from the split seed and the writer's name, so
adding or removing one writer never changes another writer's split (except when every writer
would land on one side: then the writer drawn closest to the other side moves there, so both
sides are non-empty). The forgeries of a writer with no genuine signature in `train` (the model
does not know it) are `unused`, and the data report lists that writer.

Open set: a share `unenrolled_writers` of the writers is never enrolled (the floor of share x
writers, the writers with the lowest seeded draws): all their genuine signatures go to
`unenrolled` and their forgeries to `unused`, so nothing is fitted on them, and the evaluation
measures how often their signatures are answered as some enrolled writer instead of "unknown".
Which writers are drawn depends on how many writers there are (the one exception to the rule
above); the floor keeps a small demo dataset fully enrolled.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby

import numpy as np

from tasks.data.datasets.base import SIGNATURE_KINDS, SignatureRecord
from tasks.evaluation.scores import UNENROLLED_SPLIT

SPLITS = ("train", "val", "test", "calibration", UNENROLLED_SPLIT, "unused")
NATURAL_CHUNK = re.compile(r"(\d+)")
GENUINE = "genuine"
CALIBRATION_DRAW = "calibration-writer"  # the "kind" in the writer's seed of its calibration draw
UNENROLLED_DRAW = "unenrolled-writer"  # the "kind" in the writer's seed of its enrolment draw
UNKNOWN_WRITER_SPLIT = "unused"  # where the forgeries of a writer the model never trains on go


@dataclass(frozen=True)
class SplitRules:
    """The `prepare` parameters that decide the split."""

    test_per_writer: int
    train_per_writer: int
    val_fraction: float
    calibration_fraction: float
    seed: int
    unenrolled_writers: float = 0.0


@dataclass(frozen=True)
class GenuineQuota:
    """How one writer's genuine signatures are divided."""

    test: int
    train: int
    val: int
    unused: int


def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's round() sends 2.5 to 2)."""
    return math.floor(value + 0.5)


def genuine_quota(available: int, rules: SplitRules) -> GenuineQuota:
    """Divide `available` genuine signatures; at least one always stays for training."""
    test = min(rules.test_per_writer, max(available - 1, 0))
    train_and_val = min(rules.train_per_writer, available - test)
    val = min(round_half_up(rules.val_fraction * train_and_val), max(train_and_val - 1, 0))
    return GenuineQuota(test=test, train=train_and_val - val, val=val, unused=available - test - train_and_val)


def natural_key(text: str) -> tuple[object, ...]:
    """Sort key that puts `2` before `10` in file names."""
    return tuple(int(chunk) if chunk.isdigit() else chunk for chunk in NATURAL_CHUNK.split(text))


def writer_seed(seed: int, writer: str, kind: str) -> list[int]:
    """A seed for one writer and kind that does not depend on the other writers."""
    digest = hashlib.sha256(f"{writer}\0{kind}".encode()).digest()
    return [seed, int.from_bytes(digest[:8], "big")]


def shuffled(records: list[SignatureRecord], seed: int) -> list[SignatureRecord]:
    """`records` in a seeded random order, starting from a canonical sort so input order is irrelevant."""
    ordered = sorted(records, key=lambda record: (natural_key(record.sample), record.path))
    first = ordered[0]
    permutation = np.random.default_rng(writer_seed(seed, first.writer, first.kind)).permutation(len(ordered))
    return [ordered[index] for index in permutation]


def split_genuine(records: list[SignatureRecord], rules: SplitRules) -> dict[str, str]:
    """Split one writer's genuine signatures into test, val, train and unused."""
    quota = genuine_quota(len(records), rules)
    labels = ["test"] * quota.test + ["val"] * quota.val + ["train"] * quota.train + ["unused"] * quota.unused
    return {record.path: label for record, label in zip(shuffled(records, rules.seed), labels, strict=True)}


def writer_draw(seed: int, writer: str) -> float:
    """A number in [0, 1) that depends only on the split seed and the writer's name (the calibration draw)."""
    return writer_draw_of(seed, writer, CALIBRATION_DRAW)


def calibration_writers(writers: Iterable[str], rules: SplitRules) -> set[str]:
    """The writers whose forgeries and opposite-hand samples all go to `calibration`.

    A writer goes there when its draw is below `calibration_fraction`. When that leaves one side
    empty although the fraction is strictly between 0 and 1 and there are at least two writers,
    the writer drawn nearest the boundary crosses it: a threshold needs calibration forgeries, and
    a test FAR needs test ones.
    """
    draws = {writer: writer_draw(rules.seed, writer) for writer in sorted(set(writers))}
    chosen = {writer for writer, draw in draws.items() if draw < rules.calibration_fraction}
    if len(draws) >= 2 and 0 < rules.calibration_fraction < 1:
        if not chosen:
            chosen = {min(draws, key=draws.__getitem__)}
        elif chosen == set(draws):
            chosen = chosen - {max(draws, key=draws.__getitem__)}
    return chosen


def unenrolled_writers(writers: Iterable[str], rules: SplitRules) -> set[str]:
    """The writers never enrolled: floor(unenrolled_writers x writers) of them, those with the lowest
    seeded draws, and never so many that fewer than two writers stay enrolled."""
    ordered = sorted(set(writers))
    count = min(math.floor(rules.unenrolled_writers * len(ordered) + 1e-9), max(len(ordered) - 2, 0))
    draws = sorted(ordered, key=lambda writer: (writer_draw_of(rules.seed, writer, UNENROLLED_DRAW), writer))
    return set(draws[:count])


def writer_draw_of(seed: int, writer: str, kind: str) -> float:
    """A number in [0, 1) that depends only on the split seed, the writer's name and the draw's kind."""
    return float(np.random.default_rng(writer_seed(seed, writer, kind)).random())


def trained_writers(records: Iterable[SignatureRecord], assignment: dict[str, str]) -> set[str]:
    """The writers with at least one genuine signature in `train`: the writers the classifier knows."""
    return {record.writer for record in records if record.kind == GENUINE and assignment.get(record.path) == "train"}


def assign_splits(records: Iterable[SignatureRecord], rules: SplitRules) -> dict[str, str]:
    """Map each record's path to its split. Each path gets exactly one split.

    Forgeries and opposite-hand samples of a writer with no training genuine signature (all of
    them skipped as unusable, say) go to `UNKNOWN_WRITER_SPLIT`: the model does not know that
    writer, so they are not forgeries of a known writer and must not count in calibration or test.
    """
    listing = list(records)
    key = lambda record: (record.writer, SIGNATURE_KINDS.index(record.kind))  # noqa: E731
    groups = [
        (writer, SIGNATURE_KINDS[index], list(group))
        for (writer, index), group in groupby(sorted(listing, key=key), key=key)
    ]
    assignment: dict[str, str] = {}
    outside = unenrolled_writers((record.writer for record in listing if record.kind == GENUINE), rules)
    for writer, kind, members in groups:
        if kind == GENUINE and writer in outside:
            assignment.update({record.path: UNENROLLED_SPLIT for record in members})
        elif kind == GENUINE:
            assignment.update(split_genuine(members, rules))
    known = trained_writers(listing, assignment)
    calibration = calibration_writers(
        (record.writer for record in listing if record.kind != GENUINE and record.writer in known), rules
    )
    for writer, kind, members in groups:
        if kind != GENUINE:
            side = UNKNOWN_WRITER_SPLIT if writer not in known else "calibration" if writer in calibration else "test"
            assignment.update({record.path: side for record in members})
    return assignment


def writers_without_training(records: Iterable[SignatureRecord], assignment: dict[str, str]) -> dict[str, int]:
    """Writers whose forgeries were set aside because none of their genuine signatures is in
    `train` (not the unenrolled ones, set aside on purpose), with how many samples each had set
    aside (for the data report)."""
    listing = list(records)
    known = trained_writers(listing, assignment)
    unenrolled = {record.writer for record in listing if assignment.get(record.path) == UNENROLLED_SPLIT}
    counts = Counter(
        record.writer
        for record in listing
        if record.kind != GENUINE and record.writer not in known and record.writer not in unenrolled
    )
    return dict(sorted(counts.items()))


def short_writers(records: Iterable[SignatureRecord], rules: SplitRules) -> dict[str, int]:
    """Writers with fewer genuine signatures than `test_per_writer + train_per_writer`, and their count
    (writers with none are not short but unknown: see `writers_without_training`)."""
    wanted = rules.test_per_writer + rules.train_per_writer
    counts: dict[str, int] = {}
    for record in records:
        counts[record.writer] = counts.get(record.writer, 0) + (record.kind == "genuine")
    return {writer: count for writer, count in sorted(counts.items()) if 0 < count < wanted}
