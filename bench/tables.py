"""The markdown tables of the quality and selection benches, rendered from their results files only.

README.md and bench/README.md hold these tables between marker comments
(`<!-- quality-table:start -->` ... `<!-- quality-table:end -->`, and `selection-table` in
bench/README.md); `write_readme_blocks` rewrites them (the benches' `--write-readme`), and
tests/unit/test_bench_tables.py fails when a README's block differs from what this module renders
from the committed results files. Standard library only: no NumPy, no TensorFlow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
README = PROJECT_ROOT / "README.md"
BENCH_README = PROJECT_ROOT / "bench" / "README.md"
QUALITY_RESULTS = RESULTS_DIR / "quality_cedar_150.json"
SELECTION_RESULTS = RESULTS_DIR / "head_selection_cedar_150.json"
EMBEDDING_SELECTION_RESULTS = RESULTS_DIR / "embedding_selection_cedar_150.json"
QUALITY_BLOCK = "quality-table"
SELECTION_BLOCK = "selection-table"
EMBEDDING_SELECTION_BLOCK = "embedding-selection-table"
DIGITS = 3
# Embedding files written before `model.ink` / `model.pooled_layers` existed hold this embedding.
LEGACY_EMBEDDING = {"ink": "dark", "pooled_layers": ["mixed10"]}
DATASET_NAMES = {"cedar": "CEDAR", "demo": "the generated demo dataset"}
MODEL_ORDER = ("pipeline", "logistic_regression", "writer_svm", "reference")
PEERS = ("logistic_regression", "writer_svm")
# Issue 24's "done when" on CEDAR: (figure, bound on the mean, bound on the interval's upper end or None).
TARGETS = (
    ("eer_skilled_a_posteriori", 0.10, None),
    ("frr", 0.12, 0.18),
    ("far_skilled", 0.12, 0.18),
    ("far_random", 0.01, None),
    ("unenrolled_accepted", 0.05, None),
)
ECE_TARGET = 0.05
# The figures the quality bench also reports with other partition seeds (bench/quality.py seed_sensitivity).
SENSITIVITY_FIGURES = ("eer_skilled_a_posteriori", "eer_skilled_per_writer_a_posteriori", "frr", "far_skilled")
FIGURE_NAMES = {
    "eer_skilled_a_posteriori": "skilled EER, global threshold (a posteriori)",
    "eer_skilled_per_writer_a_posteriori": "skilled EER, per-writer thresholds (a posteriori)",
    "frr": "FRR",
    "far_skilled": "skilled FAR",
    "far_random": "random FAR",
    "unenrolled_accepted": "unenrolled accepted",
    "threshold": "threshold",
}


def number(value: float | None, digits: int = DIGITS) -> str:
    """A figure with `digits` decimals, or n/a."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def dataset_name(results: dict[str, object]) -> str:
    """The dataset as the READMEs name it."""
    return DATASET_NAMES.get(results["dataset"], results["dataset"])


def clipped(value: float) -> float:
    """A rate's interval end, clipped to [0, 1] (a Student-t interval can leave it)."""
    return min(max(value, 0.0), 1.0)


def interval(figure: dict[str, object], rate: bool = True) -> str:
    """The mean and interval, "mean [low, high]", of a partition figure; a rate's interval is clipped to [0, 1]."""
    low, high = figure["ci95"]
    if rate and low == low and high == high:
        low, high = clipped(low), clipped(high)
    return f"{number(figure['mean'])} [{number(low)}, {number(high)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def quality_rows(results: dict[str, object]) -> list[list[str]]:
    """One row per model at its calibrated threshold, and the reference at its fixed threshold."""
    rows = []
    for name in MODEL_ORDER:
        model = results["models"][name]
        figures = model["partitions"]
        rows.append(
            [
                model["label"],
                number(model["identification"]["accuracy"]),
                number(model["identification"]["f1_weighted"]),
                interval(figures["eer_skilled_a_posteriori"]),
                interval(figures["eer_skilled_per_writer_a_posteriori"]),
                "calibrated",
                *(interval(figures[figure]) for figure in ("frr", "far_skilled", "far_random", "unenrolled_accepted")),
                number(model["expected_calibration_error"]),
            ]
        )
    fixed = results["models"]["reference"]["fixed_threshold"]
    rows.append(
        [
            f"{results['models']['reference']['label']}, fixed threshold",
            "as above",
            "as above",
            "as above",
            "as above",
            f"{number(fixed['threshold'], 2)} (softmax)",
            *(interval(fixed[figure]) for figure in ("frr", "far_skilled", "far_random", "unenrolled_accepted")),
            "-",
        ]
    )
    return rows


