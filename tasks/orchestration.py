"""Plain helpers of the pipeline flow: parameter overrides, the workspace lock, DVC stage runs,
and the end-of-run report. DVC's lock file stays the one record of what is up to date."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import ConfigError, PipelineBusyError, StageFailedError

PIPELINE_STAGES = ("download", "prepare", "train", "evaluate", "calibrate", "register")
RAN_MARKER = "Running stage '{stage}'"
LOCK_POLL_SECONDS = 2.0
OUTPUT_TAIL_CHARACTERS = 3000


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in a pipeline run."""

    stage: str
    ran: bool
    seconds: float


def apply_overrides(params_file: Path, overrides: Mapping[str, Any]) -> list[str]:
    """Write `group.key: value` overrides into params.yaml, keeping its comments and order.

    Like `dvc exp run --set-param`, the change lands in params.yaml, so DVC records it in dvc.lock
    and a rerun with the same file reproduces the run. Unknown groups or keys are refused.
    """
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    document = yaml.load(params_file.read_text(encoding="utf-8"))
    applied = []
    for dotted, value in overrides.items():
        group, _, key = dotted.partition(".")
        if group not in document or not key or key not in document[group]:
            raise ConfigError(
                f"{params_file}: cannot set '{dotted}': no such parameter (use group.key, e.g. train.epochs)"
            )
        document[group][key] = value
        applied.append(f"{dotted}={value}")
    with params_file.open("w", encoding="utf-8") as handle:
        yaml.dump(document, handle)
    return applied


@contextmanager
def workspace_lock(lock_file: Path, timeout_seconds: float) -> Iterator[None]:
    """Hold an exclusive lock on the workspace (`filelock`, an OS lock that dies with its holder),
    waiting up to `timeout_seconds` for another run; the file names the holder while it is held."""
    from filelock import FileLock, Timeout

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, timeout=timeout_seconds, poll_interval=LOCK_POLL_SECONDS)
    try:
        lock.acquire()
    except Timeout as error:
        holder = lock_file.read_text(encoding="utf-8").strip() if lock_file.is_file() else ""
        raise PipelineBusyError(
            f"another pipeline run holds {lock_file} ({holder or 'unknown'}); it was waited for "
            f"{timeout_seconds:.0f} s. Wait for it to finish, then run again."
        ) from error
    try:
        lock_file.write_text(f"pid {os.getpid()}", encoding="utf-8")
        yield
    finally:
        lock.release()


def run_dvc_stage(stage: str, root: Path, environment: Mapping[str, str]) -> StageOutcome:
    """`dvc repro --single-item <stage>`: DVC reruns the stage only if its inputs changed."""
    started = time.perf_counter()
    result = subprocess.run(
        ["dvc", "repro", "--single-item", stage],
        cwd=root,
        env=dict(environment),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise StageFailedError(
            f"stage '{stage}' failed (exit {result.returncode}):\n{output[-OUTPUT_TAIL_CHARACTERS:]}"
        )
    return StageOutcome(stage, RAN_MARKER.format(stage=stage) in output, seconds)


def read_json_if_present(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def try_example(manifest_rows: list[dict[str, str]]) -> tuple[str, str] | None:
    """(raw path, writer) of a test genuine signature, one the model never trained on, to try the CLI with.

    The first in path order: a fixed choice, not one picked for being answered well.
    """
    candidates = sorted(
        (row["path"], row["writer"]) for row in manifest_rows if row["split"] == "test" and row["kind"] == "genuine"
    )
    return candidates[0] if candidates else None


def report_markdown(
    outcomes: list[StageOutcome],
    metrics: dict[str, dict[str, Any]],
    run_link: str | None,
    example: tuple[str, str] | None = None,
) -> str:
    """The end-of-run markdown artifact: stages, headline metrics, champion decision, MLflow link, a CLI example."""
    evaluate, calibrate, register = (metrics.get(name, {}) for name in ("evaluate", "calibrate", "register"))

    def number(value: Any, percent: bool = False) -> str:
        if not isinstance(value, int | float):
            return "n/a"
        return f"{100 * value:.1f}%" if percent else f"{value:.3f}"

    lines = ["# signature-pipeline run", "", "| stage | ran | seconds |", "|---|---|---|"]
    lines += [f"| {item.stage} | {'yes' if item.ran else 'up to date'} | {item.seconds:.1f} |" for item in outcomes]
    lines += [
        "",
        "## Headline metrics (test split)",
        "",
        f"- identification accuracy {number(evaluate.get('accuracy'))}, "
        f"weighted F1 {number(evaluate.get('f1_weighted'))}",
        f"- skilled-forgery EER (a posteriori) {number(evaluate.get('eer_skilled'), True)}, "
        f"AUC {number(evaluate.get('auc_skilled'))} (softmax-probability baseline: "
        f"{number(evaluate.get('softmax_eer_skilled'), True)})",
        f"- at the calibrated threshold {number(calibrate.get('threshold'))} (fitted on validation genuine and "
        f"calibration writers' forgeries, never on test): test FRR {number(calibrate.get('frr'), True)}, "
        f"FAR skilled {number(calibrate.get('far_skilled'), True)}, "
        f"FAR random {number(calibrate.get('far_random'), True)}",
        "",
        "## Registry",
        "",
        f"- {register.get('model_name', 'n/a')} version {register.get('version', 'n/a')}: "
        f"**{register.get('alias', 'n/a')}** ({register.get('reason', 'no decision recorded')})",
    ]
    if run_link:
        lines += ["", f"[MLflow training run]({run_link})"]
    if example:
        path, writer = example
        lines += [
            "",
            "## Try it on a test signature the model never trained on",
            "",
            f"    sigpipe predict {path}",
            f"    sigpipe verify {path} --writer {writer}",
        ]
    return "\n".join(lines) + "\n"
