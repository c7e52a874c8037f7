"""Plain helpers of the pipeline flow: parameter overrides, the workspace lock, DVC stage runs,
and the end-of-run report. DVC's lock file stays the one record of what is up to date."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.config import PARAM_GROUPS, check_params
from tasks.errors import ConfigError, PipelineBusyError, StageFailedError
from tasks.lifeline import guard_children
from tasks.locks import exclusive_lock

# check_params first: it validates every parameter before DVC removes any stage's outputs.
PIPELINE_STAGES = ("check_params", "download", "prepare", "train", "evaluate", "calibrate", "register")
RAN_MARKER = "Running stage '{stage}'"
OUTPUT_TAIL_CHARACTERS = 3000
YAML_NULL_TAG, YAML_NULL = "tag:yaml.org,2002:null", "null"  # how overrides write None back into params.yaml
# A message the stage's flow logged, in Prefect's console format "12:00:00.123 | INFO    | Flow run 'x' - <message>".
STAGE_LOG_LINE = re.compile(r"\| (?:Flow|Task) run (?:'[^']*'|\"[^\"]*\") - (?P<message>.*)$")
ENGINE_MESSAGE_PREFIXES = ("Beginning ", "Finished in state ", "View at ")  # Prefect's own, not the stage's
STAGE_SUMMARY_MESSAGES = 5  # the stage's last messages repeated in the pipeline run's log


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in a pipeline run."""

    stage: str
    ran: bool
    seconds: float
    messages: tuple[str, ...] = field(default=(), compare=False)  # the stage's last log messages


def stage_messages(output: str, limit: int = STAGE_SUMMARY_MESSAGES) -> tuple[str, ...]:
    """The last `limit` messages a stage's Prefect flow logged (its prints: counts, epochs, the
    registry decision), found in the stage's console output; Prefect's own engine lines are left out."""
    messages = []
    for line in output.splitlines():
        match = STAGE_LOG_LINE.search(line)
        if match and not match["message"].startswith(ENGINE_MESSAGE_PREFIXES):
            messages.append(match["message"])
    return tuple(messages[-limit:]) if limit > 0 else ()


def apply_overrides(params_file: Path, overrides: Mapping[str, Any]) -> list[str]:
    """Write `group.key: value` overrides into params.yaml, keeping its comments and order.

    Like `dvc exp run --set-param`, the change lands in params.yaml, so DVC records it in dvc.lock
    and a rerun with the same file reproduces the run. Unknown groups or keys are refused, and the
    whole resulting file must pass `check_params` before anything is written; it then replaces
    params.yaml atomically, so a rejected (or interrupted) override leaves the file byte for byte
    as it was, and no stage ever runs on a value that was refused.
    """
    yaml = round_trip_yaml()
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
        check_params(safe_yaml(text), str(params_file), params_file.resolve().parent)
    except ConfigError as error:
        raise ConfigError(f"{error}\nOverrides refused ({', '.join(applied)}): {params_file} is unchanged.") from None
    replace_atomically(params_file, text)
    return applied


