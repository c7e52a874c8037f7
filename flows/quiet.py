"""Keeping a `sigpipe` command's terminal to what the command has to say.

TensorFlow, its C++ runtime (through absl), gRPC and MLflow write notices, deprecation warnings
and log lines that say nothing to a user of the command. Their C++ loggers read their level from
the environment once, when their shared library loads, so the environment is set here before any
of them is imported (`sigpipe` imports them inside its commands); their Python warnings and
loggers are filtered by the library that raises them, so warnings of the project's own code
(a training setting that costs reproducibility) still show. `sigpipe --verbose` skips all of it.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

# The C++ loggers' levels, read when each library loads: TF_CPP_MIN_LOG_LEVEL 3 keeps TensorFlow's
# (and XLA's, absl's) to fatal errors, GRPC_VERBOSITY gRPC's to errors.
QUIET_LIBRARY_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",
}
# Python packages whose warnings and log records below ERROR are not shown.
QUIET_PACKAGES = ("absl", "keras", "mlflow", "tensorflow")
QUIET_LOG_LEVEL = logging.ERROR


def quiet_libraries() -> None:
    """Keep the libraries' notices, warnings and log lines below errors off the terminal."""
    os.environ.update(QUIET_LIBRARY_ENVIRONMENT)
    packages = "|".join(map(re.escape, QUIET_PACKAGES))
    warnings.filterwarnings("ignore", module=rf"({packages})(\.|$)")
    for package in QUIET_PACKAGES:
        logging.getLogger(package).setLevel(QUIET_LOG_LEVEL)
