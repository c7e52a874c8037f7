"""A command's process, its work done, exits without the garbage collector's last passes.

At exit CPython collects every tracked object again, several times, while it tears its modules down:
with MLflow, Prefect, scikit-learn or TensorFlow loaded that is 1-3 s of a stage's or a CLI command's
wall time (measured on 2 cores; bench/README.md, issue 25), spent after the last line was printed and
before DVC, make or the shell sees the exit. `gc.freeze()` moves every object to the collector's
permanent generation, which no later pass visits; exit handlers (`atexit`: Prefect's last logs,
MLflow's pending writes, `logging.shutdown`, servers stopped) still run. The rule this needs: what a
process writes is closed by a `with` block or an exit handler, never only by the `__del__` of an object
in a reference cycle (such an object is no longer finalised at exit). Only for a process's main entry
point: a library caller (tests, the Prefect worker) keeps its collector.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_collection_at_exit() -> Iterator[None]:
    """Run the block (a process's whole work), then freeze the collector's objects, also when the block
    ends with SystemExit (a CLI's exit status, a user error's exit 1) or another exception."""
    try:
        yield
    finally:
        gc.freeze()
