"""Preprocessing on real-looking inputs: every common mode, huge, tiny, blank, corrupt, and the
grey-paper trap of CEDAR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tasks.data.images import (
    ImageReadError,
    NoInkError,
    PreprocessSettings,
    otsu_threshold,
    preprocess_file,
    preprocess_grey,
    save_grey_png,
)

SETTINGS = PreprocessSettings(
    image_size=48,
    working_max_side=600,
    blur_radius=1.5,
    min_contrast=30,
    max_ink_fraction=0.6,
    min_side_pixels=8,
    margin_fraction=0.05,
)
STROKE = [(0.1, 0.6), (0.25, 0.2), (0.35, 0.8), (0.5, 0.3), (0.65, 0.75), (0.8, 0.25), (0.9, 0.55)]


def signature(
    width: int = 300, height: int = 150, paper: int = 250, ink: int = 30, noise: float = 0.0, pen: int = 4
) -> np.ndarray:
    """A zig-zag stroke on paper of a given grey level and noise, as an 8-bit array."""
    canvas = Image.new("L", (width, height), paper)
    points = [(x * width, y * height) for x, y in STROKE]
    ImageDraw.Draw(canvas).line(points, fill=ink, width=pen, joint="curve")
    array = np.asarray(canvas, dtype=np.float64)
    if noise:
        array = array + np.random.default_rng(0).normal(0, noise, array.shape)
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def write(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def reference(tmp_path: Path) -> np.ndarray:
    """The preprocessed image of the plain grey signature, to compare other encodings against."""
    return preprocess_file(write(Image.fromarray(signature()), tmp_path / "grey.png"), SETTINGS).image


def test_grey_image_is_cropped_padded_and_resized(tmp_path: Path) -> None:
    result = preprocess_file(write(Image.fromarray(signature()), tmp_path / "a.png"), SETTINGS)
    assert result.image.shape == (48, 48)
    assert result.image.dtype == np.uint8
    assert (result.original_width, result.original_height) == (300, 150)
    # The background is pure white and the ink reaches black after stretching.
    assert result.image[0, 0] == 255 and result.image[-1, -1] == 255
    assert result.image.min() < 60
    # Cropping to the ink: the stroke spans nearly the full width of the square (margins aside).
    dark_columns = np.nonzero((result.image < 128).any(axis=0))[0]
    assert dark_columns.max() - dark_columns.min() > 0.8 * 48


def test_rgba_with_transparent_paper_matches_grey(tmp_path: Path) -> None:
    grey = signature(paper=255)
    alpha = np.where(grey < 128, 255, 0).astype(np.uint8)
    rgba = np.stack([grey, grey, grey, alpha], axis=-1)
    result = preprocess_file(write(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"), SETTINGS)
    assert np.abs(result.image.astype(int) - reference(tmp_path).astype(int)).mean() < 4


def test_rgb_and_palette_images_match_grey(tmp_path: Path) -> None:
    grey_image = Image.fromarray(signature())
    rgb = preprocess_file(write(grey_image.convert("RGB"), tmp_path / "rgb.jpg"), SETTINGS).image
    palette = preprocess_file(write(grey_image.convert("P"), tmp_path / "palette.png"), SETTINGS).image
    expected = reference(tmp_path).astype(int)
    assert np.abs(rgb.astype(int) - expected).mean() < 6  # JPEG is lossy
    assert np.abs(palette.astype(int) - expected).mean() < 2


def test_sixteen_bit_image_matches_eight_bit(tmp_path: Path) -> None:
    wide = signature().astype(np.uint16) * 257
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")
    result = preprocess_file(path, SETTINGS)
    assert np.abs(result.image.astype(int) - reference(tmp_path).astype(int)).max() <= 2


def test_sixteen_bit_tiff_is_read(tmp_path: Path) -> None:
    wide = signature().astype(np.uint16) * 257
    path = tmp_path / "wide.tif"
    Image.fromarray(wide).save(path, compression="tiff_lzw")
    assert Image.open(path).mode.startswith("I;16")
    result = preprocess_file(path, SETTINGS)
    assert result.image.shape == (48, 48)
    assert result.image.min() < 60


def test_huge_scan_is_reduced_before_thresholding(tmp_path: Path) -> None:
    huge = signature(width=6000, height=3000, pen=60)
    result = preprocess_file(write(Image.fromarray(huge), tmp_path / "huge.png"), SETTINGS)
    assert (result.original_width, result.original_height) == (6000, 3000)
    assert result.image.shape == (48, 48)
    small = preprocess_file(write(Image.fromarray(signature(pen=3)), tmp_path / "small.png"), SETTINGS)
    assert np.abs(result.image.astype(int) - small.image.astype(int)).mean() < 25


def test_decompression_bomb_is_reported_not_raised_as_a_crash(tmp_path: Path, monkeypatch) -> None:
    path = write(Image.fromarray(signature()), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="bomb.png"):
        preprocess_file(path, SETTINGS)


def test_tiny_image_is_upscaled(tmp_path: Path) -> None:
    tiny = np.full((10, 12), 250, dtype=np.uint8)
    tiny[3:7, 2:10] = 20
    result = preprocess_file(write(Image.fromarray(tiny), tmp_path / "tiny.png"), SETTINGS)
    assert result.image.shape == (48, 48)
    assert (result.image < 128).mean() > 0.2


def test_too_small_image_is_rejected_with_the_parameter_name(tmp_path: Path) -> None:
    path = write(Image.fromarray(np.zeros((4, 4), dtype=np.uint8)), tmp_path / "dot.png")
    with pytest.raises(NoInkError, match=r"dot\.png.*min_side_pixels"):
        preprocess_file(path, SETTINGS)


@pytest.mark.parametrize(
    "image",
    [
        np.full((100, 200), 255, dtype=np.uint8),
        np.full((100, 200), 0, dtype=np.uint8),
        np.clip(np.random.default_rng(1).normal(235, 8, (100, 200)), 0, 255).astype(np.uint8),
    ],
    ids=["white", "black", "noisy-paper"],
)
def test_blank_images_have_no_ink(image: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(NoInkError, match="no ink"):
        preprocess_file(write(Image.fromarray(image), tmp_path / "blank.png"), SETTINGS)


def test_mostly_dark_image_is_rejected(tmp_path: Path) -> None:
    dark = np.full((100, 200), 20, dtype=np.uint8)
    dark[:, 150:] = 240
    with pytest.raises(NoInkError, match="max_ink_fraction"):
        preprocess_file(write(Image.fromarray(dark), tmp_path / "dark.png"), SETTINGS)


def test_corrupt_and_truncated_files_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all" * 10)
    with pytest.raises(ImageReadError, match="garbage.png"):
        preprocess_file(garbage, SETTINGS)
    whole = write(Image.fromarray(signature()), tmp_path / "whole.png").read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageReadError, match="truncated.png"):
        preprocess_file(truncated, SETTINGS)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.tif"):
        preprocess_file(empty, SETTINGS)


def test_grey_noisy_paper_and_white_paper_give_the_same_image() -> None:
    """CEDAR's trap: genuine scans on grey noisy paper, forgeries on white, lighter vs darker ink."""
    on_grey = signature(paper=232, ink=120, noise=5.0)
    on_white = signature(paper=255, ink=40)
    assert np.abs(on_grey.astype(int) - on_white.astype(int)).mean() > 20
    grey_result, _, _ = preprocess_grey(on_grey, SETTINGS)
    white_result, _, _ = preprocess_grey(on_white, SETTINGS)
    assert np.abs(grey_result.astype(int) - white_result.astype(int)).mean() < 6
    assert abs((grey_result == 255).mean() - (white_result == 255).mean()) < 0.05


def test_otsu_threshold_separates_two_modes() -> None:
    image = np.concatenate([np.full(300, 40), np.full(700, 220)]).astype(np.uint8).reshape(10, 100)
    threshold, gap = otsu_threshold(image)
    assert 40 <= threshold < 220
    assert gap == pytest.approx(180)
    assert otsu_threshold(np.full((5, 5), 128, dtype=np.uint8))[1] == 0.0


def test_saved_png_is_byte_identical_across_runs(tmp_path: Path) -> None:
    path = write(Image.fromarray(signature(noise=3.0)), tmp_path / "s.png")
    first, second = tmp_path / "one.png", tmp_path / "two.png"
    save_grey_png(preprocess_file(path, SETTINGS).image, first)
    save_grey_png(preprocess_file(path, SETTINGS).image, second)
    assert first.read_bytes() == second.read_bytes()
