"""A training run's per-epoch metrics in MLflow: logged by a Keras callback as each epoch ends, resent
when a tracking server's answer is cut, and the epochs a resumed run lacks logged from its checkpoint.
Only the train stage's Keras heads (`linear`, `mlp`) and its online mode log epochs; nothing here runs
at import time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tasks.tracking.server import response_was_cut

CUT_RESPONSE_ATTEMPTS = 3  # an epoch's metrics are sent at most this often when the server's answer is cut


def log_batch_resent_when_cut(client, run_id: str, metrics: Sequence) -> None:  # MlflowClient, Metric
    """`client.log_batch(run_id, metrics=metrics)`, sent again (the same metrics, timestamps included) when
    the server's answer was cut off (`response_was_cut`: it died while answering, as a restart does). The
    resend is idempotent: a SQL store keeps one point per (key, value, timestamp, step), so a batch the
    server had stored before dying is not stored twice. Any other failure, and the last cut, is raised."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt

    resends = Retrying(
        retry=retry_if_exception(response_was_cut), stop=stop_after_attempt(CUT_RESPONSE_ATTEMPTS), reraise=True
    )
    for attempt in resends:
        with attempt:
            client.log_batch(run_id, metrics=metrics)


def epoch_logger():  # -> keras.callbacks.Callback
    """A Keras callback that logs every epoch's metrics to the active MLflow run, step = epoch (one
    batch per epoch, resent when the tracking server's answer is cut: `log_batch_resent_when_cut`)."""
    import time

    import keras
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()  # the tracking URI the run was started with

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            run = mlflow.active_run()
            if run is None:
                raise RuntimeError("the epoch logger logs to the active MLflow run: start one around fit()")
            timestamp = int(time.time() * 1000)
            metrics = [Metric(name, float(value), timestamp, epoch) for name, value in (logs or {}).items()]
            log_batch_resent_when_cut(client, run.info.run_id, metrics)

    return MlflowEpochLogger()


def log_missing_epochs(run_id: str, history: Mapping[str, Sequence[float]]) -> list[int]:
    """For a resumed run: log the checkpointed epochs whose metrics the run lacks, and return them.

    A run cut while logging an epoch (a lost tracking server, a kill between the checkpoint and the
    logging callback) has that epoch in its checkpoint's history but not in the tracking store.
    Which epochs the run has is read from its first metric's history.
    """
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    if not history:
        return []
    client = MlflowClient()
    logged = {metric.step for metric in client.get_metric_history(run_id, next(iter(history)))}
    epochs = max(len(values) for values in history.values())
    missing = [epoch for epoch in range(epochs) if epoch not in logged]
    timestamp = int(time.time() * 1000)
    metrics = [
        Metric(name, float(values[epoch]), timestamp, epoch)
        for epoch in missing
        for name, values in history.items()
        if epoch < len(values)
    ]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    return missing
