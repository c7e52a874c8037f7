"""What the packaged model accepts: a pixel cap read from the header before decoding, a byte cap on
encoded images, shrinking before any full-size RGB/RGBA conversion, and paths only when asked."""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from tasks.data.images import ImageTooLargeError, read_grey
from tasks.model.classifier import LogitScorer
from tasks.serving.inference import SignatureClassifier
from tasks.serving.model_input import PATHS_REFUSED, items_from
from tasks.workspace.errors import ModelInputError
from tests.conftest import PROJECT_ROOT
from tests.unit.test_inference import SETTINGS, tiny_classifier, tiny_verifier

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IHDR_TYPE_OFFSET = len(PNG_SIGNATURE) + 4  # the IHDR chunk's type, after the signature and its length
HUGE_SIDE = 9400  # the image: 88 Mpx, just under Pillow's decompression-bomb warning
MEMORY_SIDE = 4000  # an RGBA image of 64 MB decoded: large enough to measure, quick to decode
WORKING_MAX_SIDE = 1200
KIB = 1024  # ru_maxrss is in KiB on Linux
# Measured: decoding costs the decoded RGBA (1x) plus Image.reduce's premultiplied copy (1x); the
# old conversions at full size (RGBA copy, white paper, composite, grey) cost 5x.
MAX_PEAK_PER_DECODED_BYTE = 2.6
MAX_REFUSED_PEAK_BYTES = 8 * 2**20
PEAK_SCRIPT = """
import resource, sys
from tasks.data.images import ImageTooLargeError, read_grey
data = open(sys.argv[1], "rb").read()
limit = int(sys.argv[2]) or None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_grey(data, int(sys.argv[3]), "big.png", limit)
    outcome = "read"
except ImageTooLargeError:
    outcome = "refused"
print(outcome, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header is rewritten to declare `width` x `height` pixels: Pillow opens
    it (the header is sound), and decoding it would fail (the pixel data is for 8 x 8)."""
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (255, 255, 255, 255)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = bytearray(data[IHDR_TYPE_OFFSET : IHDR_TYPE_OFFSET + 4 + 13])  # type + 13 data bytes
    header[4:12] = struct.pack(">II", width, height)
    data[IHDR_TYPE_OFFSET : IHDR_TYPE_OFFSET + 17] = header
    data[IHDR_TYPE_OFFSET + 17 : IHDR_TYPE_OFFSET + 21] = struct.pack(">I", zlib.crc32(bytes(header)))
    return bytes(data)


def test_an_image_over_the_pixel_cap_is_refused_from_its_header() -> None:
    """The file declares 9400 x 9400 but holds 8 x 8 pixels: refused with the cap's message, not
    'cannot be read', so nothing was decoded."""
    data = png_declaring(HUGE_SIDE, HUGE_SIDE)
    with pytest.raises(ImageTooLargeError, match=r"scan\.png: 9400x9400 = 88360000 pixels .*max_image_pixels"):
        read_grey(data, WORKING_MAX_SIDE, "scan.png", max_pixels=25_000_000)
    with pytest.raises(ImageTooLargeError) as refused:
        read_grey(data, WORKING_MAX_SIDE, "scan.png", max_pixels=25_000_000)
    assert "cannot be read" not in str(refused.value)


def test_one_oversized_image_gets_an_error_row_and_the_others_are_answered(tmp_path: Path) -> None:
    signature = Image.new("L", (120, 60), 250)
    ImageDraw.Draw(signature).line([(10, 40), (40, 10), (70, 50), (110, 15)], fill=20, width=4)
    buffer = io.BytesIO()
    signature.save(buffer, format="PNG")
    settings = replace(SETTINGS, max_pixels=100_000)
    calibration = {"classes": ["a", "b", "c"], "temperature": 1.0, "threshold": 0.0, "unknown_class_id": 3}
    model = SignatureClassifier(LogitScorer(tiny_classifier()), tiny_verifier(), calibration, settings, top_k=2)
    answers = model.answers(items_from([buffer.getvalue(), png_declaring(400, 300), buffer.getvalue()]))
    assert [answer.error == "" for answer in answers] == [True, False, True]
    assert answers[1].error == (
        "image[1]: 400x300 = 120000 pixels is above the model's limit of 100000 pixels "
        "(register.max_image_pixels); send a smaller scan"
    )