def unenrolled_rows(report: dict[str, object]) -> list[list[str]]:
    """The threshold fitted without and with unenrolled writers as impostors, and the difference."""
    lent = report["lent_writers"]
    rows = []
    for key, label in (
        ("without", "validation genuine vs calibration writers' skilled forgeries (pipeline)"),
        ("with_unenrolled_impostors", f"the same + the genuine images of {lent} unenrolled writers as impostors"),
        ("difference", "difference (with - without)"),
    ):
        figures = report[key]
        rate = key != "difference"
        rows.append(
            [
                label,
                interval(figures["threshold"], rate=False),
                *(interval(figures[name], rate) for name in ("frr", "far_skilled", "unenrolled_accepted")),
            ]
        )
    return rows


def target_rows(results: dict[str, object]) -> list[list[str]]:
    """Issue 24's targets against the pipeline's figures."""
    models = results["models"]
    pipeline = models["pipeline"]
    rows = []
    for figure, mean_bound, high_bound in TARGETS:
        value = pipeline["partitions"][figure]
        met = value["mean"] <= mean_bound and (high_bound is None or value["ci95"][1] <= high_bound)
        bound = f"mean <= {mean_bound}" + (f", upper end <= {high_bound}" if high_bound is not None else "")
        rows.append([FIGURE_NAMES[figure], bound, interval(value), yes(met)])
    ece = pipeline["expected_calibration_error"]
    rows.append(["ECE (test)", f"<= {ECE_TARGET}", number(ece), yes(ece <= ECE_TARGET)])
    eer = pipeline["partitions"]["eer_skilled_a_posteriori"]["mean"]
    peer_eers = ", ".join(
        f"{models[peer]['label']} {number(models[peer]['partitions']['eer_skilled_a_posteriori']['mean'])}"
        for peer in PEERS
    )
    beats = all(eer <= models[peer]["partitions"]["eer_skilled_a_posteriori"]["mean"] for peer in PEERS)
    rows.append(["mean skilled EER vs both peers", "at or below", f"{number(eer)} ({peer_eers})", yes(beats)])
    accuracy = pipeline["identification"]["accuracy"]
    peer_accuracy = models["logistic_regression"]["identification"]["accuracy"]
    rows.append(
        [
            "accuracy vs logistic-regression peer",
            "at or above",
            f"{number(accuracy)} ({number(peer_accuracy)})",
            yes(accuracy >= peer_accuracy),
        ]
    )
    return rows


def yes(met: bool) -> str:
    """A target's verdict cell."""
    return "yes" if met else "**no**"


FIGURE_LABELS = {
    "frr": "FRR",
    "far_skilled": "skilled FAR",
    "far_random": "random FAR",
    "unenrolled_accepted": "unenrolled accepted",
    "eer_skilled_a_posteriori": "skilled EER (a posteriori)",
}


def prepare_split_line(results: dict[str, object]) -> str:
    """The pipeline's figures on the `prepare` split alone: its test writers' forgeries were read by no
    threshold and no selection (the partitions reuse the calibration writers the selection read)."""
    figures = results["models"]["pipeline"].get("prepare_split")
    if figures is None:
        return "(no prepare-split figures in this results file)"
    shown = ", ".join(
        f"{FIGURE_LABELS[name]} {number(figures[name])}"
        for name in ("frr", "far_skilled", "far_random", "unenrolled_accepted", "eer_skilled_a_posteriori")
    )
    return (
        "The head selection read the skilled forgeries of the `prepare` split's calibration writers, who are test "
        "writers in some partitions above. On the `prepare` split alone (threshold fitted on its calibration "
        f"writers, measured on its test writers, whose forgeries nothing fitted or selected on), the pipeline: {shown}."
    )


