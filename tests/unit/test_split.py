"""Split invariants: every image in exactly one split, counts per writer, determinism, no leakage."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tasks.datasets.base import SignatureRecord
from tasks.split import SplitRules, assign_splits, calibration_writers, genuine_quota, short_writers, writer_draw

RULES = SplitRules(test_per_writer=5, train_per_writer=22, val_fraction=0.2, calibration_fraction=0.5, seed=3)


def records(writers: int = 6, genuine: int = 27, skilled: int = 6, opposite: int = 3) -> list[SignatureRecord]:
    """A UTSig-sized listing of `writers` writers."""
    items = []
    for writer in range(1, writers + 1):
        for kind, count in (("genuine", genuine), ("skilled", skilled), ("opposite", opposite)):
            for number in range(1, count + 1):
                items.append(SignatureRecord(f"{writer:03d}", kind, str(number), f"{kind}/{writer}/{number}.tif"))
    return items


def per_writer(assignment: dict[str, str], listing: list[SignatureRecord]) -> dict[tuple[str, str], Counter]:
    counts: dict[tuple[str, str], Counter] = {}
    for record in listing:
        counts.setdefault((record.writer, record.kind), Counter())[assignment[record.path]] += 1
    return counts


def test_every_image_gets_exactly_one_split() -> None:
    listing = records()
    assignment = assign_splits(listing, RULES)
    assert set(assignment) == {record.path for record in listing}
    assert set(assignment.values()) <= {"train", "val", "test", "calibration", "unused"}


def test_reference_counts_per_writer() -> None:
    listing = records()
    counts = per_writer(assign_splits(listing, RULES), listing)
    for writer in {record.writer for record in listing}:
        assert counts[(writer, "genuine")] == {"test": 5, "train": 18, "val": 4}
        assert counts[(writer, "skilled")] in ({"calibration": 6}, {"test": 6})
        assert counts[(writer, "opposite")] in ({"calibration": 3}, {"test": 3})


def test_forgeries_are_split_by_writer_so_calibration_and_test_writers_are_disjoint() -> None:
    listing = records(writers=40)
    assignment = assign_splits(listing, RULES)
    sides: dict[str, set[str]] = {}
    for record in listing:
        if record.kind != "genuine":
            sides.setdefault(record.writer, set()).add(assignment[record.path])
    assert all(len(side) == 1 for side in sides.values())
    calibration = {writer for writer, side in sides.items() if side == {"calibration"}}
    # Each writer's side is its own draw against the fraction: 40 draws give both sides.
    assert calibration == {writer for writer in sides if writer_draw(RULES.seed, writer) < 0.5}
    assert 0 < len(calibration) < 40


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_both_sides_get_a_writer_when_the_draws_put_every_writer_on_one_side(fraction: float) -> None:
    rules = SplitRules(**{**RULES.__dict__, "calibration_fraction": fraction})
    writers = [f"{number:03d}" for number in range(1, 4)]
    chosen = calibration_writers(writers, rules)
    assert 0 < len(chosen) < len(writers)


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (1.0, 3)])
def test_fraction_zero_or_one_puts_every_writer_on_one_side(fraction: float, expected: int) -> None:
    rules = SplitRules(**{**RULES.__dict__, "calibration_fraction": fraction})
    assert len(calibration_writers(["001", "002", "003"], rules)) == expected


def test_genuine_beyond_quota_is_unused_and_never_leaks_into_forgery_splits() -> None:
    listing = records(genuine=30)
    assignment = assign_splits(listing, RULES)
    genuine_splits = Counter(assignment[r.path] for r in listing if r.kind == "genuine")
    assert genuine_splits["unused"] == 6 * 3
    assert "calibration" not in genuine_splits
    assert {assignment[r.path] for r in listing if r.kind != "genuine"} <= {"calibration", "test"}


def test_split_is_deterministic_and_independent_of_input_order() -> None:
    listing = records()
    shuffled = listing[:]
    random.Random(0).shuffle(shuffled)
    assert assign_splits(listing, RULES) == assign_splits(shuffled, RULES)


def test_seed_changes_the_split() -> None:
    listing = records()
    other = SplitRules(**{**RULES.__dict__, "seed": 4})
    assert assign_splits(listing, RULES) != assign_splits(listing, other)


def test_adding_a_writer_does_not_change_the_others() -> None:
    before = assign_splits(records(writers=5), RULES)
    after = assign_splits(records(writers=6), RULES)
    assert all(after[path] == split for path, split in before.items())


@pytest.mark.parametrize(
    ("available", "expected"),
    [(27, (5, 18, 4, 0)), (24, (5, 15, 4, 0)), (12, (5, 6, 1, 0)), (3, (2, 1, 0, 0)), (1, (0, 1, 0, 0))],
)
def test_short_writers_use_what_they_have(available: int, expected: tuple[int, int, int, int]) -> None:
    quota = genuine_quota(available, RULES)
    assert (quota.test, quota.train, quota.val, quota.unused) == expected
    assert quota.train >= 1


def test_short_writers_are_reported() -> None:
    listing = [*records(writers=2), SignatureRecord("009", "genuine", "1", "g/9/1.tif")]
    assert short_writers(listing, RULES) == {"009": 1}
