"""The `prepare` stage's core: list, preprocess, split, and write the manifest and report.

Images are preprocessed once here (not per epoch) and in parallel processes. Files that cannot
be used are skipped and reported with their reason; they never stop the stage. The split is
decided after preprocessing, so a skipped image never takes a test slot.

The enrolment record (`tasks.enrolment.record`, `data/enrolments/`) is read here too: the references of
every enrolled writer are preprocessed like the dataset's images and put in `train` as that writer's
genuine signatures, and the dataset writers `sigpipe remove` recorded are left out altogether.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from tqdm import tqdm

from tasks.data.datasets import AdapterResult, SignatureRecord, SkippedFile, list_dataset
from tasks.data.images import (
    ImageReadError,
    NoInkError,
    PreprocessSettings,
    preprocess_file,
    save_grey_png,
)
from tasks.data.manifest import MANIFEST_COLUMNS
from tasks.data.split import (
    SPLITS,
    UNKNOWN_WRITER_SPLIT,
    SplitRules,
    assign_splits,
    short_writers,
    writers_without_training,
)
from tasks.enrolment.record import enrolled_records, removed_writers
from tasks.evaluation.scores import UNENROLLED_SPLIT
from tasks.workspace.files import sha256_file, write_csv
from tasks.workspace.params_data import PrepareParams
from tasks.workspace.paths import ProjectPaths

PREPARED_SUFFIX = ".png"
PROCESS_CHUNK_SIZE = 8
ENROLLED_IMAGES = "enrolments"  # the folder of the enrolled references' prepared images, under images/
ENROLLED_SPLIT = "train"  # an enrolled reference is a training genuine image of its writer


@dataclass(frozen=True)
class ProcessedImage:
    """What preprocessing one record produced: its manifest fields, or the reason it failed."""

    record: SignatureRecord
    manifest_path: str = ""
    prepared_path: str = ""
    source_sha256: str = ""
    prepared_sha256: str = ""
    original_width: int = 0
    original_height: int = 0
    ink_threshold: int = 0
    error: str = ""


@dataclass(frozen=True)
class PrepareJob:
    """Everything a worker process needs to preprocess one record: `record.path` is relative to
    `source_dir` (the raw data, or the enrolment record), its prepared image goes under `images/<image_dir>`."""

    record: SignatureRecord
    paths: ProjectPaths
    settings: PreprocessSettings
    source_dir: Path
    image_dir: str = ""


@dataclass(frozen=True)
class PrepareSummary:
    """What the stage wrote, for the flow's log and for the tests."""

    manifest_rows: int
    writers: int
    skipped: int
    counts: dict[str, dict[str, int]]


def settings_from_params(params: PrepareParams) -> PreprocessSettings:
    """The preprocessing settings held in the `prepare` parameters."""
    return PreprocessSettings(
        image_size=params.image_size,
        working_max_side=params.working_max_side,
        blur_radius=params.blur_radius,
        min_contrast=params.min_contrast,
        max_ink_fraction=params.max_ink_fraction,
        min_side_pixels=params.min_side_pixels,
        margin_fraction=params.margin_fraction,
    )


def rules_from_params(params: PrepareParams) -> SplitRules:
    """The split rules held in the `prepare` parameters."""
    return SplitRules(
        test_per_writer=params.test_per_writer,
        train_per_writer=params.train_per_writer,
        val_fraction=params.val_fraction,
        calibration_fraction=params.calibration_fraction,
        seed=params.seed,
        unenrolled_writers=params.unenrolled_writers,
    )


def process_one(job: PrepareJob) -> ProcessedImage:
    """Preprocess one record and write its PNG; failures are returned, not raised."""
    source = job.source_dir / job.record.path
    manifest_path = source.relative_to(job.paths.root).as_posix()
    try:
        result = preprocess_file(source, job.settings)
    except (ImageReadError, NoInkError) as error:
        return ProcessedImage(job.record, manifest_path, error=str(error).removeprefix(f"{source}: "))
    target = job.paths.prepared_images_dir / job.image_dir / (job.record.path + PREPARED_SUFFIX)
    save_grey_png(result.image, target)
    return ProcessedImage(
        record=job.record,
        manifest_path=manifest_path,
        prepared_path=target.relative_to(job.paths.root).as_posix(),
        source_sha256=sha256_file(source),
        prepared_sha256=sha256_file(target),
        original_width=result.original_width,
        original_height=result.original_height,
        ink_threshold=result.threshold,
    )


