"""What starting and stopping the services costs, before and after a change, in one script (issue 25).

For each code version (`--before`, a git revision, and HEAD), in a fresh copy of that version's files
(`git archive`, as `bench/lean_pipeline.py` makes them), with this interpreter:
1. `make up`'s services (`python -m tasks.services.local_services up`: Prefect server, deployment and
   worker, MLflow server, model server) from a fresh workspace (no Prefect database, no MLflow store),
   then `down`;
2. `make team-up`'s (`python -m tasks.services.team up`: a new PostgreSQL cluster, both tools'
   migrations, the two servers, the team account, the deployment and its worker), then `team down`.
Versions alternate within each round (`--rounds`); medians are reported with every round's value, and
the ratios after / before.

Usage: python bench/service_cycle.py --before dc0bfec~1 [--rounds 3] [--results bench/results/service_cycle.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lean_pipeline import AFTER, PROJECT_ROOT, environment, summary, workspace_of

from tasks.runtime.prefect_api import free_port

RESULTS_FILE = PROJECT_ROOT / "bench" / "results" / "service_cycle.json"
STEP_TIMEOUT_SECONDS = 600
OPEN_FOLDER_MODE = 0o755  # the team folder: PostgreSQL's user must enter it when this runs as root


def timed_step(command: list[str], cwd: Path, variables: dict[str, str]) -> float:
    """Wall seconds of `command`; stops the bench with its output when it fails."""
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=cwd, env=variables, capture_output=True, text=True, timeout=STEP_TIMEOUT_SECONDS
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def local_round(revision: str, scratch: Path) -> dict[str, float]:
    """`up` then `down` of `make up`'s services in a fresh copy of `revision`."""
    workspace = workspace_of(revision, scratch / "local")
    variables = {**environment(), "PREFECT_HOME": str(workspace / ".prefect"), "DVC_NO_ANALYTICS": "1"}
    module = [sys.executable, "-m", "tasks.services.local_services"]
    ports = ["--prefect-port", str(free_port()), "--mlflow-port", str(free_port()), "--scorer-port", str(free_port())]
    up = timed_step([*module, "up", "--run-dir", ".run", *ports], workspace, variables)
    down = timed_step([*module, "down", "--run-dir", ".run"], workspace, variables)
    return {"local_up": up, "local_down": down}


def team_round(revision: str, scratch: Path) -> dict[str, float]:
    """`team up` then `team down` in a fresh copy of `revision`, with a new team folder."""
    workspace = workspace_of(revision, scratch / "team-clone")
    folder = Path(tempfile.mkdtemp(prefix="sigpipe-bench-team-"))
    folder.chmod(OPEN_FOLDER_MODE)
    variables = {
        **environment(),
        "PREFECT_HOME": str(folder / "prefect-home"),
        "DVC_NO_ANALYTICS": "1",
        "SIGPIPE_TEAM_DIR": str(folder / "team"),
        "SIGPIPE_TEAM_SHARED": str(folder / "shared"),
        "SIGPIPE_POSTGRES_PORT": str(free_port()),
        "PREFECT_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
    }
    module = [sys.executable, "-m", "tasks.services.team"]
    try:
        up = timed_step([*module, "up"], workspace, variables)
        down = timed_step([*module, "down"], workspace, variables)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"team_up": up, "team_down": down}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the git revision to compare HEAD with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS_FILE)
    arguments = parser.parse_args()
    measured: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for number in range(arguments.rounds):
        for label, revision in (("before", arguments.before), ("after", AFTER)):
            with tempfile.TemporaryDirectory(prefix=f"service-cycle-{label}-") as scratch:
                values = {**local_round(revision, Path(scratch)), **team_round(revision, Path(scratch))}
            measured[label].append(values)
            print(f"round {number + 1} {label}: " + ", ".join(f"{k} {v:.1f} s" for k, v in values.items()), flush=True)
    before, after = summary(measured["before"]), summary(measured["after"])
    ratios = {name: round(after[name]["median"] / before[name]["median"], 2) for name in before}  # type: ignore[index]
    results = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
        "before": arguments.before,
        "after": subprocess.run(
            ["git", "rev-parse", "--short", AFTER], cwd=PROJECT_ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "before_seconds": before,
        "after_seconds": after,
        "after_over_before": ratios,
    }
    arguments.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
