"""Enrolment without retraining against a full retrain, on CEDAR at 150 px, in one script (issue 26).

In scratch copies of HEAD's files (`git archive`, as bench/lean_pipeline.py makes them), with this
interpreter, `model.weights: none`, `prepare.image_size: 150`, `prepare.unenrolled_writers: 0.105` (the same
5 never-enrolled writers with 55 and with 49 writers: see UNENROLLED_SHARE), CEDAR as a local source:
1. **full**: `dvc repro` on all 55 writers. Six enrolled writers are then drawn by a seeded rule
   (`--seed`) among the writers the model knows whose skilled forgeries are in `test` (so none of
   their forgeries fitted the threshold and each has a test skilled FAR): the first five are the
   writers of the quality comparison, the sixth the writer of the timed enrolment.
2. **without**: a scratch copy of CEDAR without the six writers' files (data/raw is left alone;
   removed.json is not used, so nothing of the record's removal path is in the way), `dvc repro`,
   then `sigpipe enrol WRITER <its training references>` for the five (the genuine images the full
   run's manifest put in that writer's `train` split, 15 each), with `enrol.tolerance: 1.0` in both
   workspaces so that every enrolment registers as champion (each command's line, with the
   validation figures the champion rule compared, is kept in the results).
3. Scoring: each registered version is loaded with `load_verified_model` and its
   `SignatureClassifier` scores the raw test images (preprocessed as `prepare` does, so the genuine /
   forgery background difference of CEDAR's scans is normalised as in serving), claimed as their
   own writer, at the version's registered threshold; FRR and skilled FAR with
   `tasks.evaluation.metrics.false_rates`. Versions scored: the full retrain, the model trained
   without the six, the model after the five enrolments (the quality comparison), after the timed
   sixth, and the next `dvc repro`'s rebuild. The full and without models are also read from their
   evaluate stage's score table (data/scores/scores.npz) at models/calibration.json's threshold.
4. Timing: the sixth writer enrolled from 10 of its training references (`sigpipe enrol`, a fresh
   process: imports, base build, 10 x 5 views embedded, the writer's model solved, package, register), then `dvc repro`
   of that workspace (which rebuilds everything from prepare on, now with the enrolled writer), one
   after the other, with the load average before and after each. The model-server path (a running
   server embedding the references) is not built: reported as such.

Each helper step that needs the project's code (`score`) runs as a subprocess in the scratch
workspace, with that workspace's `tasks` first on sys.path.

Usage: python bench/enrolment.py [--cedar ../shared/datasets/cedar] [--seed 26] [--keep DIR]
       python bench/enrolment.py [--output FILE] retime --scratch DIR   # timing again in a kept run
       python bench/enrolment.py [--output FILE] cache --scratch DIR    # with and without the kept verifier
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lean_pipeline import edit_params, environment, workspace_of  # this folder is on sys.path when it runs

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE = PROJECT_ROOT / "bench" / "results" / "enrolment_cedar_150.json"
DEFAULT_CEDAR = PROJECT_ROOT.parent / "shared" / "datasets" / "cedar"
MODEL_NAME = "utsig-inceptionv3"  # params.yaml's register.model_name, unchanged
SIZE = 150
QUALITY_WRITERS = 5
TIMED_REFERENCES = 10
# prepare.unenrolled_writers: floor(share x writers) writers are held out as never enrolled. At the default
# 0.1 that is 5 of 55 writers but 4 of the 49 left without the six, and one held-out writer would become a
# class (and its forgeries calibration or test data) in one workspace only; 0.105 holds out the same 5 in
# both (floor(5.8) = floor(5.1) = 5, the 5 lowest draws), so every other writer's split is the same.
UNENROLLED_SHARE = 0.105
TOLERANCE = 1.0  # enrol.tolerance: every enrolment registers as champion (the figures compared are kept)
CEDAR_FOLDERS = {"genuine": "full_org", "skilled": "full_forg"}
CEDAR_FILE = re.compile(r"^(?:original|forgeries)_(?P<writer>\d+)_\d+\.png$", re.IGNORECASE)
VERSION_LINE = re.compile(r"version (?P<version>\d+) is (?P<alias>\w+)")
TARGETS = {"enrolled_vs_full": 0.03, "others_vs_without": 0.01, "enrol_seconds_no_server": 10.0}


@dataclass(frozen=True)
class Step:
    """A command's wall seconds, output, and the load average (1, 5, 15 min) before and after it."""

    seconds: float
    output: str
    load_before: tuple[float, ...]
    load_after: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 2),
            "load_before": [round(value, 2) for value in self.load_before],
            "load_after": [round(value, 2) for value in self.load_after],
        }


