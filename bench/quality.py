"""Recognition quality with error bars: the pipeline's defaults, two peers and the reference recipe,
on the same embeddings, the same rows and the same writer partitions.

Reads an embedding file (bench/embeddings.py: the train stage's own base, seed and augmentation),
redoes the pipeline's split with params.yaml's `prepare` rules (unenrolled writers included) and
fits, on the enrolled writers' training images only:
- **pipeline**: params.yaml's defaults: the ridge head and writer-dependent verifier
  (`model.verifier_regularization`, `model.verifier_whitening`) on the clean images and `train.augmented_views` views of
  `augment.preset`;
- **logistic-regression peer** (issue 11): StandardScaler + LogisticRegression(max_iter=2000) on the
  same clean images and views; claim score: its probability of the claimed writer;
- **writer-dependent SVM peer** (sigver's protocol): per writer, a linear SVC with balanced classes on
  its clean training references against the other writers' (no forgery, no augmentation); claim
  score: its decision value; identification: the highest;
- **reference recipe** as its own model: a Dense(1024, relu) + Dropout(0.1) + softmax head, Adam
  1e-3, batch 16, early stopping on validation loss (patience 10, best epoch kept) on the clean
  images and the `reference` preset's views (standardised input, as the pipeline's heads);
  its claim score is its softmax probability, evaluated at its own calibrated threshold and at the
  reference's fixed `calibrate.reference_threshold` (0.40).

For every model: accuracy and weighted F1 of the test genuine images of enrolled writers (one
split), and over `evaluate.partitions` seeded writer-disjoint calibration/test partitions
(`tasks.evaluation.partitions`, on scores only) the mean and 95% interval of FRR, skilled FAR, random FAR and
unenrolled writers' signatures answered as an enrolled writer at the model's threshold (fitted as
`calibrate` fits it: validation genuine claims against the partition's calibration writers' skilled
forgeries, `calibrate.objective`), the a-posteriori skilled EER with one global threshold and the
mean per-writer EER; and the ECE on test of Platt scaling of the model's claim score fitted on
validation claims (`tasks.evaluation.calibrate`, the pipeline's printed confidence).

Also measured for the pipeline: its headline figures with the next partition seeds too (how much
the draw of the partitions moves a mean and its interval), and whether the threshold should see
unenrolled writers as impostors.
Per partition the unenrolled writers are halved (seeded); the threshold is fitted without, then
with, the first half's genuine images (claimed as their top writer) added to the impostors, and
both are judged on the same test writers and the *other* half.

Usage:
  python bench/embeddings.py --dataset cedar --size 150 --output /tmp/emb_cedar_150.npz
  python bench/quality.py --embeddings /tmp/emb_cedar_150.npz [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.peers import (  # noqa: E402
    GENUINE,
    NO_AUGMENTATION,
    EmbeddedSplit,
    Scorer,
    keras_head_scorer,
    load_embedded,
    logistic_regression_scorer,
    machine,
    partition_settings,
    read_params,
    results_header,
    ridge_scorer,
    score_table,
    scored_rows,
    split_rules,
    training_set,
    validation_set,
    writer_svm_scorer,
)
from bench.tables import RESULTS_DIR, SENSITIVITY_FIGURES, quality_block, write_readme_blocks  # noqa: E402
from tasks.data.split import UNENROLLED_SPLIT, round_half_up  # noqa: E402
from tasks.evaluation.calibrate import fit_confidence, fit_threshold  # noqa: E402
from tasks.evaluation.calibration_report import confidence_calibration  # noqa: E402
from tasks.evaluation.partitions import (  # noqa: E402
    OPERATING_POINT_FIGURES,
    bounds_of,
    fitted_threshold,
    forgery_writers,
    mean_interval,
    operating_point,
    overlap_ratio,
    partition_figures,
    partition_report,
    writer_partitions,
)
from tasks.evaluation.scores import ScoreTable, claimed_scores  # noqa: E402

REFERENCE_AUGMENTATION = "reference"
REFERENCE_UNITS = 1024
RIDGE = "ridge"
KERAS_HEAD_UNITS = {"linear": 0}  # model.head -> Dense(relu) units; mlp reads model.dense_units
UNENROLLED_CALIBRATION_SHARE = 0.5  # share of the unenrolled writers lent to the threshold as impostors
SENSITIVITY_SEEDS = 5  # partition seeds (evaluate.partition_seed and the next ones) the pipeline is also measured on
MODEL_LABELS = {
    "pipeline": "pipeline defaults",
    "logistic_regression": "logistic-regression peer",
    "writer_svm": "writer-dependent SVM peer",
    "reference": "reference recipe",
}


def bench_settings(params: dict[str, dict[str, object]]) -> dict[str, object]:
    """The parameters this bench reads from params.yaml, flat."""
    augment = dict(params["augment"])
    preset = augment.pop("preset")
    if augment:
        raise ValueError(f"augment overrides {sorted(augment)} have no views in an embedding file: embed them first")
    return {
        **partition_settings(params),
        "head": params["model"]["head"],
        "dense_units": int(params["model"]["dense_units"]),
        "penalty": float(params["model"]["verifier_regularization"]),
        "whitening": float(params["model"].get("verifier_whitening", 0.0)),
        "augmentation": preset,
        "reference_threshold": float(params["calibrate"]["reference_threshold"]),
    }


def pipeline_scorer(data: EmbeddedSplit, settings: dict[str, object]) -> Scorer:
    """The pipeline's classifier and verifier: the ridge verifier's scores verify claims and, with the
    default ridge head, also rank writers; a trained head (`linear`, `mlp`) ranks them instead."""
    samples, labels = training_set(data, settings["augmentation"], settings["views"])
    verifier = ridge_scorer(samples, labels, data.class_count, settings["penalty"], settings["whitening"])
    if settings["head"] == RIDGE:
        return verifier
    units = KERAS_HEAD_UNITS.get(settings["head"], settings["dense_units"])
    head, _epochs = keras_head_scorer(samples, labels, validation_set(data), data.class_count, units)

    def scores(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return head(embeddings)[0], verifier(embeddings)[1]

    return scores


def identification(table: ScoreTable) -> dict[str, float]:
    """Accuracy and weighted F1 of the enrolled writers' test genuine images (top-scoring writer)."""
    from sklearn.metrics import f1_score

    rows = table.select("test", GENUINE)
    predictions = np.argmax(rows.logits, axis=1)
    return {
        "accuracy": float(np.mean(predictions == rows.claimed)),
        "f1_weighted": float(f1_score(rows.claimed, predictions, average="weighted", zero_division=0)),
        "images": len(rows),
    }