def peak_rss_bytes(image_file: Path, max_pixels: int) -> tuple[str, int]:
    """Outcome and peak-memory growth of one read_grey call in a fresh Python process."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(image_file), str(max_pixels), str(WORKING_MAX_SIDE)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    outcome, kib = result.stdout.split()
    return outcome, int(kib) * KIB


@pytest.fixture(scope="module")
def large_rgba_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4000 x 4000 RGBA scan (64 MB decoded, a few hundred KB as PNG) with one dark stroke."""
    image = Image.new("RGBA", (MEMORY_SIDE, MEMORY_SIDE), (255, 255, 255, 255))
    ImageDraw.Draw(image).line([(400, 3000), (2000, 900), (3600, 3100)], fill=(20, 20, 60, 255), width=30)
    path = tmp_path_factory.mktemp("large") / "large.png"
    image.save(path, compress_level=1)
    return path


def test_memory_a_capped_image_costs_nothing_and_a_large_one_is_shrunk_before_conversion(
    large_rgba_png: Path,
) -> None:
    decoded = MEMORY_SIDE * MEMORY_SIDE * 4
    outcome, refused_peak = peak_rss_bytes(large_rgba_png, MEMORY_SIDE * MEMORY_SIDE - 1)
    assert outcome == "refused" and refused_peak < MAX_REFUSED_PEAK_BYTES, refused_peak
    outcome, read_peak = peak_rss_bytes(large_rgba_png, 0)
    assert outcome == "read"
    assert read_peak < MAX_PEAK_PER_DECODED_BYTE * decoded, f"{read_peak / decoded:.2f} x the decoded image"


def test_paths_are_refused_alike_whether_the_file_exists_or_not(tmp_path: Path) -> None:
    """No existence oracle: the served model never looks at a path, so both errors read the same."""
    existing = tmp_path / "present.png"
    Image.new("L", (20, 20), 255).save(existing)
    items = items_from(pd.DataFrame({"path": [str(existing), str(tmp_path / "absent.png")]}), accept_paths=False)
    assert [item.source for item in items] == [None, None]
    assert [item.error for item in items] == [f"path[0]: {PATHS_REFUSED}", f"path[1]: {PATHS_REFUSED}"]
    assert [item.name for item in items_from([str(existing)], accept_paths=False)] == ["path[0]"]
    assert items_from(str(existing), accept_paths=False)[0].source is None
    assert items_from(pd.DataFrame({"path": [str(existing)]}))[0].source == existing  # local use: accepted


def test_a_frame_without_the_image_column_names_the_expected_columns() -> None:
    with pytest.raises(ModelInputError, match=r"\['img'\]; the model reads an 'image' column") as served:
        items_from(pd.DataFrame({"img": ["abc"]}), accept_paths=False)
    assert "path" not in str(served.value)
    with pytest.raises(ModelInputError, match="or a 'path' column"):
        items_from(pd.DataFrame({"img": ["abc"]}), accept_paths=True)


def test_each_row_uses_its_image_else_its_path() -> None:
    encoded = base64.b64encode(b"some bytes").decode()
    frame = pd.DataFrame({"image": [encoded, None, None], "path": [None, "scan.png", None]})
    items = items_from(frame, accept_paths=True)
    assert items[0].source == b"some bytes" and items[1].source == Path("scan.png")
    assert items[2].error == "row 2: no image (its 'image' cell is empty)"


def test_encoded_images_over_the_byte_cap_are_refused_before_decoding() -> None:
    data = b"\x00" * 3000
    encoded = base64.b64encode(data).decode()
    refused = items_from(pd.DataFrame({"image": [encoded]}), max_bytes=2999)[0]
    assert refused.source is None and refused.error == (
        "image[0]: 3000 bytes is above the model's limit of 2999 bytes per image "
        "(register.max_image_bytes); send a smaller scan"
    )
    assert items_from(pd.DataFrame({"image": [encoded]}), max_bytes=3000)[0].source == data
    assert "above the model's limit" in items_from([data], max_bytes=2999)[0].error
    # Not decoded: text far too long to be valid base64 still gets the size error, not a base64 one.
    assert "above the model's limit" in items_from(pd.DataFrame({"image": ["%" * 8000]}), max_bytes=10)[0].error
