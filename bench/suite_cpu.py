"""Where the test suite's CPU goes: every process it starts, servers included, attributed to its test.

`/usr/bin/time make test` counts only the processes someone waited for, so the servers the tests
start (Prefect, MLflow, PostgreSQL, Spark's JVM) and whatever outlived its parent are missing from
its total. This script runs the command (`make test` by default) under Linux's BSD process
accounting (acct(2), root only), which writes one record for every process that exits on the
machine: its CPU time, parent and name. Two helpers on PYTHONPATH name the Python processes: a
`sitecustomize` records each one's argv and the test that started it (pytest's
PYTEST_CURRENT_TEST, which subprocesses inherit) when it exits, and a pytest plugin (loaded by
PYTEST_PLUGINS, on every xdist worker too) records each test's CPU inside the pytest workers. A
process is charged to the first test named on its way up its parent chain, else to the test its
nearest pytest ancestor was running when it started (a child that is not Python, a server killed
before it could say); one whose chain ends at init (a server sent to the background, a process
whose parent died) is listed by its name.
`/proc/stat`, read before and after, gives how busy the cores were over the whole run.

Usage (as root; other processes on the machine are counted too, so run it on a quiet machine):
    python bench/suite_cpu.py [--output bench/results/suite_cpu.json] [-- make test PYTEST_ARGS=...]
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMMAND = ("make", "test")
DEFAULT_OUTPUT = PROJECT_ROOT / "bench" / "results" / "suite_cpu.json"
ACCT_RECORD = struct.Struct("<BBHIIIIIIf8H16s")  # struct acct_v3 of linux/acct.h: 64 bytes
ACCT_VERSION = 3
ACCT_TICKS_PER_SECOND = 100  # AHZ: acct v3 counts times in 1/100 s, whatever the kernel's HZ
ROWS_SHOWN = 25
ANCESTRY_LIMIT = 32
TIME_SLACK_SECONDS = 1.0  # accounting start times are whole seconds
CENSUS_MATCH_SECONDS = 2.0  # a census line and an accounting record of one process start this close
CENSUS_FILE = "census.jsonl"
PHASES_FILE = "phases.jsonl"

SITECUSTOMIZE = """
import atexit, json, os, resource, sys, time
_suite_cpu_start, _suite_cpu_inherited = time.time(), os.environ.get("PYTEST_CURRENT_TEST", "")
def _suite_cpu_record():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    line = {"pid": os.getpid(), "argv": sys.argv[:4], "test": os.environ.get("PYTEST_CURRENT_TEST", ""),
            "inherited_test": _suite_cpu_inherited, "start": _suite_cpu_start,
            "pytest": "_pytest.main" in sys.modules, "cpu": usage.ru_utime + usage.ru_stime}
    with open(os.path.join(%r, %r), "a") as handle:
        handle.write(json.dumps(line) + "\\n")
atexit.register(_suite_cpu_record)
"""

PLUGIN = """
import json, os, resource, time
import pytest
def _cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start, started = _cpu(), time.time()
    yield
    line = {"test": item.nodeid, "cpu": _cpu() - start, "pid": os.getpid(), "start": started, "end": time.time()}
    with open(os.path.join(%r, %r), "a") as handle:
        handle.write(json.dumps(line) + "\\n")
"""


def expand_comp(value: int) -> int:
    """acct(5)'s comp_t: a 13-bit mantissa and a 3-bit base-8 exponent, in clock ticks."""
    return (value & 0x1FFF) << (3 * (value >> 13))


def read_accounting(path: Path) -> list[dict[str, object]]:
    """Every record of a v3 process accounting file: pid, parent, name, CPU seconds and when it ran."""
    data = path.read_bytes()
    records = []
    for offset in range(0, len(data) - ACCT_RECORD.size + 1, ACCT_RECORD.size):
        fields = ACCT_RECORD.unpack_from(data, offset)
        if fields[1] != ACCT_VERSION:
            raise SystemExit(f"{path}: accounting record version {fields[1]}, this script reads version 3")
        records.append(
            {
                "pid": fields[6],
                "ppid": fields[7],
                "cpu": (expand_comp(fields[10]) + expand_comp(fields[11])) / ACCT_TICKS_PER_SECOND,
                "start": fields[8],  # seconds since the epoch
                "end": fields[8] + fields[9] / ACCT_TICKS_PER_SECOND,
                "name": fields[18].split(b"\0")[0].decode(errors="replace"),
            }
        )
    return records


