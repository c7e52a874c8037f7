"""What a pipeline run may change: parameter overrides written into params.yaml (as `dvc exp run
--set-param` does) and restored when the run fails, and what a deployment run (a run request to the
Prefect API, which anyone who reaches it can send) may ask for: the workspace's own params.yaml,
overrides of an allow-list of keys, and data sources only where the worker's operator allows them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks.workspace.config import PARAM_GROUPS, check_params, read_params_file, weights_file
from tasks.workspace.errors import ConfigError
from tasks.workspace.files import redacted_url, replace_atomically
from tasks.workspace.paths import PARAMS_FILE_NAME

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
