"""Plain helpers of the pipeline flow: the stage order, the workspace lock, DVC's view of each stage
(stale? record it), sharing the outputs (`dvc push`) and the end-of-run report. DVC's lock file stays
the one record of what is up to date. What a run may change (overrides, run requests) is
`tasks.runtime.run_requests`."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.workspace.errors import PipelineBusyError, StageFailedError
from tasks.workspace.locks import exclusive_lock

# check_params first: it validates every parameter before any stage rewrites its outputs.
PIPELINE_STAGES = (
    "check_params",
    "download",
    "prepare",
    "embed",
    "train",
    "evaluate",
    "calibrate",
    "package",
    "register",
)
OUTPUT_TAIL_CHARACTERS = 3000


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in a pipeline run."""

    stage: str
    ran: bool
    seconds: float


@contextmanager
def workspace_lock(
    lock_file: Path,
    timeout_seconds: float,
    label: str | None = None,
    announce: Callable[[str], None] = print,
) -> Iterator[None]:
    """Hold an exclusive lock on the workspace (`tasks.workspace.locks`), waiting up to `timeout_seconds`
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


@contextmanager
def dvc_repository(root: Path, what: str) -> Iterator[Any]:
    """The DVC repository at `root`, its lock held (as `dvc repro` holds it while it runs stages), with
    `root` as the working directory (DVC resolves stage names and dependencies from it). DVC's errors
    (no repository, a lock held by another DVC command) become one StageFailedError naming `what`
    (a stage, or the pipeline)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo, lock_repo

    try:
        with contextlib.chdir(root), Repo(str(root)) as repository, lock_repo(repository):
            yield repository
    except DvcException as error:
        raise StageFailedError(f"{what}: DVC cannot work in {root}: {error}") from error


def stage_is_stale(repository: Any, stage: str) -> bool:
    """Whether DVC would rerun `stage` alone (`dvc status <stage>`): its deps, params, command or
    outputs differ from what dvc.lock records, or it never ran."""
    from dvc.exceptions import DvcException

    try:
        return bool(repository.status(targets=[stage], with_deps=False))
    except DvcException as error:
        raise StageFailedError(f"stage '{stage}': DVC cannot tell whether it is up to date: {error}") from error


def stages_that_may_run(root: Path, unchanged_outputs: set[str]) -> set[str]:
    """The stages a pipeline run in the workspace at `root` will (or may) execute: those DVC finds out of
    date now (`dvc status`) and those downstream of them in DVC's own stage graph. Stages in
    `unchanged_outputs` write the same output whatever ran (check_params: a fixed marker), so nothing
    downstream of them alone reruns. Empty when DVC cannot tell (no repository, a lock held by another
    DVC command): the stage runs then say why."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with contextlib.chdir(root), Repo(str(root)) as repository:
            stale = set(repository.status())
            return may_run(repository.index.graph, stale, unchanged_outputs) if stale else set()
    except DvcException:
        return set()


def may_run(graph: Any, stale: set[str], unchanged_outputs: set[str]) -> set[str]:
    """`stale` and every stage of DVC's stage graph (`Repo.index.graph`: an edge from each stage to each
    stage it depends on) that depends, directly or through others, on a stale stage not in `unchanged_outputs`."""
    reached = [stage for stage in graph.nodes if stage.addressing in stale - unchanged_outputs]
    seen = set(reached)
    while reached:
        for dependent in graph.predecessors(reached.pop()):
            if dependent not in seen:
                seen.add(dependent)
                reached.append(dependent)
    return stale | {stage.addressing for stage in seen}


def save_stage(repository: Any, stage: str) -> list[Any]:
    """Hash `stage`'s dependencies and outputs as they are now and put its outputs in DVC's cache, as
    `dvc commit --force <stage>` does before it writes dvc.lock; returns DVC's stage objects, for
    `stage_records` to write. A stage whose outputs are missing raises StageFailedError naming it."""
    from dvc.exceptions import DvcException

    try:
        saved = []
        for info in repository.stage.collect_granular(stage):
            info.stage.save()
            info.stage.commit(filter_info=info.filter_info)
            saved.append(info.stage)
        return saved
    except DvcException as error:
        raise StageFailedError(f"stage '{stage}' ran, but DVC could not record it in dvc.lock: {error}") from error


def write_records(saved: list[Any]) -> None:
    """Write the saved stages into their lock file (dvc.lock), one rewrite per file."""
    by_file: dict[str, list[Any]] = {}
    for stage in saved:
        by_file.setdefault(stage.dvcfile.path, []).append(stage)
    for stages in by_file.values():
        stages[0].dvcfile.dump_stages(stages, update_pipeline=False)


@contextmanager
def stage_records(repository: Any) -> Iterator[Callable[[str], None]]:
    """`record(stage)` for each stage that ran (its outputs saved into DVC's cache at once); dvc.lock is
    written once, when the block ends, with every recorded stage, also when the block fails (the stages
    that ran before a failure stay recorded). `dvc commit` per stage would rewrite the whole lock file
    each time, a pure-Python YAML round trip of about 0.7 s per stage here (bench/README.md, issue 25).
    Only a process killed outright (`kill -9`) loses its records: its stages run again next time."""
    saved: list[Any] = []

    def record(stage: str) -> None:
        saved.extend(save_stage(repository, stage))

    try:
        yield record
    finally:
        if saved:
            from dvc.exceptions import DvcException

            try:
                write_records(saved)
            except DvcException as error:
                names = ", ".join(stage.name for stage in saved)
                raise StageFailedError(f"stages {names} ran, but DVC could not write dvc.lock: {error}") from error


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

    from tasks.evaluation.partitions import interval_of

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
