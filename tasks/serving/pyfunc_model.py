"""The MLflow "model from code" file of the packaged signature model.

MLflow runs this file when it loads the model (`mlflow.pyfunc.load_model`, `mlflow models serve`),
so defining the model here, rather than pickling an object, keeps the package readable and
independent of pickle versions. It is the one module of the project meant to do work on import.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
from mlflow.pyfunc import PythonModel, PythonModelContext

from tasks.serving.answers import answers_frame
from tasks.serving.inference import (
    ACCEPT_PATHS,
    ARTIFACT_CALIBRATION,
    ARTIFACT_CLASSIFIER,
    ARTIFACT_PREPROCESS,
    ARTIFACT_VERIFIER,
    SignatureClassifier,
)
from tasks.serving.model_files import packaged_model_errors, verify_packaged_files
from tasks.serving.model_input import items_from
from tasks.workspace.errors import ModelInputError

LOGGER = logging.getLogger(__name__)
UNEXPECTED_ERROR_MESSAGE = "the model failed on this request (an internal error); the server's log has the details"


class SignaturePyfunc(PythonModel):
    """`predict` takes base64 images (and image paths when loaded with model_config
    {"accept_paths": True}) and returns one answer row per image."""

    def load_context(self, context: PythonModelContext) -> None:
        # Off unless the loader asks (the CLI and the Python API do; `mlflow models serve` does not).
        self.accept_paths = (context.model_config or {}).get(ACCEPT_PATHS) is True
        # Every file is checked against its recorded digest first: a damaged one raises
        # CorruptModelError, one line naming the model and the file.
        with packaged_model_errors(context.artifacts):
            verify_packaged_files(context.artifacts)
            self.model = SignatureClassifier.from_files(
                Path(context.artifacts[ARTIFACT_CLASSIFIER]),
                Path(context.artifacts[ARTIFACT_VERIFIER]),
                Path(context.artifacts[ARTIFACT_CALIBRATION]),
                Path(context.artifacts[ARTIFACT_PREPROCESS]),
            )

    # The DataFrame hint is one MLflow accepts without deriving a signature or validating against it
    # (the logged signature stays the one `packaging.log_packaged_model` writes); without any hint
    # MLflow warns, at every load, that hints are missing.
    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        try:
            items = items_from(model_input, self.accept_paths, self.model.settings.max_image_bytes)
        except ModelInputError as error:
            # MLflow answers an MlflowException with a 400 carrying only this message; any other
            # exception would reach the client with the server's stack trace.
            raise MlflowException.invalid_parameter_value(str(error)) from error
        try:
            return answers_frame(self.model.answers(items))
        except Exception as error:
            # Bad images are answered row by row; what lands here is a fault of the server or a bug.
            # Its trace goes to the server's log, never to the client (a 500 with one line).
            LOGGER.exception("predict failed")
            raise MlflowException(UNEXPECTED_ERROR_MESSAGE, error_code=INTERNAL_ERROR) from error


mlflow.models.set_model(SignaturePyfunc())
