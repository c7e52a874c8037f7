"""Plain helpers of the pipeline flow: parameter overrides, the workspace lock, DVC stage runs,
and the end-of-run report. DVC's lock file stays the one record of what is up to date."""

from __future__ import annotations

import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.config import PARAM_GROUPS, validate_params
from tasks.errors import ConfigError, PipelineBusyError, StageFailedError

# check_params first: it validates every parameter before DVC removes any stage's outputs.
PIPELINE_STAGES = ("check_params", "download", "prepare", "train", "evaluate", "calibrate", "register")
RAN_MARKER = "Running stage '{stage}'"
LOCK_POLL_SECONDS = 2.0
# Beside the lock file, the holder's pid, host, start time and command, for a run that waits.
LOCK_HOLDER_SUFFIX = ".holder"
HOLDER_COMMAND_CHARACTERS = 300  # the holder's command line, cut to this length
UNKNOWN_HOLDER = "holder unknown: it has not recorded itself yet, or its record is unreadable"
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
    and a rerun with the same file reproduces the run. Unknown groups or keys are refused, and the
    whole resulting file must pass `validate_params` before anything is written; it then replaces
    params.yaml atomically, so a rejected (or interrupted) override leaves the file byte for byte
    as it was, and no stage ever runs on a value that was refused.
    """
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    document = yaml.load(params_file.read_text(encoding="utf-8"))
    applied = []
    for dotted, value in overrides.items():
        group, _, key = dotted.partition(".")
        if not key or not isinstance(document.get(group), dict) or not known_key(document[group], group, key):
            raise ConfigError(
                f"{params_file}: cannot set '{dotted}': no such parameter (use group.key, e.g. train.epochs)"
            )
        document[group][key] = value
        applied.append(f"{dotted}={value}")
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    text = buffer.getvalue()
    try:
        validate_params(safe_yaml(text), str(params_file))
    except ConfigError as error:
        raise ConfigError(f"{error}\nOverrides refused ({', '.join(applied)}): {params_file} is unchanged.") from None
    replace_atomically(params_file, text)
    return applied


def known_key(group_values: Mapping[str, Any], group: str, key: str) -> bool:
    """True when `group.key` is in the file or is a key of the group's parameter model (a preset's value)."""
    model = PARAM_GROUPS.get(group)
    return key in group_values or (model is not None and key in model.model_fields)


def safe_yaml(text: str) -> Any:
    """Parse YAML the way the stages read params.yaml (PyYAML's safe loader)."""
    import yaml

    return yaml.safe_load(text)


def replace_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path` (keeping its mode),
    so readers see the old file or the new one, never a partial write."""
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary = Path(handle.name)
    try:
        temporary.chmod(path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def lock_holder_file(lock_file: Path) -> Path:
    """The side file where the holder of `lock_file` says who it is."""
    return lock_file.with_name(lock_file.name + LOCK_HOLDER_SUFFIX)


def record_lock_holder(lock_file: Path, label: str | None) -> None:
    """Write this process's pid, host, start time and command (and `label`, e.g. the flow run) beside the lock."""
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(sys.orig_argv)[:HOLDER_COMMAND_CHARACTERS],
        "label": label,
    }
    lock_holder_file(lock_file).write_text(json.dumps(record) + "\n", encoding="utf-8")


def describe_lock_holder(lock_file: Path) -> str:
    """Who holds `lock_file`, from its side file, in words: pid, host, since when, and what it runs."""
    try:
        record = json.loads(lock_holder_file(lock_file).read_text(encoding="utf-8"))
        label = f"{record['label']}, " if record.get("label") else ""
        return f"{label}pid {record['pid']} on {record['host']} since {record['started']}: {record['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return UNKNOWN_HOLDER


@contextmanager
def workspace_lock(
    lock_file: Path,
    timeout_seconds: float,
    label: str | None = None,
    announce: Callable[[str], None] = print,
) -> Iterator[None]:
    """Hold an exclusive lock on the workspace (`filelock`, an OS lock that dies with its holder),
    waiting up to `timeout_seconds` for another run.

    The holder records itself in a side file (`lock_holder_file`); a run that has to wait says
    once, through `announce`, whom it waits for and since when, and the error on timeout names the
    holder too, so a waiting run is never silent for minutes.
    """
    from filelock import FileLock, Timeout

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, poll_interval=LOCK_POLL_SECONDS)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        announce(
            f"waiting up to {timeout_seconds:.0f} s for another pipeline run to release {lock_file} "
            f"({describe_lock_holder(lock_file)})"
        )
        try:
            lock.acquire(timeout=timeout_seconds)
        except Timeout as error:
            raise PipelineBusyError(
                f"another pipeline run holds {lock_file} ({describe_lock_holder(lock_file)}); it was waited for "
                f"{timeout_seconds:.0f} s. Wait for it to finish, then run again."
            ) from error
    try:
        record_lock_holder(lock_file, label)
        yield
    finally:
        lock_holder_file(lock_file).unlink(missing_ok=True)
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
