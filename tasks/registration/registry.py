"""Registering the model: the champion decision, and the versions a register run creates or cleans up.

A new version becomes `champion` only when it beats the current champion on `register.metric`
(ties broken by the lower `selection_eer_skilled`), both measured on the same selection data:
the validation genuine images and the calibration split's forgeries, never test (`tasks.evaluation.evaluate`
`selection_metrics`). Test numbers are tagged on the version for reporting only. A missing or
NaN metric never wins; the champion alias is never removed, only moved to a better model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tasks.workspace.params_model import SELECTION_METRIC_PREFIX

CHAMPION = "champion"
CHALLENGER = "challenger"
SELECTION_PREFIX = SELECTION_METRIC_PREFIX
TIE_BREAK_METRIC = "selection_eer_skilled"
LOWER_IS_BETTER_NAMES = ("eer_", "far_", "frr", "expected_calibration_error")
SELECTION_SPLITS = ("val", "calibration")
TAG_SELECTION_MANIFEST = "selection_manifest"
TAG_TEST_MANIFEST = "test_manifest"
TAG_METRIC_PREFIX = "metric."
TAG_PARAM_PREFIX = "param."
# A version carries this tag from its creation until its alias is set: one that keeps it after its
# registering process is gone was cut short (a server lost, a kill) and is removed by the next run.
TAG_REGISTRATION = "sigpipe.registration"
PENDING = "pending"
RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"  # MLflow's error code for a missing version or tag


@dataclass(frozen=True)
class Decision:
    """Which alias the new version got, why, and the numbers compared."""

    alias: str
    reason: str
    metric: str
    new_value: float | None
    champion_version: str | None
    champion_value: float | None


def digest_of_rows(rows: Sequence[dict[str, str]], splits: Sequence[str]) -> str:
    """Identity of the images of `splits`: SHA-256 of their sorted (path, image hash, split, kind)."""
    chosen = sorted(
        (row["path"], row["source_sha256"], row["split"], row["kind"]) for row in rows if row["split"] in splits
    )
    return hashlib.sha256(json.dumps(chosen).encode()).hexdigest()


def lower_is_better(metric: str) -> bool:
    """Error rates (EER, FAR, FRR, calibration error) are better low; everything else high."""
    return metric.removeprefix(SELECTION_PREFIX).startswith(LOWER_IS_BETTER_NAMES)


def check_selection_metric(metric: str) -> None:
    """Refuse a promotion metric measured on test: choosing by test numbers tunes to the test split."""
    if not metric.startswith(SELECTION_PREFIX):
        raise ValueError(
            f"register.metric '{metric}' is not a selection metric: versions are compared on validation and "
            f"calibration data, never on test. Use one of the '{SELECTION_PREFIX}*' keys of "
            f"metrics/evaluate_details.json (e.g. {SELECTION_PREFIX}accuracy or {TIE_BREAK_METRIC})"
        )


def as_number(value: object) -> float | None:
    """A finite float, or None (missing, null or NaN metrics cannot win)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def compare(new: dict[str, Any], old: dict[str, Any], metric: str) -> int:
    """1 if `new` is better than `old` on `metric` (then the tie-break), -1 if not, 0 if equal.

    A missing or NaN value never wins: `new` lacking one loses, `old` lacking one (and `new` not)
    loses to it.
    """
    for name in dict.fromkeys((metric, TIE_BREAK_METRIC)):
        new_value, old_value = as_number(new.get(name)), as_number(old.get(name))
        if new_value is None:
            return -1
        if old_value is None:
            return 1
        if new_value == old_value:
            continue
        better = new_value < old_value if lower_is_better(name) else new_value > old_value
        return 1 if better else -1
    return 0


