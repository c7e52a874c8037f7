"""bench/suite_cpu.py's reading of process accounting and how it charges processes to tests: the
numbers bench/README.md reports for the suite's CPU come from these functions."""

from __future__ import annotations

import importlib.util
import struct
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


def record(pid: int, ppid: int, user_ticks: int, name: str, *, system_ticks: int = 0, **times: float) -> bytes:
    """One accounting record laid out as linux/acct.h's struct acct_v3 (64 bytes), field by field at
    its offsets, independently of the script's own struct format."""
    data = bytearray(64)
    data[1] = times.pop("version", 3)
    struct.pack_into("<II", data, 16, pid, ppid)  # ac_pid, ac_ppid
    struct.pack_into("<If", data, 24, int(times.get("start", 0)), times.get("elapsed_ticks", 0.0))  # ac_btime, ac_etime
    struct.pack_into("<HH", data, 32, comp_t(user_ticks), comp_t(system_ticks))  # ac_utime, ac_stime
    data[48 : 48 + len(name[:16])] = name[:16].encode()  # ac_comm
    return bytes(data)


def test_comp_t_values_expand_to_ticks(suite_cpu: ModuleType) -> None:
    assert suite_cpu.expand_comp(0x1FFF) == 8191  # the largest mantissa, no exponent
    assert suite_cpu.expand_comp((1 << 13) | 1000) == 8000  # exponent 1: times 8
    assert suite_cpu.expand_comp(comp_t(100_000)) == 100_000 >> 6 << 6  # two steps: the last 6 bits are lost


