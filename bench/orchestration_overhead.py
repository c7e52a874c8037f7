"""Orchestration overhead when nothing needs doing: a no-op `dvc repro`, and a no-op run of the
Prefect pipeline flow (every stage up to date), with the number of Prefect servers each started.

Run it in a workspace where the pipeline is up to date (after `make demo`):
    .venv/bin/python bench/orchestration_overhead.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3
SERVER_START_MARKER = "Starting temporary server"


def timed(command: list[str], environment: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stdout + result.stderr


def main() -> None:
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    environment.pop("PREFECT_API_URL", None)
    _, status = timed(["dvc", "status"], environment)
    if "up to date" not in status:
        sys.exit("The pipeline is not up to date here: run `make demo` first.")
    dvc_seconds = [timed(["dvc", "repro"], environment)[0] for _ in range(REPEATS)]
    flow_runs = [timed([sys.executable, "-m", "flows.pipeline"], environment) for _ in range(REPEATS)]
    result = {
        "noop_dvc_repro_seconds_median": statistics.median(dvc_seconds),
        "noop_dvc_repro_seconds": dvc_seconds,
        "noop_pipeline_flow_seconds_median": statistics.median(seconds for seconds, _ in flow_runs),
        "noop_pipeline_flow_seconds": [seconds for seconds, _ in flow_runs],
        "prefect_servers_started_per_flow_run": [output.count(SERVER_START_MARKER) for _, output in flow_runs],
    }
    output = PROJECT_ROOT / "bench" / "results" / "orchestration_overhead.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