def platt_calibration_error(table: ScoreTable) -> float:
    """Test ECE of the answers' confidence when Platt scaling of the claim score is fitted on validation."""
    validation = table.select("val", GENUINE)
    slope, intercept = fit_confidence(validation.verification, validation.claimed)
    return float(confidence_calibration(table, slope, intercept)["expected_calibration_error"])


def prepare_split_figures(table: ScoreTable, settings: dict[str, object]) -> dict[str, float]:
    """The figures on the `prepare` split itself: threshold fitted on its calibration writers, measured
    on its test writers, whose forgeries neither the threshold nor the head selection ever read."""
    calibration_side = table.splits == "calibration"
    calibration = np.unique(table.claimed[calibration_side & (table.kinds != GENUINE)])
    return partition_figures(table, calibration, settings["objective"], settings["target_far"])


def model_report(table: ScoreTable, settings: dict[str, object]) -> dict[str, object]:
    """Identification, the partition figures at the model's calibrated threshold, the same figures on
    the `prepare` split (the writers no selection saw), and the Platt ECE."""
    return {
        "identification": identification(table),
        "prepare_split": prepare_split_figures(table, settings),
        "partitions": partition_report(
            table,
            settings["calibration_fraction"],
            settings["partitions"],
            settings["partition_seed"],
            settings["objective"],
            settings["target_far"],
        ),
        "expected_calibration_error": platt_calibration_error(table),
    }


def figures_at_threshold(table: ScoreTable, calibration: np.ndarray, threshold: float) -> dict[str, float]:
    """FRR, skilled FAR and random FAR of the writers with forgeries outside `calibration`, and the
    unenrolled writers' acceptance, at a given threshold (`tasks.evaluation.partitions.operating_point`)."""
    figures = operating_point(table, calibration, threshold)
    return {name: figures[name] for name in OPERATING_POINT_FIGURES}


