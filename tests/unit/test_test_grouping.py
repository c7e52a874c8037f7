"""The suite's own scheduling: `make test` runs on pytest-xdist with `--dist loadgroup`, and modules
that share an expensive session fixture (the `trained` workspace, the pipeline run) carry one
`xdist_group` mark so that the fixture is built once, on one worker. pytest 9.2 with pytest-xdist 3.8
stopped honouring the mark without a word (pytest-xdist issue 1386); this test would have said so.
Also here: the order the tests are handed out in."""

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


class Mark:
    def __init__(self, *args: str) -> None:
        self.args = args


class Item:
    """What the ordering hook reads of a collected test: its module, id, fixtures and marks."""

    def __init__(self, nodeid: str, *, group: str | None = None, slow: bool = False, trained: bool = False) -> None:
        self.nodeid = nodeid
        self.module = nodeid.split("::")[0]
        self.fixturenames = ["tmp_path", *(["trained", "trained_original"] if trained else [])]
        self.marks = {"xdist_group": Mark(group) if group else None, "slow": Mark() if slow else None}

    def get_closest_marker(self, name: str) -> Mark | None:
        return self.marks.get(name)


def test_the_trained_workspace_builder_goes_first_and_a_unit_without_it_second() -> None:
    """Two workers start at once on the first two units: if both needed the trained workspace, one would
    wait on the other's build (34 s in session 9's measurement)."""
    from tests.conftest import pytest_collection_modifyitems

    items = [
        Item("fast.py::test_a"),
        Item("readme.py::test_block", slow=True, trained=True),
        Item("readme.py::test_port_one", slow=True, trained=True, group="ports"),
        Item("readme.py::test_port_two", slow=True, trained=True, group="ports"),
        Item("flows.py::test_one", trained=True, group="trained"),
        Item("flows.py::test_two", trained=True, group="trained"),
        Item("flows.py::test_three", slow=True, trained=True, group="trained"),
        Item("team.py::test_one", slow=True),
        Item("pipeline.py::test_one", slow=True, group="pipeline"),
        Item("pipeline.py::test_two", slow=True, group="pipeline"),
    ]
    pytest_collection_modifyitems(items)
    order = [item.nodeid for item in items]
    # The largest unit needing the workspace first (whole), then the largest slow unit without it.
    assert order[:5] == [
        "flows.py::test_one",
        "flows.py::test_two",
        "flows.py::test_three",
        "pipeline.py::test_one",
        "pipeline.py::test_two",
    ]
    # Then the other slow units, larger first, and the fast tests last.
    assert order[5:] == [
        "readme.py::test_port_one",
        "readme.py::test_port_two",
        "readme.py::test_block",
        "team.py::test_one",
        "fast.py::test_a",
    ]