def embedding_label(meta: dict[str, object]) -> str:
    """The embedding of an embedding file's `meta`: `model.ink` and the pooled blocks (files written
    before those parameters existed hold the last block of the scan as it is)."""
    from tasks.model.embedding_spec import EmbeddingSpec

    return EmbeddingSpec.from_dict(meta.get("embedding") or LEGACY_EMBEDDING).label


def embedding_of(results: dict[str, object]) -> str:
    """The embedding a results file was measured on, as the tables quote it."""
    return f"`{embedding_label(results['embeddings']['meta'])}`"


def quality_block(results: dict[str, object]) -> str:
    """The quality bench's tables and their captions, from a `bench/quality.py` results file."""
    settings = results["settings"]
    pipeline = results["models"]["pipeline"]
    report = pipeline["partitions"]
    lines = [
        f"Measured on {dataset_name(results)}, {results['size']} px, `model.weights: {results['weights']}`, "
        f"embedding {embedding_of(results)}, params.yaml defaults "
        f"(`bench/quality.py`, `bench/results/{QUALITY_RESULTS.name}`): {results['enrolled_writers']} enrolled "
        f"writers, {results['unenrolled_writers']} never enrolled. Means over {report['partitions']} "
        f"writer-disjoint calibration/test partitions (seed {report['seed']}; {report['calibration_writers']} "
        f"calibration and {report['test_writers']} test writers each) with the 95% interval of the mean in "
        "brackets (Student-t, Nadeau-Bengio corrected for the partitions' overlap; rates clipped to [0, 1]). "
        "Each model's threshold is fitted like `calibrate`'s: "
        f"validation genuine claims against the partition's calibration writers' skilled forgeries "
        f"(`calibrate.objective: {settings['objective']}`). Accuracy and weighted F1: the "
        f"{pipeline['identification']['images']} test genuine images of enrolled writers (one split). ECE: test, "
        "Platt scaling of the model's claim score fitted on validation claims (the pipeline's printed confidence).",
        "",
        markdown_table(
            (
                "model",
                "accuracy",
                "weighted F1",
                FIGURE_NAMES["eer_skilled_a_posteriori"],
                FIGURE_NAMES["eer_skilled_per_writer_a_posteriori"],
                "threshold",
                "FRR",
                "skilled FAR",
                "random FAR",
                "unenrolled writers accepted",
                "ECE",
            ),
            quality_rows(results),
        ),
        "",
        prepare_split_line(results),
        "",
        "Trained on (enrolled writers' training images only; never validation, test or forgeries):",
        *(f"- {results['models'][name]['label']}: {results['models'][name]['trained_on']}" for name in MODEL_ORDER),
    ]
    unenrolled = results["unenrolled_impostors"]
    if "skipped" not in unenrolled:
        lines += [
            "",
            f"Should the threshold see unenrolled writers as impostors? Per partition, {unenrolled['lent_writers']} "
            f"of the {unenrolled['unenrolled_writers']} unenrolled writers (seeded) lend their genuine images, claimed "
            "as their top writer, to the pipeline's threshold fit; both thresholds are judged on the partition's "
            "test writers and the other unenrolled writers:",
            "",
            markdown_table(
                ("threshold fitted on", "threshold", "FRR", "skilled FAR", "unenrolled accepted (held-out writers)"),
                unenrolled_rows(unenrolled),
            ),
        ]
    sensitivity = results.get("partition_seed_sensitivity")
    if sensitivity:
        lines += [
            "",
            f"The pipeline with other partition seeds (each {sensitivity[0]['partitions']} partitions; how much the "
            "draw of the partitions moves a mean and its interval; the first row is the table's):",
            "",
            markdown_table(
                ("partition seed", *(FIGURE_NAMES[name] for name in SENSITIVITY_FIGURES)),
                [[str(row["seed"]), *(interval(row[name]) for name in SENSITIVITY_FIGURES)] for row in sensitivity],
            ),
        ]
    lines += [
        "",
        "Issue 24's targets, pipeline defaults:",
        "",
        markdown_table(("figure", "target", "measured", "met"), target_rows(results)),
        "",
        f"Measured on {results['machine']}; {results['seconds']} s in all.",
    ]
    return "\n".join(lines)


