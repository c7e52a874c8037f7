"""The classifier's outputs for every image the evaluation and calibration use, on disk.

The `evaluate` stage runs the classifier once over the validation, test and calibration images
and stores, per image, the identification logits, the writer-dependent verifier's score for
every writer, the base embedding, and the row's split, kind and claimed writer; `evaluate` and
`calibrate` then work on this table only, so calibration never reruns the network.

Two verification scores of the claim "W signed this" can be read from the table: the verifier's
decision value for W (`VERIFIER`, what the pipeline verifies with) and the classifier's softmax
probability of W (`SOFTMAX`, the baseline it is compared with).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

NO_CLASS = -1
IMPOSTOR_KINDS = ("skilled", "simple", "opposite")
VERIFIER = "verifier"
SOFTMAX = "softmax"
UNENROLLED_SPLIT = "unenrolled"  # never-enrolled writers' genuine signatures (`tasks.data.split`): the open set
CALIBRATION_IMPOSTOR_KIND = "skilled"  # the field's verification protocol: skilled forgeries


TABLE_ARRAYS = ("logits", "verification", "embeddings", "claimed", "kinds", "splits", "paths")


@dataclass(frozen=True)
class ScoreTable:
    """Per row: logits and verifier scores (rows x classes), embedding, split, kind, writer's class."""

    logits: np.ndarray
    verification: np.ndarray
    embeddings: np.ndarray
    claimed: np.ndarray
    kinds: np.ndarray
    splits: np.ndarray
    paths: np.ndarray

    def rows(self, mask: np.ndarray) -> ScoreTable:
        """The rows where `mask` holds, every array filtered alike."""
        return ScoreTable(*(getattr(self, name)[mask] for name in TABLE_ARRAYS))

    def select(self, split: str, kind: str | None = None) -> ScoreTable:
        """The rows of one split (and kind) whose writer is a class of the classifier."""
        mask = (self.splits == split) & (self.claimed != NO_CLASS)
        if kind is not None:
            mask &= self.kinds == kind
        return self.rows(mask)

    def claim_scores(self, source: str, temperature: float = 1.0) -> np.ndarray:
        """(rows, classes) scores of the claim "class c signed row i": the verifier's or the softmax's."""
        return self.verification.astype(np.float64) if source == VERIFIER else softmax(self.logits, temperature)

    def __len__(self) -> int:
        return len(self.claimed)


def save_scores(table: ScoreTable, path: Path) -> None:
    """Write the table as an uncompressed .npz (plain arrays, no pickled objects)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        logits=table.logits.astype(np.float32),
        verification=table.verification.astype(np.float64),  # thresholds are fitted on these values
        embeddings=table.embeddings.astype(np.float32),
        claimed=table.claimed.astype(np.int64),
        kinds=table.kinds.astype(str),
        splits=table.splits.astype(str),
        paths=table.paths.astype(str),
    )


def load_scores(path: Path) -> ScoreTable:
    """Read a table written by `save_scores`."""
    with np.load(path, allow_pickle=False) as arrays:
        return ScoreTable(*(arrays[name] for name in TABLE_ARRAYS))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, computed stably in float64."""
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def claim_probability(scores: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """The calibrated probability of a claim from the verifier's score of it (Platt scaling):
    1 / (1 + exp(-(slope * score + intercept))), computed without overflow."""
    logit = slope * np.asarray(scores, dtype=np.float64) + intercept
    return np.exp(-np.logaddexp(0.0, -logit))


def claimed_scores(scores: np.ndarray, claimed: np.ndarray) -> np.ndarray:
    """Each row's score for its claimed writer (the verification score)."""
    return scores[np.arange(len(claimed)), claimed]


def random_forgery_scores(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Scores of every genuine image claimed as every *other* writer (random forgeries)."""
    others = np.ones_like(scores, dtype=bool)
    others[np.arange(len(labels)), labels] = False
    return scores[others]


def verification_scores(
    table: ScoreTable, split: str, source: str = VERIFIER, temperature: float = 1.0
) -> dict[str, np.ndarray]:
    """Genuine and impostor claim scores of one split: genuine, skilled, simple, opposite, random."""
    genuine = table.select(split, "genuine")
    genuine_scores = genuine.claim_scores(source, temperature)
    scores = {
        "genuine": claimed_scores(genuine_scores, genuine.claimed),
        "random": random_forgery_scores(genuine_scores, genuine.claimed),
    }
    for kind in IMPOSTOR_KINDS:
        rows = table.select(split, kind)
        scores[kind] = (
            claimed_scores(rows.claim_scores(source, temperature), rows.claimed) if len(rows) else np.zeros(0)
        )
    return scores


def calibration_impostors(table: ScoreTable) -> ScoreTable:
    """The `calibration` split's skilled forgeries, or all its rows when it has none: the impostors
    that thresholds are fitted on and versions are compared on, writer-disjoint from test's."""
    unknown = table.select("calibration")
    skilled = unknown.kinds == CALIBRATION_IMPOSTOR_KIND
    if not skilled.any():
        return unknown
    return unknown.rows(skilled)


def selection_claims(table: ScoreTable, source: str = VERIFIER) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) claim scores that never touch test: validation genuine images claimed
    as their writer, and `calibration_impostors` claimed as the writer they imitate."""
    genuine = table.select("val", "genuine")
    impostors = calibration_impostors(table)
    return (
        claimed_scores(genuine.claim_scores(source), genuine.claimed),
        claimed_scores(impostors.claim_scores(source), impostors.claimed),
    )
