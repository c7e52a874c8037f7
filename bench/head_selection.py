"""How the defaults of the head, the verifier's penalty and the augmentation are chosen: by a rule
written in code (`choose`), on validation and calibration-writer figures averaged over writer
partitions, never on test.

Candidates, all on one embedding file (bench/embeddings.py; the pipeline's split with
params.yaml's `prepare` rules, unenrolled writers included): augmentation none / signature /
mild / reference (the clean training images plus `train.augmented_views` views of each) x head:
- `ridge`: the writer-dependent verifier used as the head, L2 penalty 0.0003 to 0.3, without and with
  within-writer whitening (`model.verifier_whitening` 0.01 and 0.1) (no TensorFlow);
- `linear` and `mlp` (Dense(1024), the reference's head): Keras, Adam 1e-3, batch 16, early
  stopping on validation loss (patience 10, at most 100 epochs), best epoch kept; claim score the
  softmax probability (`--no-keras` leaves them out).

Selection columns (`SelectionFigures`, all the rule sees):
- the calibration-writer skilled EER: the writers of the `prepare` split's calibration side (never
  its test writers) are divided `evaluate.partitions` times (seeded) in the proportion
  `prepare.calibration_fraction`, and for each division the EER of the validation genuine claims
  of every enrolled writer against the skilled forgeries of that division's calibration writers is
  measured; the column is its mean over the divisions (interval Nadeau-Bengio corrected). It is
  computed on a table with nothing of the test split and no unenrolled writer (`selection_rows`);
- validation accuracy (identification of the validation genuine images).
The rule: the lowest mean calibration-writer EER; candidates within `TIE_TOLERANCE` (0.002) of
it are tied, and the tie goes to the higher validation accuracy, then to the simpler model: no
whitening before whitening, then the larger ridge penalty (a Keras head has none and comes after
any ridge head), then the earlier candidate in the order above (less augmentation first).

The embedding (`model.ink`, `model.pooled_layers`) is chosen by the same rule in a second step,
`--grid embedding`: one embedding file per candidate embedding (bench/embeddings.py `--ink`,
`--pooled-layers`), on each the ridge head with params.yaml's augmentation and no whitening (what
the full grid chose) at every penalty; the penalty is chosen again with the embedding. Ties go, as in
the full grid, to the higher validation accuracy, then the larger penalty, and only then to the earlier
file (list them simplest first). Each step's results file is kept
(`head_selection_*` and `embedding_selection_*`).

Test columns (test accuracy; over the quality bench's partitions of all writers, the test writers'
a-posteriori skilled EER, global and per writer, FRR and skilled FAR at the calibrated threshold)
are recorded beside them and never passed to the rule.

Usage:
  python bench/embeddings.py --dataset cedar --size 150 --output /tmp/emb_cedar_150.npz
  python bench/head_selection.py --embeddings /tmp/emb_cedar_150.npz [--write-readme]
  python bench/head_selection.py --grid embedding --embeddings /tmp/dark_mixed10.npz /tmp/bright_mixed10.npz ...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.peers import (  # noqa: E402
    GENUINE,
    EmbeddedSplit,
    keras_head_scorer,
    load_embedded,
    machine,
    params_embedding,
    partition_settings,
    read_params,
    results_header,
    ridge_scorer,
    score_table,
    split_rules,
    training_set,
    validation_set,
)
from bench.tables import (  # noqa: E402
    RESULTS_DIR,
    embedding_label,
    embedding_selection_block,
    selection_block,
    write_readme_blocks,
)
from tasks.data.split import UNENROLLED_SPLIT  # noqa: E402
from tasks.evaluation.metrics import equal_error_rate  # noqa: E402
from tasks.evaluation.partitions import (  # noqa: E402
    calibration_forgeries,
    forgery_writers,
    mean_interval,
    overlap_ratio,
    partition_report,
    writer_partitions,
)
from tasks.evaluation.scores import ScoreTable, claimed_scores  # noqa: E402

AUGMENTATIONS = ("none", "signature", "mild", "reference")
RIDGE = "ridge"
RIDGE_PENALTIES = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
WHITENINGS = (0.0, 0.01, 0.1)  # model.verifier_whitening of the ridge candidates (0: off)
KERAS_HEADS = {"linear": 0, "mlp": 1024}  # head name -> Dense(relu) units before the softmax (0: none)
TIE_TOLERANCE = 0.002  # calibration-writer EERs this close to the lowest are tied
CHOICE_KEYS = ("head", "penalty", "whitening", "augmentation")
RULE = (
    "lowest mean over partitions of the calibration-writer skilled EER (validation genuine claims against "
    f"the partition's calibration writers' skilled forgeries); within {TIE_TOLERANCE} of it, the higher "
    "validation accuracy, then the simpler model (no whitening first, then the larger ridge penalty; Keras heads "
    "after ridge), then less augmentation, then the earlier embedding file"
)


@dataclass(frozen=True)
class SelectionFigures:
    """What the rule may read of a candidate: its name and its selection columns, nothing of test."""

    augmentation: str
    head: str
    penalty: float | None
    whitening: float
    calibration_eer: float
    val_accuracy: float
    embedding: str = ""  # the embedding file's `model.ink` and pooled blocks (`embedding_label`)


def choose(candidates: Sequence[SelectionFigures], tolerance: float = TIE_TOLERANCE) -> SelectionFigures:
    """The selection rule: the lowest mean calibration-writer EER, ties (within `tolerance`) to the
    higher validation accuracy, then the simpler model (the weaker whitening, then the larger penalty;
    a Keras head, with no penalty, after every ridge head), then list order."""
    finite = [candidate for candidate in candidates if not math.isnan(candidate.calibration_eer)]
    if not finite:
        raise ValueError("no candidate has a calibration-writer EER to choose by")
    lowest = min(candidate.calibration_eer for candidate in finite)
    tied = [(position, c) for position, c in enumerate(finite) if c.calibration_eer <= lowest + tolerance]
    return min(
        tied,
        key=lambda entry: (
            -entry[1].val_accuracy,
            entry[1].whitening,
            math.inf if entry[1].penalty is None else -entry[1].penalty,
            entry[0],
        ),
    )[1]


def selection_columns(row: dict[str, object]) -> SelectionFigures:
    """A results row reduced to what the rule may read (its `test` columns are dropped here)."""
    selection = row["selection"]
    return SelectionFigures(
        augmentation=str(row["augmentation"]),
        head=str(row["head"]),
        penalty=None if row["penalty"] is None else float(row["penalty"]),
        whitening=float(row.get("whitening") or 0.0),
        calibration_eer=float(selection["calibration_eer"]["mean"]),
        val_accuracy=float(selection["val_accuracy"]),
        embedding=str(row.get("embedding", "")),
    )


def chosen_row(rows: Sequence[dict[str, object]]) -> dict[str, object]:
    """The results row the rule picks, judged on its selection columns only."""
    choice = choose([selection_columns(row) for row in rows])
    return next(row for row in rows if selection_columns(row) == choice)


def selection_rows(table: ScoreTable) -> ScoreTable:
    """The rows selection may read: nothing of the test split (neither its genuine images nor the test
    writers' forgeries) and nothing of the unenrolled writers; so the rule sees the calibration split's
    writers only, which the quality bench's prepare-split figures never test on."""
    return table.rows(~((table.splits == "test") | (table.splits == UNENROLLED_SPLIT)))


def calibration_writer_eers(table: ScoreTable, divisions: Sequence[np.ndarray]) -> list[float]:
    """Per division, the EER of validation genuine claims against its calibration writers' skilled forgeries."""
    rows = selection_rows(table)
    validation = rows.select("val", GENUINE)
    genuine = claimed_scores(validation.verification, validation.claimed)
    eers = []
    for calibration in divisions:
        impostors = calibration_forgeries(rows, calibration)
        eers.append(
            equal_error_rate(genuine, claimed_scores(impostors.verification, impostors.claimed), with_auc=False).eer
        )
    return eers


def identification_accuracy(table: ScoreTable, split: str) -> float:
    """Share of one split's enrolled genuine images whose top-scoring writer is their own."""
    rows = table.select(split, GENUINE)
    return float(np.mean(np.argmax(rows.logits, axis=1) == rows.claimed)) if len(rows) else math.nan


def candidate_figures(
    table: ScoreTable, calibration_fraction: float, partitions: int, seed: int, objective: str, target_far: float
) -> dict[str, dict[str, object]]:
    """A candidate's selection columns and, apart, its test columns (for the record)."""
    selectable = forgery_writers(selection_rows(table))
    divisions = writer_partitions(selectable, calibration_fraction, partitions, seed)
    chosen_count = len(divisions[0]) if divisions else 0
    ratio = overlap_ratio(chosen_count, len(selectable) - chosen_count)
    report = partition_report(table, calibration_fraction, partitions, seed, objective, target_far)
    return {
        "selection": {
            "calibration_eer": mean_interval(
                calibration_writer_eers(table, divisions), test_to_calibration=ratio
            ).as_dict(),
            "val_accuracy": identification_accuracy(table, "val"),
        },
        "test": {
            "accuracy": identification_accuracy(table, "test"),
            **{
                name: report[name]
                for name in ("eer_skilled_a_posteriori", "eer_skilled_per_writer_a_posteriori", "frr", "far_skilled")
            },
        },
    }


def embedding_candidates(augmentation: str) -> list[tuple[str, str, float | None, float]]:
    """The `--grid embedding` candidates of one file: the ridge head on params.yaml's augmentation,
    no whitening, every penalty (the embedding step of the rule, after the full grid chose the rest)."""
    return [(augmentation, RIDGE, penalty, 0.0) for penalty in RIDGE_PENALTIES]


def candidates(data: EmbeddedSplit, views: int, keras_heads: bool) -> list[tuple[str, str, float | None, float]]:
    """(augmentation, head, penalty, whitening) of every candidate, in the rule's final tie-break order."""
    listed: list[tuple[str, str, float | None, float]] = []
    for augmentation in AUGMENTATIONS:
        if augmentation != "none" and augmentation not in data.views:
            continue
        listed.extend(
            (augmentation, RIDGE, penalty, whitening) for whitening in WHITENINGS for penalty in RIDGE_PENALTIES
        )
        if keras_heads:
            listed.extend((augmentation, head, None, 0.0) for head in KERAS_HEADS)
    return listed


def evaluate_candidate(
    data: EmbeddedSplit,
    augmentation: str,
    head: str,
    penalty: float | None,
    whitening: float,
    views: int,
    settings: dict[str, object],
) -> dict[str, object]:
    """Fit one candidate on the training rows and measure it."""
    started = time.perf_counter()
    samples, labels = training_set(data, augmentation, views)
    epochs = None
    if head == RIDGE:
        scorer = ridge_scorer(samples, labels, data.class_count, float(penalty), whitening)
    else:
        scorer, epochs = keras_head_scorer(samples, labels, validation_set(data), data.class_count, KERAS_HEADS[head])
    figures = candidate_figures(
        score_table(data, scorer),
        settings["calibration_fraction"],
        settings["partitions"],
        settings["partition_seed"],
        settings["objective"],
        settings["target_far"],
    )
    return {
        "augmentation": augmentation,
        "head": head,
        "penalty": penalty,
        "whitening": whitening,
        "epochs": epochs,
        **figures,
        "seconds": round(time.perf_counter() - started, 1),
    }


def defaults_of(params: dict[str, dict[str, object]]) -> dict[str, object]:
    """params.yaml's current head, penalty, augmentation preset and embedding."""
    embedding = params_embedding(params)
    return {
        "head": params["model"]["head"],
        "penalty": float(params["model"]["verifier_regularization"]),
        "whitening": float(params["model"].get("verifier_whitening", 0.0)),
        "augmentation": params["augment"]["preset"],
        "embedding": embedding.label,
    }


SHARED_META = ("dataset", "size", "weights", "views", "seed", "prepare")  # what every compared file must share


def check_same_data(metas: Sequence[dict[str, object]], files: Sequence[Path]) -> None:
    """Candidates are compared only on the same images, split, views and seed: every embedding file must
    agree with the first on `SHARED_META` (the results header is the first file's)."""
    for meta, path in zip(metas[1:], files[1:], strict=True):
        differing = [key for key in SHARED_META if meta.get(key) != metas[0].get(key)]
        if differing:
            raise SystemExit(
                f"{path}: its {', '.join(differing)} differ from {files[0]}'s: embed every candidate from the same "
                "dataset, size, weights, views and seed (bench/embeddings.py)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--embeddings", type=Path, nargs="+", required=True, help="files written by bench/embeddings.py"
    )
    parser.add_argument("--grid", choices=("full", "embedding"), default="full")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--no-keras", action="store_true", help="ridge candidates only (no TensorFlow)")
    parser.add_argument("--write-readme", action="store_true", help="rewrite the generated README blocks")
    arguments = parser.parse_args()

    started = time.perf_counter()
    params = read_params()
    settings = partition_settings(params)
    defaults = defaults_of(params)
    rows = []
    loaded = [load_embedded(path, split_rules(params["prepare"])) for path in arguments.embeddings]
    check_same_data([data.meta for data in loaded], arguments.embeddings)
    for data in loaded:
        listed = (
            embedding_candidates(str(defaults["augmentation"]))
            if arguments.grid == "embedding"
            else candidates(data, settings["views"], not arguments.no_keras)
        )
        for augmentation, head, penalty, whitening in listed:
            row = {
                "embedding": embedding_label(data.meta),
                **evaluate_candidate(data, augmentation, head, penalty, whitening, settings["views"], settings),
            }
            rows.append(row)
            shown = ("embedding", "augmentation", "head", "penalty", "whitening", "selection", "seconds")
            print(json.dumps({key: row[key] for key in shown}), flush=True)
    choice = chosen_row(rows)
    decided = (
        ("embedding", "penalty") if arguments.grid == "embedding" else ("head", "penalty", "whitening", "augmentation")
    )
    picked = {key: choice[key] for key in decided}
    expected = {key: defaults[key] for key in decided}
    results = {
        **results_header(data, arguments.embeddings[0], settings),
        "embedding_files": [path.name for path in arguments.embeddings],
        "grid": arguments.grid,
        "rule": RULE,
        "tie_tolerance": TIE_TOLERANCE,
        "keras_heads": arguments.grid == "full" and not arguments.no_keras,
        "candidates": rows,
        "choice": {
            **{key: choice[key] for key in ("embedding", *CHOICE_KEYS)},
            "selection": asdict(selection_columns(choice)),
        },
        "params_defaults": defaults,
        "choice_differs_from_params": picked != expected,
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    prefix = "embedding_selection" if arguments.grid == "embedding" else "head_selection"
    output = arguments.output or RESULTS_DIR / f"{prefix}_{results['dataset']}_{results['size']}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(embedding_selection_block(results) if arguments.grid == "embedding" else selection_block(results))
    if picked != expected:
        print(f"\nthe rule picks {picked}, params.yaml has {expected}")
    if arguments.write_readme:
        write_readme_blocks()


if __name__ == "__main__":
    main()