def penalty_cell(penalty: float | None) -> str:
    """A candidate's penalty, or - for a Keras head."""
    return "-" if penalty is None else f"{penalty:g}"


def whitening_cell(row: dict[str, object]) -> str:
    """A candidate's within-writer whitening, or - when it has none."""
    whitening = row.get("whitening") or 0.0
    return "-" if not whitening else f"{whitening:g}"


# The columns both selection tables end with: what the rule reads, then the test columns it never reads.
SELECTION_COLUMNS = (
    "calibration-writer skilled EER (selection)",
    "val accuracy (selection)",
    "test accuracy",
    "test skilled EER, global (a posteriori)",
    "test skilled EER, per writer (a posteriori)",
    "test FRR",
    "test skilled FAR",
)


def selection_cells(row: dict[str, object]) -> list[str]:
    """A candidate's `SELECTION_COLUMNS` cells."""
    selection, test = row["selection"], row["test"]
    return [
        interval(selection["calibration_eer"]),
        number(selection["val_accuracy"]),
        number(test["accuracy"]),
        interval(test["eer_skilled_a_posteriori"]),
        interval(test["eer_skilled_per_writer_a_posteriori"]),
        interval(test["frr"]),
        interval(test["far_skilled"]),
    ]


def selection_footer(results: dict[str, object]) -> str:
    """The line under both selection tables."""
    return (
        f"Test columns are recorded, never read by the rule. Measured on {results['machine']}; "
        f"{results['seconds']} s in all."
    )


def selection_block(results: dict[str, object]) -> str:
    """The selection bench's table, its rule and its choice, from a `bench/head_selection.py` results file."""
    choice = results["choice"]
    defaults = results["params_defaults"]
    rows = []
    for row in results["candidates"]:
        chosen = (row["augmentation"], row["head"], row["penalty"], row.get("whitening") or 0.0) == (
            choice["augmentation"],
            choice["head"],
            choice["penalty"],
            choice.get("whitening") or 0.0,
        )
        head = row["head"] + (f" ({row['epochs']} epochs)" if row.get("epochs") else "")
        rows.append(
            [
                f"**{row['augmentation']}**" if chosen else row["augmentation"],
                f"**{head}, chosen**" if chosen else head,
                penalty_cell(row["penalty"]),
                whitening_cell(row),
                *selection_cells(row),
            ]
        )
    settings = results["settings"]
    verdict = (
        f"**differs from params.yaml** ({defaults['head']}, penalty {penalty_cell(defaults['penalty'])}, "
        f"whitening {whitening_cell(defaults)}, `{defaults['augmentation']}`)"
        if results["choice_differs_from_params"]
        else "the same as params.yaml's defaults"
    )
    lines = [
        f"Measured on {dataset_name(results)}, {results['size']} px, `model.weights: {results['weights']}` "
        "(`bench/head_selection.py`, "
        f"`bench/results/{SELECTION_RESULTS.name}`), {settings['partitions']} writer partitions (seed "
        f"{settings['partition_seed']}), {settings['views']} views per augmentation. Rule "
        f"(`bench/head_selection.py: choose`), which reads the two selection columns only: {results['rule']}. "
        f"Chosen: head {choice['head']}, penalty {penalty_cell(choice['penalty'])}, whitening "
        f"{whitening_cell(choice)}, augmentation "
        f"`{choice['augmentation']}`: {verdict}."
        + ("" if results["keras_heads"] else " Keras heads were left out (`--no-keras`)."),
        "",
        markdown_table(
            (
                "augmentation",
                "head",
                "penalty",
                "whitening",
                *SELECTION_COLUMNS,
            ),
            rows,
        ),
        "",
        selection_footer(results),
    ]
    return "\n".join(lines)


