"""The `embed` stage's outputs, read and written without TensorFlow: the frozen base's embeddings of
every prepared image, one file per split.

The base is frozen, so each image goes through it once (`tasks.training.embed`), in one stage; every later
stage (train, evaluate, calibrate) works on these arrays. A split's file holds, per row of the
manifest in that split, its embedding in `views` (shape (views, rows, features), float32; view 0 is
the image as it is, the training split adds augmented views after it), the row's manifest `path`
and the `prepared_sha256` of the image that was embedded. One file per split lets DVC give each
stage only what it may read: training reads `train` and `val`, never `test`.

A reader matches a file's rows to the manifest by path and hash and stops with a clear error when
they differ: embeddings of other images are never used silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.workspace.errors import EmbeddingsError
from tasks.workspace.files import UNREADABLE_NPZ_ERRORS, save_npz

EMBEDDED_SPLITS = ("train", "val", "calibration", "unenrolled", "test")
EMBEDDING_ARRAYS = ("views", "paths", "hashes")
RERUN_HINT = "Rerun the embed stage (`dvc repro embed`) after prepare."


@dataclass(frozen=True)
class EmbeddedRows:
    """The embeddings of one split's manifest rows: `views` (views, rows, features), view 0 the clean images."""

    views: np.ndarray
    paths: tuple[str, ...]
    hashes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def clean(self) -> np.ndarray:
        """(rows, features): the embedding of each image as it is."""
        return self.views[0]

    def subset(self, keep: np.ndarray) -> EmbeddedRows:
        """The rows where the boolean mask `keep` is true, in order."""
        indices = np.flatnonzero(keep)
        return EmbeddedRows(
            self.views[:, indices], tuple(self.paths[i] for i in indices), tuple(self.hashes[i] for i in indices)
        )


def save_embedded_rows(rows: EmbeddedRows, path: Path) -> None:
    """Write a split's embeddings to an uncompressed .npz (no pickled objects; NumPy 2.4 entries are
    undated, so equal arrays give equal bytes), atomically: a temporary name, then a rename."""
    arrays = {
        "views": np.asarray(rows.views, dtype=np.float32),
        "paths": np.array(rows.paths, dtype=str),
        "hashes": np.array(rows.hashes, dtype=str),
    }
    save_npz(arrays, path)


def load_embedded_rows(path: Path) -> EmbeddedRows:
    """Read a file written by `save_embedded_rows`, with an error that names the file and the fix."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in EMBEDDING_ARRAYS if name not in arrays.files]
            if missing:
                raise EmbeddingsError(
                    f"{path} lacks the arrays {missing}: it was not written by the embed stage. {RERUN_HINT}"
                )
            views = arrays["views"]
            paths, hashes = (
                tuple(str(value) for value in arrays["paths"]),
                tuple(str(value) for value in arrays["hashes"]),
            )
    except FileNotFoundError as error:
        raise EmbeddingsError(f"{path} does not exist. {RERUN_HINT}") from error
    except UNREADABLE_NPZ_ERRORS as error:
        raise EmbeddingsError(f"{path} cannot be read ({error}). {RERUN_HINT}") from error
    if views.ndim != 3 or views.shape[1] != len(paths) or len(hashes) != len(paths):
        raise EmbeddingsError(f"{path} holds {views.shape} embeddings for {len(paths)} rows. {RERUN_HINT}")
    return EmbeddedRows(views, paths, hashes)


def rows_of_split(manifest_rows: Sequence[dict[str, str]], split: str) -> list[dict[str, str]]:
    """The manifest rows of `split`, in manifest order: the rows the embed stage embeds for it."""
    return [row for row in manifest_rows if row["split"] == split]


def aligned_rows(embedded: EmbeddedRows, wanted: Sequence[dict[str, str]], source: Path) -> EmbeddedRows:
    """The embeddings of the manifest rows `wanted`, in their order, checked by path and image hash: a
    row missing from the file or embedded from another image stops with an error naming the file."""
    position = {path: index for index, path in enumerate(embedded.paths)}
    indices = []
    for row in wanted:
        index = position.get(row["path"])
        if index is None or embedded.hashes[index] != row["prepared_sha256"]:
            state = "is not in" if index is None else "was embedded from another image in"
            raise EmbeddingsError(
                f"{row['path']} {state} {source}: the embeddings are older than the manifest. {RERUN_HINT}"
            )
        indices.append(index)
    chosen = np.array(indices, dtype=np.int64)
    return EmbeddedRows(
        embedded.views[:, chosen], tuple(row["path"] for row in wanted), tuple(row["prepared_sha256"] for row in wanted)
    )


def load_split_embeddings(folder: Path, split: str, wanted: Sequence[dict[str, str]]) -> EmbeddedRows:
    """The embeddings of the manifest rows `wanted` (all of split `split`), read from `folder`."""
    path = embedding_file(folder, split)
    return aligned_rows(load_embedded_rows(path), wanted, path)


def prepared_image_size(manifest_rows: Sequence[dict[str, str]], root: Path) -> int:
    """The side in pixels of the prepared images (all square and of one size), read from the first one's header."""
    from PIL import Image

    if not manifest_rows:
        raise EmbeddingsError("the manifest lists no prepared image. Rerun prepare (`dvc repro prepare`).")
    with Image.open(root / manifest_rows[0]["prepared_path"]) as first:
        return int(first.size[0])


def flat_views(views: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(views, n, features) embeddings and n labels as (views * n, features) samples and their labels."""
    return views.reshape(-1, views.shape[-1]), np.tile(labels, views.shape[0])


def embedding_file(folder: Path, split: str) -> Path:
    """Where the embed stage writes the embeddings of `split`."""
    return folder / f"{split}.npz"
