"""Split invariants: every image in exactly one split, counts per writer, determinism, no leakage."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tasks.data.datasets.base import SignatureRecord
from tasks.data.prepare import PrepareSummary, data_report
from tasks.data.split import (
    UNENROLLED_SPLIT,
    UNKNOWN_WRITER_SPLIT,
    SplitRules,
    assign_splits,
    calibration_writers,
    genuine_quota,
    short_writers,
    unenrolled_writers,
    writer_draw,
    writers_without_training,
)

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


# Open set: writers never enrolled (prepare.unenrolled_writers).


def with_share(share: float, seed: int = RULES.seed) -> SplitRules:
    return SplitRules(**{**RULES.__dict__, "unenrolled_writers": share, "seed": seed})


def outside_writers(assignment: dict[str, str], listing: list[SignatureRecord]) -> set[str]:
    return {record.writer for record in listing if assignment[record.path] == UNENROLLED_SPLIT}


@pytest.mark.parametrize(("writers", "share", "expected"), [(6, 0.0, 0), (8, 0.1, 0), (55, 0.1, 5), (10, 0.3, 3)])
def test_unenrolled_writers_are_the_floor_of_the_share(writers: int, share: float, expected: int) -> None:
    listing = records(writers=writers, genuine=8, skilled=2, opposite=1)
    assignment = assign_splits(listing, with_share(share))
    outside = outside_writers(assignment, listing)
    assert len(outside) == expected
    assert outside == unenrolled_writers((record.writer for record in listing), with_share(share))
    if not expected:
        assert UNENROLLED_SPLIT not in assignment.values()


@pytest.mark.parametrize(("writers", "share", "expected"), [(2, 0.5, 0), (3, 0.9, 1), (4, 0.99, 2), (1, 0.99, 0)])
def test_at_least_two_writers_stay_enrolled(writers: int, share: float, expected: int) -> None:
    names = [f"{number:03d}" for number in range(writers)]
    assert len(unenrolled_writers(names, with_share(share))) == expected


def test_unenrolled_writers_give_everything_away_and_nothing_to_fitting_or_test() -> None:
    listing = records(writers=55, genuine=8, skilled=2, opposite=1)
    assignment = assign_splits(listing, with_share(0.1))
    outside = outside_writers(assignment, listing)
    assert len(outside) == 5
    for record in listing:
        split = assignment[record.path]
        if record.writer in outside:
            assert split == (UNENROLLED_SPLIT if record.kind == "genuine" else UNKNOWN_WRITER_SPLIT)
        else:
            assert split not in (UNENROLLED_SPLIT, UNKNOWN_WRITER_SPLIT)
    forgery_sides = {assignment[r.path] for r in listing if r.kind != "genuine" and r.writer not in outside}
    assert forgery_sides == {"calibration", "test"}
    # Set aside on purpose, so not reported as writers the model failed to learn; a real one still is.
    assert writers_without_training(listing, assignment) == {}
    orphan = [SignatureRecord("999", "skilled", "1", "skilled/999/1.tif")]
    with_orphan = assign_splits([*listing, *orphan], with_share(0.1))
    assert outside_writers(with_orphan, listing) == outside
    assert writers_without_training([*listing, *orphan], with_orphan) == {"999": 1}


def test_unenrolled_writers_are_deterministic_for_a_seed() -> None:
    listing = records(writers=55, genuine=8, skilled=2, opposite=1)
    first = assign_splits(listing, with_share(0.1))
    reordered = listing[::-1]
    assert assign_splits(reordered, with_share(0.1)) == first
    names = [record.writer for record in listing]
    assert unenrolled_writers(names, with_share(0.1)) == unenrolled_writers(reversed(names), with_share(0.1))
    assert unenrolled_writers(names, with_share(0.1, seed=4)) != outside_writers(first, listing)
    # The enrolled writers' genuine split is unchanged by drawing others out.
    closed = assign_splits(listing, with_share(0.0))
    outside = outside_writers(first, listing)
    assert all(first[r.path] == closed[r.path] for r in listing if r.kind == "genuine" and r.writer not in outside)


def test_data_report_lists_the_writers_never_enrolled() -> None:
    summary = PrepareSummary(manifest_rows=10, writers=5, skipped=0, counts={"train": {"genuine": 10}})
    report = data_report("cedar", summary, [], [], {}, RULES, {}, unenrolled=["007", "012"])
    section = report.split("## Writers never enrolled (open set)\n", 1)[1].split("\n## ", 1)[0]
    assert "these 2 writers" in section
    assert section.strip().endswith("007, 012")
    assert "`unenrolled`" in section and "`unused`" in section
    empty = data_report("cedar", summary, [], [], {}, RULES, {})
    assert empty.split("## Writers never enrolled (open set)\n", 1)[1].split("\n## ", 1)[0].strip().startswith("None")
