"""The classifier's logits for every image the evaluation and calibration use, on disk.

The `evaluate` stage runs the classifier once over the validation, test and calibration images
and stores the logits with each row's split, kind and claimed writer; `evaluate` and
`calibrate` then work on this table only, so calibration never reruns the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

NO_CLASS = -1
IMPOSTOR_KINDS = ("skilled", "simple", "opposite")


@dataclass(frozen=True)
class ScoreTable:
    """Logits (rows x classes) and, per row, its split, kind and the class of its writer."""

    logits: np.ndarray
    claimed: np.ndarray
    kinds: np.ndarray
    splits: np.ndarray
    paths: np.ndarray

    def select(self, split: str, kind: str | None = None) -> ScoreTable:
        """The rows of one split (and kind) whose writer is a class of the classifier."""
        mask = (self.splits == split) & (self.claimed != NO_CLASS)
        if kind is not None:
            mask &= self.kinds == kind
        return ScoreTable(self.logits[mask], self.claimed[mask], self.kinds[mask], self.splits[mask], self.paths[mask])

    def __len__(self) -> int:
        return len(self.claimed)


def save_scores(table: ScoreTable, path: Path) -> None:
    """Write the table as an uncompressed .npz (plain arrays, no pickled objects)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        logits=table.logits.astype(np.float32),
        claimed=table.claimed.astype(np.int64),
        kinds=table.kinds.astype(str),
        splits=table.splits.astype(str),
        paths=table.paths.astype(str),
    )


def load_scores(path: Path) -> ScoreTable:
    """Read a table written by `save_scores`."""
    with np.load(path, allow_pickle=False) as arrays:
        return ScoreTable(arrays["logits"], arrays["claimed"], arrays["kinds"], arrays["splits"], arrays["paths"])


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, computed stably in float64."""
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def claimed_scores(probabilities: np.ndarray, claimed: np.ndarray) -> np.ndarray:
    """Each row's probability for its claimed writer (the verification score)."""
    return probabilities[np.arange(len(claimed)), claimed]


def random_forgery_scores(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Scores of every genuine image claimed as every *other* writer (random forgeries)."""
    others = np.ones_like(probabilities, dtype=bool)
    others[np.arange(len(labels)), labels] = False
    return probabilities[others]


def verification_scores(table: ScoreTable, split: str, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """Genuine and impostor scores of one split: genuine, skilled, simple, opposite, random."""
    genuine = table.select(split, "genuine")
    genuine_probabilities = softmax(genuine.logits, temperature)
    scores = {
        "genuine": claimed_scores(genuine_probabilities, genuine.claimed),
        "random": random_forgery_scores(genuine_probabilities, genuine.claimed),
    }
    for kind in IMPOSTOR_KINDS:
        rows = table.select(split, kind)
        scores[kind] = claimed_scores(softmax(rows.logits, temperature), rows.claimed) if len(rows) else np.zeros(0)
    return scores