def round_trip_yaml() -> Any:  # -> ruamel.yaml.YAML
    """A ruamel.yaml round-trip loader/dumper that writes params.yaml back as it was: comments, order,
    quotes, and `null` as `null` (ruamel's own representer writes a blank, `url:`)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class NullKeepingRepresenter(RoundTripRepresenter):
        """RoundTripRepresenter that spells None `null`."""

    NullKeepingRepresenter.add_representer(
        type(None), lambda representer, _: representer.represent_scalar(YAML_NULL_TAG, YAML_NULL)
    )
    yaml = YAML()
    yaml.Representer = NullKeepingRepresenter
    yaml.preserve_quotes = True
    return yaml


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
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below; the name must outlive it for the rename
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    temporary = Path(handle.name)
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.chmod(path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def workspace_lock(
    lock_file: Path,
    timeout_seconds: float,
    label: str | None = None,
    announce: Callable[[str], None] = print,
) -> Iterator[None]:
    """Hold an exclusive lock on the workspace (`tasks.locks`), waiting up to `timeout_seconds`
    for another run; a run that has to wait says once, through `announce`, whom it waits for."""
    with exclusive_lock(
        lock_file,
        timeout_seconds,
        label=label,
        announce=lambda holder: announce(
            f"waiting up to {timeout_seconds:.0f} s for another pipeline run to release {lock_file} ({holder})"
        ),
        busy_error=lambda holder: PipelineBusyError(
            f"another pipeline run holds {lock_file} ({holder}); it was waited for "
            f"{timeout_seconds:.0f} s. Wait for it to finish, then run again."
        ),
    ):
        yield


def run_dvc_stage(stage: str, root: Path, environment: Mapping[str, str]) -> StageOutcome:
    """`dvc repro --single-item <stage>`: DVC reruns the stage only if its inputs changed."""
    started = time.perf_counter()
    with subprocess.Popen(
        ["dvc", "repro", "--single-item", stage],
        cwd=root,
        env=dict(environment),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        # If this process dies (kill -9 of the pipeline or its worker), the watcher ends dvc, and
        # the stage, which watches dvc (`tasks.lifeline`), follows: nothing trains on unobserved.
        guard_children([process.pid])
        stdout, stderr = process.communicate()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise StageFailedError(
            f"stage '{stage}' failed (exit {result.returncode}):\n{output[-OUTPUT_TAIL_CHARACTERS:]}"
        )
    return StageOutcome(stage, RAN_MARKER.format(stage=stage) in output, seconds, stage_messages(output))


def default_dvc_remote(root: Path, environment: Mapping[str, str]) -> str | None:
    """The name of the repository's default DVC remote (`dvc remote add -d`), or None without one."""
    result = subprocess.run(
        ["dvc", "remote", "default"], cwd=root, env=dict(environment), capture_output=True, text=True, check=False
    )
    name = result.stdout.strip()
    return name if result.returncode == 0 and name else None


def push_outputs(root: Path, environment: Mapping[str, str]) -> str | None:
    """`dvc push` the stages' cached outputs (data, models) to the default remote, so another clone
    can `dvc pull` them; returns DVC's summary line, or None when no default remote is set (a
    single-machine workspace: nothing to share). A failed push raises StageFailedError with DVC's output."""
    remote = default_dvc_remote(root, environment)
    if remote is None:
        return None
    result = subprocess.run(["dvc", "push"], cwd=root, env=dict(environment), capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise StageFailedError(
            f"dvc push to remote '{remote}' failed (exit {result.returncode}):\n{output[-OUTPUT_TAIL_CHARACTERS:]}"
        )
    summary = output.splitlines()[-1] if output else "nothing to push"
    return f"remote '{remote}': {summary}"


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

    from tasks.partitions import interval_of

    def interval(report: dict[str, Any], figure: str) -> str:
        mean, low, high = interval_of(report, figure)
        return f"{number(mean, True)} (95% interval {number(low, True)}-{number(high, True)})"

    lines = ["# signature-pipeline run", "", "| stage | ran | seconds |", "|---|---|---|"]
    lines += [f"| {item.stage} | {'yes' if item.ran else 'up to date'} | {item.seconds:.1f} |" for item in outcomes]
    lines += [
        "",
        "## Headline metrics (test split)",
        "",
        f"- identification accuracy {number(evaluate.get('accuracy'))}, "
        f"weighted F1 {number(evaluate.get('f1_weighted'))}",
        f"- at the calibrated threshold {number(calibrate.get('threshold'))} (fitted on validation genuine and "
        f"calibration writers' forgeries, never on test): test FRR {number(calibrate.get('frr'), True)}, "
        f"FAR skilled {number(calibrate.get('far_skilled'), True)}, "
        f"FAR random {number(calibrate.get('far_random'), True)}; over writer partitions: FRR "
        f"{interval(calibrate, 'frr')}, FAR skilled {interval(calibrate, 'far_skilled')}",
        f"- never-enrolled signers answered as an enrolled writer: {number(calibrate.get('unenrolled_accepted'), True)}"
        f"; confidence calibration error (ECE) {number(calibrate.get('expected_calibration_error'))}",
        f"- skilled-forgery EER (a posteriori) {number(evaluate.get('eer_skilled_a_posteriori'), True)}, "
        f"per-writer thresholds {number(evaluate.get('eer_skilled_per_writer_a_posteriori'), True)}, "
        f"AUC {number(evaluate.get('auc_skilled'))} (softmax-probability baseline: "
        f"{number(evaluate.get('softmax_eer_skilled_a_posteriori'), True)})",
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
