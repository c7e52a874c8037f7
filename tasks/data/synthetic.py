"""A generator of UTSig-shaped datasets of signature-like images, for the demo and the tests.

Each writer owns a random pen trajectory (a sum of sinusoids that makes loops and strokes) and
a style (slant, pen width, size). Genuine samples vary that trajectory mildly; skilled forgeries
imitate it with larger deviations and another hand's slant and pen; simple forgeries only
share part of the trajectory (the forger knew the name, not the signature); opposite-hand
samples are the writer's own trajectory, written shakily. Every image is drawn from its own
seed (dataset seed, writer, kind, number), so the same parameters give the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tasks.workspace.params_data import SyntheticParams

ARCHIVE_FOLDER = "UTSig"
KIND_FOLDERS = {
    "genuine": ("Genuine",),
    "skilled": ("Forgery", "Skilled"),
    "simple": ("Forgery", "Simple"),
    "opposite": ("Forgery", "Opposite Hand"),
}
KIND_CODES = {"genuine": 0, "skilled": 1, "simple": 2, "opposite": 3}
HARMONICS = 4
TRAJECTORY_POINTS = 400
SUPERSAMPLING = 2
PAPER_LEVEL_RANGE = (228, 252)
INK_LEVEL_RANGE = (10, 70)
PAPER_NOISE_RANGE = (1.0, 6.0)
CANVAS_MARGIN = 0.08


@dataclass(frozen=True)
class WriterStyle:
    """The traits that make one synthetic writer's signatures look alike."""

    amplitudes: np.ndarray
    frequencies: np.ndarray
    phases: np.ndarray
    loop_amplitude: float
    slant_degrees: float
    pen_width: float
    size: float


@dataclass(frozen=True)
class Deviation:
    """How far one sample strays from its writer's style."""

    trajectory_noise: float
    slant_noise_degrees: float
    size_noise: float
    width_noise: float
    tremor: float
    foreign_share: float


DEVIATIONS = {
    "genuine": Deviation(0.04, 2.0, 0.04, 0.3, 0.0, 0.0),
    "skilled": Deviation(0.16, 7.0, 0.10, 1.2, 0.004, 0.0),
    "simple": Deviation(0.10, 10.0, 0.15, 1.5, 0.0, 0.65),
    "opposite": Deviation(0.10, 9.0, 0.10, 1.0, 0.005, 0.0),
}


def random_style(rng: np.random.Generator) -> WriterStyle:
    """Draw a new writer's style."""
    return WriterStyle(
        amplitudes=rng.uniform(0.05, 0.22, HARMONICS),
        frequencies=rng.uniform(1.0, 7.0, HARMONICS),
        phases=rng.uniform(0.0, 2 * np.pi, HARMONICS),
        loop_amplitude=float(rng.uniform(0.02, 0.12)),
        slant_degrees=float(rng.uniform(-25.0, 25.0)),
        pen_width=float(rng.uniform(1.5, 4.0)),
        size=float(rng.uniform(0.75, 1.0)),
    )


def writer_style(seed: int, writer: int) -> WriterStyle:
    """The style of writer number `writer` in the dataset drawn from `seed`."""
    return random_style(np.random.default_rng([seed, writer]))


def vary_style(style: WriterStyle, deviation: Deviation, rng: np.random.Generator) -> WriterStyle:
    """A sample's style: the writer's, blended with a stranger's and perturbed by `deviation`."""
    stranger = random_style(rng)
    share = deviation.foreign_share

    def blend(own: np.ndarray, other: np.ndarray, scale: float) -> np.ndarray:
        mixed = (1 - share) * own + share * other
        return mixed + rng.normal(0.0, deviation.trajectory_noise * scale, own.shape)

    return WriterStyle(
        amplitudes=np.clip(blend(style.amplitudes, stranger.amplitudes, 0.2), 0.0, None),
        frequencies=np.clip(blend(style.frequencies, stranger.frequencies, 2.0), 0.5, None),
        phases=blend(style.phases, stranger.phases, 3.0),
        loop_amplitude=style.loop_amplitude,
        slant_degrees=style.slant_degrees + float(rng.normal(0.0, deviation.slant_noise_degrees)),
        pen_width=max(1.0, style.pen_width + float(rng.normal(0.0, deviation.width_noise))),
        size=float(np.clip(style.size * (1 + rng.normal(0.0, deviation.size_noise)), 0.5, 1.1)),
    )


