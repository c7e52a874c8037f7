"""A packaged model's answers: one `Answer` per input, the writer ids a claim may name, and the output table.

An answer is the classifier's top writer when the verifier accepts the claim that this writer
signed, else `unknown` with class id = number of writers (the reference's convention). A claimed
writer is matched to the model's ids as the dataset adapters normalise them (`1` for `001`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.workspace.errors import ModelInputError
from tasks.workspace.writer_ids import normalise_writer_id

UNKNOWN_WRITER = "unknown"
OUTPUT_COLUMNS = (
    "input",
    "writer",
    "class_id",
    "confidence",
    "verification_score",
    "top_k",
    "claimed_writer",
    "claim_score",
    "claim_accepted",
    "error",
)
# No number for an input that could not be read, and no claim result for a row that claims nobody.
NULLABLE_COLUMNS = ("confidence", "verification_score", "claim_score", "claim_accepted")
# An unknown writer's error lists every id the model knows up to this many, else the closest ones.
MAX_LISTED_WRITERS = 20
CLOSEST_WRITERS = 5


@dataclass(frozen=True)
class Answer:
    """The model's answer for one image."""

    input: str
    writer: str
    class_id: int
    confidence: float
    verification_score: float
    top_k: list[tuple[str, float]]
    error: str = ""
    claimed_writer: str = ""  # the model's id of the claimed writer ("" when the input claims nobody)
    claim_score: float = float("nan")  # the verifier's score of that claim
    claim_accepted: bool | None = None  # whether the score reaches the calibrated threshold

    @classmethod
    def failed(cls, name: str, error: str) -> Answer:
        """The answer row of an input that could not be scored: its error, no numbers."""
        return cls(name, "", -1, float("nan"), float("nan"), [], error)

    def as_row(self) -> dict[str, object]:
        """A flat row: `top_k` as a JSON string so every column has a simple type."""
        return {
            "input": self.input,
            "writer": self.writer,
            "class_id": self.class_id,
            "confidence": self.confidence,
            "verification_score": self.verification_score,
            "top_k": json.dumps([[writer, round(probability, 6)] for writer, probability in self.top_k]),
            "claimed_writer": self.claimed_writer,
            "claim_score": self.claim_score,
            "claim_accepted": self.claim_accepted,
            "error": self.error,
        }


def unknown_writer_message(writer: str, classes: Sequence[str], matches: Sequence[str] = ()) -> str:
    """Why `writer` names none of `classes`, with the ids to use instead: the ambiguous `matches`,
    every id when there are few, else the closest ones (difflib), so the fix is on the same line."""
    if matches:
        return f"writer {writer!r} matches several of the model's writers ({', '.join(matches)}): pass one of them"
    if len(classes) <= MAX_LISTED_WRITERS:
        return (
            f"writer {writer!r} is not one the model knows; its {len(classes)} writers are "
            f"{', '.join(classes)}: pass one of them"
        )
    closest = difflib.get_close_matches(normalise_writer_id(writer), classes, n=CLOSEST_WRITERS, cutoff=0.0)
    return (
        f"writer {writer!r} is not one the model knows ({len(classes)} writers); the closest of its ids are "
        f"{', '.join(closest)}: pass one of the model's ids"
    )


def match_writer(writer: str, classes: Sequence[str]) -> str:
    """The model's id of `writer` as the user names it: the id itself, or the one id that the
    dataset adapters' normalisation makes equal (`1`, `01` and `001` are one writer, as the raw
    folder `Genuine/1` becomes the model's `001`). Raises ModelInputError naming the valid ids."""
    if writer in classes:
        return writer
    normalised = normalise_writer_id(writer)
    matches = [name for name in classes if normalise_writer_id(name) == normalised]
    if len(matches) == 1:
        return matches[0]
    raise ModelInputError(unknown_writer_message(writer, classes, matches))


def answers_frame(answers: Sequence[Answer]):  # -> pandas.DataFrame
    """Answers as the pyfunc's output DataFrame. The number columns of error rows hold None, not
    NaN, so the JSON the scoring server writes has `null` there (strict JSON has no NaN)."""
    import pandas as pd

    frame = pd.DataFrame([answer.as_row() for answer in answers], columns=list(OUTPUT_COLUMNS))
    for column in NULLABLE_COLUMNS:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame
