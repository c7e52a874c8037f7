"""The pyfunc's output as the scoring server writes it: strict JSON, `null` where an input had no number."""

from __future__ import annotations

import io
import json
import math

from tasks.serving.answers import Answer, answers_frame


def strict_json(text: str) -> object:
    """Parse as strict JSON: NaN and Infinity are refused, as browsers' and most parsers' are."""

    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def answers() -> list[Answer]:
    return [
        Answer("a.png", "001", 0, 0.75, 1.25, [("001", 0.75), ("002", 0.25)]),
        Answer("absent.png", "", -1, math.nan, math.nan, [], "absent.png: no such file"),
    ]


def test_error_rows_serve_null_not_nan() -> None:
    from mlflow.pyfunc.scoring_server import predictions_to_json

    buffer = io.StringIO()
    predictions_to_json(answers_frame(answers()), buffer)
    rows = strict_json(buffer.getvalue())["predictions"]
    assert rows[0]["confidence"] == 0.75 and rows[0]["verification_score"] == 1.25
    assert rows[1]["confidence"] is None and rows[1]["verification_score"] is None
    assert rows[1]["error"] == "absent.png: no such file" and rows[1]["class_id"] == -1


def test_the_frame_keeps_numbers_as_numbers() -> None:
    frame = answers_frame(answers())
    assert frame.loc[0, "confidence"] == 0.75 and frame.loc[1, "confidence"] is None
    assert frame["class_id"].tolist() == [0, -1]
