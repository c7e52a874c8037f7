"""Plain helpers of the pipeline flow: parameter overrides, what a deployment run may ask for, the
workspace lock, DVC stage runs, and the end-of-run report. DVC's lock file stays the one record of
what is up to date."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks.config import PARAM_GROUPS, check_params, read_params_file, weights_file
from tasks.errors import ConfigError, PipelineBusyError, StageFailedError
from tasks.files import redacted_url
from tasks.locks import exclusive_lock
from tasks.paths import PARAMS_FILE_NAME

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
YAML_NULL_TAG, YAML_NULL = "tag:yaml.org,2002:null", "null"  # how overrides write None back into params.yaml
# What a deployment run's overrides may point the pipeline at is the operator's choice, read from the
# worker's environment: a run request can set neither (the work pool's template takes no `env`), and
# overrides only ever write params.yaml. Empty (the default): no data source can be chosen by a run.
ALLOWED_LOCAL_ROOTS_VARIABLE = "SIGPIPE_ALLOWED_LOCAL_ROOTS"  # absolute folders, separated by os.pathsep
ALLOWED_URL_HOSTS_VARIABLE = "SIGPIPE_ALLOWED_URL_HOSTS"  # host names, separated by commas
DATA_GROUP = "data"  # every key of it chooses what download reads or fetches, or how
WEIGHTS_KEY = "model.weights"  # a path names a file that train reads
# The keys a deployment run's overrides may set (README, What a run request may change): those that
# only change how much work a run does or which training variant it trains, each still validated by
# `check_params`; "group.*" is every key of the group. The data-source keys (`data.*`, `model.weights`)
# are allowed too, but only where the parameters the run would write leave a source the operator
# allows (`SourcePolicy`). Every other key is the operator's, changed in params.yaml (committed): what
# verification accepts (calibrate.*), what is promoted and how much the model server accepts
# (register.*), where runs and models are logged (tracking.*), download limits, the data split and
# the generated dataset (prepare.* but image_size, synthetic.*) and the machine's settings.
RUN_REQUEST_KEYS = (
    "train.mode",
    "train.epochs",
    "train.batch_size",
    "train.learning_rate",
    "train.patience",
    "train.seed",
    "train.augmented_views",
    "augment.*",
    "model.head",
    "model.dense_units",
    "model.dropout",
    "prepare.image_size",
    "evaluate.partitions",
    "evaluate.partition_seed",
)
SERVICE_HOSTS = {"gdrive": "drive.google.com", "kaggle": "www.kaggle.com"}  # the host each service source fetches from


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in a pipeline run."""

    stage: str
    ran: bool
    seconds: float


@dataclass(frozen=True)
class SourcePolicy:
    """Where a deployment run's overrides may point the pipeline: folders and URL hosts the operator allows."""

    local_roots: tuple[Path, ...] = ()
    url_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_environment(cls, environment: Mapping[str, str]) -> SourcePolicy:
        """The operator's settings: `ALLOWED_LOCAL_ROOTS_VARIABLE` and `ALLOWED_URL_HOSTS_VARIABLE`."""
        roots = [item for item in environment.get(ALLOWED_LOCAL_ROOTS_VARIABLE, "").split(os.pathsep) if item.strip()]
        relative = [item for item in roots if not Path(item).expanduser().is_absolute()]
        if relative:
            raise ConfigError(f"{ALLOWED_LOCAL_ROOTS_VARIABLE}: {relative[0]!r} is not an absolute folder")
        hosts = environment.get(ALLOWED_URL_HOSTS_VARIABLE, "").split(",")
        return cls(
            tuple(Path(item).expanduser().resolve() for item in roots),
            frozenset(host.strip().lower() for host in hosts if host.strip()),
        )

    def allows_path(self, path: Path) -> bool:
        """True when `path`, symbolic links resolved, lies in an allowed local root."""
        resolved = path.resolve()
        return any(resolved.is_relative_to(root) for root in self.local_roots)


def check_run_params_file(requested: str, root: Path) -> Path:
    """The workspace's own parameter file (`root`/params.yaml), when `requested` names it (a relative
    name is taken from `root`); any other file is refused with one line, before anything is read."""
    own = (root / PARAMS_FILE_NAME).resolve()
    if (root / Path(requested).expanduser()).resolve() != own:
        raise ConfigError(
            f"params_file {requested!r} refused: a deployment run uses its workspace's own {own}; "
            "change parameters with `overrides`"
        )
    return own


def run_request_key_allowed(key: str) -> bool:
    """True when a deployment run's overrides may name `key`: one of `RUN_REQUEST_KEYS`, or a
    data-source key (`data.*`, `model.weights`), whose value `check_run_parameters` judges."""
    group = key.partition(".")[0]
    return key in RUN_REQUEST_KEYS or f"{group}.*" in RUN_REQUEST_KEYS or group == DATA_GROUP or key == WEIGHTS_KEY


