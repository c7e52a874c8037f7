"""The generated UTSig-shaped dataset: layout, counts, determinism, and writer separability."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.data.synthetic import draw_sample, write_synthetic_dataset
from tests.conftest import synthetic_params


def digest_tree(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_layout_and_naming_follow_the_original_archive(tmp_path: Path) -> None:
    params = synthetic_params(writers=2, genuine_per_writer=3, skilled_per_writer=2, simple_per_writer=1)
    assert write_synthetic_dataset(params, tmp_path) == 2 * (3 + 2 + 1 + 2)
    files = set(digest_tree(tmp_path))
    assert "UTSig/Genuine/1/3.tif" in files
    assert "UTSig/Forgery/Skilled/2/2.tif" in files
    assert "UTSig/Forgery/Simple/1/1.tif" in files
    assert "UTSig/Forgery/Opposite Hand/2/2.tif" in files
    image = Image.open(tmp_path / "UTSig/Genuine/1/1.tif")
    assert (image.mode, image.size) == ("L", (96, 64))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    params = synthetic_params(writers=2, genuine_per_writer=2)
    write_synthetic_dataset(params, tmp_path / "a")
    write_synthetic_dataset(params, tmp_path / "b")
    write_synthetic_dataset(synthetic_params(writers=2, genuine_per_writer=2, seed=12), tmp_path / "c")
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    assert digest_tree(tmp_path / "a") != digest_tree(tmp_path / "c")


def test_a_sample_does_not_depend_on_the_dataset_size() -> None:
    small = synthetic_params(writers=2, genuine_per_writer=2)
    large = synthetic_params(writers=5, genuine_per_writer=9)
    assert np.array_equal(draw_sample(small, 2, "genuine", 2), draw_sample(large, 2, "genuine", 2))


def ink_profile(image: np.ndarray) -> np.ndarray:
    """Column profile of ink, a crude shape descriptor for comparing samples."""
    ink = (image < 128).astype(np.float64)
    return ink.sum(axis=0) / max(ink.sum(), 1.0)


def test_genuine_samples_resemble_their_writer_more_than_forgeries_do() -> None:
    params = synthetic_params(width=240, height=120)
    distances = {"genuine": [], "skilled": [], "other writer": []}
    for writer in range(1, 5):
        anchor = ink_profile(draw_sample(params, writer, "genuine", 1))
        for number in range(2, 6):
            distances["genuine"].append(
                np.abs(anchor - ink_profile(draw_sample(params, writer, "genuine", number))).sum()
            )
            distances["skilled"].append(
                np.abs(anchor - ink_profile(draw_sample(params, writer, "skilled", number))).sum()
            )
            other = writer % 4 + 1
            distances["other writer"].append(
                np.abs(anchor - ink_profile(draw_sample(params, other, "genuine", number))).sum()
            )
    means = {kind: float(np.mean(values)) for kind, values in distances.items()}
    assert means["genuine"] < means["skilled"] < means["other writer"]