def summarised(figures: Sequence[dict[str, float]], ratio: float, rates: bool = True) -> dict[str, object]:
    """Mean and 95% interval of each figure over partitions (Nadeau-Bengio corrected with `ratio`, test
    over calibration writers, as the stages' intervals); a rate's interval is clipped to [0, 1] as the
    stages clip it (`rates` False for differences of rates, which may be negative)."""
    return {
        name: mean_interval(
            [figure[name] for figure in figures],
            bounds=bounds_of(name) if rates else bounds_of("threshold"),
            test_to_calibration=ratio,
        ).as_dict()
        for name in figures[0]
    }


def divisions_and_ratio(table: ScoreTable, settings: dict[str, object]) -> tuple[list[np.ndarray], float]:
    """The stages' writer partitions of `table` and their test-over-calibration writer ratio."""
    writers = forgery_writers(table)
    divisions = writer_partitions(
        writers, settings["calibration_fraction"], settings["partitions"], settings["partition_seed"]
    )
    chosen = len(divisions[0]) if divisions else 0
    return divisions, overlap_ratio(chosen, len(writers) - chosen)


def fixed_threshold_report(table: ScoreTable, threshold: float, settings: dict[str, object]) -> dict[str, object]:
    """The operating-point figures at a fixed threshold (the reference's 0.40) over the same partitions."""
    divisions, ratio = divisions_and_ratio(table, settings)
    return {
        "threshold": threshold,
        **summarised([figures_at_threshold(table, c, threshold) for c in divisions], ratio),
    }


def unenrolled_top_claims(table: ScoreTable) -> np.ndarray:
    """Each unenrolled row's claim score for the writer it is identified as (its top writer)."""
    rows = table.splits == UNENROLLED_SPLIT
    top = np.argmax(table.logits[rows], axis=1)
    return claimed_scores(table.verification[rows].astype(np.float64), top)


def unenrolled_impostor_report(
    table: ScoreTable, row_writers: np.ndarray, settings: dict[str, object]
) -> dict[str, object]:
    """Threshold fitted without and with half the unenrolled writers' genuine images as extra impostors,
    both judged on the partition's test writers and the other half of the unenrolled writers."""
    unenrolled = np.unique(row_writers[table.splits == UNENROLLED_SPLIT])
    if len(unenrolled) < 2:
        return {"skipped": f"{len(unenrolled)} unenrolled writer(s): nothing to halve"}
    lent = round_half_up(UNENROLLED_CALIBRATION_SHARE * len(unenrolled))
    divisions, ratio = divisions_and_ratio(table, settings)
    without, with_impostors, added = [], [], []
    for index, calibration in enumerate(divisions):
        generator = np.random.default_rng([settings["partition_seed"], index])
        lent_writers = generator.permutation(unenrolled)[:lent]
        lent_rows = (table.splits == UNENROLLED_SPLIT) & np.isin(row_writers, lent_writers)
        threshold, genuine, impostor = fitted_threshold(
            table, calibration, settings["objective"], settings["target_far"]
        )
        extra = unenrolled_top_claims(table.rows(lent_rows))
        widened = fit_threshold(
            genuine, np.concatenate([impostor, extra]), settings["objective"], settings["target_far"]
        )
        judged = table.rows(~lent_rows)
        without.append({"threshold": threshold, **figures_at_threshold(judged, calibration, threshold)})
        with_impostors.append({"threshold": widened, **figures_at_threshold(judged, calibration, widened)})
        added.append(len(extra))
    return {
        "unenrolled_writers": len(unenrolled),
        "lent_writers": lent,
        "extra_impostor_claims": added,
        "without": summarised(without, ratio),
        "with_unenrolled_impostors": summarised(with_impostors, ratio),
        "difference": summarised(
            [
                {name: after[name] - before[name] for name in ("threshold", *OPERATING_POINT_FIGURES)}
                for before, after in zip(without, with_impostors, strict=True)
            ],
            ratio,
            rates=False,
        ),
    }


