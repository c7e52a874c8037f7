"""Score tables for unit tests, built from the arrays a test cares about."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.evaluation.scores import ScoreTable

EMBEDDING_SIZE = 2  # no test here reads the embeddings


def score_table(
    logits: np.ndarray, verification: np.ndarray, claimed: Sequence[int], kinds: Sequence[str], splits: Sequence[str]
) -> ScoreTable:
    """A ScoreTable of those rows, with placeholder embeddings and paths."""
    rows = len(claimed)
    return ScoreTable(
        logits=logits,
        verification=verification,
        embeddings=np.zeros((rows, EMBEDDING_SIZE), dtype=np.float32),
        claimed=np.asarray(claimed, dtype=np.int64),
        kinds=np.asarray(kinds),
        splits=np.asarray(splits),
        paths=np.array([f"image{index}.png" for index in range(rows)]),
    )
