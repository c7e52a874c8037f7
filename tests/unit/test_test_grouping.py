"""The suite's own scheduling: `make test` runs on pytest-xdist with `--dist loadgroup`, and modules
that share an expensive session fixture (the `trained` workspace, the pipeline run) carry one
`xdist_group` mark so that the fixture is built once, on one worker. pytest 9.2 with pytest-xdist 3.8
stopped honouring the mark without a word (pytest-xdist issue 1386); this test would have said so."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

GROUPED_MODULE = """
import pytest

pytestmark = pytest.mark.xdist_group("shared")


@pytest.mark.parametrize("index", range(3))
def test_grouped(index):
    pass
"""
LOOSE_MODULE = """
import time


def test_loose():
    time.sleep(0.2)
"""


def test_a_group_marked_in_two_modules_runs_on_one_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_first=GROUPED_MODULE, test_second=GROUPED_MODULE, test_third=LOOSE_MODULE)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=7)
    grouped = [line for line in result.outlines if "::test_grouped" in line and "PASSED" in line]
    assert len(grouped) == 6, result.outlines
    assert all("@shared" in line for line in grouped), grouped  # xdist names the group in the test's id
    assert len({line.split("]")[0] for line in grouped}) == 1, grouped  # "[gw0" or "[gw1": one worker
