"""Wall time of the `sigpipe` command as a user runs it: one image predicted, one missing file.

A classifier the size of the demo's (InceptionV3 at `--size` px, `weights=None`: the time does not
depend on the weight values; 8 writers, 001-008) is packaged and registered as champion in a
scratch workspace, exactly as the `register` stage does. Then `python -m tasks.cli.app predict
<image>` and `predict <missing file>` run as fresh processes, `--runs` times each, for every
`--project` given (a checkout of the project: its `flows` and `tasks` are imported, with this
virtual environment's packages), so two versions of the CLI are timed on the same model, one
after the other. Then `sigpipe serve` (this checkout's) serves the same champion, and `predict
--server URL <image>` is timed the same way for every project that has it (the client sends the
image's bytes; the model stays loaded in the server). Reported: the median wall time (and range)
of each.

Usage: python bench/cli_latency.py --project before=/tmp/sigpipe-head --project after=. --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENCH_MODEL = "cli-latency-bench"
BENCH_EXPERIMENT = "cli-latency-bench"
WRITERS = [f"{number:03d}" for number in range(1, 9)]  # the demo's 8 writers
IMAGE_SIZE = (240, 120)  # the demo's synthetic scans
MISSING_FILE = "missing.png"
COMMAND_TIMEOUT_SECONDS = 300
SERVER_STARTUP_SECONDS = 180
PING_TIMEOUT_SECONDS = 2
PING_PAUSE_SECONDS = 1
CLIENT_MODULE = Path("tasks") / "scoring" / "remote_scoring.py"  # a checkout whose predict has --server


def registered_workspace(root: Path, size: int) -> Path:
    """A workspace in `root` whose MLflow store holds a demo-sized packaged model as champion; returns
    its parameter file. The signature image is `root/signature.png`."""
    import mlflow
    import numpy as np
    import yaml
    from peers import params_embedding  # this folder is on sys.path when a bench script runs
    from PIL import Image, ImageDraw

    from tasks.data.prepare import settings_from_params
    from tasks.model.classifier import build_base, build_classifier
    from tasks.model.keras_head import HeadSpec
    from tasks.model.verifier import WriterVerifier, save_verifier
    from tasks.registration.model_store import record_alias, sign_version, workspace_keys
    from tasks.registration.packaging import log_packaged_model
    from tasks.workspace.files import write_json
    from tasks.workspace.params_data import PrepareParams
    from tasks.workspace.paths import ProjectPaths

    paths = ProjectPaths.from_root(root)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["register"]["model_name"] = BENCH_MODEL
    params["prepare"]["image_size"] = size
    paths.params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    features = params_embedding().width
    spec = HeadSpec(len(WRITERS), 0, 0.0, feature_mean=np.zeros(features), feature_variance=np.ones(features))
    paths.models_dir.mkdir(parents=True, exist_ok=True)
    build_classifier(build_base(size, "none", paths.root, 0), size, spec, params_embedding()).save(
        paths.classifier_file
    )
    rng = np.random.default_rng(0)
    verifier = WriterVerifier(np.zeros(features), np.ones(features), rng.normal(size=(features, 8)), np.zeros(8))
    save_verifier(verifier, paths.verifier_file)
    calibration = {"classes": WRITERS, "temperature": 1.0, "threshold": 0.0, "unknown_class_id": len(WRITERS)}
    write_json(paths.calibration_file, calibration)
    image = Image.new("L", IMAGE_SIZE, 250)
    ImageDraw.Draw(image).line([(20, 80), (80, 20), (140, 100), (220, 30)], fill=20, width=5)
    image.save(root / "signature.png")
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
    artifacts = (paths.mlruns_dir / "artifacts").as_uri()
    with mlflow.start_run(experiment_id=mlflow.create_experiment(BENCH_EXPERIMENT, artifact_location=artifacts)):
        prepare = PrepareParams.model_validate(params["prepare"])
        uri = log_packaged_model(paths, settings_from_params(prepare), params["register"]["top_k"])
    version = mlflow.register_model(uri, BENCH_MODEL)
    client = mlflow.tracking.MlflowClient()
    sign_version(client, BENCH_MODEL, str(version.version), workspace_keys(paths))  # as the register stage does
    client.set_registered_model_alias(BENCH_MODEL, "champion", version.version)
    record_alias(client, BENCH_MODEL, "champion", str(version.version), workspace_keys(paths))
    return paths.params_file


def timed_command(project: Path, workspace: Path, arguments: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Seconds one `python -m tasks.cli.app ARGUMENTS` process takes, run in `workspace` with the
    `flows` and `tasks` of `project`, and its result."""
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["PYTHONPATH"] = str(project)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli.app", *arguments],
        cwd=workspace,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    return time.perf_counter() - started, result


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_model_server(workspace: Path) -> tuple[subprocess.Popen, str]:
    """`sigpipe serve` of the workspace's champion (this checkout's CLI); returns it and its URL once it answers."""
    import requests

    port = free_port()
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["PYTHONPATH"] = str(PROJECT_ROOT)
    server = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli.app", "serve", "--port", str(port)],
        cwd=workspace,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_STARTUP_SECONDS
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if requests.get(f"{url}/ping", timeout=PING_TIMEOUT_SECONDS).status_code == 200:
                return server, url
        except requests.ConnectionError:
            pass
        time.sleep(PING_PAUSE_SECONDS)
    server.terminate()
    raise SystemExit(f"sigpipe serve did not answer within {SERVER_STARTUP_SECONDS} s (exit code {server.poll()})")


def summary(seconds: list[float]) -> dict[str, float | list[float]]:
    """Median, min and max of some wall times, and the times themselves."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", action="append", default=[], help="LABEL=PATH of a project checkout")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "results" / "cli_latency.json")
    arguments = parser.parse_args()
    projects = dict(entry.split("=", 1) for entry in arguments.project) or {"current": str(PROJECT_ROOT)}

    commands = {"predict_one_image": ["predict", "signature.png"], "missing_file": ["predict", MISSING_FILE]}
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        workspace = Path(scratch)
        registered_workspace(workspace, arguments.size)
        seconds: dict[tuple[str, str], list[float]] = {(label, name): [] for label in projects for name in commands}
        last: dict[tuple[str, str], subprocess.CompletedProcess] = {}
        for _ in range(arguments.runs):  # rounds of every command, in turn: a slow moment hits all of them
            for label, project in projects.items():
                for name, command in commands.items():
                    elapsed, last[label, name] = timed_command(Path(project).resolve(), workspace, command)
                    seconds[label, name].append(round(elapsed, 3))
        server, url = start_model_server(workspace)
        try:
            clients = {
                label: project for label, project in projects.items() if (Path(project) / CLIENT_MODULE).is_file()
            }
            server_command = ["predict", "--server", url, "signature.png"]
            for label in clients:
                seconds[label, "predict_one_image_server"] = []
            for _ in range(arguments.runs):
                for label, project in clients.items():
                    elapsed, last[label, "predict_one_image_server"] = timed_command(
                        Path(project).resolve(), workspace, server_command
                    )
                    seconds[label, "predict_one_image_server"].append(round(elapsed, 3))
        finally:
            server.terminate()
            server.wait(timeout=60)
        for (label, name), times in seconds.items():
            results.setdefault(label, {})[name] = {
                **summary(times),
                "exit_code": last[label, name].returncode,
                "stdout": last[label, name].stdout.strip(),
                "stderr": last[label, name].stderr.strip()[-2000:],
            }
    report = {
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
        "size": arguments.size,
        "writers": len(WRITERS),
        "runs": arguments.runs,
        "results": results,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
