"""Reading signature scans of any common format, and the field's standard preprocessing.

The steps follow luizgh/sigver: grey scale, a Gaussian-blurred copy thresholded with Otsu's
method to find the ink, a crop to the ink's bounding box, the background set to white, then
padding to a square and resizing. The ink's grey levels are also stretched to the full range,
so that paper colour and scanner contrast (CEDAR's genuine scans are on grey paper, its
forgeries on white) cannot tell two classes apart on their own.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFilter, ImageOps, UnidentifiedImageError

WHITE = 255
GREY_LEVELS = 256
EIGHT_BIT_MAX = 255
SIXTEEN_BIT_MAX = 65535
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
WIDE_MODES = frozenset({"I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
INK_STRETCH_LOW_PERCENTILE = 1.0
# Modes Image.reduce cannot box-average, and the mode each is read in instead: bilevel and palette
# images become grey (with alpha, so transparent pixels still become paper) before shrinking.
UNREDUCIBLE_MODES = {"1": "L", "P": "LA"}
KEYED_TRANSPARENCY_MODES = {"L": "LA", "RGB": "RGBA"}  # a colour key must be matched before averaging


class ImageReadError(ValueError):
    """An image file cannot be decoded (corrupt, truncated, not an image, too large)."""


class ImageTooLargeError(ImageReadError):
    """An image's header declares more pixels than the limit allows; it is refused before decoding."""


class NoInkError(ValueError):
    """An image was read but holds no usable signature (blank, too small, or all dark)."""


@dataclass(frozen=True)
class PreprocessSettings:
    """The `prepare` parameters that shape the preprocessed image."""

    image_size: int
    working_max_side: int
    blur_radius: float
    min_contrast: int
    max_ink_fraction: float
    min_side_pixels: int
    margin_fraction: float
    # Inference limits the packaged model carries (`register.max_image_pixels`, `register.max_image_bytes`):
    # images whose header declares more pixels are refused before decoding, encoded images (bytes,
    # base64) larger than max_image_bytes before decoding the base64. None (the `prepare` stage)
    # leaves only Pillow's decompression-bomb limit.
    max_pixels: int | None = None
    max_image_bytes: int | None = None


@dataclass(frozen=True)
class PreprocessResult:
    """A preprocessed square image (uint8, white background) and what was measured on the way."""

    image: np.ndarray
    original_width: int
    original_height: int
    threshold: int
    ink_fraction: float


def wide_to_eight_bit(image: Image.Image) -> np.ndarray:
    """Scale a 16- or 32-bit grey image to 0..255 by the range its values actually use."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode in SIXTEEN_BIT_MODES:
        full_scale = float(SIXTEEN_BIT_MAX)
    else:
        peak = float(values.max(initial=0.0))
        full_scale = (
            float(EIGHT_BIT_MAX)
            if peak <= EIGHT_BIT_MAX
            else float(SIXTEEN_BIT_MAX)
            if peak <= SIXTEEN_BIT_MAX
            else peak
        )
    return np.clip(np.rint(values / full_scale * EIGHT_BIT_MAX), 0, EIGHT_BIT_MAX).astype(np.uint8)


def to_grey(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit grey; transparent pixels become white paper."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode in WIDE_MODES:
        return Image.fromarray(wide_to_eight_bit(image))
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (WHITE, WHITE, WHITE, WHITE))
        return Image.alpha_composite(paper, rgba).convert("L")
    return image.convert("L")


def shrink_to_working_size(grey: Image.Image, working_max_side: int) -> Image.Image:
    """Box-reduce a huge scan by an integer factor so its longer side is at most `working_max_side`."""
    factor = math.ceil(max(grey.size) / working_max_side)
    return grey.reduce(factor) if factor > 1 else grey


def reducible(image: Image.Image) -> Image.Image:
    """`image` in a mode that Image.reduce averages, converting at full size only what it cannot:
    16/32-bit grey to 8-bit grey, bilevel and palette to grey (+ alpha), colour-keyed transparency
    to an alpha channel. Grey and RGB(A) scans are returned as they are, so no full-size RGB/RGBA
    copy is made before shrinking."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode in WIDE_MODES:
        return to_grey(image)
    if image.mode in UNREDUCIBLE_MODES:
        return image.convert(UNREDUCIBLE_MODES[image.mode])
    if "transparency" in image.info and image.mode in KEYED_TRANSPARENCY_MODES:
        return image.convert(KEYED_TRANSPARENCY_MODES[image.mode])
    return image


