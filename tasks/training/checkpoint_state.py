"""A training run's progress, saved after every epoch with the variables it describes (`tasks.training.checkpoints`
writes both): read without Keras, so the light stages and the CLI can ask whether a run can resume."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.workspace.files import UNREADABLE_NPZ_ERRORS

STATE_ENTRY = "state"
ARRAY_PREFIX = "arr_"
SEED_STATE_NAME = "seed_generator_state"
CHECKPOINT_SUFFIX = ".npz"
LAST_STATE_FILE = f"last{CHECKPOINT_SUFFIX}"
BEST_PREFIX = "best-"


@dataclass
class TrainState:
    """Progress of a training run, saved after every epoch so a killed run can resume."""

    fingerprint: str
    run_id: str | None = None
    completed_epochs: int = 0
    best_epoch: int = -1
    best_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: dict[str, list[float]] = field(default_factory=dict)


def read_resumable_state(checkpoint_dir: Path, fingerprint: str) -> TrainState | None:
    """The saved state of an unfinished run with this fingerprint (None when there is none, or
    its checkpoint is unreadable). The state lives in the same file as the variables it
    describes, so the two can never disagree after a kill."""
    try:
        with np.load(checkpoint_dir / LAST_STATE_FILE) as arrays:
            state = TrainState(**json.loads(str(arrays[STATE_ENTRY])))
    except (*UNREADABLE_NPZ_ERRORS, TypeError):
        return None
    return state if state.fingerprint == fingerprint else None
