"""Resumable training: the state saved after every epoch, the best epoch's weights, and how they
are written (atomically, by a background thread) and read back.

A checkpoint holds only the trainable (head) variables, and for resuming the optimizer's and the
dropout generators' state; the frozen base is rebuilt identically from its weights and the seed.

Kept hand-written rather than Keras' `EarlyStopping` + `ModelCheckpoint` + `BackupAndRestore`:
those save the whole model (the frozen base's 87 MB every epoch), write in the training thread,
and keep early stopping's counters apart from the weights, so a kill between two writes resumes
with a state that disagrees with the weights. Here the state and the variables it describes are
one atomically renamed file, written by a background thread while the next epoch trains.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np

from tasks.training.checkpoint_state import (  # noqa: F401 (re-exported: what a checkpoint file holds)
    ARRAY_PREFIX,
    BEST_PREFIX,
    CHECKPOINT_SUFFIX,
    LAST_STATE_FILE,
    SEED_STATE_NAME,
    STATE_ENTRY,
    UNREADABLE_NPZ_ERRORS,
    TrainState,
    read_resumable_state,
)


def seed_state_variables(model: keras.Model) -> list[keras.Variable]:
    """The random-generator states of a model's layers (Dropout)."""
    return [variable for variable in model.variables if SEED_STATE_NAME in variable.path]


def checkpointed_variables(model: keras.Model, with_optimizer: bool) -> list[keras.Variable]:
    """What a checkpoint holds: the trainable (head) variables, and for resuming also the
    optimizer's and the dropout generators' state. The frozen base is never written: it is
    rebuilt identically from `model.weights` and the seed, which keeps a checkpoint a few MB."""
    variables = list(model.trainable_variables)
    if with_optimizer:
        variables += list(model.optimizer.variables) + seed_state_variables(model)
    return variables


def variable_values(variables: Sequence[keras.Variable]) -> dict[str, np.ndarray]:
    """Copies of the variables' values, named in order (arr_0, arr_1, ...). Explicit copies: a
    background thread writes them while training goes on updating the variables."""
    return {
        f"{ARRAY_PREFIX}{index}": np.array(keras.ops.convert_to_numpy(variable), copy=True)
        for index, variable in enumerate(variables)
    }


def save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write named arrays to an .npz, atomically (a temporary name, then a rename)."""
    temporary = path.with_name(f"partial-{path.name}")
    with temporary.open("wb") as handle:
        # numpy's stub lets **kwargs reach savez's allow_pickle: bool; these keys are arr_0, arr_1, ...
        np.savez(handle, **arrays)  # type: ignore[arg-type]
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename, so a power cut cannot leave a truncated file
    temporary.replace(path)


def load_variables(variables: Sequence[keras.Variable], path: Path) -> None:
    """Assign the values saved by `variable_values` + `save_arrays`, in the same order."""
    with np.load(path) as arrays:
        values = [arrays[name] for name in arrays.files if name.startswith(ARRAY_PREFIX)]
    if len(values) != len(variables):
        raise ValueError(f"{path} holds {len(values)} arrays, the model {len(variables)} variables")
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def best_file_name(epoch: int) -> str:
    """The checkpoint file of the best weights, named by their epoch so the resumable state (which
    records the best epoch) always names a file that exists, whatever moment a kill hits."""
    return f"{BEST_PREFIX}{epoch}{CHECKPOINT_SUFFIX}"


class EpochCheckpoint(keras.callbacks.Callback):
    """Early stopping on validation loss, best weights, and a resumable state after every epoch.

    The values are copied at the end of the epoch and written by a background thread while the
    next epoch trains (a cached-mode epoch takes about as long as writing its ~25 MB). At most one
    epoch's writes are in flight: the next epoch end waits for them, so a failed write stops
    training there, and `finish` waits for the last.
    """

    def __init__(self, checkpoint_dir: Path, state: TrainState, patience: int) -> None:
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.state = state
        self.patience = patience
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self.pending: Future[None] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.wait_for_writes()
        logs = logs or {}
        for name, value in logs.items():
            self.state.history.setdefault(name, []).append(float(value))
        best = None
        validation_loss = float(logs["val_loss"])
        if validation_loss < self.state.best_val_loss:
            self.state.best_val_loss, self.state.best_epoch = validation_loss, epoch
            self.state.epochs_without_improvement = 0
            best = variable_values(checkpointed_variables(self.model, with_optimizer=False))
        else:
            self.state.epochs_without_improvement += 1
        self.state.completed_epochs = epoch + 1
        if self.state.epochs_without_improvement >= self.patience:
            self.state.stopped_early = True
            self.model.stop_training = True
        resumable = variable_values(checkpointed_variables(self.model, with_optimizer=True))
        resumable[STATE_ENTRY] = np.array(json.dumps(asdict(self.state)))
        self.pending = self.writer.submit(self.save_epoch, best, resumable, self.state.best_epoch)

    def save_epoch(self, best: dict[str, np.ndarray] | None, resumable: dict[str, np.ndarray], best_epoch: int) -> None:
        """Write the new best weights (if any), then the resumable state, then drop older best files."""
        if best is not None:
            save_arrays(best, self.checkpoint_dir / best_file_name(best_epoch))
        save_arrays(resumable, self.checkpoint_dir / LAST_STATE_FILE)
        for stale in self.checkpoint_dir.glob(f"{BEST_PREFIX}*{CHECKPOINT_SUFFIX}"):
            if stale.name != best_file_name(best_epoch):
                stale.unlink()

    def wait_for_writes(self) -> None:
        """Block until the queued writes have finished; re-raise their error."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def finish(self, raise_errors: bool = True) -> None:
        """Wait for the last writes and stop the writer thread."""
        self.writer.shutdown(wait=True)
        if raise_errors:
            self.wait_for_writes()