def decide(new_metrics: dict[str, Any], new_manifest: str, champion: dict[str, Any] | None, metric: str) -> Decision:
    """The alias for a new version, given the current champion's metrics and selection manifest (tags)."""
    new_value = as_number(new_metrics.get(metric))
    if champion is None:
        return Decision(CHAMPION, "no champion yet", metric, new_value, None, None)
    champion_value = as_number(champion["metrics"].get(metric))
    if champion["selection_manifest"] != new_manifest:
        reason = "the champion was measured on other selection data, so the two cannot be compared; it stays"
        return Decision(CHALLENGER, reason, metric, new_value, champion["version"], champion_value)
    verdict = compare(new_metrics, champion["metrics"], metric)
    if verdict > 0:
        reason = f"better than version {champion['version']} on {metric} (tie-break: lower {TIE_BREAK_METRIC})"
        return Decision(CHAMPION, reason, metric, new_value, champion["version"], champion_value)
    reason = f"not better than champion version {champion['version']} on {metric}; the champion stays"
    return Decision(CHALLENGER, reason, metric, new_value, champion["version"], champion_value)


def version_metrics(tags: dict[str, str]) -> dict[str, float | None]:
    """Metrics stored as `metric.<name>` tags on a model version."""
    return {
        name[len(TAG_METRIC_PREFIX) :]: as_number(value)
        for name, value in tags.items()
        if name.startswith(TAG_METRIC_PREFIX)
    }


def pending_tags() -> dict[str, str]:
    """Tags of a version being registered: pending, and the registering process (`process_tags`)."""
    from tasks.tracking.runs import process_tags

    return {TAG_REGISTRATION: PENDING, **process_tags()}


def gone_already(error: Exception) -> bool:
    """Whether an MLflow error says the version or tag it was about no longer exists (another
    register run removed it first)."""
    return getattr(error, "error_code", "") == RESOURCE_DOES_NOT_EXIST


def mark_registered(client: Any, model_name: str, version: str) -> None:
    """A version's registration is complete (its alias is set): drop its pending tag."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_model_version_tag(model_name, version, TAG_REGISTRATION)
    except MlflowException as error:
        if not gone_already(error):
            raise


def remove_abandoned_versions(client: Any, model_name: str) -> list[str]:
    """Finish the registrations that were cut short: a pending version that holds an alias (of any
    host) was complete and only loses its pending tag; one without an alias whose registering
    process (on this host) is gone is deleted. A version another live process, or another host, is
    registering right now is left alone. Returns the versions deleted."""
    from mlflow.exceptions import MlflowException

    from tasks.tracking.runs import owner_is_gone

    deleted = []
    for version in client.search_model_versions(f"name = '{model_name}'"):
        if version.tags.get(TAG_REGISTRATION) != PENDING:
            continue
        # Search results leave a version's aliases out: they are read from the version itself.
        if client.get_model_version(model_name, version.version).aliases:
            mark_registered(client, model_name, version.version)
            continue
        if not owner_is_gone(version.tags):
            continue
        try:
            client.delete_model_version(model_name, version.version)
        except MlflowException as error:
            if not gone_already(error):
                raise
            continue
        deleted.append(str(version.version))
        print(f"{model_name} version {version.version} was left half-registered by a process that is gone: deleted")
    return deleted


@contextmanager
def version_removed_on_failure(client: Any, model_name: str, version: str) -> Iterator[None]:
    """Around the steps that complete a new model version (alias, description): if one fails, delete
    the version, so that no half-registered version (without its alias) is left in the registry.

    When the tracking server is what failed, or the deletion fails too, the first error is the one
    raised (no second round of MLflow's minutes of retries); the version keeps its pending tag, so
    the next register run on this host deletes it (`remove_abandoned_versions`).
    """
    from mlflow.exceptions import MlflowException

    from tasks.tracking.server import lost_server_reason

    try:
        yield
    except BaseException as error:
        later = f"{model_name} version {version} is left pending: the next register run on this host deletes it"
        if lost_server_reason(error) is not None:
            error.add_note(later)
            raise
        try:
            client.delete_model_version(model_name, version)
        except MlflowException as cleanup_error:
            error.add_note(f"{model_name} version {version} could not be deleted ({cleanup_error}): {later}")
        raise


def current_champion(client: Any, model_name: str) -> dict[str, Any] | None:
    """The champion version's number, metrics and selection manifest, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    return {
        "version": str(version.version),
        "metrics": version_metrics(version.tags),
        "selection_manifest": version.tags.get(TAG_SELECTION_MANIFEST),
    }
