"""Writer ids as the dataset names them and as users type them: one spelling per writer.

Its own module, with nothing else in it, because the registered model carries it (claims are matched
with it: `tasks.serving.answers`) and the dataset adapters use it: the model does not carry the adapters.
"""

from __future__ import annotations


def normalise_writer_id(name: str) -> str:
    """Numeric writer names become zero-padded (`7` and `007` are one writer); others stay."""
    stripped = name.strip()
    return f"{int(stripped):03d}" if stripped.isdigit() else stripped