def process_all(jobs: list[PrepareJob], workers: int, show_progress: bool) -> list[ProcessedImage]:
    """Run `process_one` over every job, in `workers` processes (0: one per CPU), in job order."""
    worker_count = workers or os.cpu_count() or 1
    progress = dict(total=len(jobs), desc="prepare", unit="img", disable=not show_progress)
    if worker_count == 1:
        return [process_one(job) for job in tqdm(jobs, **progress)]
    with ProcessPoolExecutor(max_workers=worker_count) as executor:
        return list(tqdm(executor.map(process_one, jobs, chunksize=PROCESS_CHUNK_SIZE), **progress))


def manifest_rows(processed: Iterable[ProcessedImage], splits: dict[str, str]) -> list[dict[str, object]]:
    """One manifest row per usable image, sorted by writer, kind and path (`splits`: manifest path -> split)."""
    rows = []
    for item in sorted(processed, key=lambda entry: entry.record):
        record = item.record
        rows.append(
            {
                "path": item.manifest_path,
                "prepared_path": item.prepared_path,
                "writer": record.writer,
                "kind": record.kind,
                "sample": record.sample,
                "split": splits[item.manifest_path],
                "source_sha256": item.source_sha256,
                "prepared_sha256": item.prepared_sha256,
                "original_width": item.original_width,
                "original_height": item.original_height,
                "ink_threshold": item.ink_threshold,
            }
        )
    return rows


def count_by_split_and_kind(rows: Iterable[dict[str, object]]) -> dict[str, dict[str, int]]:
    """Counts of manifest rows per split and kind, every split and kind present (zeros included)."""
    counter = Counter((str(row["split"]), str(row["kind"])) for row in rows)
    kinds = ("genuine", "skilled", "simple", "opposite")
    return {split: {kind: counter[(split, kind)] for kind in kinds} for split in SPLITS}


