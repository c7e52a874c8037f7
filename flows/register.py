"""Stage `register`: log the classifier `package` built, with its verifier and calibration, as an MLflow
pyfunc, sign it and register it. No model is built or run here (no TensorFlow is imported).

The new version becomes `champion` only if it beats the current champion on `register.metric`,
a selection metric measured on the same validation and calibration data (never on test);
otherwise it becomes `challenger`. Run it with `python -m flows.register`
(what `dvc repro register` does) or `sigpipe register`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from flows._stage import pipeline_stage, run_entry_point, workspace_paths
from tasks.workspace.config import (
    ConfigError,
    PrepareParams,
    RegisterParams,
    TrackingParams,
    parse_group,
    read_params_file,
)
from tasks.workspace.files import write_metrics
from tasks.workspace.paths import ProjectPaths

# What `dvc metrics show` lists from metrics/register.json; the decision is in metrics/register_details.json.
HEADLINE_METRICS = ("version", "alias")
# Left out of the files DVC records in dvc.lock: the logged model's id differs on every run (it is
# the version's source in the registry, and in the run's register.json artifact).
RUN_SPECIFIC_KEYS = ("model_uri",)

VERSION_TAG_METRICS = (
    "selection_accuracy",
    "selection_eer_skilled",
    "accuracy",
    "f1_weighted",
    "f1_macro",
    "top5_accuracy",
    "eer_skilled_a_posteriori",
    "eer_skilled_per_writer_a_posteriori",
    "auc_skilled",
)
CALIBRATION_TAG_METRICS = (
    "threshold",
    "frr",
    "far_skilled",
    "far_random",
    "unenrolled_accepted",
    "expected_calibration_error",
    "partitions_far_skilled_mean",
)


@dataclass(frozen=True)
class RegisterConfig:
    register: RegisterParams
    prepare: PrepareParams
    tracking: TrackingParams


PARAM_TAG_GROUPS = ("data", "prepare", "model", "augment", "train", "calibrate")


def trained_with(params: Mapping[str, object]) -> dict[str, Mapping[str, object]]:
    """The parameter groups that produced the model, for the version's tags."""
    return {group: values for group in PARAM_TAG_GROUPS if isinstance(values := params.get(group), dict)}