def busy_core_seconds() -> float:
    """CPU seconds spent not idle, all cores together, since boot (/proc/stat's first line)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle and iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def set_accounting(path: Path | None) -> None:
    """Start (to `path`) or stop (None) process accounting; root only."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.acct(str(path).encode() if path else None) != 0:
        error = os.strerror(ctypes.get_errno())
        raise SystemExit(f"acct(2) failed: {error}; process accounting needs root (CAP_SYS_PACCT): run this as root")


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def module_of(test: str) -> str:
    """The test module of a pytest node id (PYTEST_CURRENT_TEST adds ' (call)' and xdist an '@group').

    Per module, not per test: a module fixture's environment (the README blocks' shell) carries the
    PYTEST_CURRENT_TEST of the test that built it, so its processes name that test, not their own."""
    return re.sub(r" \((setup|call|teardown)\)$", "", test).split("@")[0].split("::")[0]


def command_of(argv: list[str]) -> str:
    """A short name for a Python process: its script or module and first argument."""
    words = [word.split("/")[-1] for word in argv[:3] if not word.startswith("-") or word == "-m"]
    return " ".join(word for word in words if word != "-m")[:40]


def running_test(phases: list[dict[str, object]], pid: int, second: float) -> str:
    """The test pytest process `pid` was running at `second` ("" if none): a process it started then
    belongs to that test. Accounting gives start times in whole seconds: a phase that holds `second`
    wins, else the nearest one within the slack."""
    nearest, distance = "", TIME_SLACK_SECONDS
    for phase in phases:
        if phase["pid"] != pid:
            continue
        gap = max(phase["start"] - second, second - phase["end"], 0.0)
        if gap == 0.0:
            return str(phase["test"])
        if gap <= distance:
            nearest, distance = str(phase["test"]), gap
    return nearest


class Processes:
    """The accounted processes and the census lines, found by pid and time: pids are reused during
    a run (threads use them up too), so a pid names a process only together with when it ran."""

    def __init__(self, records: list[dict[str, object]], census: list[dict[str, object]]) -> None:
        self.records: dict[int, list[dict[str, object]]] = collections.defaultdict(list)
        self.census: dict[int, list[dict[str, object]]] = collections.defaultdict(list)
        for record in records:
            self.records[record["pid"]].append(record)
        for entry in census:
            self.census[entry["pid"]].append(entry)

    def alive(self, pid: int, second: float) -> dict[str, object] | None:
        """The process `pid` that was running at `second` (the latest started, if several)."""
        running = [
            record
            for record in self.records.get(pid, [])
            if record["start"] - TIME_SLACK_SECONDS <= second <= record["end"] + TIME_SLACK_SECONDS
        ]
        return max(running, key=lambda record: record["start"]) if running else None

    def named(self, record: dict[str, object]) -> dict[str, object] | None:
        """The census line of the accounted process `record`, if it is a Python process that wrote one."""
        entries = [
            entry
            for entry in self.census.get(record["pid"], [])
            if abs(entry["start"] - record["start"]) <= CENSUS_MATCH_SECONDS
        ]
        return min(entries, key=lambda entry: abs(entry["start"] - record["start"])) if entries else None


def test_of(record: dict[str, object], processes: Processes, phases: list[dict[str, object]]) -> str:
    """The test a process belongs to: the first one named up its parent chain (subprocesses inherit
    PYTEST_CURRENT_TEST), else the one its nearest pytest ancestor was running when it started
    (a child that is not Python, a server killed before it could say); "" when the chain ends at
    init without either (a server sent to the background)."""
    current = record
    for _ in range(ANCESTRY_LIMIT):
        entry = processes.named(current)
        if entry and (entry["test"] or entry["inherited_test"]):
            return str(entry["test"] or entry["inherited_test"])
        if entry and entry["pytest"] and current is not record:
            return running_test(phases, current["pid"], record["start"])
        parent = processes.alive(current["ppid"], current["start"])
        if parent is None:
            return ""
        current = parent
    return ""


