"""The generated quality and selection tables, and the rule that chose the defaults (issue 24).

README.md's and bench/README.md's tables between `<!-- quality-table:... -->` and
`<!-- selection-table:... -->` markers must equal what bench/tables.py renders from the committed
results files; the selection rule must read selection columns only. No TensorFlow, no dataset.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import yaml

from bench.head_selection import (
    SelectionFigures,
    candidate_figures,
    check_same_data,
    choose,
    chosen_row,
    selection_rows,
)
from bench.quality import figures_at_threshold
from bench.tables import EMBEDDING_SELECTION_RESULTS, SELECTION_RESULTS, expected_blocks, read_block, replace_block
from tasks.evaluation.partitions import fitted_threshold, forgery_writers, partition_figures, writer_partitions
from tasks.evaluation.scores import NO_CLASS, ScoreTable
from tests.conftest import PROJECT_ROOT

WRITERS = 6
PER_WRITER = 3
UNENROLLED_ROWS = 4


def test_readme_blocks_equal_what_the_results_files_render() -> None:
    for path, blocks in expected_blocks().items():
        text = path.read_text()
        for name, content in blocks.items():
            assert read_block(text, name) == content, (
                f"{path.relative_to(PROJECT_ROOT)}'s {name} block differs from the results files: run "
                "`python bench/quality.py --write-readme` (or head_selection.py) or fix the results"
            )


def test_a_block_is_replaced_between_its_markers_only() -> None:
    text = "before\n<!-- t:start -->\nold\n<!-- t:end -->\nafter\n"
    replaced = replace_block(text, "t", "new\nlines")
    assert replaced == "before\n<!-- t:start -->\nnew\nlines\n<!-- t:end -->\nafter\n"
    assert read_block(replaced, "t") == "new\nlines"
    with pytest.raises(ValueError, match="no <!-- other:start -->"):
        replace_block(text, "other", "x")


def figures(
    augmentation: str, head: str, penalty: float | None, eer: float, accuracy: float, whitening: float = 0.0
) -> SelectionFigures:
    return SelectionFigures(augmentation, head, penalty, whitening, eer, accuracy)


def test_the_rule_takes_the_lowest_calibration_writer_eer() -> None:
    options = [
        figures("none", "ridge", 0.01, 0.120, 1.0),
        figures("signature", "ridge", 0.01, 0.090, 0.98),
        figures("mild", "ridge", 0.01, 0.100, 1.0),
    ]
    assert choose(options) == options[1]


def test_ties_go_to_validation_accuracy_then_the_simpler_model_then_list_order() -> None:
    options = [
        figures("none", "ridge", 0.01, 0.0915, 0.99),
        figures("signature", "ridge", 0.03, 0.0900, 0.98),  # the lowest EER
        figures("signature", "ridge", 0.1, 0.0919, 0.99),  # tied (within 0.002), same accuracy, larger penalty
        figures("signature", "mlp", None, 0.0910, 0.99),  # a Keras head comes after any penalty
        figures("mild", "ridge", 0.3, 0.0925, 1.0),  # not tied: 0.0025 above the lowest
        figures("signature", "ridge", 0.3, 0.0905, 0.99, whitening=0.01),  # tied, but whitening comes after none
    ]
    assert choose(options) == options[2]
    assert choose(options[:2] + options[3:]) == options[0]
    assert choose([options[3], options[3]]) is options[3]
    assert choose(options, tolerance=0.0) == options[1]
    assert choose([options[1], options[5]]) == options[5]  # higher validation accuracy beats the simpler model


def test_the_rule_refuses_an_empty_choice() -> None:
    with pytest.raises(ValueError, match="no candidate"):
        choose([figures("none", "ridge", 0.01, float("nan"), 1.0)])


def candidate_row(augmentation: str, penalty: float, eer: float, accuracy: float, test_eer: float) -> dict:
    interval = {"mean": eer, "ci95": [eer, eer], "values": [eer]}
    test = {"mean": test_eer, "ci95": [test_eer, test_eer], "values": [test_eer]}
    return {
        "augmentation": augmentation,
        "head": "ridge",
        "penalty": penalty,
        "selection": {"calibration_eer": interval, "val_accuracy": accuracy},
        "test": {"accuracy": accuracy, "eer_skilled_a_posteriori": test, "frr": test, "far_skilled": test},
    }


def test_test_columns_never_change_the_choice() -> None:
    rows = [
        candidate_row("none", 0.01, 0.12, 0.99, 0.10),
        candidate_row("signature", 0.01, 0.09, 0.99, 0.15),
        candidate_row("mild", 0.01, 0.10, 0.99, 0.08),
    ]
    assert chosen_row(rows) is rows[1]
    altered = copy.deepcopy(rows)
    for position, row in enumerate(altered):
        # Make every other candidate far better, and the chosen one far worse, on test.
        row["test"] = {key: {"mean": 0.0 if position != 1 else 0.9} for key in row["test"]}
        row["test"]["accuracy"] = 1.0 if position != 1 else 0.0
    assert chosen_row(altered)["augmentation"] == "signature"


def synthetic_table(seed: int = 0) -> ScoreTable:
    """Val and test genuine, calibration/test skilled forgeries of `WRITERS` writers, and unenrolled rows."""
    generator = np.random.default_rng(seed)
    claimed, kinds, splits = [], [], []
    for writer in range(WRITERS):
        forgery_split = "calibration" if writer < WRITERS // 2 else "test"
        for split, kind in (("val", "genuine"), ("test", "genuine"), (forgery_split, "skilled")):
            claimed += [writer] * PER_WRITER
            kinds += [kind] * PER_WRITER
            splits += [split] * PER_WRITER
    claimed += [NO_CLASS] * UNENROLLED_ROWS
    kinds += ["genuine"] * UNENROLLED_ROWS
    splits += ["unenrolled"] * UNENROLLED_ROWS
    claimed, kinds, splits = np.array(claimed), np.array(kinds), np.array(splits)
    scores = generator.normal(size=(len(claimed), WRITERS))
    genuine = (kinds == "genuine") & (claimed != NO_CLASS)
    scores[np.flatnonzero(genuine), claimed[genuine]] += 2.0
    skilled = kinds == "skilled"
    scores[np.flatnonzero(skilled), claimed[skilled]] += 1.0
    paths = np.array([f"image{index}" for index in range(len(claimed))])
    return ScoreTable(scores, scores, np.zeros((len(claimed), 1)), claimed, kinds, splits, paths)


def test_the_selection_never_reads_the_test_split_or_unenrolled_rows() -> None:
    table = synthetic_table()
    figures = candidate_figures(table, 0.5, 3, 0, "eer", 0.05)["selection"]
    changed = np.array(table.verification)
    # Everything of the test split (genuine images and the test writers' forgeries) and the unenrolled rows.
    hidden = (table.splits == "test") | (table.splits == "unenrolled")
    changed[hidden] = np.random.default_rng(1).normal(size=(int(hidden.sum()), WRITERS)) * 10
    altered = replace(table, logits=changed, verification=changed)
    assert candidate_figures(altered, 0.5, 3, 0, "eer", 0.05)["selection"] == figures
    assert not np.isin(selection_rows(table).splits, ["test", "unenrolled"]).any()
    # ...while the test columns, which the rule never reads, do move.
    assert (
        candidate_figures(altered, 0.5, 3, 0, "eer", 0.05)["test"]
        != candidate_figures(table, 0.5, 3, 0, "eer", 0.05)["test"]
    )


def test_the_committed_defaults_are_the_rules_choice() -> None:
    """Issue 24: "if the rule picks other defaults, change them": params.yaml holds what the committed
    selection results chose: head, augmentation and whitening by the full grid, then the embedding and
    the penalty by the embedding step (which fixed the full grid's choices)."""
    full = json.loads(SELECTION_RESULTS.read_text())["choice"]
    step = json.loads(EMBEDDING_SELECTION_RESULTS.read_text())
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    model = params["model"]
    assert model["head"] == full["head"] == "ridge"
    assert params["augment"]["preset"] == full["augmentation"] == step["choice"]["augmentation"]
    assert model["verifier_whitening"] == full["whitening"]
    assert f"{model['ink']} {'+'.join(model['pooled_layers'])}" == step["choice"]["embedding"]
    assert model["verifier_regularization"] == step["choice"]["penalty"]
    assert not step["choice_differs_from_params"]


def test_figures_at_a_threshold_are_the_partition_figures_at_the_fitted_one() -> None:
    table = synthetic_table()
    for calibration in writer_partitions(forgery_writers(table), 0.5, 3, 0):
        threshold = fitted_threshold(table, calibration, "eer", 0.05)[0]
        expected = partition_figures(table, calibration, "eer", 0.05)
        assert figures_at_threshold(table, calibration, threshold) == {
            name: expected[name] for name in ("frr", "far_skilled", "far_random", "unenrolled_accepted")
        }


def test_the_bench_modules_import_no_tensorflow() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench.tables, bench.quality, bench.head_selection; "
        "sys.exit(int('tensorflow' in sys.modules or 'keras' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code, str(PROJECT_ROOT)], check=False).returncode == 0


def test_the_embedding_grid_refuses_files_of_other_data(tmp_path) -> None:
    meta = {"dataset": "cedar", "size": 150, "weights": "none", "views": 4, "seed": 42, "prepare": {"images": 2640}}
    files = [tmp_path / "dark.npz", tmp_path / "bright.npz"]
    check_same_data([meta, {**meta, "embedding": {"ink": "bright"}}], files)  # only the embedding differs: fine
    with pytest.raises(SystemExit, match=r"bright\.npz: its size, views differ from .*dark\.npz's"):
        check_same_data([meta, {**meta, "size": 299, "views": 2}], files)
