"""The model version a server answers with now: read whole by each request, swapped whole by the follower.

A request borrows the current `LoadedModel` when it starts and answers with it to its end, so a swap
never mixes two versions in one answer, and the answer names the version that gave it. The slot counts
the requests that still use each model, so the champion follower (`tasks.scoring.champion_follower`)
can wait until the model it replaced is released before it drops it and before it loads another one:
at most two models are in memory, the one served and the one being loaded or still finishing requests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.registration.model_store import LoadedModel


class ModelSlot:
    """The served `LoadedModel`, with a count of the requests using each model (current or replaced)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._current = loaded
        self._borrowers: dict[int, int] = {}  # id of a LoadedModel -> requests answering with it now
        self._changed = threading.Condition()

    @property
    def current(self) -> LoadedModel:
        """The model new requests get (one reference read: never half of a swap)."""
        return self._current

    @contextmanager
    def borrowed(self) -> Iterator[LoadedModel]:
        """The current model, counted as in use until the block ends (even if it is replaced meanwhile)."""
        with self._changed:
            loaded = self._current
            self._borrowers[id(loaded)] = self._borrowers.get(id(loaded), 0) + 1
        try:
            yield loaded
        finally:
            with self._changed:
                remaining = self._borrowers.pop(id(loaded)) - 1
                if remaining:
                    self._borrowers[id(loaded)] = remaining
                self._changed.notify_all()

    def swap(self, loaded: LoadedModel) -> LoadedModel:
        """Serve `loaded` to every request that starts from now on; returns the model it replaces."""
        with self._changed:
            replaced, self._current = self._current, loaded
        return replaced

    def released(self, loaded: LoadedModel, timeout: float) -> bool:
        """Whether no request uses `loaded` any more, waiting up to `timeout` seconds for the last one."""
        with self._changed:
            return self._changed.wait_for(lambda: id(loaded) not in self._borrowers, timeout)