def run_step(command: Sequence[str], cwd: Path) -> Step:
    """Run `command` in `cwd` (this interpreter's tools first on PATH); stops the bench with its output on failure."""
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = subprocess.run(list(command), cwd=cwd, env=environment(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(
            f"{' '.join(command)} in {cwd} failed (exit {result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return Step(seconds, (result.stdout + result.stderr).strip(), load_before, os.getloadavg())


def cedar_workspace(folder: Path, cedar: Path) -> Path:
    """A fresh copy of HEAD in `folder` reading `cedar` at 150 px, with the bench's enrol tolerance."""
    workspace = workspace_of("HEAD", folder)
    edit_params(
        workspace / "params.yaml",
        {
            "data": {"source": "local", "layout": "cedar", "path": str(cedar)},
            "prepare": {"image_size": SIZE, "unenrolled_writers": UNENROLLED_SHARE},
            "model": {"weights": "none"},
            "enrol": {"tolerance": TOLERANCE},
        },
    )
    return workspace


def read_manifest(workspace: Path) -> list[dict[str, str]]:
    with (workspace / "data" / "prepared" / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def sample_key(row: dict[str, str]) -> int:
    return int(row["sample"])


def drawn_writers(rows: Sequence[dict[str, str]], seed: int, count: int) -> list[str]:
    """`count` writers drawn (seeded) among those with training images and skilled forgeries in `test`."""
    trained = {row["writer"] for row in rows if row["kind"] == "genuine" and row["split"] == "train"}
    test_side = {row["writer"] for row in rows if row["kind"] == "skilled" and row["split"] == "test"}
    candidates = sorted(trained & test_side)
    order = np.random.default_rng(seed).permutation(len(candidates))
    return [candidates[index] for index in order[:count]]


def cedar_file(cedar: Path, row: dict[str, str]) -> Path:
    """The dataset's own file of a manifest row (the workspace's data/raw holds a copy of it)."""
    path = cedar / CEDAR_FOLDERS[row["kind"]] / Path(row["path"]).name
    if not path.is_file():
        sys.exit(f"{path}: not found for manifest row {row['path']}")
    return path


def training_references(cedar: Path, rows: Sequence[dict[str, str]], writer: str) -> list[Path]:
    """The genuine images the full run's manifest put in `writer`'s train split, in sample order."""
    chosen = [row for row in rows if row["writer"] == writer and row["kind"] == "genuine" and row["split"] == "train"]
    return [cedar_file(cedar, row) for row in sorted(chosen, key=sample_key)]


def cedar_without(cedar: Path, folder: Path, writers: set[str]) -> int:
    """A copy of CEDAR's image folders in `folder` without the files of `writers`; how many files it left out."""
    left_out = 0
    for name in CEDAR_FOLDERS.values():
        (folder / name).mkdir(parents=True)
        for source in sorted((cedar / name).iterdir()):
            match = CEDAR_FILE.match(source.name)
            if match and f"{int(match['writer']):03d}" in writers:
                left_out += 1
                continue
            shutil.copy2(source, folder / name / source.name)
    return left_out


def scoring_images(
    cedar: Path, rows: Sequence[dict[str, str]], quality: Sequence[str], timed: str
) -> list[dict[str, str]]:
    """The full run's test genuine and test skilled-forgery images of every writer it knows, with the writer's group."""
    known = {row["writer"] for row in rows if row["kind"] == "genuine" and row["split"] == "train"}
    images = []
    for row in rows:
        if row["split"] != "test" or row["kind"] not in CEDAR_FOLDERS or row["writer"] not in known:
            continue
        group = "enrolled" if row["writer"] in quality else "timed" if row["writer"] == timed else "others"
        images.append(
            {"path": str(cedar_file(cedar, row)), "writer": row["writer"], "kind": row["kind"], "group": group}
        )
    return images


def splits_of(rows: Sequence[dict[str, str]], writers: set[str]) -> dict[str, str]:
    return {Path(row["path"]).name: row["split"] for row in rows if row["writer"] in writers}


def enrol(workspace: Path, writer: str, references: Sequence[Path]) -> tuple[Step, str, str]:
    """`sigpipe enrol WRITER REFERENCES...` in `workspace`: the step, the version it registered, its alias."""
    step = run_step([sys.executable, "-m", "tasks.cli.app", "enrol", writer, *map(str, references)], workspace)
    match = VERSION_LINE.search(step.output)
    if match is None:
        sys.exit(f"enrol {writer}: no version in its output:\n{step.output}")
    return step, match["version"], match["alias"]


def answer_line(output: str) -> str:
    """The enrol command's answer line (its output may hold library warnings too)."""
    return next((line for line in output.splitlines() if line.startswith("enrolled writer")), output[-500:])


def registered_version(workspace: Path) -> str:
    """The version the register stage registered in the workspace's last `dvc repro`."""
    return str(json.loads((workspace / "metrics" / "register.json").read_text())["version"])


def scored(workspace: Path, version: str, images_file: Path, output: Path, table: bool) -> dict[str, object]:
    """The `score` helper on version `version` of the workspace's registry (a subprocess with its code)."""
    command = [sys.executable, str(Path(__file__).resolve()), "score", "--workspace", str(workspace)]
    command += ["--model-uri", f"models:/{MODEL_NAME}/{version}", "--images", str(images_file)]
    command += ["--output", str(output)] + (["--table"] if table else [])
    step = run_step(command, workspace)
    result: dict[str, object] = json.loads(output.read_text())
    result["scoring_seconds"] = round(step.seconds, 1)
    return result


def group_figures(
    scores: np.ndarray, images: Sequence[dict[str, str]], group: str, threshold: float
) -> dict[str, float | int]:
    """FRR and skilled FAR of one group's images from their claim scores, at `threshold`."""
    from tasks.evaluation.metrics import false_rates

    kinds = np.array([item["kind"] for item in images])
    chosen = np.array([item["group"] == group for item in images])
    genuine, skilled = scores[chosen & (kinds == "genuine")], scores[chosen & (kinds == "skilled")]
    frr, far = false_rates(genuine, skilled, threshold)
    return {"frr": frr, "far_skilled": far, "genuine": len(genuine), "skilled": len(skilled)}


def table_figures(workspace: Path, writers: set[str]) -> dict[str, float | int]:
    """FRR and skilled FAR of `writers`' test images from the evaluate stage's score table, at the calibrated
    threshold (models/calibration.json)."""
    from tasks.evaluation.metrics import false_rates
    from tasks.evaluation.scores import claimed_scores, load_scores

    calibration = json.loads((workspace / "models" / "calibration.json").read_text())
    table = load_scores(workspace / "data" / "scores" / "scores.npz")
    indices = [position for position, writer in enumerate(calibration["classes"]) if writer in writers]
    figures: dict[str, np.ndarray] = {}
    for kind in ("genuine", "skilled"):
        rows = table.select("test", kind)
        rows = rows.rows(np.isin(rows.claimed, indices))
        figures[kind] = claimed_scores(rows.verification.astype(np.float64), rows.claimed)
    frr, far = false_rates(figures["genuine"], figures["skilled"], float(calibration["threshold"]))
    return {"frr": frr, "far_skilled": far, "genuine": len(figures["genuine"]), "skilled": len(figures["skilled"])}


def score_command(workspace: Path, model_uri: str, images_file: Path, output: Path, table: bool) -> None:
    """Helper (run in the scratch workspace): score the listed images with a registered version."""
    sys.path.insert(0, str(workspace))
    os.chdir(workspace)
    from flows._stage import quiet_environment
    from tasks.cli.quiet import import_tensorflow

    quiet_environment()
    import_tensorflow()
    import mlflow

    from tasks.data.images import preprocess_file
    from tasks.registration.model_store import load_verified_model, workspace_keys
    from tasks.tracking.runs import tracking_uri
    from tasks.workspace.paths import ProjectPaths

    paths = ProjectPaths.from_root(workspace)
    mlflow.set_tracking_uri(tracking_uri(paths))
    started = time.perf_counter()
    loaded = load_verified_model(model_uri, workspace_keys(paths))
    model, load_seconds = loaded.model, time.perf_counter() - started
    images: list[dict[str, str]] = [
        item for item in json.loads(images_file.read_text()) if item["writer"] in model.classes
    ]
    pixels = np.stack([preprocess_file(Path(item["path"]), model.settings).image for item in images])
    probabilities, claims = model.scores(pixels)
    columns = np.array([model.classes.index(item["writer"]) for item in images])
    scores = claims[np.arange(len(images)), columns].astype(np.float64)
    groups = sorted({item["group"] for item in images})
    result: dict[str, object] = {
        "model_uri": model_uri,
        "version": loaded.version,
        "writers": len(model.classes),
        "threshold": model.threshold,
        "load_seconds": round(load_seconds, 1),
        "figures": {group: group_figures(scores, images, group, model.threshold) for group in groups},
        "identification_accuracy_test_genuine": {
            group: float(
                np.mean(
                    [
                        np.argmax(row) == column
                        for row, column, item in zip(probabilities, columns, images, strict=True)
                        if item["group"] == group and item["kind"] == "genuine"
                    ]
                )
            )
            for group in groups
        },
        "scores": {item["path"]: float(score) for item, score in zip(images, scores, strict=True)},
    }
    if table:
        result["table_figures"] = {
            group: table_figures(workspace, {item["writer"] for item in images if item["group"] == group})
            for group in groups
        }
    output.write_text(json.dumps(result, indent=1) + "\n")


def deltas(after: dict[str, float | int], before: dict[str, float | int]) -> dict[str, float]:
    return {figure: float(after[figure]) - float(before[figure]) for figure in ("frr", "far_skilled")}


def max_score_difference(first: dict[str, object], second: dict[str, object]) -> float:
    """The largest |claim score difference| of the images both versions scored."""
    one, two = first["scores"], second["scores"]
    assert isinstance(one, dict) and isinstance(two, dict)
    common = one.keys() & two.keys()
    return max(abs(one[path] - two[path]) for path in common) if common else float("nan")


def score_shifts(
    after: dict[str, object], before: dict[str, object], images: Sequence[dict[str, str]], group: str
) -> dict[str, dict[str, float]]:
    """How the claim scores of `group`'s images moved from `before` to `after`, per kind: mean, median |.|, max |.|."""
    one, two = after["scores"], before["scores"]
    assert isinstance(one, dict) and isinstance(two, dict)
    shifts = {}
    for kind in CEDAR_FOLDERS:
        paths = [item["path"] for item in images if item["group"] == group and item["kind"] == kind]
        moved = np.array([one[path] - two[path] for path in paths if path in one and path in two])
        shifts[kind] = {
            "mean": float(moved.mean()),
            "median_abs": float(np.median(np.abs(moved))),
            "max_abs": float(np.abs(moved).max()),
        }
    return shifts


def without_scores(result: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in result.items() if key != "scores"}


def bench(cedar: Path, scratch: Path, seed: int) -> dict[str, object]:
    """Every step above, in order; returns the results."""
    commit = subprocess.run(  # what the workspaces are archived from (HEAD may move during the run)
        ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True
    ).stdout.strip()
    full = cedar_workspace(scratch / "full", cedar)
    full_repro = run_step(["dvc", "repro"], full)
    print(f"full retrain: dvc repro {full_repro.seconds:.1f} s", flush=True)
    full_rows = read_manifest(full)
    chosen = drawn_writers(full_rows, seed, QUALITY_WRITERS + 1)
    quality, timed = chosen[:QUALITY_WRITERS], chosen[QUALITY_WRITERS]
    print(f"writers: enrolled {quality}, timed {timed}", flush=True)
    raw_copy = scratch / "cedar_without"
    left_out = cedar_without(cedar, raw_copy, set(chosen))
    without = cedar_workspace(scratch / "without", raw_copy)
    without_repro = run_step(["dvc", "repro"], without)
    print(f"without the six: dvc repro {without_repro.seconds:.1f} s", flush=True)
    without_rows = read_manifest(without)
    others = {row["writer"] for row in full_rows} - set(chosen)
    same_splits = splits_of(full_rows, others) == splits_of(without_rows, others)
    if not same_splits:
        sys.exit("the other writers' splits differ between the two workspaces: the comparison would not hold")
    trained_without = registered_version(without)
    images_file = scratch / "images.json"
    images = scoring_images(cedar, full_rows, quality, timed)
    images_file.write_text(json.dumps(images))

    enrolments = []
    for writer in quality:
        references = training_references(cedar, full_rows, writer)
        step, version, alias = enrol(without, writer, references)
        enrolments.append({"writer": writer, "references": len(references), "version": version, "alias": alias})
        enrolments[-1].update({**step.as_dict(), "output": answer_line(step.output)})
        print(f"enrol {writer}: {step.seconds:.1f} s, version {version} {alias}", flush=True)
    after_five = enrolments[-1]["version"]

    models = {
        "full": scored(full, registered_version(full), images_file, scratch / "full.json", table=True),
        "trained_without": scored(without, trained_without, images_file, scratch / "trained_without.json", True),
        "enrolled": scored(without, str(after_five), images_file, scratch / "enrolled.json", table=False),
    }
    print("scored the full, trained-without and enrolled versions", flush=True)

    timed_references = training_references(cedar, full_rows, timed)[:TIMED_REFERENCES]
    timed_step, timed_version, timed_alias = enrol(without, timed, timed_references)
    repro_after = run_step(["dvc", "repro"], without)
    print(f"timed: enrol {timed_step.seconds:.1f} s, dvc repro after it {repro_after.seconds:.1f} s", flush=True)
    rebuilt = registered_version(without)
    models["enrolled_six"] = scored(without, timed_version, images_file, scratch / "enrolled_six.json", False)
    models["rebuilt"] = scored(without, rebuilt, images_file, scratch / "rebuilt.json", table=True)

    figures = {name: result["figures"] for name, result in models.items()}
    comparison = {
        "enrolled_vs_full": deltas(figures["enrolled"]["enrolled"], figures["full"]["enrolled"]),
        "others_enrolled_vs_trained_without": deltas(
            figures["enrolled"]["others"], figures["trained_without"]["others"]
        ),
        "enrolled_six_vs_full": deltas(figures["enrolled_six"]["enrolled"], figures["full"]["enrolled"]),
        "others_enrolled_six_vs_trained_without": deltas(
            figures["enrolled_six"]["others"], figures["trained_without"]["others"]
        ),
        "rebuilt_vs_enrolled_six_max_claim_score_difference": max_score_difference(
            models["rebuilt"], models["enrolled_six"]
        ),
        # the trained-without version knows only the other writers: the images both scored are theirs
        "others_enrolled_vs_trained_without_max_claim_score_difference": max_score_difference(
            models["enrolled"], models["trained_without"]
        ),
    }
    comparison["others_claim_score_shift"] = {
        "enrolled_minus_trained_without": score_shifts(models["enrolled"], models["trained_without"], images, "others"),
        "enrolled_minus_full": score_shifts(models["enrolled"], models["full"], images, "others"),
    }
    comparison["met"] = {
        "enrolled_vs_full": max(map(abs, comparison["enrolled_vs_full"].values())) <= TARGETS["enrolled_vs_full"],
        "others_vs_without": max(map(abs, comparison["others_enrolled_vs_trained_without"].values()))
        <= TARGETS["others_vs_without"],
        "enrol_seconds_no_server": timed_step.seconds < TARGETS["enrol_seconds_no_server"],
    }
    return {
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
        "python": platform.python_version(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "params": {
            "data": {"source": "local", "layout": "cedar", "path": str(cedar)},
            "prepare.image_size": SIZE,
            "prepare.unenrolled_writers": UNENROLLED_SHARE,
            "model.weights": "none",
            "enrol.tolerance": TOLERANCE,
            "other params": "params.yaml of the commit",
        },
        "selection": {
            "rule": "numpy default_rng(seed).permutation of the sorted writers with train genuine images and test "
            "skilled forgeries in the full run's manifest; first 5 enrolled, the 6th timed",
            "seed": seed,
            "enrolled_writers": quality,
            "timed_writer": timed,
            "files_left_out_of_the_without_copy": left_out,
            "other_writers_same_splits": same_splits,
        },
        "targets": TARGETS,
        "steps": {
            "full_dvc_repro": full_repro.as_dict(),
            "without_dvc_repro": without_repro.as_dict(),
            "enrolments": enrolments,
            "timed_enrolment": {
                "writer": timed,
                "references": len(timed_references),
                "version": timed_version,
                "alias": timed_alias,
                **timed_step.as_dict(),
                "output": answer_line(timed_step.output),
            },
            "dvc_repro_after_timed_enrolment": {**repro_after.as_dict(), "registered_version": rebuilt},
            "enrol_over_repro": timed_step.seconds / repro_after.seconds,
            "with_model_server": "not built: no server path embeds references; not measured",
        },
        "models": {name: without_scores(result) for name, result in models.items()},
        "comparison": comparison,
    }


def retime(cedar: Path, scratch: Path, results_file: Path) -> None:
    """Time the timed enrolment and the `dvc repro` after it again, in a kept scratch folder of an earlier run:
    `sigpipe remove` the timed writer (not timed), enrol it again from the same references, `dvc repro`.
    Added to the results as `retimed` (for a second measurement when the machine is quieter)."""
    results = json.loads(results_file.read_text())
    writer = results["selection"]["timed_writer"]
    references = training_references(cedar, read_manifest(scratch / "full"), writer)[:TIMED_REFERENCES]
    workspace = scratch / "without"
    removal = run_step([sys.executable, "-m", "tasks.cli.app", "remove", writer], workspace)
    step, version, alias = enrol(workspace, writer, references)
    # The record holds the same files as before the removal, so a plain `dvc repro` finds nothing changed:
    # forced from prepare on, it redoes what the first run's `dvc repro` after the enrolment did.
    repro = run_step(["dvc", "repro", "--force", "--downstream", "prepare"], workspace)
    print(f"retimed: enrol {step.seconds:.1f} s, dvc repro after it {repro.seconds:.1f} s", flush=True)
    results["retimed"] = {
        "how": f"`sigpipe remove {writer}` (not timed), the same enrolment, `dvc repro --force --downstream prepare`",
        "remove_seconds": round(removal.seconds, 2),
        "timed_enrolment": {"version": version, "alias": alias, **step.as_dict(), "output": answer_line(step.output)},
        "dvc_repro_after_timed_enrolment": {**repro.as_dict(), "registered_version": registered_version(workspace)},
        "enrol_over_repro": step.seconds / repro.seconds,
    }
    results_file.write_text(json.dumps(results, indent=2) + "\n")


def cache_comparison(cedar: Path, scratch: Path, results_file: Path) -> None:
    """The timed enrolment twice more in a kept scratch folder, back to back: with the verifier the last fit
    kept (`models/verifier_cache.npz`: what every enrolment finds after a removal, an enrolment or `dvc
    repro`), then with that file deleted (the record without the change is solved again, as before session
    16). Each after a `sigpipe remove` of the writer (not timed). Added to the results as `verifier_cache`."""
    results = json.loads(results_file.read_text())
    writer = results["selection"]["timed_writer"]
    references = training_references(cedar, read_manifest(scratch / "full"), writer)[:TIMED_REFERENCES]
    workspace = scratch / "without"
    timings = {}
    cases = (("kept_verifier", True, "the kept verifier"), ("solved_again", False, "the record solved again"))
    for label, cache_kept, described in cases:
        run_step([sys.executable, "-m", "tasks.cli.app", "remove", writer], workspace)
        if not cache_kept:
            (workspace / "models" / "verifier_cache.npz").unlink()
        step, version, alias = enrol(workspace, writer, references)
        print(f"enrol {writer} with {described}: {step.seconds:.1f} s", flush=True)
        timings[label] = {"version": version, "alias": alias, **step.as_dict(), "output": answer_line(step.output)}
    results["verifier_cache"] = {
        "how": f"`sigpipe remove {writer}` (not timed), then the timed enrolment: first with the verifier the removal "
        "kept, then with models/verifier_cache.npz deleted first",
        **timings,
        "saved_seconds": round(timings["solved_again"]["seconds"] - timings["kept_verifier"]["seconds"], 2),
    }
    results_file.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    score = commands.add_parser("score", help="helper: score images with a registered version (run by the bench)")
    score.add_argument("--workspace", type=Path, required=True)
    score.add_argument("--model-uri", required=True)
    score.add_argument("--images", type=Path, required=True)
    score.add_argument("--output", type=Path, required=True)
    score.add_argument("--table", action="store_true", help="also the figures of the workspace's score table")
    again = commands.add_parser("retime", help="time the enrolment and dvc repro again in a kept scratch folder")
    again.add_argument("--scratch", type=Path, required=True, help="the --keep folder of an earlier run")
    cached = commands.add_parser("cache", help="time the enrolment with and without the kept verifier (kept run)")
    cached.add_argument("--scratch", type=Path, required=True, help="the --keep folder of an earlier run")
    parser.add_argument("--cedar", type=Path, default=DEFAULT_CEDAR)
    parser.add_argument("--seed", type=int, default=26, help="seed of the writers' draw")
    parser.add_argument("--keep", type=Path, help="scratch folder to keep (default: a temporary one, removed)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    arguments = parser.parse_args()
    if arguments.command == "score":
        score_command(arguments.workspace, arguments.model_uri, arguments.images, arguments.output, arguments.table)
        return
    if arguments.command == "retime":
        retime(arguments.cedar.resolve(), arguments.scratch.resolve(), arguments.output)
        return
    if arguments.command == "cache":
        cache_comparison(arguments.cedar.resolve(), arguments.scratch.resolve(), arguments.output)
        return
    if arguments.keep:
        arguments.keep.mkdir(parents=True)
        result = bench(arguments.cedar.resolve(), arguments.keep.resolve(), arguments.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-enrolment-") as scratch:
            result = bench(arguments.cedar.resolve(), Path(scratch), arguments.seed)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["comparison"], indent=2))


if __name__ == "__main__":
    main()