def data_report(
    layout: str,
    summary: PrepareSummary,
    skipped: list[SkippedFile],
    notes: list[str],
    short: dict[str, int],
    rules: SplitRules,
    untrained: dict[str, int],
    unenrolled: Sequence[str] = (),
) -> str:
    """The human-readable data report (markdown): counts, notes, short writers, writers without a
    usable genuine signature (whose forgeries are set aside), skipped files."""
    lines = [
        "# Data report",
        "",
        f"Layout `{layout}`: {summary.manifest_rows} images of {summary.writers} writers; "
        f"{summary.skipped} files skipped.",
        "",
        "| split | genuine | skilled | simple | opposite |",
        "|---|---|---|---|---|",
    ]
    for split, kinds in summary.counts.items():
        lines.append(f"| {split} | " + " | ".join(str(kinds[kind]) for kind in kinds) + " |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in notes or ["None."]]
    wanted = rules.test_per_writer + rules.train_per_writer
    lines += ["", f"## Writers with fewer than {wanted} genuine signatures", ""]
    if short:
        lines.append(f"{len(short)} writers use all they have (test first, then train and val):")
        lines += [f"- {writer}: {count}" for writer, count in short.items()]
    else:
        lines.append("None.")
    lines += ["", "## Writers never enrolled (open set)", ""]
    if unenrolled:
        lines.append(
            f"prepare.unenrolled_writers sets these {len(unenrolled)} writers aside: their genuine signatures are in "
            "`unenrolled` (nothing is fitted on them; evaluation measures how often they are answered as an enrolled "
            "writer), their forgeries in `unused`: " + ", ".join(unenrolled)
        )
    else:
        lines.append("None (prepare.unenrolled_writers is 0, or below one writer's share).")
    lines += ["", "## Writers without a usable genuine signature", ""]
    if untrained:
        lines.append(
            f"The model does not know these {len(untrained)} writers, so their forgeries and opposite-hand "
            f"samples are in `{UNKNOWN_WRITER_SPLIT}`, not in calibration or test (samples set aside):"
        )
        lines += [f"- {writer}: {count}" for writer, count in untrained.items()]
    else:
        lines.append("None.")
    lines += ["", "## Skipped files", ""]
    lines += [f"- `{item.path}`: {item.reason}" for item in skipped] or ["None."]
    return "\n".join(lines) + "\n"


def prepare_dataset(
    paths: ProjectPaths,
    layout: str,
    params: PrepareParams,
    show_progress: bool = True,
) -> tuple[PrepareSummary, AdapterResult, list[SkippedFile]]:
    """List the raw data with the layout's adapter, preprocess, split and write the outputs.

    Writes the manifest, the skipped-file list, the data report and the preprocessed images
    under `paths.prepared_dir`. Returns the summary, the adapter's listing and every skipped
    file (adapter and preprocessing).
    """
    listing = list_dataset(paths.raw_dir, layout)
    settings = settings_from_params(params)
    removed = removed_writers(paths)
    jobs = [
        PrepareJob(record, paths, settings, paths.raw_dir) for record in listing.records if record.writer not in removed
    ]
    enrolled_jobs = [
        PrepareJob(record, paths, settings, paths.enrolments_dir, ENROLLED_IMAGES) for record in enrolled_records(paths)
    ]
    processed = process_all([*jobs, *enrolled_jobs], params.workers, show_progress)
    usable = [item for item in processed[: len(jobs)] if not item.error]
    enrolled = [item for item in processed[len(jobs) :] if not item.error]
    failed = [SkippedFile(item.record.path, item.error) for item in processed[: len(jobs)] if item.error]
    failed += [SkippedFile(item.manifest_path, item.error) for item in processed[len(jobs) :] if item.error]
    skipped = sorted([*listing.skipped, *failed])
    rules = rules_from_params(params)
    raw_prefix = paths.raw_dir.relative_to(paths.root).as_posix()
    assignment = assign_splits([item.record for item in usable], rules)
    splits = {f"{raw_prefix}/{path}": split for path, split in assignment.items()}
    splits.update({item.manifest_path: ENROLLED_SPLIT for item in enrolled})
    rows = manifest_rows([*usable, *enrolled], splits)
    write_csv(paths.manifest_file, MANIFEST_COLUMNS, rows)
    write_csv(paths.skipped_file, ("path", "reason"), (asdict(item) for item in skipped))
    summary = PrepareSummary(
        manifest_rows=len(rows),
        writers=len({row["writer"] for row in rows}),
        skipped=len(skipped),
        counts=count_by_split_and_kind(rows),
    )
    short = short_writers((item.record for item in usable), rules)
    untrained = writers_without_training([item.record for item in usable], assignment)
    unenrolled = sorted({cast(str, row["writer"]) for row in rows if row["split"] == UNENROLLED_SPLIT})
    notes = [*listing.notes, *enrolment_notes(enrolled, removed)]
    report = data_report(layout, summary, skipped, notes, short, rules, untrained, unenrolled)
    paths.data_report_file.write_text(report, encoding="utf-8")
    return summary, listing, skipped


def enrolment_notes(enrolled: Sequence[ProcessedImage], removed: set[str]) -> list[str]:
    """The data report's notes on the enrolment record: writers added from references, writers left out."""
    notes = []
    counts = Counter(item.record.writer for item in enrolled)
    if counts:
        added = ", ".join(f"{writer} ({count})" for writer, count in sorted(counts.items()))
        notes.append(f"Enrolled writers (`sigpipe enrol`, data/enrolments), references in train: {added}")
    if removed:
        notes.append(
            f"Writers removed (`sigpipe remove`, data/enrolments/removed.json), left out: {', '.join(sorted(removed))}"
        )
    return notes


def prepare_metrics(summary: PrepareSummary) -> dict[str, object]:
    """The content of `metrics/prepare.json`."""
    totals: Counter[str] = Counter()
    for kinds in summary.counts.values():
        totals.update(kinds)
    return {
        "images": summary.manifest_rows,
        "writers": summary.writers,
        "skipped_files": summary.skipped,
        "kinds": dict(totals),
        "splits": summary.counts,
    }