def trajectory(style: WriterStyle, tremor: float, rng: np.random.Generator) -> np.ndarray:
    """Pen positions in the unit square, shape (TRAJECTORY_POINTS, 2), for one signature."""
    time = np.linspace(0.0, 1.0, TRAJECTORY_POINTS)
    angles = 2 * np.pi * np.outer(time, style.frequencies) + style.phases
    vertical = (style.amplitudes * np.sin(angles)).sum(axis=1)
    horizontal = time + style.loop_amplitude * np.cos(angles[:, 0] * 2)
    points = np.stack([horizontal, vertical], axis=1)
    if tremor > 0:
        points += rng.normal(0.0, tremor, points.shape)
    slant = np.tan(np.radians(style.slant_degrees))
    points[:, 0] += slant * points[:, 1]
    points -= points.mean(axis=0)
    extent = np.abs(points).max(axis=0).max()
    return points / (2 * extent) * style.size + 0.5


def render(points: np.ndarray, pen_width: float, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the trajectory as an ink stroke on noisy paper; returns an 8-bit grey image."""
    big_width, big_height = width * SUPERSAMPLING, height * SUPERSAMPLING
    paper_level = int(rng.integers(*PAPER_LEVEL_RANGE))
    ink_level = int(rng.integers(*INK_LEVEL_RANGE))
    canvas = Image.new("L", (big_width, big_height), paper_level)
    usable = 1 - 2 * CANVAS_MARGIN
    pixels = [((CANVAS_MARGIN + usable * x) * big_width, (CANVAS_MARGIN + usable * y) * big_height) for x, y in points]
    ImageDraw.Draw(canvas).line(pixels, fill=ink_level, width=round(pen_width * SUPERSAMPLING), joint="curve")
    small = np.asarray(canvas.resize((width, height), Image.Resampling.BOX), dtype=np.float64)
    noisy = small + rng.normal(0.0, rng.uniform(*PAPER_NOISE_RANGE), small.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def draw_sample(params: SyntheticParams, writer: int, kind: str, number: int) -> np.ndarray:
    """The image of sample `number` of `kind` for `writer`, determined by the parameters alone."""
    rng = np.random.default_rng([params.seed, writer, KIND_CODES[kind], number])
    deviation = DEVIATIONS[kind]
    style = vary_style(writer_style(params.seed, writer), deviation, rng)
    points = trajectory(style, deviation.tremor, rng)
    return render(points, style.pen_width, params.width, params.height, rng)


def sample_counts(params: SyntheticParams) -> dict[str, int]:
    """How many samples of each kind every writer gets."""
    return {
        "genuine": params.genuine_per_writer,
        "skilled": params.skilled_per_writer,
        "simple": params.simple_per_writer,
        "opposite": params.opposite_per_writer,
    }


def planned_files(params: SyntheticParams) -> Iterator[tuple[int, str, int, Path]]:
    """(writer, kind, number, relative path) of every file, in UTSig's layout and naming."""
    counts = sample_counts(params)
    for writer in range(1, params.writers + 1):
        for kind, folders in KIND_FOLDERS.items():
            for number in range(1, counts[kind] + 1):
                yield writer, kind, number, Path(ARCHIVE_FOLDER, *folders, str(writer), f"{number}.tif")


def write_synthetic_dataset(params: SyntheticParams, target_dir: Path) -> int:
    """Write the dataset under `target_dir` as 8-bit grey TIFFs; returns the number of files."""
    written = 0
    for writer, kind, number, relative in planned_files(params):
        path = target_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw_sample(params, writer, kind, number)).save(path, format="TIFF", compression="tiff_lzw")
        written += 1
    return written