def check_run_request_keys(overrides: Mapping[str, Any]) -> None:
    """Refuse, with one line naming the first key, a deployment run's override of a key that is not
    in the allow-list (`run_request_key_allowed`): the operator changes it in params.yaml instead."""
    for key in overrides:
        if not run_request_key_allowed(key):
            shown = key if key.isprintable() else repr(key)
            raise ConfigError(
                f"override {shown} refused: a deployment run may not change it; the operator changes it in "
                f"params.yaml (committed) instead (a run may set {', '.join(RUN_REQUEST_KEYS)}, and data.* or "
                f"{WEIGHTS_KEY} where the operator allows the source)"
            )


def check_run_overrides(overrides: Mapping[str, Any], params_file: Path, policy: SourcePolicy) -> None:
    """`check_run_parameters` on params.yaml as it is now with `overrides` set: an early refusal, before
    the run waits for the workspace lock. Not the last word: `apply_overrides` judges again, inside the
    lock, the document it writes. Nothing is written here."""
    check_run_request_keys(overrides)
    document = read_params_file(params_file)
    for dotted, value in overrides.items():
        group, _, key = dotted.partition(".")
        if isinstance(document.get(group), Mapping):
            document[group] = {**document[group], key: value}
    check_run_parameters(document, overrides, params_file.resolve().parent, policy)


def check_run_parameters(
    document: Mapping[str, Any], overrides: Mapping[str, Any], root: Path, policy: SourcePolicy
) -> None:
    """Refuse, with one line naming the key and the operator's setting, what a deployment run's
    `overrides` would leave in `document` (the whole parameter document the run would write, in
    workspace `root`): a key outside the allow-list (`check_run_request_keys`); with any `data.*` key
    set, a data source the operator does not allow, judged on the source `document` has, whichever of
    its keys the run set (`data_source_problem`), and a `data.path` or `data.url` the run names that
    the operator does not allow even where that source leaves it unread (a later change of source
    would read it); a `model.weights` path outside the allowed roots."""
    check_run_request_keys(overrides)
    touched = [key for key in overrides if key.partition(".")[0] == DATA_GROUP]
    if touched:
        data = document.get(DATA_GROUP)
        data = data if isinstance(data, Mapping) else {}
        problem = data_source_problem(data, root, policy) or named_location_problem(data, touched, root, policy)
        if problem:
            raise ConfigError(f"override {', '.join(touched)} refused: {problem}")
    if WEIGHTS_KEY in overrides:
        model = document.get(WEIGHTS_KEY.partition(".")[0])
        weights = model.get(WEIGHTS_KEY.partition(".")[2]) if isinstance(model, Mapping) else None
        path = weights_file(weights, root) if isinstance(weights, str) else None
        if path is not None and not policy.allows_path(path):
            raise ConfigError(f"override {WEIGHTS_KEY} refused: {local_root_problem(path)}")


def data_source_problem(data: Mapping[str, Any], root: Path, policy: SourcePolicy) -> str | None:
    """Why the `data` group a run's overrides would leave is not allowed (None: allowed). The generated
    dataset reads nothing; a folder or archive must lie in an allowed root; an address's host, and the
    host of Google Drive or Kaggle, must be an allowed host."""
    source = data.get("source")
    if source == "synthetic":
        return None
    if source == "local":
        path = Path(str(data.get("path") or "")).expanduser()
        return None if policy.allows_path(root / path) else f"data.path: {local_root_problem(root / path)}"
    if source in ("url", *SERVICE_HOSTS):
        key = "data.url" if source == "url" else "data.source"
        host = url_host(data.get("url")) if source == "url" else SERVICE_HOSTS[source]
        return None if host and host.lower() in policy.url_hosts else f"{key}: {url_host_problem(source, host)}"
    return f"data.source {source!r} is not a source a run may choose"


def named_location_problem(data: Mapping[str, Any], touched: list[str], root: Path, policy: SourcePolicy) -> str | None:
    """Why a `data.path` or `data.url` among the `touched` keys, as `data` has it, is not allowed
    whatever the source (None: allowed, or cleared to null)."""
    path = data.get("path")
    if "data.path" in touched and path not in (None, ""):
        located = root / Path(str(path)).expanduser()
        if not policy.allows_path(located):
            return f"data.path: {local_root_problem(located)}"
    if "data.url" in touched and data.get("url") not in (None, ""):
        host = url_host(data.get("url"))
        if not (host and host.lower() in policy.url_hosts):
            return f"data.url: {url_host_problem('url', host)}"
    return None


def url_host(value: Any) -> str | None:
    """The host name of the address `value` (None: none, or not an address); never its credentials."""
    try:
        return urlsplit(str(value or "")).hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


