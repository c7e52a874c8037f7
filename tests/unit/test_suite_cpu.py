"""bench/suite_cpu.py's reading of process accounting and how it charges processes to tests: the
numbers bench/README.md reports for the suite's CPU come from these functions."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def suite_cpu() -> ModuleType:
    """The benchmark script as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("suite_cpu", PROJECT_ROOT / "bench" / "suite_cpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def comp_t(ticks: int) -> int:
    """acct(5)'s encoding of a tick count: the mantissa shifted right 3 bits per exponent step."""
    exponent = 0
    while ticks >= 1 << 13:
        ticks >>= 3
        exponent += 1
    return (exponent << 13) | ticks


def record(suite_cpu: ModuleType, pid: int, ppid: int, user_ticks: int, name: str, version: int = 3) -> bytes:
    fields = [0, version, 0, 0, 0, 0, pid, ppid, 0, 0.0, comp_t(user_ticks), comp_t(0), 0, 0, 0, 0, 0, 0]
    return suite_cpu.ACCT_RECORD.pack(*fields, name.encode())


def test_comp_t_values_expand_to_ticks(suite_cpu: ModuleType) -> None:
    assert suite_cpu.expand_comp(0x1FFF) == 8191  # the largest mantissa, no exponent
    assert suite_cpu.expand_comp((1 << 13) | 1000) == 8000  # exponent 1: times 8
    assert suite_cpu.expand_comp(comp_t(100_000)) == 100_000 >> 6 << 6  # two steps: the last 6 bits are lost


def test_accounting_records_are_read_with_cpu_seconds(suite_cpu: ModuleType, tmp_path: Path) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    path = tmp_path / "pacct"
    path.write_bytes(
        record(suite_cpu, 10, 1, 3 * ticks, "python") + record(suite_cpu, 11, 10, 0, "a-long-name-cut-at-16")
    )
    first, second = suite_cpu.read_accounting(path)
    assert (first["pid"], first["ppid"], first["cpu"], first["name"]) == (10, 1, 3.0, "python")
    assert second["name"] == "a-long-name-cut-"  # the kernel keeps 16 bytes of the command name


def test_an_accounting_file_of_another_version_is_refused(suite_cpu: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "pacct"
    path.write_bytes(record(suite_cpu, 10, 1, 0, "python", version=2))
    with pytest.raises(SystemExit, match="version 2"):
        suite_cpu.read_accounting(path)


def test_module_of_drops_the_phase_the_xdist_group_and_the_test(suite_cpu: ModuleType) -> None:
    test = "tests/integration/test_pipeline.py::test_dvc_repro_is_incremental@pipeline (call)"
    assert suite_cpu.module_of(test) == "tests/integration/test_pipeline.py"
    assert suite_cpu.module_of("tests/unit/test_x.py::test_y[a::b] (setup)") == "tests/unit/test_x.py"


def test_each_process_is_charged_to_the_test_its_parent_chain_names(suite_cpu: ModuleType) -> None:
    worker, stage, bash, dvc, server, harness, lost = 100, 101, 102, 103, 104, 105, 106
    records = [
        {"pid": worker, "ppid": 1, "cpu": 50.0, "name": "python", "start": 0},
        {"pid": bash, "ppid": worker, "cpu": 0.5, "name": "bash", "start": 12},  # not Python: no census line
        {"pid": dvc, "ppid": bash, "cpu": 2.0, "name": "dvc", "start": 12},
        {"pid": stage, "ppid": dvc, "cpu": 9.0, "name": "python", "start": 13},
        {"pid": harness, "ppid": worker, "cpu": 3.0, "name": "python", "start": 21},  # killed: no census line
        {"pid": server, "ppid": 1, "cpu": 7.0, "name": "prefect", "start": 15},  # sent to the background
        {"pid": lost, "ppid": 999, "cpu": 1.0, "name": "tf_Compute", "start": 16},  # its parent left no record
    ]
    census = [
        {"pid": worker, "argv": ["-c"], "test": "", "pytest": True},
        {"pid": dvc, "argv": ["/venv/bin/dvc", "repro"], "test": "tests/a.py::test_one (call)", "pytest": False},
        {"pid": stage, "argv": ["/w/flows/train.py"], "test": "tests/a.py::test_one (call)", "pytest": False},
    ]
    phases = [
        {"test": "tests/a.py::test_one", "cpu": 4.0, "pid": worker, "start": 10.2, "end": 19.5},
        {"test": "tests/b.py::test_two", "cpu": 6.0, "pid": worker, "start": 19.6, "end": 30.0},
    ]
    tables = suite_cpu.attribute(records, census, phases)
    assert tables["pytest_processes"] == 50.0
    # bash by the time it started, dvc and the stage by the test they name.
    assert tables["by_module"]["tests/a.py"] == {"in_pytest": 4.0, "subprocesses": 11.5}
    assert tables["by_module"]["tests/b.py"] == {"in_pytest": 6.0, "subprocesses": 3.0}  # the killed server
    assert tables["unattributed"] == {
        "prefect": {"processes": 1, "cpu": 7.0},
        "tf_Compute": {"processes": 1, "cpu": 1.0},
    }
    assert tables["by_command"]["dvc repro"] == {"processes": 1, "cpu": 2.0}
    assert tables["by_command"]["train.py"] == {"processes": 1, "cpu": 9.0}
