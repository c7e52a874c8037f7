"""Keeping a `sigpipe` command's terminal to what the command has to say.

TensorFlow, its C++ runtime (through absl), gRPC and MLflow write notices, deprecation warnings
and log lines that say nothing to a user of the command. Their C++ loggers read their level from
the environment once, when their shared library loads, so the environment is set here before any
of them is imported (`sigpipe` imports them inside its commands); their Python warnings and
loggers are filtered by the library that raises them, so warnings of the project's own code
(a training setting that costs reproducibility) still show. `sigpipe --verbose` skips all of it.

One notice ignores every setting: TensorFlow 2.21's C++ code logs "oneDNN custom operations are
on" through absl while TensorFlow loads, before absl is initialised, which adds absl's "All log
messages before absl::InitializeLog()..." line, once per TensorFlow library (measured: neither
TF_CPP_MIN_LOG_LEVEL=3 nor GRPC_VERBOSITY changes it; TF_ENABLE_ONEDNN_OPTS=0 would, at the cost of
the oneDNN kernels). So, quiet, TensorFlow is imported with the process's stderr (file
descriptor 2) pointed at /dev/null for the import alone; Python errors of the import still
propagate as exceptions.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# The C++ loggers' levels, read when each library loads: TF_CPP_MIN_LOG_LEVEL 3 keeps TensorFlow's
# (and XLA's, absl's) to fatal errors, GRPC_VERBOSITY gRPC's to errors.
# MLflow's own level (it configures its loggers when imported) and its artifact progress bars.
QUIET_LIBRARY_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# Python packages whose warnings and log records below ERROR are not shown.
QUIET_PACKAGES = ("absl", "keras", "mlflow", "tensorflow", "pyspark", "py4j")
QUIET_LOG_LEVEL = logging.ERROR
STDERR_FD = 2
QUIET_STATE = {"on": False}  # set by quiet_libraries: import TensorFlow with its C++ notices silenced
# Spark's own log level (its JVM logs through log4j): errors only when quiet, Spark's default otherwise.
SPARK_QUIET_LOG_LEVEL = "ERROR"
SPARK_DEFAULT_LOG_LEVEL = "WARN"


def quiet_libraries() -> None:
    """Keep the libraries' notices, warnings and log lines below errors off the terminal."""
    os.environ.update(QUIET_LIBRARY_ENVIRONMENT)
    packages = "|".join(map(re.escape, QUIET_PACKAGES))
    warnings.filterwarnings("ignore", module=rf"({packages})(\.|$)")
    for package in QUIET_PACKAGES:
        logging.getLogger(package).setLevel(QUIET_LOG_LEVEL)
    QUIET_STATE["on"] = True


@contextmanager
def stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null inside the block (what C++ code writes to), restored after."""
    sys.stderr.flush()
    saved = os.dup(STDERR_FD)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), STDERR_FD)
        yield
    finally:
        os.dup2(saved, STDERR_FD)
        os.close(saved)


def import_tensorflow() -> None:
    """Import TensorFlow now; after `quiet_libraries`, without the C++ notices it prints while loading."""
    if not QUIET_STATE["on"] or "tensorflow" in sys.modules:
        return
    with stderr_silenced():
        import tensorflow  # noqa: F401


def spark_log_level() -> str:
    """The log level a Spark session of a `sigpipe` command gets: errors only, unless --verbose."""
    return SPARK_QUIET_LOG_LEVEL if QUIET_STATE["on"] else SPARK_DEFAULT_LOG_LEVEL


@contextmanager
def jvm_output_silenced() -> Iterator[None]:
    """After `quiet_libraries`, the block runs with stderr on /dev/null, so a JVM started in it (Spark's
    driver, and the Python workers it starts) writes its start-up notices, log lines and progress
    bars nowhere; its failures still reach this process as exceptions. Without quiet: no change."""
    if not QUIET_STATE["on"]:
        yield
        return
    with stderr_silenced():
        yield