def register_task(paths: ProjectPaths, config: RegisterConfig) -> dict[str, object]:
    """Log the pyfunc, register a version, tag it with its numbers, and move the right alias."""
    import mlflow

    from tasks.data.manifest import read_manifest
    from tasks.data.prepare import settings_from_params
    from tasks.registration.model_store import record_alias, sign_version, workspace_keys
    from tasks.registration.packaging import check_package_record, log_packaged_model_with_digests
    from tasks.registration.registry import (
        SELECTION_SPLITS,
        TAG_SELECTION_MANIFEST,
        TAG_TEST_MANIFEST,
        check_selection_metric,
        current_champion,
        decide,
        digest_of_rows,
        mark_registered,
        pending_tags,
        remove_abandoned_versions,
        version_removed_on_failure,
    )
    from tasks.registration.signing import ensure_signing_key
    from tasks.tracking.runs import (
        data_label,
        data_version,
        end_abandoned_runs,
        ensure_experiment,
        flatten_params,
        parent_run_id,
        process_tags,
        run_name,
    )

    rows = read_manifest(paths.manifest_file)
    params = read_params_file(paths.params_file)
    evaluation = json.loads(paths.evaluate_details_file.read_text())
    calibration = json.loads(paths.calibrate_details_file.read_text())
    try:
        check_selection_metric(config.register.metric)
    except ValueError as error:
        raise ConfigError(f"{paths.params_file}: {error}") from None
    if config.register.metric not in evaluation:
        raise ConfigError(
            f"register.metric '{config.register.metric}' is not a key of {paths.evaluate_details_file}: "
            "rerun the evaluate stage (`dvc repro evaluate`) or pick one of its selection_* keys"
        )
    manifest = digest_of_rows(rows, SELECTION_SPLITS)
    keys = workspace_keys(paths)
    ensure_signing_key(keys)  # an unreadable key fails here, before anything is logged
    check_package_record(paths)  # the classifier package checked, for the calibration's writers
    name = config.register.model_name
    experiment_id = ensure_experiment(paths, config.tracking.experiment)
    end_abandoned_runs(experiment_id)
    client = mlflow.tracking.MlflowClient()
    train_run = parent_run_id(paths.train_run_file)
    data = data_label(data_version(paths.manifest_file))
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name("register", name, data),
        parent_run_id=train_run,
        tags=process_tags(),
    ) as run:
        settings = replace(
            settings_from_params(config.prepare),
            max_pixels=config.register.max_image_pixels,
            max_image_bytes=config.register.max_image_bytes,
        )
        model_uri, logged = log_packaged_model_with_digests(paths, settings, config.register.top_k)
        tags = {
            TAG_SELECTION_MANIFEST: manifest,
            TAG_TEST_MANIFEST: digest_of_rows(rows, ("test",)),
            "data_version": data_version(paths.manifest_file),
            "train_run_id": train_run or "",
            # The version's writers: what `sigpipe remove` finds the versions that know a writer by.
            "sigpipe.writers": ",".join(json.loads(paths.calibration_file.read_text())["classes"]),
            **{f"metric.{key}": str(evaluation.get(key)) for key in VERSION_TAG_METRICS},
            **{f"metric.{key}": str(calibration.get(key)) for key in CALIBRATION_TAG_METRICS},
            **{f"param.{key}": value for key, value in flatten_params(trained_with(params)).items()},
        }
        remove_abandoned_versions(client, name)
        champion = current_champion(client, name)
        # Pending until its alias is set: a version cut short (a lost server) is deleted by the next run.
        version = mlflow.register_model(model_uri, name, tags={**tags, **pending_tags()})
        # The alias moves last: a failure before it deletes the new version and leaves the aliases as they were.
        with version_removed_on_failure(client, name, version.version):
            # Signed before any alias names it: clients load only versions register signed
            # (tasks/registration/signing.py).
            sign_version(client, name, str(version.version), keys, logged)
            decision = decide(evaluation, manifest, champion, config.register.metric)
            client.update_model_version(
                name,
                version.version,
                description=(
                    f"{decision.alias}: {decision.reason}. {config.register.metric} = {decision.new_value} "
                    f"(test accuracy {evaluation.get('accuracy')}, skilled EER a posteriori "
                    f"{evaluation.get('eer_skilled_a_posteriori')}); calibrated threshold "
                    f"{calibration.get('threshold')} (test FRR {calibration.get('frr')}, "
                    f"skilled FAR {calibration.get('far_skilled')})."
                ),
            )
            client.set_registered_model_alias(name, decision.alias, version.version)
            # Clients trust an alias only as register set it (a move by hand skips the "only if better" rule).
            record_alias(client, name, decision.alias, str(version.version), keys)
        mark_registered(client, name, version.version)
        result = {
            "model_name": name,
            "version": str(version.version),
            "model_uri": model_uri,
            "load_uri": f"models:/{name}@{decision.alias}",
            **asdict(decision),
        }
        mlflow.set_tag("stage", "register")
        # Renamed once the outcome is known: "register · utsig-inceptionv3 v3 · champion · data 3f2a1c".
        client.update_run(
            run.info.run_id, name=run_name("register", f"{name} v{version.version}", decision.alias, data)
        )
        mlflow.log_dict(result, "register.json")
    recorded = {key: value for key, value in result.items() if key not in RUN_SPECIFIC_KEYS}
    write_metrics(paths.register_metrics_file, paths.register_details_file, recorded, HEADLINE_METRICS)
    print(f"registered {name} version {version.version} as {decision.alias}: {decision.reason}")
    return result


@pipeline_stage("register")
def register_flow(params_file: str) -> dict[str, object]:
    """Read the `register`, `prepare` and `tracking` parameters; register the classifier `package` wrote."""
    paths = workspace_paths(params_file)
    params = read_params_file(paths.params_file)
    config = RegisterConfig(
        register=parse_group(params, "register", RegisterParams, params_file),
        prepare=parse_group(params, "prepare", PrepareParams, params_file),
        tracking=parse_group(params, "tracking", TrackingParams, params_file),
    )
    return register_task(paths, config)


def main() -> None:
    """Entry point of `python -m flows.register`."""
    run_entry_point(register_flow)


if __name__ == "__main__":
    main()
