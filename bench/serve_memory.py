"""Memory of `mlflow models serve` under a small PNG that declares a huge canvas (issue 15).

A classifier at `--size` px (`weights=None`: memory does not depend on the weight values), a
zero verifier and a neutral calibration are packaged exactly as the `register` stage does it
(with the `tasks` code found first on sys.path, see `--code-root`), logged to a scratch MLflow
store and served with `mlflow models serve --env-manager local --workers 1` on 127.0.0.1. The
resident memory (RSS) of the server's whole process tree is sampled every SAMPLE_SECONDS while:
1. it idles after start-up and one small real request (the baseline);
2. `--requests` requests, one after the other, each send one `--side` x `--side` RGBA PNG
   (default 9400: 0.4 MB encoded, 88 Mpx);
3. `--concurrent` such requests are sent at once.
Each phase reports its peak RSS and the RSS once it is over.

`--code-root` packages another copy of the code, e.g. the commit before the fix:
    git archive <commit> tasks | tar -x -C /tmp/before
    python bench/serve_memory.py --code-root /tmp/before --output bench/results/serve_memory_before.json

Usage: python bench/serve_memory.py [--code-root DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HUGE_SIDE = 9400  # the image: 88 Mpx, under Pillow's decompression-bomb warning (89 Mpx)
CLASSES = ("001", "002", "003")
SAMPLE_SECONDS = 0.05
STARTUP_SECONDS = 300
REQUEST_SECONDS = 600
SETTLE_SECONDS = 2.0
MIB = 2**20
BENCH_EXPERIMENT = "serve-memory-bench"


def huge_png(side: int) -> bytes:
    """A `side` x `side` RGBA PNG, white with one dark stroke (9400: about 0.4 MB encoded, 353 MB decoded)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    stroke = [(side // 10, side * 3 // 4), (side // 2, side // 5), (side * 9 // 10, side * 3 // 4)]
    ImageDraw.Draw(image).line(stroke, fill=(20, 20, 60, 255), width=max(side // 150, 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def small_png() -> bytes:
    """A 240 x 120 grey signature-like PNG, to warm the server up."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (240, 120), 245)
    ImageDraw.Draw(image).line([(20, 90), (80, 20), (140, 100), (220, 30)], fill=20, width=5)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def package_model(root: Path, size: int, example: Path) -> str:
    """Log the packaged model to a scratch store under `root`; returns its URI."""
    import dataclasses

    import mlflow
    import numpy as np
    import yaml

    from bench.peers import params_embedding
    from tasks.data.prepare import settings_from_params
    from tasks.model.classifier import build_base, build_classifier
    from tasks.model.keras_head import HeadSpec
    from tasks.model.verifier import WriterVerifier, save_verifier
    from tasks.registration.packaging import log_packaged_model
    from tasks.workspace.files import write_json
    from tasks.workspace.params_data import PrepareParams
    from tasks.workspace.paths import ProjectPaths

    paths = ProjectPaths.from_root(root)
    root.mkdir(parents=True)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    shutil.copy2(PROJECT_ROOT / "params.yaml", paths.params_file)
    prepare = PrepareParams.model_validate({**params["prepare"], "image_size": size})
    settings = settings_from_params(prepare)
    limits = {"max_pixels": "max_image_pixels", "max_image_bytes": "max_image_bytes"}
    fields = {field.name for field in dataclasses.fields(settings)}
    settings = dataclasses.replace(
        settings, **{key: params["register"][name] for key, name in limits.items() if key in fields}
    )
    paths.models_dir.mkdir(parents=True)
    build_classifier(
        build_base(size, "none", paths.root, 0), size, HeadSpec(len(CLASSES), 32, 0.1), params_embedding()
    ).save(paths.classifier_file)
    writers, features = len(CLASSES), params_embedding().width
    save_verifier(
        WriterVerifier(np.zeros(features), np.ones(features), np.zeros((features, writers)), np.zeros(writers)),
        paths.verifier_file,
    )
    write_json(
        paths.calibration_file,
        {"classes": list(CLASSES), "temperature": 1.0, "threshold": 0.5, "unknown_class_id": writers},
    )
    paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
    artifacts = (paths.root / "artifacts").as_uri()
    with mlflow.start_run(experiment_id=mlflow.create_experiment(BENCH_EXPERIMENT, artifact_location=artifacts)):
        return log_packaged_model(paths, settings, 2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_rss(process) -> int:  # process: psutil.Process
    """Resident bytes of `process` and all its descendants (the server runs uvicorn as a child)."""
    import psutil

    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def peak_during(process, action: Callable[[], object]) -> tuple[int, int]:  # process: psutil.Process
    """Peak tree RSS while `action` runs, and the RSS SETTLE_SECONDS after it returns."""
    peak = [tree_rss(process)]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(process))
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        action()
        time.sleep(SETTLE_SECONDS)
    finally:
        done.set()
        sampler.join()
    return peak[0], tree_rss(process)


def post(url: str, encoded: str) -> dict[str, object]:
    """One request with one base64 image; returns the prediction row (or the error body)."""
    import requests

    payload = {"dataframe_split": {"columns": ["image"], "data": [[encoded]]}}
    response = requests.post(f"{url}/invocations", json=payload, timeout=REQUEST_SECONDS)
    if response.status_code != 200:
        return {"status": response.status_code, "body": response.text[:300]}
    return response.json()["predictions"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code-root", type=Path, default=PROJECT_ROOT, help="folder holding the `tasks` to package")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--side", type=int, default=HUGE_SIDE, help="side of the square RGBA PNG sent")
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=3)
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "results" / "serve_memory.json")
    arguments = parser.parse_args()
    sys.path.insert(0, str(arguments.code_root.resolve()))

    import psutil
    import requests

    huge = base64.b64encode(huge_png(arguments.side)).decode()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        example = root / "example.png"
        example.write_bytes(small_png())
        uri = package_model(root / "workspace", arguments.size, example)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        environment = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'workspace' / 'mlruns' / 'mlflow.db'}",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        with (root / "serve.log").open("w") as log:
            server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(1)
            else:
                raise SystemExit(f"server did not start: {(root / 'serve.log').read_text()[-2000:]}")
            process = psutil.Process(server.pid)
            warm = post(url, base64.b64encode(small_png()).decode())
            time.sleep(SETTLE_SECONDS)
            baseline = tree_rss(process)
            answers: list[dict[str, object]] = []
            sequential = peak_during(
                process, lambda: answers.extend(post(url, huge) for _ in range(arguments.requests))
            )
            with ThreadPoolExecutor(arguments.concurrent) as pool:
                concurrent = peak_during(
                    process, lambda: answers.extend(pool.map(lambda _: post(url, huge), range(arguments.concurrent)))
                )
        finally:
            for member in psutil.Process(server.pid).children(recursive=True):
                member.terminate()
            server.terminate()
            server.wait(timeout=30)
    result = {
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
        "code_root": str(arguments.code_root),
        "image": f"{arguments.side}x{arguments.side} RGBA PNG, {len(huge) * 3 // 4 / MIB:.2f} MiB",
        "warm_up_error": warm.get("error"),
        "baseline_rss_mib": baseline / MIB,
        "sequential_requests": arguments.requests,
        "sequential_peak_rss_mib": sequential[0] / MIB,
        "sequential_after_rss_mib": sequential[1] / MIB,
        "concurrent_requests": arguments.concurrent,
        "concurrent_peak_rss_mib": concurrent[0] / MIB,
        "concurrent_after_rss_mib": concurrent[1] / MIB,
        "answers": sorted(
            {str(answer.get("error") or answer.get("body") or answer.get("writer")) for answer in answers}
        ),
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
