"""What the packaged model's `predict` lets out when something fails that is not the client's input."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, ErrorCode

from tasks.serving.model_input import InputItem
from tasks.serving.pyfunc_model import UNEXPECTED_ERROR_MESSAGE, SignaturePyfunc


class FailingClassifier:
    """A classifier whose inference fails the way a server fault (memory, a bug) would."""

    class settings:
        max_image_bytes = 1 << 20

    def answers(self, items: Sequence[InputItem]) -> list[object]:
        raise MemoryError("simulated: the server ran out of memory while answering")


def pyfunc_with(model: object) -> SignaturePyfunc:
    pyfunc = SignaturePyfunc()
    pyfunc.model = model
    pyfunc.accept_paths = False
    return pyfunc


def test_an_unexpected_failure_is_a_one_line_internal_error_without_a_trace(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(MlflowException) as raised:
        pyfunc_with(FailingClassifier()).predict(None, pd.DataFrame({"image": ["aGVsbG8="]}))
    error = raised.value
    assert error.error_code == ErrorCode.Name(INTERNAL_ERROR) and error.get_http_status_code() == 500
    assert error.message == UNEXPECTED_ERROR_MESSAGE and "\n" not in error.message
    assert "simulated" not in error.message
    assert "simulated: the server ran out of memory" in caplog.text  # the operator still sees the cause


def test_a_wrong_column_is_a_bad_request() -> None:
    with pytest.raises(MlflowException) as raised:
        pyfunc_with(FailingClassifier()).predict(None, pd.DataFrame({"picture": ["aGVsbG8="]}))
    assert raised.value.get_http_status_code() == 400 and "image" in raised.value.message