def local_root_problem(path: Path) -> str:
    """One line: `path` lies in no allowed local root, and how the operator allows one."""
    return (
        f"{path.resolve()} is not in a folder the operator allows; to allow one, start the worker with "
        f"{ALLOWED_LOCAL_ROOTS_VARIABLE}=/absolute/folder (several separated by '{os.pathsep}')"
    )


def url_host_problem(source: str, host: str | None) -> str:
    """One line: the host a `source` would fetch from is not allowed, and how the operator allows it."""
    return (
        f"{source} source host {host or '(none)'} is not one the operator allows; to allow it, start the worker "
        f"with {ALLOWED_URL_HOSTS_VARIABLE}={host or 'host.example'} (several separated by commas)"
    )


@contextmanager
def overrides_applied(
    params_file: Path, overrides: Mapping[str, Any], policy: SourcePolicy | None = None
) -> Iterator[list[str]]:
    """`apply_overrides` for the length of a run: yields what was set, and when the run fails (or is
    interrupted) writes params.yaml back byte for byte as it was, so a failed run changes no parameter.
    `policy`: a deployment run's (`apply_overrides`); None for a local run."""
    original = params_file.read_bytes()
    applied = apply_overrides(params_file, overrides, policy) if overrides else []
    try:
        yield applied
    except BaseException:
        if applied:
            replace_atomically(params_file, original)
        raise


def apply_overrides(params_file: Path, overrides: Mapping[str, Any], policy: SourcePolicy | None = None) -> list[str]:
    """Write `group.key: value` overrides into params.yaml, keeping its comments and order.

    Like `dvc exp run --set-param`, the change lands in params.yaml, so DVC records it in dvc.lock
    and a rerun with the same file reproduces the run. Unknown groups or keys are refused, and the
    whole resulting file must pass `check_params` before anything is written; it then replaces
    params.yaml atomically, so a rejected (or interrupted) override leaves the file byte for byte
    as it was, and no stage ever runs on a value that was refused. With a `policy` (a deployment
    run's), the document about to be written must also pass `check_run_parameters`: judged on the
    file as it is when the run holds the workspace lock, not as it was when the run was requested.
    Values are listed with URL credentials and queries redacted.
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
        applied.append(f"{dotted}={shown_value(value)}")
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    text = buffer.getvalue()
    if policy is not None:
        written = safe_yaml(text)
        check_run_parameters(
            written if isinstance(written, Mapping) else {}, overrides, params_file.resolve().parent, policy
        )
    try:
        check_params(safe_yaml(text), str(params_file), params_file.resolve().parent)
    except ConfigError as error:
        raise ConfigError(f"{error}\nOverrides refused ({', '.join(applied)}): {params_file} is unchanged.") from None
    replace_atomically(params_file, text)
    return applied


def shown_value(value: Any) -> Any:
    """An override's value as logged: a string with the credentials and query of a URL redacted."""
    if not isinstance(value, str):
        return value
    try:
        return redacted_url(value)
    except ValueError:  # not parsable as a URL: may still hold one
        return "***"


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


def replace_atomically(path: Path, content: str | bytes) -> None:
    """Write `content` (text as UTF-8, or bytes as they are) to a temporary file beside `path`, then
    rename it over `path` (keeping its mode), so readers see the old file or the new one, never a partial write."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below; the name must outlive it for the rename
        "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    temporary = Path(handle.name)
    try:
        with handle:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
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


@contextmanager
def dvc_repository(root: Path, stage: str) -> Iterator[Any]:
    """The DVC repository at `root`, its lock held (as `dvc repro` holds it while a stage runs), with
    `root` as the working directory (DVC resolves stage names and dependencies from it). DVC's errors
    (no repository, a lock held by another DVC command) become one StageFailedError naming `stage`."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo, lock_repo

    try:
        with contextlib.chdir(root), Repo(str(root)) as repository, lock_repo(repository):
            yield repository
    except DvcException as error:
        raise StageFailedError(f"stage '{stage}': DVC cannot work in {root}: {error}") from error


def stage_is_stale(repository: Any, stage: str) -> bool:
    """Whether DVC would rerun `stage` alone (`dvc status <stage>`): its deps, params, command or
    outputs differ from what dvc.lock records, or it never ran."""
    from dvc.exceptions import DvcException

    try:
        return bool(repository.status(targets=[stage], with_deps=False))
    except DvcException as error:
        raise StageFailedError(f"stage '{stage}': DVC cannot tell whether it is up to date: {error}") from error


def commit_stage(repository: Any, stage: str) -> None:
    """Record `stage` as it just ran in dvc.lock (`dvc commit --force <stage>`), its outputs in DVC's
    cache, as `dvc repro` does after running a stage's command."""
    from dvc.exceptions import DvcException

    try:
        repository.commit(stage, force=True)
    except DvcException as error:
        raise StageFailedError(f"stage '{stage}' ran, but DVC could not record it in dvc.lock: {error}") from error


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