def embedding_selection_block(results: dict[str, object]) -> str:
    """The embedding step's table (`bench/head_selection.py --grid embedding`), its rule and its choice."""
    choice, defaults, settings = results["choice"], results["params_defaults"], results["settings"]
    rows = []
    for row in results["candidates"]:
        chosen = (row["embedding"], row["penalty"]) == (choice["embedding"], choice["penalty"])
        rows.append(
            [
                f"**{row['embedding']}, chosen**" if chosen else row["embedding"],
                penalty_cell(row["penalty"]),
                *selection_cells(row),
            ]
        )
    verdict = (
        f"**differs from params.yaml** ({defaults['embedding']}, penalty {penalty_cell(defaults['penalty'])})"
        if results["choice_differs_from_params"]
        else "the same as params.yaml's defaults"
    )
    lines = [
        f"Measured on {dataset_name(results)}, {results['size']} px, `model.weights: {results['weights']}` "
        f"(`bench/head_selection.py --grid embedding`, `bench/results/{EMBEDDING_SELECTION_RESULTS.name}`), "
        f"{settings['partitions']} writer partitions (seed {settings['partition_seed']}), ridge head, "
        f"`{choice['augmentation']}` augmentation with {settings['views']} views, no whitening. Embedding: "
        "`model.ink` (bright: the base sees the negative scan) and the InceptionV3 blocks averaged and "
        f"concatenated (`model.pooled_layers`). Same rule: {results['rule']}. Chosen: "
        f"{choice['embedding']}, penalty {penalty_cell(choice['penalty'])}: {verdict}.",
        "",
        markdown_table(
            (
                "embedding",
                "penalty",
                *SELECTION_COLUMNS,
            ),
            rows,
        ),
        "",
        selection_footer(results),
    ]
    return "\n".join(lines)


def block_pattern(name: str) -> re.Pattern[str]:
    """The marker pair of block `name` and what lies between them."""
    return re.compile(rf"(<!-- {re.escape(name)}:start -->\n)(.*?)(\n<!-- {re.escape(name)}:end -->)", re.DOTALL)


def read_block(text: str, name: str) -> str:
    """The content of block `name` in `text` (ValueError when its markers are missing)."""
    match = block_pattern(name).search(text)
    if match is None:
        raise ValueError(f"no <!-- {name}:start --> ... <!-- {name}:end --> block")
    return match.group(2)


def replace_block(text: str, name: str, content: str) -> str:
    """`text` with block `name`'s content replaced by `content`."""
    read_block(text, name)
    return block_pattern(name).sub(lambda match: match.group(1) + content + match.group(3), text, count=1)


def load_results(path: Path) -> dict[str, object]:
    """A results JSON file."""
    return json.loads(path.read_text())


def expected_blocks() -> dict[Path, dict[str, str]]:
    """What every generated README block must hold, rendered from the committed results files."""
    quality = quality_block(load_results(QUALITY_RESULTS))
    selection = selection_block(load_results(SELECTION_RESULTS))
    embedding = embedding_selection_block(load_results(EMBEDDING_SELECTION_RESULTS))
    return {
        README: {QUALITY_BLOCK: quality},
        BENCH_README: {QUALITY_BLOCK: quality, SELECTION_BLOCK: selection, EMBEDDING_SELECTION_BLOCK: embedding},
    }


def write_readme_blocks() -> None:
    """Rewrite every generated README block from the results files."""
    for path, blocks in expected_blocks().items():
        text = path.read_text()
        for name, content in blocks.items():
            text = replace_block(text, name, content)
        path.write_text(text)
        print(f"rewrote {', '.join(blocks)} in {path.relative_to(PROJECT_ROOT)}")