def seed_sensitivity(table: ScoreTable, settings: dict[str, object]) -> list[dict[str, object]]:
    """The pipeline's headline partition figures with `SENSITIVITY_SEEDS` partition seeds (the configured
    one first): how much the draw of the partitions moves a mean and its interval. Scores only."""
    first = int(settings["partition_seed"])
    rows = []
    for seed in range(first, first + SENSITIVITY_SEEDS):
        report = partition_report(
            table,
            settings["calibration_fraction"],
            settings["partitions"],
            seed,
            settings["objective"],
            settings["target_far"],
        )
        rows.append({"seed": seed, "partitions": report["partitions"], **{f: report[f] for f in SENSITIVITY_FIGURES}})
    return rows


ModelFit = Callable[[], tuple[Scorer, dict[str, object]]]


def measured(
    name: str, trained_on: str, fit: ModelFit, data: EmbeddedSplit, settings: dict[str, object]
) -> tuple[dict[str, object], ScoreTable]:
    """Fit one model (timed), score the table rows and report it."""
    started = time.perf_counter()
    scorer, extra = fit()
    table = score_table(data, scorer)
    report = {"label": MODEL_LABELS[name], "trained_on": trained_on, **extra, **model_report(table, settings)}
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{name}: {report['seconds']} s", flush=True)
    return report, table


def run_models(data: EmbeddedSplit, settings: dict[str, object]) -> tuple[dict[str, object], dict[str, ScoreTable]]:
    """Every model's report, and its score table."""
    views, augmentation = settings["views"], settings["augmentation"]
    samples, labels = training_set(data, augmentation, views)
    references, reference_labels = training_set(data, NO_AUGMENTATION, 0)
    reference_samples, reference_sample_labels = training_set(data, REFERENCE_AUGMENTATION, views)
    described_views = f"clean training genuine images + {views} `{augmentation}` views each"

    def reference_model() -> tuple[Scorer, dict[str, object]]:
        scorer, epochs = keras_head_scorer(
            reference_samples, reference_sample_labels, validation_set(data), data.class_count, REFERENCE_UNITS
        )
        return scorer, {"epochs": epochs}

    fits = {
        "pipeline": (
            f"{described_views}; ridge penalty {settings['penalty']}, whitening {settings['whitening']}, "
            f"head {settings['head']}",
            lambda: (pipeline_scorer(data, settings), {}),
        ),
        "logistic_regression": (described_views, lambda: (logistic_regression_scorer(samples, labels), {})),
        "writer_svm": (
            "clean training genuine images only (sigver: references, no augmentation, no forgery)",
            lambda: (writer_svm_scorer(references, reference_labels, data.class_count), {}),
        ),
        "reference": (
            f"clean training genuine images + {views} `{REFERENCE_AUGMENTATION}` views each; early stopping on "
            "validation genuine",
            reference_model,
        ),
    }
    reports, tables = {}, {}
    for name, (trained_on, fit) in fits.items():
        reports[name], tables[name] = measured(name, trained_on, fit, data, settings)
    reports["reference"]["fixed_threshold"] = fixed_threshold_report(
        tables["reference"], settings["reference_threshold"], settings
    )
    return reports, tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", type=Path, required=True, help="a file written by bench/embeddings.py")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--write-readme", action="store_true", help="rewrite the generated README blocks")
    arguments = parser.parse_args()

    started = time.perf_counter()
    settings = bench_settings(read_params())
    data = load_embedded(arguments.embeddings, split_rules(settings["prepare"]))
    reports, tables = run_models(data, settings)
    unenrolled = unenrolled_impostor_report(tables["pipeline"], data.writers[scored_rows(data)], settings)
    results = {
        **results_header(data, arguments.embeddings, settings),
        "models": reports,
        "unenrolled_impostors": unenrolled,
        "partition_seed_sensitivity": seed_sensitivity(tables["pipeline"], settings),
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    output = arguments.output or RESULTS_DIR / f"quality_{results['dataset']}_{results['size']}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(quality_block(json.loads(output.read_text())))
    if arguments.write_readme:
        write_readme_blocks()


if __name__ == "__main__":
    main()