def check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    """Refuse an image whose header declares more than `max_pixels` pixels (read before decoding:
    a small compressed file can declare a huge canvas, and decoding it costs its full size)."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {width * height} pixels is above the model's limit of {max_pixels} "
            "pixels (register.max_image_pixels); send a smaller scan"
        )


def grey_at_working_size(opened: Image.Image, working_max_side: int) -> Image.Image:
    """An opened image, shrunk to working size in its own mode first, then turned upright (EXIF
    orientation) and grey: the only full-size pixels held are the decoded ones (plus one
    premultiplied copy for images with alpha, which Image.reduce makes to average correctly)."""
    exif = opened.getexif()  # read from the file: the reduced copy is a plain image
    small = shrink_to_working_size(reducible(opened), working_max_side)
    if ExifTags.Base.Orientation in exif:
        small.info["exif"] = exif.tobytes()
    return to_grey(ImageOps.exif_transpose(small))


def read_grey(
    source: Path | bytes, working_max_side: int, name: str = "", max_pixels: int | None = None
) -> tuple[np.ndarray, int, int]:
    """Decode a file (or encoded image bytes) to an 8-bit grey array at working size; also
    return its original size.

    Raises ImageTooLargeError when the header declares more than `max_pixels` pixels (checked
    before any pixel is decoded), and ImageReadError, naming the input (`name`, else the path),
    for anything Pillow cannot decode, including empty or truncated files and decompression bombs.
    """
    name = name or str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
                check_pixels(opened.size, max_pixels, name)
                opened.draft("L", (working_max_side, working_max_side))
                original_width, original_height = opened.size
                grey = grey_at_working_size(opened, working_max_side)
    except ImageTooLargeError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as error:
        raise ImageReadError(f"{name}: cannot be read as an image ({type(error).__name__}: {error})") from error
    return np.asarray(grey), original_width, original_height


def otsu_threshold(grey: np.ndarray) -> tuple[int, float]:
    """Otsu's threshold of an 8-bit image, and the gap between the two class means.

    Pixels at or below the threshold are the dark class (ink). The gap is 0 for a uniform image.
    """
    histogram = np.bincount(grey.ravel(), minlength=GREY_LEVELS).astype(np.float64)
    levels = np.arange(GREY_LEVELS, dtype=np.float64)
    weight_dark = np.cumsum(histogram)
    weight_light = weight_dark[-1] - weight_dark
    cumulative_mean = np.cumsum(histogram * levels)
    total_mean = cumulative_mean[-1]
    valid = (weight_dark > 0) & (weight_light > 0)
    if not valid.any():
        return int(grey.flat[0]), 0.0
    between = np.zeros(GREY_LEVELS)
    between[valid] = (total_mean * weight_dark[valid] - cumulative_mean[valid] * weight_dark[-1]) ** 2 / (
        weight_dark[valid] * weight_light[valid]
    )
    threshold = int(np.argmax(between))
    dark_mean = cumulative_mean[threshold] / weight_dark[threshold]
    light_mean = (total_mean - cumulative_mean[threshold]) / weight_light[threshold]
    return threshold, float(light_mean - dark_mean)


def class_contrast(grey: np.ndarray, threshold: int) -> float:
    """Mean grey level of the paper minus that of the ink, on the unblurred image.

    Blur spreads thin strokes, so the gap is measured on the original pixels: a faint real
    signature keeps a gap of several tens of levels, paper noise alone only a few.
    """
    dark = grey <= threshold
    if dark.all() or not dark.any():
        return 0.0
    return float(grey[~dark].mean() - grey[dark].mean())


def stretch_ink(cropped: np.ndarray, ink: np.ndarray, threshold: int) -> np.ndarray:
    """Map ink grey levels so the darkest ink is black and the threshold is white paper."""
    darkest = float(np.percentile(cropped[ink], INK_STRETCH_LOW_PERCENTILE))
    span = max(float(threshold) - darkest, 1.0)
    stretched = (cropped.astype(np.float64) - darkest) / span * WHITE
    result = np.clip(np.rint(stretched), 0, WHITE).astype(np.uint8)
    result[~ink] = WHITE
    return result


def pad_to_square(cropped: np.ndarray, margin_fraction: float) -> np.ndarray:
    """Centre `cropped` on a white square canvas with a margin on the longer side."""
    height, width = cropped.shape
    side = math.ceil(max(height, width) * (1 + 2 * margin_fraction))
    canvas = np.full((side, side), WHITE, dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = cropped
    return canvas


def preprocess_grey(grey: np.ndarray, settings: PreprocessSettings) -> tuple[np.ndarray, int, float]:
    """Remove the background, crop to the ink, pad to a square and resize.

    Returns the square image, the ink threshold and the fraction of pixels that are ink.
    Raises NoInkError when the image is too small, blank, or mostly dark.
    """
    height, width = grey.shape
    if min(height, width) < settings.min_side_pixels:
        raise NoInkError(f"image is {width}x{height} pixels, below prepare.min_side_pixels={settings.min_side_pixels}")
    blurred = np.asarray(Image.fromarray(grey).filter(ImageFilter.GaussianBlur(settings.blur_radius)))
    threshold, _blurred_gap = otsu_threshold(blurred)
    contrast = class_contrast(grey, threshold)
    if contrast < settings.min_contrast:
        raise NoInkError(
            f"no ink found: ink/paper contrast {contrast:.0f} is below prepare.min_contrast={settings.min_contrast}"
        )
    ink_region = blurred <= threshold
    ink_fraction = float(ink_region.mean())
    if ink_fraction > settings.max_ink_fraction:
        raise NoInkError(
            f"{ink_fraction:.0%} of the image is dark, above prepare.max_ink_fraction={settings.max_ink_fraction}"
        )
    rows, columns = np.nonzero(ink_region)
    box = (slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1))
    cropped = grey[box]
    ink = cropped <= threshold
    if not ink.any():
        raise NoInkError("no ink pixel below the threshold inside the ink's bounding box")
    square = pad_to_square(stretch_ink(cropped, ink, threshold), settings.margin_fraction)
    resized = Image.fromarray(square).resize((settings.image_size, settings.image_size), Image.Resampling.LANCZOS)
    return np.asarray(resized), threshold, ink_fraction


def preprocess_file(path: Path | bytes, settings: PreprocessSettings, name: str = "") -> PreprocessResult:
    """Read and preprocess one signature file (or encoded image bytes); errors name the input."""
    name = name or str(path)
    grey, original_width, original_height = read_grey(path, settings.working_max_side, name, settings.max_pixels)
    try:
        image, threshold, ink_fraction = preprocess_grey(grey, settings)
    except NoInkError as error:
        raise NoInkError(f"{name}: {error}") from error
    return PreprocessResult(image, original_width, original_height, threshold, ink_fraction)


def save_grey_png(image: np.ndarray, path: Path) -> None:
    """Write an 8-bit grey PNG with no metadata, so the same pixels give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", optimize=False, compress_level=6)