def test_accounting_records_are_read_with_cpu_seconds(suite_cpu: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "pacct"
    first = record(10, 1, 250, "python", system_ticks=50, start=1_000, elapsed_ticks=1_250.0)
    path.write_bytes(first + record(11, 10, 0, "a-long-name-cut-at-16"))
    read, second = suite_cpu.read_accounting(path)
    assert (read["pid"], read["ppid"], read["name"]) == (10, 1, "python")
    assert read["cpu"] == 3.0  # user and system time, in acct v3's 1/100 s
    assert (read["start"], read["end"]) == (1_000, 1_012.5)
    assert second["name"] == "a-long-name-cut-"  # the kernel keeps 16 bytes of the command name


def test_an_accounting_file_of_another_version_is_refused(suite_cpu: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "pacct"
    path.write_bytes(record(10, 1, 0, "python", version=2))
    with pytest.raises(SystemExit, match="version 2"):
        suite_cpu.read_accounting(path)


def test_module_of_drops_the_phase_the_xdist_group_and_the_test(suite_cpu: ModuleType) -> None:
    test = "tests/integration/test_pipeline.py::test_dvc_repro_is_incremental@pipeline (call)"
    assert suite_cpu.module_of(test) == "tests/integration/test_pipeline.py"
    assert suite_cpu.module_of("tests/unit/test_x.py::test_y[a::b] (setup)") == "tests/unit/test_x.py"


def process(pid: int, ppid: int, cpu: float, name: str, start: float, end: float) -> dict[str, object]:
    return {"pid": pid, "ppid": ppid, "cpu": cpu, "name": name, "start": start, "end": end}


def named(
    pid: int, argv: list[str], start: float, test: str = "", *, pytest: bool = False, inherited: str = ""
) -> dict:
    return {"pid": pid, "argv": argv, "start": start, "test": test, "inherited_test": inherited, "pytest": pytest}


ONE, TWO, THREE = "tests/a.py::test_one (call)", "tests/b.py::test_two (call)", "tests/c.py::test_three (call)"


def test_each_process_is_charged_to_the_test_its_parent_chain_names(suite_cpu: ModuleType) -> None:
    worker, bash, dvc, stage, harness, server, lost, inner = 100, 102, 103, 104, 105, 106, 107, 108
    records = [
        process(worker, 1, 50.0, "python", 0, 100),
        process(bash, worker, 0.5, "bash", 12, 14),  # not Python: no census line, charged by its start
        process(dvc, bash, 2.0, "dvc", 12, 14),
        process(stage, dvc, 9.0, "python", 13, 14),
        process(harness, worker, 3.0, "python", 21, 99),  # killed: no census line
        process(server, 1, 7.0, "prefect", 15, 99),  # sent to the background
        process(lost, 999, 1.0, "tf_Compute", 16, 17),  # its parent left no record
        process(inner, worker, 4.0, "python", 31, 35),  # a pytest session a test runs
    ]
    census = [
        named(worker, ["-c"], 0.1, pytest=True),
        named(dvc, ["/venv/bin/dvc", "repro"], 12.2, ONE, inherited=ONE),
        named(stage, ["/w/flows/train.py"], 13.1, ONE, inherited=ONE),
        named(inner, ["-m", "pytest"], 31.2, pytest=True, inherited=THREE),  # its own tests ended
    ]
    phases = [
        {"test": ONE, "cpu": 4.0, "pid": worker, "start": 10.2, "end": 19.5},
        {"test": TWO, "cpu": 6.0, "pid": worker, "start": 19.6, "end": 30.0},
        {"test": THREE, "cpu": 1.0, "pid": worker, "start": 30.1, "end": 36.0},
        {"test": "test_inner.py::test_x", "cpu": 2.0, "pid": inner, "start": 32.0, "end": 33.0},
    ]
    tables = suite_cpu.attribute(records, census, phases)
    assert tables["pytest_processes"] == 50.0  # the run's own worker only
    assert tables["by_module"]["tests/a.py"] == {"in_pytest": 4.0, "subprocesses": 11.5}  # bash, dvc, the stage
    assert tables["by_module"]["tests/b.py"] == {"in_pytest": 6.0, "subprocesses": 3.0}  # the killed server
    assert tables["by_module"]["tests/c.py"] == {"in_pytest": 1.0, "subprocesses": 4.0}  # the nested pytest
    assert "test_inner.py" not in tables["by_module"]  # a nested session's tests are not the run's
    assert tables["unattributed"] == {
        "prefect": {"processes": 1, "cpu": 7.0},
        "tf_Compute": {"processes": 1, "cpu": 1.0},
    }
    assert tables["by_command"]["dvc repro"] == {"processes": 1, "cpu": 2.0}
    assert tables["by_command"]["train.py"] == {"processes": 1, "cpu": 9.0}


def test_a_reused_pid_names_the_process_that_ran_at_the_time(suite_cpu: ModuleType) -> None:
    """pids come round again in a long run: the parent is the process with that pid alive when the
    child started, and a census line belongs to the process that started when it did."""
    records = [
        process(200, 1, 1.0, "python", 5, 8),  # an earlier process with the pid the shell gets later
        process(201, 1, 20.0, "python", 0, 100),  # the worker
        process(200, 201, 0.5, "bash", 40, 60),  # the same pid again: a shell the worker started
        process(300, 200, 8.0, "python", 41, 59),  # killed, no census line
    ]
    census = [named(200, ["/w/flows/prepare.py"], 5.3, TWO, inherited=TWO), named(201, ["-c"], 0.2, pytest=True)]
    phases = [{"test": ONE, "cpu": 2.0, "pid": 201, "start": 39.5, "end": 61.0}]
    tables = suite_cpu.attribute(records, census, phases)
    assert tables["by_module"]["tests/a.py"]["subprocesses"] == 8.5  # not test_two's, whose prepare had pid 200
    assert tables["by_module"]["tests/b.py"]["subprocesses"] == 1.0
    assert tables["by_command"]["bash"] == {"processes": 1, "cpu": 0.5}


def test_a_start_between_two_tests_goes_to_the_nearest(suite_cpu: ModuleType) -> None:
    phases = [
        {"test": ONE, "cpu": 0.0, "pid": 1, "start": 10.0, "end": 19.2},
        {"test": TWO, "cpu": 0.0, "pid": 1, "start": 19.9, "end": 30.0},
    ]
    assert suite_cpu.running_test(phases, 1, 19.0) == ONE  # inside the first
    assert suite_cpu.running_test(phases, 1, 20.0) == TWO  # inside the second, though within the first's slack
    assert suite_cpu.running_test(phases, 1, 19.7) == TWO  # between them: 0.2 s from the second, 0.5 from the first
    assert suite_cpu.running_test(phases, 1, 45.0) == ""  # no test was running
    assert suite_cpu.running_test(phases, 2, 15.0) == ""  # another process's tests
