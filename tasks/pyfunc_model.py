"""The MLflow "model from code" file of the packaged signature model.

MLflow runs this file when it loads the model (`mlflow.pyfunc.load_model`, `mlflow models serve`),
so defining the model here, rather than pickling an object, keeps the package readable and
independent of pickle versions. It is the one module of the project meant to do work on import.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from tasks.inference import (
    ARTIFACT_CALIBRATION,
    ARTIFACT_CLASSIFIER,
    ARTIFACT_PREPROCESS,
    ARTIFACT_VERIFIER,
    SignatureClassifier,
    answers_frame,
    items_from,
)


class SignaturePyfunc(mlflow.pyfunc.PythonModel):
    """`predict` takes image paths or base64 images and returns one answer row per image."""

    # No type hints on these two: MLflow inspects them and warns about hints it cannot validate.
    def load_context(self, context):
        self.model = SignatureClassifier.from_files(
            Path(context.artifacts[ARTIFACT_CLASSIFIER]),
            Path(context.artifacts[ARTIFACT_VERIFIER]),
            Path(context.artifacts[ARTIFACT_CALIBRATION]),
            Path(context.artifacts[ARTIFACT_PREPROCESS]),
        )

    def predict(self, context, model_input, params=None):
        return answers_frame(self.model.answers(items_from(model_input)))


mlflow.models.set_model(SignaturePyfunc())
