"""The rows a model server answers become the same Answer objects an in-process model gives."""

from __future__ import annotations

import json
import math

from tasks.scoring.remote_scoring import answer_from_row, encoded_image, server_message
from tasks.serving.answers import Answer, answers_frame
from tasks.serving.model_input import InputItem


def served_rows(answers: list[Answer]) -> list[dict[str, object]]:
    """What MLflow's scoring server sends for these answers: the pyfunc's frame as JSON records
    (strict JSON: the number columns of error rows hold null)."""
    return json.loads(answers_frame(answers).to_json(orient="records"))


def test_answers_survive_the_trip_through_the_server_json() -> None:
    answers = [
        Answer(
            "image[0]",
            "003",
            2,
            0.91,
            0.7,
            [("003", 0.91), ("001", 0.05)],
            claimed_writer="003",
            claim_score=0.7,
            claim_accepted=True,
        ),
        Answer.failed("image[1]", "image[1]: not a PNG, JPEG or TIFF"),
    ]
    rows = served_rows(answers)
    back = [answer_from_row(row, name) for row, name in zip(rows, ("scan.png", "broken.png"), strict=True)]
    assert back[0].input == "scan.png" and back[1].input == "broken.png"  # shown under the client's own names
    assert (back[0].writer, back[0].class_id, back[0].top_k) == ("003", 2, [("003", 0.91), ("001", 0.05)])
    assert back[0].confidence == 0.91 and back[0].claim_accepted is True and back[0].claimed_writer == "003"
    assert back[1].error == answers[1].error and back[1].class_id == -1 and back[1].top_k == []
    assert math.isnan(back[1].confidence) and math.isnan(back[1].claim_score) and back[1].claim_accepted is None


def test_encoded_image_reads_files_and_passes_bytes(tmp_path) -> None:
    scan = tmp_path / "scan.png"
    scan.write_bytes(b"\x89PNG bytes")
    assert encoded_image(InputItem(str(scan), scan)) == "iVBORyBieXRlcw=="
    assert encoded_image(InputItem("image[0]", b"\x89PNG bytes")) == "iVBORyBieXRlcw=="


def test_server_messages_are_one_short_line() -> None:
    body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": "send an 'image'\ncolumn"})
    assert server_message(body) == "send an 'image' column"
    assert server_message("<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert len(server_message("x" * 5000)) == 300