def attribute(records, census, phases):  # -> dict of tables
    """Charge every accounted process to a test module, a kind of process and, for the rest, a name.
    The pytest processes of the run itself are counted apart (their tests' CPU is in `phases`); a
    pytest that a test runs (a nested session) is that test's subprocess, and its phases are not
    the run's tests."""
    processes = Processes(records, census)
    by_module = collections.defaultdict(lambda: {"in_pytest": 0.0, "subprocesses": 0.0})
    by_command = collections.defaultdict(lambda: [0, 0.0])
    detached = collections.defaultdict(lambda: [0, 0.0])
    pytest_processes = 0.0
    nested = {entry["pid"] for entry in census if entry["pytest"] and entry["inherited_test"]}
    for phase in phases:
        if phase["pid"] not in nested:
            by_module[module_of(phase["test"])]["in_pytest"] += phase["cpu"]
    for record in records:
        entry = processes.named(record)
        if entry and entry["pytest"] and not entry["inherited_test"]:
            pytest_processes += record["cpu"]
            continue
        kind = command_of(entry["argv"]) if entry else record["name"]
        by_command[kind][0] += 1
        by_command[kind][1] += record["cpu"]
        if test := test_of(record, processes, phases):
            by_module[module_of(test)]["subprocesses"] += record["cpu"]
        else:
            detached[kind][0] += 1
            detached[kind][1] += record["cpu"]
    return {
        "pytest_processes": pytest_processes,
        "by_module": dict(by_module),
        "by_command": {kind: {"processes": n, "cpu": cpu} for kind, (n, cpu) in by_command.items()},
        "unattributed": {kind: {"processes": n, "cpu": cpu} for kind, (n, cpu) in detached.items()},
    }


def print_report(result: dict[str, object]) -> None:
    tables = result["attribution"]
    print(
        f"wall {result['wall_seconds']:.0f} s; cores busy {result['busy_core_seconds']:.0f} core-s "
        f"({result['busy_fraction']:.0%} of {result['cores']} cores); accounted {result['accounted_cpu']:.0f} CPU-s"
    )
    in_tests = sum(module["in_pytest"] for module in tables["by_module"].values())
    print(f"pytest processes {tables['pytest_processes']:.0f} CPU-s, of which inside tests {in_tests:.0f}")
    print("\nby test module (CPU-s: inside pytest + its subprocesses)")
    rows = sorted(tables["by_module"].items(), key=lambda item: -(item[1]["in_pytest"] + item[1]["subprocesses"]))
    for module, cpu in rows[:ROWS_SHOWN]:
        total = cpu["in_pytest"] + cpu["subprocesses"]
        print(f"{total:8.1f}  ({cpu['in_pytest']:6.1f} + {cpu['subprocesses']:6.1f})  {module}")
    for title, key in (("by kind of process", "by_command"), ("not under any test (detached)", "unattributed")):
        print(f"\n{title} (CPU-s, processes)")
        for kind, value in sorted(tables[key].items(), key=lambda item: -item[1]["cpu"])[:ROWS_SHOWN]:
            print(f"{value['cpu']:8.1f} {value['processes']:5d}  {kind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("command", nargs="*", default=list(DEFAULT_COMMAND))
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="suite-cpu-") as scratch:
        folder = Path(scratch)
        folder.chmod(0o755)
        (folder / "sitecustomize.py").write_text(SITECUSTOMIZE % (scratch, CENSUS_FILE))
        (folder / "suite_cpu_plugin.py").write_text(PLUGIN % (scratch, PHASES_FILE))
        (folder / CENSUS_FILE).touch(mode=0o666)
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [scratch, environment.get("PYTHONPATH")]))
        environment["PYTEST_PLUGINS"] = "suite_cpu_plugin"
        accounting = folder / "pacct"
        accounting.touch()
        busy_before, start = busy_core_seconds(), time.monotonic()
        set_accounting(accounting)
        try:
            status = subprocess.run(arguments.command, cwd=PROJECT_ROOT, env=environment).returncode
        finally:
            set_accounting(None)
        wall, busy = time.monotonic() - start, busy_core_seconds() - busy_before
        records = read_accounting(accounting)
        census, phases = read_lines(folder / CENSUS_FILE), read_lines(folder / PHASES_FILE)
    cores = os.cpu_count() or 1
    result = {
        "command": arguments.command,
        "exit_status": status,
        "machine": f"{platform.node()}: {cores} cores, {platform.processor() or platform.machine()}",
        "cores": cores,
        "wall_seconds": wall,
        "busy_core_seconds": busy,
        "busy_fraction": busy / (wall * cores),
        "accounted_cpu": sum(record["cpu"] for record in records),
        "processes": len(records),
        "attribution": attribute(records, census, phases),
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print_report(result)
    sys.exit(status)


if __name__ == "__main__":
    main()
